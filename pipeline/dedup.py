"""The global dedup pass over a published dataset, on an initialised Ray.

Steps (datatrove's split): signatures are already in the manifests (streaming pass); "bucket"
groups equal sha256 / pixel hashes and finds phash pairs with banded search spread over Ray
tasks; the optional semantic pass embeds the survivors on a Ray Data actor pool and searches
k-means partitions (curation.dedup.semantic); "cluster" resolves pairs best-first
(curation.dedup.cluster); "filter" applies them shard by shard (curation.dedup.apply). Passes
run in order: earlier releases, exact/pixels, near, semantic, each on the survivors of the
ones before.

Two paths, the same decisions (the tests compare them, Ray path forced with small partitions):

* Below ``ray_above`` manifest rows (this module): the driver reads the signature columns of
  every manifest (about 150 bytes a sample) and decides there; shards are rewritten one after
  another in this process. Ray start-up costs more than such a job (0.8 s vs 23 s on 300
  samples).
* From ``ray_above`` rows (pipeline.dedup_ray): Ray Data groupbys, a sort and joins over the
  manifests; the near search and its best-first resolution run in Ray tasks over compact
  arrays (pHash and integer rank: about 32 bytes a survivor in one task); drops go to
  Parquet under ``<dataset>/_work/dedup/`` partitioned by shard, and each shard rewrite (a Ray
  task) reads its own. The driver holds counts, block offsets and shard numbers: no bytes
  per sample. The optional semantic pass too (pipeline.dedup_semantic_ray): the embedding
  cache files are its intermediate, k-means is trained on a bounded sample (up to 256 vectors
  a partition) and each partition is resolved inside a Ray Data groupby.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.dedup.apply import Drop, apply_shard, finish_commits
from curation.dedup.cluster import (
    cluster_sizes,
    previous_matches,
    priority_order,
    resolve_chains,
    resolve_near,
)
from curation.dedup.config import INDEX_DIR, DedupConfig
from curation.dedup.groups import candidate_rows, resolve_locally
from curation.dedup.near import banded_pairs, exact_pairs, split_tables
from curation.manifest import rejections_dataset, samples_dataset
from curation.writer import table_to_parquet_bytes
from runtime.storage import Location, list_files, locate, write_bytes_atomic
from schemas import Reason, Stage

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
INDEX_COLUMNS = ["key", "sha256", "pixel_hash", "phash", "width", "height"]


def run_dedup(dataset_uri: str, config: DedupConfig) -> dict[str, int]:
    """Deduplicate ``dataset_uri`` in place; returns counts of newly dropped samples by reason."""
    dataset = locate(dataset_uri)
    check_dedup_ready(config)
    finish_commits(dataset)  # a crashed run's decided rewrites: plan from their outcome
    rows = samples_dataset(dataset_uri).count_rows()  # Parquet footers only
    if rows and rows >= config.ray_above:
        from pipeline.dedup_ray import run_on_ray

        return run_on_ray(dataset, config, rows)
    table, drops = plan_dedup(dataset_uri, config)
    apply_plan(dataset, table, drops, local=True)
    if config.write_index:
        _write_index(dataset, table, set(drops))
    return dict(Counter(d.reason for d in drops.values()))


def check_dedup_ready(config: DedupConfig) -> None:
    """A missing or invalid encoder, or an earlier release without an index, fails here,
    before any pass (or, in the job, before Ray starts and anything is crawled)."""
    for uri in config.against:
        read_index(uri)
    if config.semantic:
        from curation.dedup.semantic import describe_encoder

        describe_encoder(config.semantic_model)


def plan_dedup(dataset_uri: str, config: DedupConfig) -> tuple[pa.Table, dict[str, Drop]]:
    """The driver path: the signatures read and every drop decided (before chains are
    resolved); writes nothing."""
    dataset = locate(dataset_uri)
    table = samples_dataset(dataset_uri).to_table(columns=SIGNATURE_COLUMNS)
    drops: dict[str, Drop] = {}
    for uri in config.against:
        drops.update(_previous_release_drops(_without(table, set(drops)), uri, config))
    drops.update(_group_drops(table, config, set(drops)))
    if config.near:
        drops.update(_near_drops(table, config, set(drops)))
    if config.semantic:
        from pipeline.dedup_semantic import semantic_drops

        drops.update(semantic_drops(dataset, table, config, set(drops)))
    return table, drops


def read_index(uri: str) -> tuple[Location, list[Location]]:
    """An earlier release's location and its dedup_index files (refused when it has none)."""
    files = list_files(locate(uri).join(INDEX_DIR), ".parquet")
    if not files:
        raise FileNotFoundError(f"{uri} has no {INDEX_DIR}/: run dedup on it with write_index")
    return locate(uri), files


