"""The semantic dedup pass (SemDeDup) on Ray: embed the survivors on a Ray Data actor pool,
then k-means partitions and within-partition cosine search on the driver (FAISS).

One input row per shard (its surviving keys), so the work unit and its embedding chunks are
fixed by the data, not by the worker count. The embeddings are collected on the driver:
[N, D] float32, 3 GB per million samples at D = 768; see pipeline.dedup's docstring.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.dedup.apply import Drop
from curation.dedup.cluster import greedy_canonical, priority_order
from curation.dedup.config import DedupConfig
from curation.dedup.semantic import (
    ShardEmbedder,
    kmeans_partitions,
    partitions_for,
    semantic_pairs,
)
from curation.storage import Location
from schemas import Reason


def semantic_drops(
    dataset: Location, table: pa.Table, config: DedupConfig, excluded: set[str]
) -> dict[str, Drop]:
    """Semantic duplicates among the samples not in ``excluded``, resolved best-first."""
    from curation.weights import resolve_file

    resolve_file(config.semantic_model)  # a missing model fails here, not inside an actor
    rows = table.to_pydict()
    survivors = [i for i, key in enumerate(rows["key"]) if key not in excluded]
    if len(survivors) < 2:
        return {}
    keys, vectors = _embed(dataset, config, [(rows["key"][i], rows["shard"][i]) for i in survivors])
    position = {key: i for i, key in enumerate(rows["key"])}
    areas = np.array([rows["width"][position[k]] * rows["height"][position[k]] for k in keys])
    order = priority_order(keys, areas)
    x = vectors[order]  # [N, D], best first: rank = row
    parts = kmeans_partitions(
        x, partitions_for(len(x), config.semantic_partition_size), config.semantic_seed
    )
    canonical = greedy_canonical(len(x), semantic_pairs(x, config.semantic_threshold, parts))
    drops = {}
    for rank in np.flatnonzero(canonical != np.arange(len(x))):
        key, best = keys[order[rank]], keys[order[canonical[rank]]]
        drops[key] = Drop(
            key=key,
            source_uri=rows["source_uri"][position[key]],
            reason=str(Reason.DUPLICATE_SEMANTIC),
            duplicate_of=best,
            detail=f"embedding cosine {float(x[rank] @ x[canonical[rank]]):.4f}",
        )
    return drops


def _embed(
    dataset: Location, config: DedupConfig, wanted: list[tuple[str, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """(keys [N] sorted, embeddings [N, D]) of the wanted (key, shard) samples."""
    import ray.data

    by_shard: dict[int, list[str]] = {}
    for key, shard in wanted:
        by_shard.setdefault(int(shard), []).append(key)
    items = [{"shard": s, "keys": sorted(k)} for s, k in sorted(by_shard.items())]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardEmbedder,
        fn_constructor_kwargs=dict(
            dataset_uri=dataset.uri,
            model=config.semantic_model,
            image_size=config.semantic_image_size,
            chunk=config.semantic_chunk,
            threads=config.semantic_threads,
            device="cuda" if config.semantic_gpus > 0 else "cpu",
        ),
        batch_size=1,
        batch_format="numpy",
        concurrency=config.semantic_actors,
        num_cpus=config.semantic_threads,
        num_gpus=config.semantic_gpus,
    )
    keys, vectors = [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        keys.extend(batch["key"].tolist())
        vectors.append(np.asarray(batch["embedding"], dtype=np.float32))
    order = np.argsort(np.array(keys, dtype=str), kind="stable")
    return np.array(keys, dtype=object)[order], np.concatenate(vectors)[order]
