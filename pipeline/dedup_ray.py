"""The global dedup pass on Ray Data, for datasets of ``ray_above`` rows or more.

Same decisions as the driver path of ``pipeline.dedup`` (the tests compare them), but no
process holds every sample's signature row:

* Earlier releases (``against``): one Ray Data groupby over the hash values of both sides
  (``s:<sha256>``, ``p:<pixel hash>``) finds the samples already released, a second one over
  those matches keeps the byte match before the pixel match. Near: pHashes of both sides as
  compact arrays (below).
* Exact and pixel groups: a groupby on the signature group over the survivors' manifest rows;
  ``resolve_group`` runs inside ``map_groups`` and emits drop rows only.
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
  (a canonical dropped by a later pass) are followed with Ray Data joins, cluster sizes come
  from a groupby on the canonical, and both are written partitioned by shard, so each shard
  rewrite (a Ray task) reads only its own shard's rows.

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

from curation.dedup.apply import apply_planned_shard, dedup_rejections_name
from curation.dedup.cluster import previous_matches, resolve_near
from curation.dedup.config import INDEX_DIR, DedupConfig
from curation.dedup.groups import DROP_COLUMNS, DROP_SCHEMA, resolve_group, with_groups
from pipeline.dedup import INDEX_COLUMNS, read_index, unique_pair_refs
from runtime.storage import Location, delete, list_files
from schemas import Reason, Stage
from schemas.layout import MANIFESTS_DIR, REJECTIONS_DIR, WORK_DIR

WORK = f"{WORK_DIR}/dedup"  # this pass's plan: cleared at the start and the end of a run

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
HASH_ROW_SCHEMA = pa.schema(
    [
        ("h", pa.string()),
        ("kind", pa.int8()),  # 0: same bytes (sha256), 1: same pixels
        ("side", pa.int8()),  # 0: this dataset, 1: the earlier release
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
    ]
)
MATCH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
        ("kind", pa.int8()),
        ("match", pa.string()),
    ]
)
NAMING_SCHEMA = pa.schema(
    [("canonical", pa.string()), ("shard", pa.int64()), ("member", pa.string())]
)
CLUSTER_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.int64()), ("size", pa.int32())])


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
        return self.dataset.join(WORK)

    @property
    def partitions(self) -> int:
        return max(1, -(-self.rows // self.config.rows_per_partition))

    def folder(self, name: str) -> Location:
        return self.work.join(name)


def run_on_ray(dataset: Location, config: DedupConfig, rows: int) -> dict[str, int]:
    """``run_dedup`` for large datasets; returns counts of newly dropped samples by reason."""
    context = ray.data.DataContext.get_current()
    v2 = context.use_datasource_v2
    # The V2 Parquet reader starts FooterReader actors for every read (10-20 s each on 2
    # cores, see runtime.ray_env); this pass reads Parquet about 8 times: V1, as jobs do.
    context.use_datasource_v2 = False
    try:
        _clear(dataset.join(WORK))  # a crashed run's plan is recomputed, never reused
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
    _write_by_shard(drops.map_batches(_as_drops, batch_format="pyarrow"), folder)
    counts = Counter()
    if _partitions(folder):  # streamed: the driver keeps counts by reason, never the rows
        found = pads.dataset(folder.path, filesystem=folder.fs, partitioning="hive")
        for batch in found.to_batches(columns=["reason"]):
            counts.update(Counter(batch.column(0).to_pylist()))
    if counts:
        plan.passes.append((name, within))
        plan.counts.update(counts)


def _write_by_shard(ds: ray.data.Dataset, folder: Location) -> None:
    """Parquet under ``folder/shard=N/``: each shard rewrite reads its own folder only."""
    ds.write_parquet(folder.path, filesystem=folder.fs, partition_cols=["shard"])


def _as_drops(batch: pa.Table) -> pa.Table:
    return batch.select(DROP_COLUMNS).cast(DROP_SCHEMA)


def _clear(folder: Location) -> None:
    with contextlib.suppress(FileNotFoundError):
        folder.fs.delete_dir(folder.path)


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
            rows["shard"] if "shard" in rows.column_names else pa.nulls(hi - lo, pa.int64()),
            rows["source_uri"] if "source_uri" in rows.column_names else pa.nulls(hi - lo),
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
    """Exact and pixel groups, resolved inside a groupby (``resolve_group``): drop rows only."""
    columns = ["key", "shard", "source_uri", "sha256", "pixel_hash", "width", "height"]
    drops = (
        _survivors(plan, columns)
        .map_batches(
            with_groups, fn_kwargs={"use_pixels": plan.config.pixels}, batch_format="pyarrow"
        )
        .groupby("group", num_partitions=plan.partitions)
        .map_groups(resolve_group, batch_format="pandas")
    )
    _write_pass(plan, "groups", drops, within=True)


def _near_input(batch: pa.Table) -> pa.Table:
    batch = batch.filter(pc.is_valid(batch["phash"]))
    area = pc.multiply(batch["width"].cast(pa.int64()), batch["height"].cast(pa.int64()))
    return pa.table(
        {
            "key": batch["key"].cast(pa.string()),
            "shard": batch["shard"].cast(pa.int64()),
            "source_uri": batch["source_uri"].cast(pa.string()),
            "phash": batch["phash"].cast(pa.uint64()),
            "neg_area": pc.negate(area),  # sort ascending = area descending
        }
    )


def _near_pass(plan: RayPlan) -> None:
    """Near duplicates among the survivors, over ranks and pHashes only (see the docstring)."""
    columns = ["key", "shard", "source_uri", "phash", "width", "height"]
    ranked = _rank(
        _survivors(plan, columns).map_batches(_near_input, batch_format="pyarrow"),
        ["neg_area", "key"],
    )
    if ranked.rows < 2:
        return
    unique, inverse, n_unique = _unique.remote(*[_hashes.remote(ref) for ref in ranked.refs])
    pairs = unique_pair_refs(unique, ray.get(n_unique), plan.config)
    found = _resolve_near.remote(unique, inverse, *pairs)
    drops = _lookup(plan, ranked, found, ranked).map_batches(
        _with_detail,
        fn_kwargs={"reason": str(Reason.DUPLICATE_NEAR), "prefix": ""},
        batch_format="pyarrow",
    )
    _write_pass(plan, "near", drops, within=True)


def _with_detail(batch: pa.Table, reason: str, prefix: str) -> pa.Table:
    distance = batch["distance"].cast(pa.string())
    detail = pc.binary_join_element_wise(f"{prefix}phash within ", distance, " bits", "")
    return batch.append_column(
        "reason", pa.array([reason] * batch.num_rows, pa.string())
    ).append_column("detail", detail)


def _previous_pass(plan: RayPlan, uri: str, name: str) -> None:
    """Samples already in the release at ``uri``: same bytes, else same pixels (groupbys on the
    hash values), then (near) the nearest earlier pHash over compact arrays."""
    release, files = read_index(uri)
    previous = ray.data.read_parquet(
        [f.path for f in files], filesystem=release.fs, columns=INDEX_COLUMNS
    )
    use_pixels = plan.config.pixels
    current = _survivors(plan, ["key", "shard", "source_uri", "sha256", "pixel_hash"])
    both = current.map_batches(
        _hash_rows, fn_kwargs={"side": 0, "pixels": use_pixels}, batch_format="pyarrow"
    ).union(
        previous.map_batches(
            _hash_rows, fn_kwargs={"side": 1, "pixels": use_pixels}, batch_format="pyarrow"
        )
    )
    drops = (
        both.groupby("h", num_partitions=plan.partitions)
        .map_groups(_match_group, batch_format="pyarrow")
        .groupby("key", num_partitions=plan.partitions)
        .map_groups(_first_match, fn_kwargs={"uri": uri}, batch_format="pyarrow")
    )
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
        _with_detail,
        fn_kwargs={"reason": str(Reason.DUPLICATE_PREVIOUS_RELEASE), "prefix": f"{uri}: "},
        batch_format="pyarrow",
    )
    _write_pass(plan, f"{name}-near", drops, within=False)


def _with_phash(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch["phash"]))


def _hash_rows(batch: pa.Table, side: int, pixels: bool) -> pa.Table:
    """One row per (sample, hash value): ``s:<sha256>``, and ``p:<pixel hash>`` where known."""
    n = batch.num_rows

    def rows(h: pa.Array, kind: int) -> pa.Table:
        return pa.table(
            [
                h,
                pa.array(np.full(n, kind, np.int8)),
                pa.array(np.full(n, side, np.int8)),
                batch["key"].cast(pa.string()),
                batch["shard"].cast(pa.int64()) if side == 0 else pa.nulls(n, pa.int64()),
                batch["source_uri"].cast(pa.string()) if side == 0 else pa.nulls(n, pa.string()),
            ],
            schema=HASH_ROW_SCHEMA,
        )

    out = [rows(pc.binary_join_element_wise("s:", batch["sha256"].cast(pa.string()), ""), 0)]
    if pixels:
        by_pixels = rows(
            pc.binary_join_element_wise("p:", batch["pixel_hash"].cast(pa.string()), ""), 1
        )
        out.append(by_pixels.filter(pc.is_valid(by_pixels["h"])))
    return pa.concat_tables(out)


def _match_group(group: pa.Table) -> pa.Table:
    """One hash value: this dataset's samples holding it, each with the smallest earlier key."""
    side = group["side"].to_numpy()
    if not (side == 0).any() or not (side == 1).any():
        return MATCH_SCHEMA.empty_table()
    match = min(group.filter(pc.equal(group["side"], 1))["key"].to_pylist())
    current = group.filter(pc.equal(group["side"], 0))
    return pa.table(
        [
            current["key"],
            current["shard"],
            current["source_uri"],
            current["kind"],
            pa.array([match] * current.num_rows, pa.string()),
        ],
        schema=MATCH_SCHEMA,
    )