def _previous_release_drops(table: pa.Table, uri: str, config: DedupConfig) -> dict[str, Drop]:
    """Samples of ``table`` already in the release at ``uri``: same bytes, else same pixels,
    else (near) the nearest earlier pHash; an earlier key seen twice: the smallest."""
    _, files = read_index(uri)
    previous = pa.concat_tables(pq.read_table(f.path, filesystem=f.fs) for f in files)
    previous = previous.select(INDEX_COLUMNS).sort_by("key").to_pydict()
    by_sha: dict[str, str] = {}
    by_pixels: dict[str, str] = {}
    for key, sha, pixels in zip(
        previous["key"], previous["sha256"], previous["pixel_hash"], strict=True
    ):
        by_sha.setdefault(sha, key)
        if pixels is not None:
            by_pixels.setdefault(pixels, key)
    rows = table.to_pydict()
    found: dict[str, tuple[str, str]] = {}
    for i, key in enumerate(rows["key"]):
        match = by_sha.get(rows["sha256"][i]) or (
            config.pixels and by_pixels.get(rows["pixel_hash"][i])
        )
        if match:
            found[key] = (match, "same bytes or pixels")
    if config.near:
        found.update(_near_previous(rows, previous, config, set(found)))
    position = {key: i for i, key in enumerate(rows["key"])}
    return {
        key: Drop(
            key=key,
            source_uri=rows["source_uri"][position[key]],
            reason=str(Reason.DUPLICATE_PREVIOUS_RELEASE),
            duplicate_of=match,
            detail=f"{uri}: {how}",
        )
        for key, (match, how) in found.items()
    }


def _near_previous(
    rows: dict, previous: dict, config: DedupConfig, done: set[str]
) -> dict[str, tuple[str, str]]:
    """Current samples within the radius of an earlier release's hash: nearest, then smallest
    key (``previous`` is sorted by key: its position is the old rank)."""
    current = sorted(
        (k, h)
        for k, h in zip(rows["key"], rows["phash"], strict=True)
        if k not in done and h is not None
    )
    old = [(k, h) for k, h in zip(previous["key"], previous["phash"], strict=True) if h is not None]
    if not current or not old:
        return {}
    hashes = np.array([h for _, h in current] + [h for _, h in old], dtype=np.uint64)
    unique, inverse = np.unique(hashes, return_inverse=True)
    ranks, olds, distances = previous_matches(
        len(current), unique, inverse, _unique_pairs(unique, config)
    )
    return {
        current[r][0]: (old[o][0], f"phash within {d} bits")
        for r, o, d in zip(ranks.tolist(), olds.tolist(), distances.tolist(), strict=True)
    }


def _group_drops(table: pa.Table, config: DedupConfig, excluded: set[str]) -> dict[str, Drop]:
    """Exact and pixel duplicates: samples sharing a signature, best-first per group."""
    if not (config.exact or config.pixels):
        return {}
    candidates = candidate_rows(_without(table, excluded), config.pixels)
    return {
        row["key"]: Drop(**{k: row[k] for k in Drop.__dataclass_fields__})
        for row in resolve_locally(candidates)
    }


def _without(table: pa.Table, excluded: set[str]) -> pa.Table:
    if not excluded:
        return table
    dropped = pa.array(sorted(excluded), pa.string())
    return table.filter(pa.compute.invert(pa.compute.is_in(table["key"], dropped)))


def _near_drops(table: pa.Table, config: DedupConfig, excluded: set[str]) -> dict[str, Drop]:
    """Near duplicates among the survivors: phash pairs within the radius, resolved best-first."""
    rows = _without(table, excluded)
    rows = rows.filter(pa.compute.is_valid(rows["phash"])).to_pydict()
    keys = np.array(rows["key"], dtype=object)
    order = priority_order(
        keys, np.array(rows["width"], np.int64) * np.array(rows["height"], np.int64)
    )
    unique, inverse = np.unique(
        np.array(rows["phash"], dtype=np.uint64)[order], return_inverse=True
    )
    ranks, kept, distances = resolve_near(unique, inverse, _unique_pairs(unique, config))
    drops = {}
    for rank, canonical, distance in zip(ranks, kept, distances.tolist(), strict=True):
        i, c = order[rank], order[canonical]
        drops[keys[i]] = Drop(
            key=keys[i],
            source_uri=rows["source_uri"][i],
            reason=str(Reason.DUPLICATE_NEAR),
            duplicate_of=keys[c],
            detail=f"phash within {distance} bits",
        )
    return drops


