"""The global dedup pass on Ray Data, for datasets of ``ray_above`` rows or more.

Same rules as the driver path of ``pipeline.dedup``, called inside Ray Data groupbys on their
partition column (curation.dedup.drops), so both decide the same (the tests compare them);
but no process holds every sample's signature row:

* Earlier releases (``against``): one Ray Data groupby over the hash values of both sides
  (``s:<sha256>``, ``p:<pixel hash>``) finds the samples already released (``hash_matches``),
  a second one over those matches keeps the byte match before the pixel match
  (``first_matches``). Near: pHashes of both sides as compact arrays (below).
* Exact and pixel groups: a groupby on the signature group over the survivors' manifest rows;
  ``resolve_groups`` runs inside ``map_groups`` and emits drop rows only.
* Near: a Ray Data sort by (area desc, key) gives each survivor an integer rank; one task
  gathers the pHashes by rank (uint64, 8 bytes a sample) into the object store, takes their
  unique values and inverse (8 + 8 bytes a sample), the banded-search tasks read the unique
  values, and one task resolves the pairs best-first over integer ranks only
  (``resolve_near``: about 8 more bytes a sample for the canonical array, plus the pairs).
  Ranks are turned back into keys by per-block tasks and a Ray Data join.
* Semantic (optional, ``pipeline.dedup_semantic_ray``): per-shard tasks embed what the
  cache lacks, k-means is trained on the driver from a bounded sample keyed by hash, and a
  groupby on the k-means partition resolves each partition best-first, emitting drop rows.
* Apply: drops of each pass are Parquet under ``<dataset>/_work/dedup/<pass>/``; chains
  (a canonical dropped by a later pass) are followed in a groupby on the link
  (``follow_chains``), cluster sizes come from a groupby on the canonical (``cluster_sizes``),
  and both are written partitioned by shard, so each shard rewrite (a Ray task) reads only its
  own shard's rows.

The driver holds counts (rows, drops per reason), one offset per sorted block, the numbers of
the shards to rewrite and object refs: no per-sample bytes but the semantic pass's k-means
sample (at most 256 embeddings a partition). The largest single process is the near pass's
resolve task: about 32 bytes a survivor with a pHash (10 GB at 300M), plus 16 bytes a pair
found; it could be split further by connected component (left for later).

Resume: ``_work/dedup/`` is cleared when a run starts, so a rerun after a crash recomputes
the plan from the manifests and the rejections already published (see
curation.dedup.apply), never from a half-written plan.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
import ray.data

from curation.dedup.apply import apply_planned_shard, dedup_rejection_files
from curation.dedup.cluster import PRIORITY_SORT, previous_matches, resolve_near, with_priority
from curation.dedup.config import DedupConfig
from curation.dedup.drops import (
    CHAIN_SCHEMA,
    NAMING_SCHEMA,
    as_drops,
    chain_rows,
    cluster_sizes,
    drop_naming,
    follow_chains,
    found_drops,
    rejection_naming,
    sample_naming,
)
from curation.dedup.groups import resolve_groups, with_groups
from curation.dedup.near import banded_pairs, exact_pairs, split_tables
from curation.dedup.previous import (
    HASH_ROW_SCHEMA,
    INDEX_COLUMNS,
    MATCH_SCHEMA,
    clear_index,
    first_matches,
    hash_matches,
    hash_rows,
    index_rows,
    read_index,
)
from runtime.storage import Location, list_files
from schemas import Reason
from schemas.layout import DEDUP_PLAN_DIR, MANIFESTS_DIR, dedup_plan_dir, partition_shard

FOUND_SCHEMA = pa.schema([("rank", pa.int64()), ("target", pa.int64()), ("distance", pa.int64())])
LOOKUP_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
        ("target", pa.int64()),
        ("distance", pa.int64()),
    ]
)


@dataclass
class RayPlan:
    """What the planning passes wrote: the driver keeps folder names and counts only."""

    dataset: Location
    config: DedupConfig
    rows: int
    passes: list[tuple[str, bool]] = field(default_factory=list)  # (folder, within dataset)
    counts: Counter = field(default_factory=Counter)

    @property
    def work(self) -> Location:
        return self.dataset.join(DEDUP_PLAN_DIR)

    @property
    def partitions(self) -> int:
        return max(1, -(-self.rows // self.config.rows_per_partition))

    def folder(self, name: str) -> Location:
        return self.dataset.join(dedup_plan_dir(name))


def run_on_ray(dataset: Location, config: DedupConfig, rows: int) -> dict[str, int]:
    """``run_dedup`` for large datasets; returns counts of newly dropped samples by reason."""
    context = ray.data.DataContext.get_current()
    v2 = context.use_datasource_v2
    # The V2 Parquet reader starts FooterReader actors for every read (10-20 s each on 2
    # cores, see runtime.ray_env); this pass reads Parquet about 8 times: V1, as jobs do.
    context.use_datasource_v2 = False
    try:
        _clear(dataset.join(DEDUP_PLAN_DIR))  # a crashed run's plan is recomputed, never reused
        plan = plan_on_ray(dataset, config, rows)
        apply_on_ray(plan)
        if config.write_index:
            _write_index(plan)
        _clear(plan.work)
    finally:
        context.use_datasource_v2 = v2
    return dict(plan.counts)


def plan_on_ray(dataset: Location, config: DedupConfig, rows: int) -> RayPlan:
    """Every pass in order, each on the survivors of the ones before; drops to Parquet."""
    plan = RayPlan(dataset, config, rows)
    for number, uri in enumerate(config.against):
        _previous_pass(plan, uri, f"against-{number}")
    if config.exact or config.pixels:
        _group_pass(plan)
    if config.near:
        _near_pass(plan)
    if config.semantic:
        _semantic_pass(plan)
    return plan


# -- reading and writing ------------------------------------------------------------------


def _signatures(plan: RayPlan, columns: list[str]) -> ray.data.Dataset:
    files = list_files(plan.dataset.join(MANIFESTS_DIR), ".parquet")
    return ray.data.read_parquet(
        [f.path for f in files],
        filesystem=plan.dataset.fs,
        columns=columns,
        override_num_blocks=plan.config.read_blocks or None,
    )


def _read_drops(plan: RayPlan, names: list[str], columns: list[str] | None = None):
    return ray.data.read_parquet(
        [plan.folder(name).path for name in names], filesystem=plan.dataset.fs, columns=columns
    )


def _survivors(plan: RayPlan, columns: list[str]) -> ray.data.Dataset:
    """Manifest rows not dropped by an earlier pass (a Ray Data anti-join on the key)."""
    rows = _signatures(plan, columns)
    if not plan.passes:
        return rows
    dropped = _read_drops(plan, [name for name, _ in plan.passes], ["key"])
    return rows.join(dropped, "left_anti", num_partitions=plan.partitions, on=("key",))


def _write_pass(plan: RayPlan, name: str, drops: ray.data.Dataset, *, within: bool) -> None:
    """Write a pass's drop rows; the driver keeps only their counts by reason."""
    folder = plan.folder(name)
    _write_by_shard(drops.map_batches(as_drops, batch_format="pyarrow"), folder)
    counts = Counter()
    if _partitions(folder):  # streamed: the driver keeps counts by reason, never the rows
        found = pads.dataset(folder.path, filesystem=folder.fs, partitioning="hive")
        for batch in found.to_batches(columns=["reason"]):
            counts.update(Counter(batch.column(0).to_pylist()))
    if counts:
        plan.passes.append((name, within))
        plan.counts.update(counts)


