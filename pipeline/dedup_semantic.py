"""The semantic dedup pass (SemDeDup), driver path (below ``ray_above`` rows): embed the
survivors on a Ray Data actor pool, then k-means partitions and within-partition cosine search
on the driver (FAISS). The Ray path (pipeline.dedup_semantic_ray) shares the cache and the
actor pool stage defined here (``embed_shards``), and holds no embedding on the driver but a bounded sample.

The model file is checked first (``describe_encoder``): a missing or invalid one fails before
any work. Embeddings already in the dataset's cache (curation.dedup.embed) are
read on the driver; only shards with uncached survivors go to the actor pool, one input row
per shard (its uncached keys), so the work unit and its embedding chunks are fixed by the data,
not by the worker count. A fully cached rerun starts no actor and loads no model there.
On this path the embeddings are collected on the driver: [N, D] float32, 3 GB per million
samples at D = 768, which is why datasets from ``ray_above`` rows take the Ray path.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.cluster import priority_order
from curation.dedup.config import DedupConfig
from curation.dedup.drops import DROP_SCHEMA
from curation.dedup.embed import (
    ShardEmbedder,
    cache_folder,
    embedding_matrix,
    match_cache,
    read_cache,
)
from curation.dedup.encoder import EncoderInfo, describe_encoder
from curation.dedup.semantic import kmeans_partitions, partitions_for, resolve_partitions
from runtime.storage import Location

log = logging.getLogger(__name__)


def semantic_drops(dataset: Location, survivors: pa.Table, config: DedupConfig) -> pa.Table:
    """Drop rows (DROP_SCHEMA) of the semantic duplicates among ``survivors`` (signature rows:
    key, shard, source_uri, width, height[, sha256]), resolved best-first."""
    encoder = describe_encoder(config.semantic_model)  # before any work, not inside an actor
    image_size = encoder.input_size(config.semantic_image_size)
    if survivors.num_rows < 2:
        return DROP_SCHEMA.empty_table()
    # the sha256 column, when the caller has it, also invalidates a cached row whose key now
    # names other bytes; without it the cache is matched by key alone
    match = ["key", "sha256"] if "sha256" in survivors.column_names else ["key"]
    keys, vectors = _embed(
        dataset, config, encoder, image_size, survivors.select(["shard", *match])
    )
    rows = survivors.sort_by("key")  # the order of ``keys``
    areas = pc.multiply(rows["width"].cast(pa.int64()), rows["height"].cast(pa.int64()))
    order = priority_order(keys, areas.to_numpy())
    # k-means is trained on the vectors best first (the Ray path feeds its sample the same way)
    partition = np.empty(len(keys), dtype=np.int64)
    partition[order] = kmeans_partitions(
        vectors[order], partitions_for(len(keys), config.semantic_partition_size),
        config.semantic_seed,
    )  # fmt: skip
    # pairs never cross partitions: each is resolved alone, as on the Ray path
    return resolve_partitions(_partitioned(rows, vectors, partition), config.semantic_threshold)


def _partitioned(rows: pa.Table, vectors: np.ndarray, partition) -> pa.Table:
    """resolve_partitions' input: the rows with their area, partition and embedding."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.table(
        {
            "key": rows["key"],
            "shard": rows["shard"].cast(pa.int64()),
            "source_uri": rows["source_uri"],
            "area": pc.multiply(rows["width"].cast(pa.int64()), rows["height"].cast(pa.int64())),
            "partition": pa.array(partition, pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


def _embed(
    dataset: Location,
    config: DedupConfig,
    encoder: EncoderInfo,
    image_size: int,
    wanted: pa.Table,
) -> tuple[np.ndarray, np.ndarray]:
    """(keys [N] sorted, embeddings [N, D]) of the wanted (key, shard[, sha256]) rows: from the
    cache where it has them, the rest embedded on Ray (and cached)."""
    fingerprint, folder = cache_folder(dataset, encoder, image_size)
    cached = read_cache(dataset, fingerprint, set(wanted["shard"].to_pylist()))
    joined = match_cache(cached, wanted)
    hit = joined.filter(pc.is_valid(joined["row"]))
    miss = joined.filter(pc.is_null(joined["row"]))
    keys = hit["key"].to_pylist()
    vectors = [embedding_matrix(cached["embedding"].take(hit["row"]))] if hit.num_rows else []
    if miss.num_rows:
        new_keys, new_vectors = _embed_on_ray(dataset, config, fingerprint, image_size, miss)
        keys.extend(new_keys)
        vectors.append(new_vectors)
    log.info(
        "semantic embeddings (%s): %d from the cache, %d embedded",
        folder.uri, hit.num_rows, miss.num_rows,
    )  # fmt: skip
    order = np.argsort(np.array(keys, dtype=str), kind="stable")
    return np.array(keys, dtype=object)[order], np.concatenate(vectors)[order]


def _embed_on_ray(
    dataset: Location, config: DedupConfig, fingerprint: str, image_size: int, miss: pa.Table
) -> tuple[list[str], np.ndarray]:
    import ray.data

    by_shard: dict[int, list[tuple[str, str]]] = {}
    hashes = miss["sha256"].to_pylist() if "sha256" in miss.column_names else [""] * len(miss)
    for key, shard, sha256 in zip(
        miss["key"].to_pylist(), miss["shard"].to_pylist(), hashes, strict=True
    ):
        by_shard.setdefault(int(shard), []).append((key, sha256))
    items = [
        {"shard": s, "keys": [k for k, _ in sorted(p)], "sha256": [h for _, h in sorted(p)]}
        for s, p in sorted(by_shard.items())
    ]
    ds = embed_shards(
        ray.data.from_items(items, override_num_blocks=len(items)),
        dataset, config, fingerprint, image_size,
    )  # fmt: skip
    keys, vectors = [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        keys.extend(batch["key"].tolist())
        vectors.append(np.asarray(batch["embedding"], dtype=np.float32))
    return keys, np.concatenate(vectors)


def embed_shards(items, dataset: Location, config: DedupConfig, fingerprint: str, image_size: int):
    """``items`` (a Ray Data dataset of {shard, keys, sha256} rows, one block per shard) mapped
    by ``ShardEmbedder`` on the actor pool, which caches each shard as it finishes."""
    return items.map_batches(
        ShardEmbedder,
        fn_constructor_kwargs=dict(
            dataset_uri=dataset.uri,
            model=config.semantic_model,
            image_size=image_size,
            chunk=config.semantic_chunk,
            threads=config.semantic_threads,
            device="cuda" if config.semantic_gpus > 0 else "cpu",
            cache=fingerprint,
        ),
        batch_size=1,
        batch_format="numpy",
        concurrency=config.semantic_actors,
        num_cpus=config.semantic_threads,
        num_gpus=config.semantic_gpus,
    )