def _unique_pairs(unique: np.ndarray, config: DedupConfig) -> np.ndarray:
    """Pairs of distinct hash values within the radius (the driver path's call)."""
    import ray

    if len(unique) < config.exact_below:
        return exact_pairs(unique, config.radius)
    parts = ray.get(unique_pair_refs(ray.put(unique), len(unique), config))
    return np.unique(np.concatenate(parts), axis=0)


def unique_pair_refs(unique_ref, n_unique: int, config: DedupConfig) -> list:
    """Refs to pairs of distinct hash values within the radius, for ``n_unique`` values in the
    object store: brute force in one task below ``exact_below``, else banded tables spread
    over ``near_tasks`` tasks. Each part is sorted; parts may repeat a pair."""
    import ray

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


def apply_plan(
    dataset: Location,
    table: pa.Table,
    drops: dict[str, Drop],
    *,
    stop_after: str | None = None,
    shards: set[int] | None = None,
    local: bool = False,
) -> None:
    """Resolve chains to the finally kept sample, size clusters, and apply shard by shard:
    on Ray tasks, or one after another in this process when ``local``.

    ``stop_after`` (curation.dedup.apply.STEPS) and ``shards`` reproduce a crash part-way
    (tests).
    """
    import ray

    parent = {
        k: d.duplicate_of
        for k, d in drops.items()
        if d.reason != str(Reason.DUPLICATE_PREVIOUS_RELEASE)
    }
    final = resolve_chains(parent)
    drops = {
        k: Drop(**{**d.__dict__, "duplicate_of": final.get(k, d.duplicate_of)})
        for k, d in drops.items()
    }
    sizes = cluster_sizes(
        _earlier_dedup_rejections(dataset)
        + [(k, d.duplicate_of) for k, d in drops.items() if k in parent]
    )
    shard_of = dict(zip(table["key"].to_pylist(), table["shard"].to_pylist(), strict=True))
    by_shard: dict[int, tuple[list[Drop], dict]] = {}
    for drop in drops.values():
        by_shard.setdefault(shard_of[drop.key], ([], {}))[0].append(drop)
    for canonical, size in sizes.items():
        if canonical in shard_of and canonical not in drops:
            by_shard.setdefault(shard_of[canonical], ([], {}))[1][canonical] = (canonical, size)
    todo = sorted((s, v) for s, v in by_shard.items() if shards is None or s in shards)
    if local or not todo:
        for shard, (d, c) in todo:
            apply_shard(dataset, shard, d, c, stop_after=stop_after)
        return
    task = ray.remote(apply_shard)
    ray.get([task.remote(dataset, s, d, c, stop_after=stop_after) for s, (d, c) in todo])


def _earlier_dedup_rejections(dataset: Location) -> list[tuple[str, str]]:
    """(key, duplicate_of) of within-dataset dedup rejections already on disk (earlier runs)."""
    if not list_files(dataset.join("rejections"), ".parquet"):
        return []
    table = rejections_dataset(dataset.uri).to_table(
        columns=["key", "stage", "reason", "duplicate_of"]
    )
    rows = table.to_pydict()
    return [
        (k, d)
        for k, s, r, d in zip(
            rows["key"], rows["stage"], rows["reason"], rows["duplicate_of"], strict=True
        )
        if s == str(Stage.DEDUP) and r != str(Reason.DUPLICATE_PREVIOUS_RELEASE)
    ]


def _write_index(dataset: Location, table: pa.Table, dropped: set[str]) -> None:
    """<dataset>/dedup_index/: signatures of the kept samples, for a later release's ``against``."""
    kept = _without(table, dropped).select(INDEX_COLUMNS).sort_by("key")
    write_bytes_atomic(dataset.join(INDEX_DIR, "signatures.parquet"), table_to_parquet_bytes(kept))