def _write_by_shard(ds: ray.data.Dataset, folder: Location) -> None:
    """Parquet under ``folder/shard=N/`` (schemas.layout.plan_partition): each shard rewrite
    reads its own folder only."""
    ds.write_parquet(folder.path, filesystem=folder.fs, partition_cols=["shard"])


def _clear(folder: Location) -> None:
    with contextlib.suppress(FileNotFoundError):
        folder.fs.delete_dir(folder.path)


def _grouped(ds: ray.data.Dataset, plan: RayPlan, column: str, rule, schema: pa.Schema, **kw):
    """``rule`` (a function over Arrow tables keyed by ``column``) run on each group of ``ds``
    in a Ray Data groupby; ``schema`` unifies the blocks' types first."""
    rows = ds.map_batches(_cast, fn_kwargs={"schema": schema}, batch_format="pyarrow")
    return rows.groupby(column, num_partitions=plan.partitions).map_groups(
        rule, fn_kwargs=kw, batch_format="pyarrow"
    )


def _cast(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    return batch.select(schema.names).cast(schema)


# -- ranks: a Ray Data sort, then integer positions --------------------------------------


@dataclass
class Ranked:
    """A sorted dataset as ordered blocks with a ``rank`` column (refs; offsets per block)."""

    refs: list
    offsets: list[int]
    rows: int


def _rank(ds: ray.data.Dataset, keys: list[str]) -> Ranked:
    refs = ds.sort(keys).materialize().to_arrow_refs()  # blocks in sorted order
    sizes = ray.get([_num_rows.remote(ref) for ref in refs])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    ranked = [_with_rank.remote(ref, offset) for ref, offset in zip(refs, offsets, strict=True)]
    return Ranked(ranked, offsets, int(sum(sizes)))


@ray.remote
def _num_rows(block: pa.Table) -> int:
    return block.num_rows


@ray.remote
def _with_rank(block: pa.Table, offset: int) -> pa.Table:
    return block.append_column("rank", pa.array(np.arange(offset, offset + block.num_rows)))


@ray.remote
def _hashes(block: pa.Table) -> np.ndarray:
    return block["phash"].to_numpy(zero_copy_only=False).astype(np.uint64)


@ray.remote(num_returns=3)
def _unique(*parts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(unique values, inverse, count) of the pHashes given by rank (one part per block)."""
    hashes = np.concatenate([np.empty(0, np.uint64), *parts])
    unique, inverse = np.unique(hashes, return_inverse=True)
    return unique, inverse.ravel(), len(unique)


def unique_pair_refs(unique_ref, n_unique: int, config: DedupConfig) -> list:
    """Refs to pairs of distinct hash values within the radius, for ``n_unique`` values in the
    object store: brute force in one task below ``exact_below``, else banded tables spread
    over ``near_tasks`` tasks. Each part is sorted; parts may repeat a pair."""
    if n_unique < 2:
        return []
    if n_unique < config.exact_below:
        return [ray.remote(exact_pairs).remote(unique_ref, config.radius)]
    search = ray.remote(banded_pairs)
    return [
        search.remote(unique_ref, config.radius, recall=config.near_recall, tables=tables)
        for tables in split_tables(
            config.radius, n_unique, config.near_tasks, recall=config.near_recall
        )
    ]


def _pairs(parts: tuple[np.ndarray, ...]) -> np.ndarray:
    if not parts:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(parts), axis=0)


@ray.remote
def _resolve_near(unique: np.ndarray, inverse: np.ndarray, *parts: np.ndarray) -> pa.Table:
    ranks, kept, distances = resolve_near(unique, inverse, _pairs(parts))
    return pa.table([ranks, kept, distances], schema=FOUND_SCHEMA)


@ray.remote
def _resolve_previous(
    n_current: int, unique: np.ndarray, inverse: np.ndarray, *parts: np.ndarray
) -> pa.Table:
    ranks, olds, distances = previous_matches(n_current, unique, inverse, _pairs(parts))
    return pa.table([ranks, olds, distances], schema=FOUND_SCHEMA)


@ray.remote
def _rows_at(block: pa.Table, offset: int, found: pa.Table) -> pa.Table:
    """Rows of this block named by ``found`` (sorted by rank), with their target and distance."""
    rank = found["rank"].to_numpy()
    lo, hi = np.searchsorted(rank, [offset, offset + block.num_rows])
    rows = block.take(pa.array(rank[lo:hi] - offset))
    return pa.table(
        [
            rows["key"],
            rows["shard"],
            rows["source_uri"],
            found["target"][lo:hi],
            found["distance"][lo:hi],
        ],
        schema=LOOKUP_SCHEMA,
    )


@ray.remote
def _names(block: pa.Table) -> pa.Table:
    return pa.table({"target": block["rank"], "duplicate_of": block["key"].cast(pa.string())})


def _lookup(plan: RayPlan, ranked: Ranked, found, targets: Ranked) -> ray.data.Dataset:
    """``found`` (rank, target, distance) as rows (key, shard, source_uri, duplicate_of,
    distance): ranks resolved by per-block tasks, targets by a Ray Data join on the rank."""
    rows = ray.data.from_arrow_refs(
        [
            _rows_at.remote(ref, offset, found)
            for ref, offset in zip(ranked.refs, ranked.offsets, strict=True)
        ]
    )
    names = ray.data.from_arrow_refs([_names.remote(ref) for ref in targets.refs])
    return rows.join(names, "inner", num_partitions=plan.partitions, on=("target",))


# -- the passes ---------------------------------------------------------------------------


def _group_pass(plan: RayPlan) -> None:
    """Exact and pixel groups, resolved inside a groupby (``resolve_groups``): drop rows only."""
    columns = ["key", "shard", "source_uri", "sha256", "pixel_hash", "width", "height"]
    drops = (
        _survivors(plan, columns)
        .map_batches(
            with_groups, fn_kwargs={"use_pixels": plan.config.pixels}, batch_format="pyarrow"
        )
        .groupby("group", num_partitions=plan.partitions)
        .map_groups(resolve_groups, batch_format="pyarrow")
    )
    _write_pass(plan, "groups", drops, within=True)


def _near_input(batch: pa.Table) -> pa.Table:
    """A survivor with a pHash, with its priority (``with_priority``): the sort's input."""
    batch = _with_phash(batch)
    return with_priority(
        pa.table(
            {
                "key": batch["key"].cast(pa.string()),
                "shard": batch["shard"].cast(pa.int64()),
                "source_uri": batch["source_uri"].cast(pa.string()),
                "phash": batch["phash"].cast(pa.uint64()),
                "width": batch["width"],
                "height": batch["height"],
            }
        )
    ).drop_columns(["width", "height"])


def _near_pass(plan: RayPlan) -> None:
    """Near duplicates among the survivors, over ranks and pHashes only (see the docstring)."""
    columns = ["key", "shard", "source_uri", "phash", "width", "height"]
    ranked = _rank(
        _survivors(plan, columns).map_batches(_near_input, batch_format="pyarrow"),
        PRIORITY_SORT,
    )
    if ranked.rows < 2:
        return
    unique, inverse, n_unique = _unique.remote(*[_hashes.remote(ref) for ref in ranked.refs])
    pairs = unique_pair_refs(unique, ray.get(n_unique), plan.config)
    found = _resolve_near.remote(unique, inverse, *pairs)
    drops = _lookup(plan, ranked, found, ranked).map_batches(
        found_drops, fn_kwargs={"reason": str(Reason.DUPLICATE_NEAR)}, batch_format="pyarrow"
    )
    _write_pass(plan, "near", drops, within=True)


def _previous_pass(plan: RayPlan, uri: str, name: str) -> None:
    """Samples already in the release at ``uri``: same bytes, else same pixels (groupbys on the
    hash values, then on the key), then (near) the nearest earlier pHash over compact arrays."""
    release, files = read_index(uri)
    previous = ray.data.read_parquet(
        [f.path for f in files], filesystem=release.fs, columns=INDEX_COLUMNS
    )
    use_pixels = plan.config.pixels
    current = _survivors(plan, ["key", "shard", "source_uri", "sha256", "pixel_hash"])
    both = current.map_batches(
        hash_rows, fn_kwargs={"side": 0, "pixels": use_pixels}, batch_format="pyarrow"
    ).union(
        previous.map_batches(
            hash_rows, fn_kwargs={"side": 1, "pixels": use_pixels}, batch_format="pyarrow"
        )
    )
    matches = _grouped(both, plan, "h", hash_matches, HASH_ROW_SCHEMA)
    drops = _grouped(matches, plan, "key", first_matches, MATCH_SCHEMA, uri=uri)
    _write_pass(plan, f"{name}-same", drops, within=False)
    if not plan.config.near:
        return
    current = _rank(
        _survivors(plan, ["key", "shard", "source_uri", "phash"]).map_batches(
            _with_phash, batch_format="pyarrow"
        ),
        ["key"],
    )
    old = _rank(
        previous.select_columns(["key", "phash"]).map_batches(_with_phash, batch_format="pyarrow"),
        ["key"],
    )
    if not current.rows or not old.rows:
        return
    hashes = [_hashes.remote(ref) for ref in current.refs + old.refs]
    unique, inverse, n_unique = _unique.remote(*hashes)
    pairs = unique_pair_refs(unique, ray.get(n_unique), plan.config)
    found = _resolve_previous.remote(current.rows, unique, inverse, *pairs)
    drops = _lookup(plan, current, found, old).map_batches(
        found_drops,
        fn_kwargs={"reason": str(Reason.DUPLICATE_PREVIOUS_RELEASE), "prefix": f"{uri}: "},
        batch_format="pyarrow",
    )
    _write_pass(plan, f"{name}-near", drops, within=False)


def _with_phash(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch["phash"]))


def _semantic_pass(plan: RayPlan) -> None:
    """The embedding pass over the survivors (pipeline.dedup_semantic_ray): drop rows only."""
    from pipeline.dedup_semantic_ray import semantic_drops_on_ray

    decided = [plan.folder(name) for name, _ in plan.passes]
    drops = semantic_drops_on_ray(plan.dataset, plan.config, decided, plan.partitions)
    if drops is not None:
        _write_pass(plan, "semantic", drops, within=True)


# -- apply --------------------------------------------------------------------------------


def apply_on_ray(
    plan: RayPlan, *, stop_after: str | None = None, shards: set[int] | None = None
) -> None:
    """Follow chains to the finally kept sample, size the clusters, rewrite shard by shard on
    Ray tasks. ``stop_after`` and ``shards`` reproduce a crash part-way (tests)."""
    within = [name for name, inside in plan.passes if inside]
    finals = within[-1:]  # the last pass's canonicals are kept: already final
    for name in reversed(within[:-1]):  # earlier passes follow their canonicals to the end
        later = _read_drops(plan, finals).map_batches(
            chain_rows, fn_kwargs={"later": True}, batch_format="pyarrow"
        )
        rows = _read_drops(plan, [name]).map_batches(
            chain_rows, fn_kwargs={"later": False}, batch_format="pyarrow"
        )
        drops = _grouped(rows.union(later), plan, "link", follow_chains, CHAIN_SCHEMA)
        _write_by_shard(drops, plan.folder(f"final-{name}"))
        finals.append(f"final-{name}")
    decided = [plan.folder(n) for n in finals + [n for n, inside in plan.passes if not inside]]
    clusters_dir = plan.folder("clusters")
    clusters = _clusters(plan, finals)
    if clusters is not None:
        _write_by_shard(clusters, clusters_dir)
    todo = set().union(_partitions(clusters_dir), *[_partitions(d) for d in decided])
    todo = sorted(s for s in todo if shards is None or s in shards)
    task = ray.remote(apply_planned_shard)
    ray.get(
        [task.remote(plan.dataset, s, decided, clusters_dir, stop_after=stop_after) for s in todo]
    )


def _clusters(plan: RayPlan, finals: list[str]) -> ray.data.Dataset | None:
    """(key, shard, size) of every kept canonical: ``cluster_sizes`` in a groupby on the
    canonical over the manifest rows (which give its shard), this run's drops and earlier
    runs' dedup rejections (which name it)."""
    naming = []
    if finals:
        naming.append(
            _read_drops(plan, finals, ["key", "duplicate_of"]).map_batches(
                drop_naming, batch_format="pyarrow"
            )
        )
    earlier = dedup_rejection_files(plan.dataset)
    if earlier:
        naming.append(
            ray.data.read_parquet(
                [f.path for f in earlier],
                filesystem=plan.dataset.fs,
                columns=["key", "stage", "reason", "duplicate_of"],
            ).map_batches(rejection_naming, batch_format="pyarrow")
        )
    if not naming:
        return None
    samples = _signatures(plan, ["key", "shard"]).map_batches(sample_naming, batch_format="pyarrow")
    return _grouped(samples.union(*naming), plan, "canonical", cluster_sizes, NAMING_SCHEMA)


def _partitions(folder: Location) -> set[int]:
    """Shard numbers of a folder written partitioned by shard (its ``shard=N`` folders)."""
    selector = pafs.FileSelector(folder.path, allow_not_found=True)
    found = (
        partition_shard(info.base_name)
        for info in folder.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory
    )
    return {shard for shard in found if shard is not None}


def _write_index(plan: RayPlan) -> None:
    """<dataset>/dedup_index/ from the manifests as rewritten (the kept samples only)."""
    index = clear_index(plan.dataset)
    kept = _signatures(plan, INDEX_COLUMNS).map_batches(index_rows, batch_format="pyarrow")
    kept.write_parquet(index.path, filesystem=plan.dataset.fs)
