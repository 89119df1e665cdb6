"""The global dedup pass over a published dataset, on an initialised Ray.

Steps (datatrove's split): signatures are already in the manifests (streaming pass); "bucket"
groups equal sha256 / pixel hashes and finds phash pairs with banded search spread over Ray
tasks; the optional semantic pass embeds the survivors on a Ray Data actor pool and searches
k-means partitions (curation.dedup.semantic); "cluster" resolves pairs best-first
(curation.dedup.cluster); "filter" applies them shard by shard (curation.dedup.apply). Passes
run in order: earlier releases, exact/pixels, near, semantic, each on the survivors of the
ones before.

Every rule is written once in ``curation.dedup`` as a function over Arrow tables keyed by a
partition column; two executors call them and so decide the same (the tests compare them,
Ray path forced with small partitions):

* Below ``ray_above`` manifest rows (this module): the driver reads the signature columns of
  every manifest (about 150 bytes a sample) and calls each rule once on the whole table;
  shards are rewritten one after another in this process. Ray start-up costs more than such
  a job (0.8 s vs 23 s on 300 samples).
* From ``ray_above`` rows (pipeline.dedup_ray): the same rules inside Ray Data groupbys on
  their partition column, with a sort and joins over the manifests; the near search and its
  best-first resolution run in Ray tasks over compact arrays (pHash and integer rank: about
  32 bytes a survivor in one task); drops go to Parquet under ``<dataset>/_work/dedup/``
  partitioned by shard, and each shard rewrite (a Ray task) reads its own. The driver holds
  counts, block offsets and shard numbers: no bytes per sample. The optional semantic pass too
  (pipeline.dedup_semantic_ray): the embedding cache files are its intermediate, k-means is
  trained on a bounded sample (up to 256 vectors a partition) and each partition is resolved
  inside a Ray Data groupby.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.dedup.apply import apply_shard_rows, dedup_rejection_files, finish_commits
from curation.dedup.cluster import previous_matches, ranked_best_first, resolve_near
from curation.dedup.config import DedupConfig
from curation.dedup.drops import (
    FOUND_COLUMNS,
    as_drops,
    chain_rows,
    cluster_sizes,
    drop_naming,
    follow_chains,
    found_drops,
    rejection_naming,
    sample_naming,
    without,
)
from curation.dedup.groups import resolve_groups, with_groups
from curation.dedup.near import exact_pairs
from curation.dedup.previous import (
    INDEX_COLUMNS,
    clear_index,
    first_matches,
    hash_matches,
    hash_rows,
    index_rows,
    read_index,
)
from curation.manifest import samples_dataset
from curation.writer import table_to_parquet_bytes
from runtime.storage import Location, locate, write_bytes_atomic
from schemas import Reason
from schemas.layout import dedup_index_file

SIGNATURE_COLUMNS = [
    "key",
    "shard",
    "source_uri",
    "sha256",
    "pixel_hash",
    "phash",
    "width",
    "height",
]


@dataclass
class DriverPlan:
    """Every sample's signature row and each pass's drop rows (DROP_SCHEMA), in pass order."""

    table: pa.Table
    passes: list[tuple[str, pa.Table, bool]] = field(default_factory=list)  # (name, drops, within)

    def dropped(self) -> pa.ChunkedArray:
        return pa.chunked_array([d["key"] for _, d, _ in self.passes], pa.string())

    def survivors(self) -> pa.Table:
        """Signature rows no pass dropped so far."""
        return without(self.table, self.dropped())

    def add(self, name: str, drops: pa.Table, *, within: bool) -> None:
        if drops.num_rows:
            self.passes.append((name, as_drops(drops), within))

    def counts(self) -> dict[str, int]:
        return dict(Counter(r for _, d, _ in self.passes for r in d["reason"].to_pylist()))


def run_dedup(dataset_uri: str, config: DedupConfig) -> dict[str, int]:
    """Deduplicate ``dataset_uri`` in place; returns counts of newly dropped samples by reason."""
    dataset = locate(dataset_uri)
    check_dedup_ready(config)
    finish_commits(dataset)  # a crashed run's decided rewrites: plan from their outcome
    rows = samples_dataset(dataset_uri).count_rows()  # Parquet footers only
    if rows and rows >= config.ray_above:
        from pipeline.dedup_ray import run_on_ray  # imports Ray Data: only when it runs

        return run_on_ray(dataset, config, rows)
    plan = plan_dedup(dataset_uri, config)
    apply_plan(dataset, plan)
    if config.write_index:
        write_index(dataset, plan.survivors())
    return plan.counts()


def check_dedup_ready(config: DedupConfig) -> None:
    """A missing or invalid encoder, or an earlier release without an index, fails here,
    before any pass (or, in the job, before Ray starts and anything is crawled)."""
    for uri in config.against:
        read_index(uri)
    if config.semantic:
        from curation.dedup.encoder import describe_encoder

        describe_encoder(config.semantic_model)


def plan_dedup(dataset_uri: str, config: DedupConfig) -> DriverPlan:
    """The driver path: the signatures read and every pass's drops decided; writes nothing
    (but the semantic pass's embedding cache)."""
    dataset = locate(dataset_uri)
    plan = DriverPlan(samples_dataset(dataset_uri).to_table(columns=SIGNATURE_COLUMNS))
    for number, uri in enumerate(config.against):
        _previous_pass(plan, uri, f"against-{number}", config)
    if config.exact or config.pixels:
        plan.add(
            "groups", resolve_groups(with_groups(plan.survivors(), config.pixels)), within=True
        )
    if config.near:
        _near_pass(plan, config)
    if config.semantic:
        from pipeline.dedup_semantic import semantic_drops

        plan.add("semantic", semantic_drops(dataset, plan.survivors(), config), within=True)
    return plan


def _previous_pass(plan: DriverPlan, uri: str, name: str, config: DedupConfig) -> None:
    """Samples already in the release at ``uri`` (curation.dedup.previous)."""
    release, files = read_index(uri)
    previous = pa.concat_tables(
        pq.read_table(f.path, filesystem=release.fs, columns=INDEX_COLUMNS) for f in files
    )
    both = pa.concat_tables(
        [hash_rows(plan.survivors(), 0, config.pixels), hash_rows(previous, 1, config.pixels)]
    )
    plan.add(f"{name}-same", first_matches(hash_matches(both), uri), within=False)
    if not config.near:
        return
    current = _with_phash(plan.survivors()).sort_by("key")
    old = _with_phash(previous).sort_by("key")
    if not current.num_rows or not old.num_rows:
        return
    hashes = pa.concat_arrays(
        [t["phash"].combine_chunks().cast(pa.uint64()) for t in (current, old)]
    ).to_numpy()
    unique, inverse = np.unique(hashes, return_inverse=True)
    ranks, olds, distances = previous_matches(
        current.num_rows, unique, inverse, _unique_pairs(unique, config)
    )
    found = _found(current, ranks, old, olds, distances)
    plan.add(
        f"{name}-near",
        found_drops(found, str(Reason.DUPLICATE_PREVIOUS_RELEASE), f"{uri}: "),
        within=False,
    )


def _near_pass(plan: DriverPlan, config: DedupConfig) -> None:
    """Near duplicates among the survivors: phash pairs within the radius, best-first."""
    ranked = ranked_best_first(_with_phash(plan.survivors()))
    if ranked.num_rows < 2:
        return
    hashes = ranked["phash"].combine_chunks().cast(pa.uint64()).to_numpy()
    unique, inverse = np.unique(hashes, return_inverse=True)
    ranks, kept, distances = resolve_near(unique, inverse, _unique_pairs(unique, config))
    found = _found(ranked, ranks, ranked, kept, distances)
    plan.add("near", found_drops(found, str(Reason.DUPLICATE_NEAR)), within=True)


def _with_phash(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_valid(table["phash"]))


def _found(
    rows: pa.Table, ranks: np.ndarray, targets: pa.Table, target_ranks: np.ndarray, distances
) -> pa.Table:
    """(FOUND_COLUMNS) row ``ranks`` of ``rows``, each naming row ``target_ranks`` of
    ``targets``."""
    chosen = rows.take(pa.array(ranks, pa.int64()))
    return pa.table(
        {
            "key": chosen["key"],
            "shard": chosen["shard"],
            "source_uri": chosen["source_uri"],
            "duplicate_of": targets["key"].take(pa.array(target_ranks, pa.int64())),
            "distance": pa.array(distances, pa.int64()),
        }
    ).select(FOUND_COLUMNS)


def _unique_pairs(unique: np.ndarray, config: DedupConfig) -> np.ndarray:
    """Pairs of distinct hash values within the radius (the driver path's call)."""
    import ray

    if len(unique) < config.exact_below:
        return exact_pairs(unique, config.radius)
    from pipeline.dedup_ray import unique_pair_refs

    parts = ray.get(unique_pair_refs(ray.put(unique), len(unique), config))
    return np.unique(np.concatenate(parts), axis=0)


def apply_plan(
    dataset: Location,
    plan: DriverPlan,
    *,
    stop_after: str | None = None,
    shards: set[int] | None = None,
) -> None:
    """Follow chains to the finally kept sample, size clusters, and rewrite shard by shard in
    this process (the rules of pipeline.dedup_ray.apply_on_ray, on whole tables).

    ``stop_after`` (curation.dedup.apply.STEPS) and ``shards`` reproduce a crash part-way
    (tests).
    """
    within = [drops for _, drops, inside in plan.passes if inside]
    finals = within[-1:]  # the last pass's canonicals are kept: already final
    for drops in reversed(within[:-1]):  # earlier passes follow their canonicals to the end
        later = chain_rows(pa.concat_tables(finals), later=True)
        finals.append(follow_chains(pa.concat_tables([chain_rows(drops, later=False), later])))
    naming = [sample_naming(plan.table), *(drop_naming(d) for d in finals)]
    earlier = dedup_rejection_files(dataset)
    if earlier:
        columns = ["key", "stage", "reason", "duplicate_of"]
        rejections = [pq.read_table(f.path, filesystem=f.fs, columns=columns) for f in earlier]
        naming.append(rejection_naming(pa.concat_tables(rejections)))
    clusters = cluster_sizes(pa.concat_tables(naming))
    decided = finals + [drops for _, drops, inside in plan.passes if not inside]
    drops = pa.concat_tables(decided) if decided else None
    todo = set(clusters["shard"].to_pylist())
    todo |= set(drops["shard"].to_pylist()) if drops is not None else set()
    for shard in sorted(s for s in todo if shards is None or s in shards):
        mine = [] if drops is None else drops.filter(pc.equal(drops["shard"], shard)).to_pylist()
        sizes = clusters.filter(pc.equal(clusters["shard"], shard)).to_pylist()
        apply_shard_rows(dataset, shard, mine, sizes, stop_after=stop_after)


def write_index(dataset: Location, kept: pa.Table) -> None:
    """<dataset>/dedup_index/: signatures of the kept samples, for a later release's ``against``."""
    clear_index(dataset)
    rows = index_rows(kept).sort_by("key")
    write_bytes_atomic(dataset.join(dedup_index_file("signatures")), table_to_parquet_bytes(rows))
