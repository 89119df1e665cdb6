"""The semantic dedup pass (SemDeDup), driver path (below ``ray_above`` rows): embed the
survivors on a Ray Data actor pool, then k-means partitions and within-partition cosine search
on the driver (FAISS). The Ray path (pipeline.dedup_semantic_ray) shares the cache and the
actor pool stage defined here, and holds no embedding on the driver but a bounded sample.

The model file is checked first (``describe_encoder``): a missing or invalid one fails before
any work. Embeddings already in the dataset's cache (curation.dedup.semantic's docstring) are
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

from curation.dedup.apply import Drop
from curation.dedup.cluster import priority_order
from curation.dedup.config import DedupConfig
from curation.dedup.semantic import (
    EncoderInfo,
    ShardEmbedder,
    describe_encoder,
    embedding_matrix,
    kmeans_partitions,
    partitions_for,
    resolve_partition,
)
from runtime.storage import Location, exists, list_files, write_bytes_atomic
from schemas import Reason
from schemas.layout import EMBEDDINGS_DIR, shard_of

log = logging.getLogger(__name__)
# an empty cache; the files hold a fixed-size list of the model's width
CACHE_SCHEMA = pa.schema(
    [("key", pa.string()), ("sha256", pa.string()), ("embedding", pa.list_(pa.float32()))]
)


def semantic_drops(
    dataset: Location, table: pa.Table, config: DedupConfig, excluded: set[str]
) -> dict[str, Drop]:
    """Semantic duplicates among the samples not in ``excluded``, resolved best-first."""
    encoder = describe_encoder(config.semantic_model)  # before any work, not inside an actor
    image_size = encoder.input_size(config.semantic_image_size)
    rows = table.to_pydict()
    survivors = [i for i, key in enumerate(rows["key"]) if key not in excluded]
    if len(survivors) < 2:
        return {}
    # the sha256 column, when the caller has it, also invalidates a cached row whose key now
    # names other bytes; without it the cache is matched by key alone
    match = ["key", "sha256"] if "sha256" in table.column_names else ["key"]
    wanted = table.select(["shard", *match]).take(survivors)
    keys, vectors = _embed(dataset, config, encoder, image_size, wanted)
    position = {key: i for i, key in enumerate(rows["key"])}
    areas = np.array([rows["width"][position[k]] * rows["height"][position[k]] for k in keys])
    order = priority_order(keys, areas)
    # k-means is trained on the vectors best first (the Ray path feeds its sample the same way)
    partition = np.empty(len(keys), dtype=np.int64)
    partition[order] = kmeans_partitions(
        vectors[order], partitions_for(len(keys), config.semantic_partition_size),
        config.semantic_seed,
    )  # fmt: skip
    # pairs never cross partitions: each is resolved alone, as on the Ray path
    by_partition = np.argsort(partition, kind="stable")
    found = []
    for members in np.split(by_partition, np.flatnonzero(np.diff(partition[by_partition])) + 1):
        dropped, kept, cosine = resolve_partition(
            keys[members], areas[members], vectors[members], config.semantic_threshold
        )
        found += zip(members[dropped], members[kept], cosine, strict=True)
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys))
    drops = {}
    for member, best, cosine in sorted(found, key=lambda f: rank[f[0]]):  # best first
        key = keys[member]
        drops[key] = Drop(
            key=key,
            source_uri=rows["source_uri"][position[key]],
            reason=str(Reason.DUPLICATE_SEMANTIC),
            duplicate_of=keys[best],
            detail=f"embedding cosine {cosine:.4f}",
        )
    return drops


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
    cached = _read_cache(folder, set(wanted["shard"].to_pylist()))
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


def cache_folder(dataset: Location, encoder: EncoderInfo, image_size: int) -> tuple[str, Location]:
    """(fingerprint, folder) of the model's embedding cache, with its model.json written."""
    fingerprint = encoder.fingerprint(image_size)
    folder = dataset.join(EMBEDDINGS_DIR, fingerprint)
    card = folder.join("model.json")
    if not exists(card):
        write_bytes_atomic(card, encoder.card(image_size))
    return fingerprint, folder


def match_cache(cached: pa.Table, wanted: pa.Table) -> pa.Table:
    """``wanted`` with ``row``: the cached row of the same (key[, sha256]), null if none."""
    # Acero joins no list columns: join on (key[, sha256]) to a row number of the cache
    match = [name for name in ("key", "sha256") if name in wanted.column_names]
    rows = cached.select(match).append_column(
        "row", pa.array(np.arange(cached.num_rows, dtype=np.int64))
    )
    return wanted.join(rows, keys=match, join_type="left outer")


def _read_cache(folder: Location, shards: set[int]) -> pa.Table:
    """Cached (key, sha256, embedding) rows of the given shards' files (empty if none)."""
    import pyarrow.dataset as pads

    files = [
        f for f in list_files(folder, ".parquet") if shard_of(f.uri.rsplit("/", 1)[1]) in shards
    ]
    if not files:
        return CACHE_SCHEMA.empty_table()
    return pads.dataset(
        [f.path for f in files], filesystem=files[0].fs, format="parquet"
    ).to_table()


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