def _first_match(group: pa.Table, uri: str) -> pa.Table:
    """One sample's matches: same bytes before same pixels (the driver path's order)."""
    best = group.sort_by([("kind", "ascending")]).slice(0, 1)
    return pa.table(
        {
            "key": best["key"],
            "shard": best["shard"],
            "source_uri": best["source_uri"],
            "reason": [str(Reason.DUPLICATE_PREVIOUS_RELEASE)],
            "duplicate_of": best["match"],
            "detail": [f"{uri}: same bytes or pixels"],
        }
    )


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
        later = _read_drops(plan, finals, ["key", "duplicate_of"]).rename_columns(
            {"key": "named", "duplicate_of": "final"}
        )
        drops = _read_drops(plan, [name]).join(
            later,
            "left_outer",
            num_partitions=plan.partitions,
            on=("duplicate_of",),
            right_on=("named",),
        )
        _write_by_shard(
            drops.map_batches(_follow, batch_format="pyarrow"), plan.folder(f"final-{name}")
        )
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


def _follow(batch: pa.Table) -> pa.Table:
    final = pc.coalesce(batch["final"], batch["duplicate_of"])
    batch = batch.set_column(batch.schema.get_field_index("duplicate_of"), "duplicate_of", final)
    return _as_drops(batch)


