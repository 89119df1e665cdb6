"""The global dedup pass over a published dataset, on an initialised Ray.

Steps (datatrove's split): signatures are already in the manifests (streaming pass); "bucket"
groups equal sha256 / pixel hashes (on the driver below ``ray_above`` rows, else a Ray Data
hash shuffle with one partition per ``rows_per_partition`` rows) and finds phash pairs with
banded search spread over Ray tasks; the optional semantic pass embeds the survivors on a Ray
Data actor pool and searches k-means partitions (curation.dedup.semantic); "cluster" resolves
pairs best-first (curation.dedup.cluster); "filter" applies them shard by shard
(curation.dedup.apply). Passes run in order: earlier releases, exact/pixels, near, semantic,
each on the survivors of the ones before. A step with nothing to do starts no Ray work.

Limit, stated plainly: apart from the hash shuffle, the banded search, the encoder and the
shard rewrites, the pass runs on the driver over all samples at once. The driver reads the
signature columns of every manifest (about 150 bytes a sample: 45 GB at 300M) and holds them
for the whole pass; the near-duplicate clustering, the earlier-release lookups, and the
semantic k-means and searches run there, on every embedding collected there ([N, D] float32:
3 GB per million samples at D = 768). Fine to some tens of millions of samples on a large
driver; beyond that the cluster steps must be split by connected component over Ray tasks
(see bench/notes/dedup.md).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.dedup.apply import Drop, apply_shard
from curation.dedup.cluster import cluster_sizes, greedy_canonical, priority_order, resolve_chains
from curation.dedup.config import INDEX_DIR, DedupConfig
from curation.dedup.groups import candidate_rows, group_ids, resolve_group, resolve_locally
from curation.dedup.near import banded_pairs, exact_pairs, tables_needed
from curation.manifest import rejections_dataset, samples_dataset
from curation.storage import Location, list_files, locate, write_bytes_atomic
from curation.writer import table_to_parquet_bytes
from schemas import Reason, Stage
from schemas.layout import MANIFESTS_DIR

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
    table, drops = plan_dedup(dataset_uri, config)
    apply_plan(dataset, table, drops, local=table.num_rows < config.ray_above)
    if config.write_index:
        _write_index(dataset, table, set(drops))
    return dict(Counter(d.reason for d in drops.values()))


def plan_dedup(dataset_uri: str, config: DedupConfig) -> tuple[pa.Table, dict[str, Drop]]:
    """The signatures read and every drop decided (before chains are resolved); writes nothing."""
    dataset = locate(dataset_uri)
    table = samples_dataset(dataset_uri).to_table(columns=SIGNATURE_COLUMNS)
    drops: dict[str, Drop] = {}
    for uri in config.against:
        drops.update(_previous_release_drops(table, uri, config))
    drops.update(_group_drops(dataset, table, config, set(drops)))
    if config.near:
        drops.update(_near_drops(table, config, set(drops)))
    if config.semantic:
        from pipeline.dedup_semantic import semantic_drops

        drops.update(semantic_drops(dataset, table, config, set(drops)))
    return table, drops


def _previous_release_drops(table: pa.Table, uri: str, config: DedupConfig) -> dict[str, Drop]:
    files = list_files(locate(uri).join(INDEX_DIR), ".parquet")
    if not files:
        raise FileNotFoundError(f"{uri} has no {INDEX_DIR}/: run dedup on it with write_index")
    previous = pa.concat_tables(pq.read_table(f.path, filesystem=f.fs) for f in files).to_pydict()
    by_sha = dict(zip(previous["sha256"], previous["key"], strict=True))
    by_pixels = dict(zip(previous["pixel_hash"], previous["key"], strict=True))
    rows = table.to_pydict()
    found: dict[str, str] = {}
    for i, key in enumerate(rows["key"]):
        match = by_sha.get(rows["sha256"][i]) or (
            config.pixels and by_pixels.get(rows["pixel_hash"][i])
        )
        if match:
            found[key] = f"{match}:same bytes or pixels"
    if config.near:
        found.update(_near_previous(rows, previous, config, set(found)))
    return {
        key: Drop(
            key=key,
            source_uri=rows["source_uri"][rows["key"].index(key)],
            reason=str(Reason.DUPLICATE_PREVIOUS_RELEASE),
            duplicate_of=value.split(":", 1)[0],
            detail=f"{uri}: {value.split(':', 1)[1]}",
        )
        for key, value in found.items()
    }


def _near_previous(
    rows: dict, previous: dict, config: DedupConfig, done: set[str]
) -> dict[str, str]:
    """Current samples within the radius of an earlier release's hash: nearest, then smallest key."""
    current = [
        (k, h)
        for k, h in zip(rows["key"], rows["phash"], strict=True)
        if k not in done and h is not None
    ]
    old = [(k, h) for k, h in zip(previous["key"], previous["phash"], strict=True) if h is not None]
    if not current or not old:
        return {}
    hashes = np.array([h for _, h in current] + [h for _, h in old], dtype=np.uint64)
    pairs = exact_pairs(hashes, config.radius, queries=np.arange(len(current)))
    best: dict[str, tuple[int, str]] = {}
    for i, j in pairs[pairs[:, 1] >= len(current)]:
        old_key, old_hash = old[j - len(current)]
        candidate = ((int(hashes[i]) ^ int(old_hash)).bit_count(), old_key)
        best[current[i][0]] = min(best.get(current[i][0], candidate), candidate)
    return {key: f"{old_key}:phash within {d} bits" for key, (d, old_key) in best.items()}


def _group_drops(
    dataset: Location, table: pa.Table, config: DedupConfig, excluded: set[str]
) -> dict[str, Drop]:
    """Exact and pixel duplicates: samples sharing a signature, best-first per group."""
    if not (config.exact or config.pixels):
        return {}
    table = _without(table, excluded)
    candidates = candidate_rows(table, config.pixels)
    if candidates.num_rows == 0:  # nothing shares a signature: no shuffle to start
        return {}
    if table.num_rows < config.ray_above:
        rows = resolve_locally(candidates)
    else:
        rows = _shuffle_groups(dataset, config, excluded, table.num_rows)
    return {row["key"]: Drop(**row) for row in rows}


def _shuffle_groups(
    dataset: Location, config: DedupConfig, excluded: set[str], num_rows: int
) -> list[dict]:
    """The groups resolved on a Ray Data hash shuffle of the manifests (the scalable path)."""
    import ray.data

    files = list_files(dataset.join(MANIFESTS_DIR), ".parquet")
    ds = ray.data.read_parquet(
        [f.path for f in files],
        filesystem=dataset.fs,
        override_num_blocks=config.read_blocks or None,
    ).select_columns(SIGNATURE_COLUMNS)
    use_pixels = config.pixels

    def add_group(batch: dict) -> dict:
        batch["group"] = group_ids(batch["sha256"], batch["pixel_hash"], use_pixels)
        keep = np.array([k not in excluded for k in batch["key"]], dtype=bool)
        return {name: column[keep] for name, column in batch.items()}

    partitions = max(1, -(-num_rows // config.rows_per_partition))
    drops = (
        ds.map_batches(add_group, batch_format="numpy")
        .groupby("group", num_partitions=partitions)
        .map_groups(resolve_group, batch_format="pandas")
    )
    return drops.take_all()


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
    hashes = np.array(rows["phash"], dtype=np.uint64)[order]
    unique, inverse = np.unique(hashes, return_inverse=True)
    pairs = _item_pairs(_unique_pairs(unique, config), inverse)
    canonical = greedy_canonical(len(order), pairs)
    drops = {}
    for rank in np.flatnonzero(canonical != np.arange(len(order))):
        i, c = order[rank], order[canonical[rank]]
        distance = (int(hashes[rank]) ^ int(hashes[canonical[rank]])).bit_count()
        drops[keys[i]] = Drop(
            key=keys[i],
            source_uri=rows["source_uri"][i],
            reason=str(Reason.DUPLICATE_NEAR),
            duplicate_of=keys[c],
            detail=f"phash within {distance} bits",
        )
    return drops


def _unique_pairs(unique: np.ndarray, config: DedupConfig) -> np.ndarray:
    """Pairs of distinct hash values within the radius; banded tables spread over Ray tasks."""
    import ray

    if len(unique) < config.exact_below:
        return exact_pairs(unique, config.radius)
    total = tables_needed(config.radius, len(unique), config.near_recall)
    search = ray.remote(banded_pairs)
    ref = ray.put(unique)
    bounds = np.linspace(0, total, config.near_tasks + 1).astype(int)
    parts = ray.get(
        [
            search.remote(ref, config.radius, recall=config.near_recall, tables=range(a, b))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            if b > a
        ]
    )
    return np.unique(np.concatenate(parts), axis=0)


def _item_pairs(unique_pairs: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Pairs of items (ranks) from pairs of distinct hashes, plus items sharing one hash."""
    members: dict[int, list[int]] = {}
    for rank, u in enumerate(inverse.ravel()):
        members.setdefault(int(u), []).append(rank)
    out = [
        (a, b) for group in members.values() for x, a in enumerate(group) for b in group[x + 1 :]
    ]
    for u, v in unique_pairs:
        out.extend((a, b) for a in members[int(u)] for b in members[int(v)])
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def apply_plan(
    dataset: Location,
    table: pa.Table,
    drops: dict[str, Drop],
    *,
    rejections_only: bool = False,
    shards: set[int] | None = None,
    local: bool = False,
) -> None:
    """Resolve chains to the finally kept sample, size clusters, and apply shard by shard:
    on Ray tasks, or one after another in this process when ``local``.

    ``rejections_only`` and ``shards`` exist to reproduce a crash part-way (tests).
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
    named = dict(_earlier_dedup_rejections(dataset))
    named.update({k: d.duplicate_of for k, d in drops.items() if k in parent})
    sizes = cluster_sizes(named.values())
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
            apply_shard(dataset, shard, d, c, rejections_only=rejections_only)
        return
    task = ray.remote(apply_shard)
    ray.get([task.remote(dataset, s, d, c, rejections_only=rejections_only) for s, (d, c) in todo])


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