def _clusters(plan: RayPlan, finals: list[str]) -> ray.data.Dataset | None:
    """(key, shard, size) of every kept canonical: a groupby on the canonical over the
    manifest rows (which give its shard), this run's drops and earlier runs' dedup rejections
    (which name it); a member named by both counts once."""
    naming = []
    if finals:
        naming.append(
            _read_drops(plan, finals, ["key", "duplicate_of"]).map_batches(
                _as_naming, batch_format="pyarrow"
            )
        )
    earlier = [
        f
        for f in list_files(plan.dataset.join(REJECTIONS_DIR), ".parquet")
        if f.path.rsplit("/", 1)[-1].startswith(dedup_rejections_name(0)[:6])
    ]
    if earlier:
        naming.append(
            ray.data.read_parquet(
                [f.path for f in earlier],
                filesystem=plan.dataset.fs,
                columns=["key", "stage", "reason", "duplicate_of"],
            ).map_batches(_earlier_naming, batch_format="pyarrow")
        )
    if not naming:
        return None
    samples = _signatures(plan, ["key", "shard"]).map_batches(_as_sample, batch_format="pyarrow")
    return (
        samples.union(*naming)
        .groupby("canonical", num_partitions=plan.partitions)
        .map_groups(_cluster_group, batch_format="pyarrow")
    )


def _as_sample(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table(
        [batch["key"].cast(pa.string()), batch["shard"].cast(pa.int64()), pa.nulls(n, pa.string())],
        schema=NAMING_SCHEMA,
    )


def _as_naming(batch: pa.Table) -> pa.Table:
    return pa.table(
        [
            batch["duplicate_of"].cast(pa.string()),
            pa.nulls(batch.num_rows, pa.int64()),
            batch["key"].cast(pa.string()),
        ],
        schema=NAMING_SCHEMA,
    )


def _earlier_naming(batch: pa.Table) -> pa.Table:
    """Within-dataset dedup rejections already on disk (an earlier release is no cluster)."""
    mine = pc.and_(
        pc.equal(batch["stage"], str(Stage.DEDUP)),
        pc.not_equal(batch["reason"], str(Reason.DUPLICATE_PREVIOUS_RELEASE)),
    )
    return _as_naming(batch.filter(mine))


def _cluster_group(group: pa.Table) -> pa.Table:
    """One canonical: its size (itself plus distinct members) where it is in the dataset."""
    shard = group["shard"].drop_null()
    members = pc.unique(group["member"].drop_null())
    if len(shard) == 0 or len(members) == 0:
        return CLUSTER_SCHEMA.empty_table()
    return pa.table(
        [group["canonical"][:1], shard[:1], pa.array([1 + len(members)], pa.int32())],
        schema=CLUSTER_SCHEMA,
    )


def _partitions(folder: Location) -> set[int]:
    """Shard numbers of a folder written partitioned by shard (its ``shard=N`` folders)."""
    selector = pafs.FileSelector(folder.path, allow_not_found=True)
    return {
        int(info.base_name.split("=", 1)[1])
        for info in folder.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.base_name.startswith("shard=")
    }


def _write_index(plan: RayPlan) -> None:
    """<dataset>/dedup_index/ from the manifests as rewritten (the kept samples only)."""
    index = plan.dataset.join(INDEX_DIR)
    for file in list_files(index, ".parquet"):
        delete(file)
    _signatures(plan, INDEX_COLUMNS).write_parquet(index.path, filesystem=plan.dataset.fs)
