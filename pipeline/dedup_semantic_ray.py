"""The semantic dedup pass on the Ray path (pipeline.dedup_ray, from ``ray_above`` rows on):
no process holds every embedding. The driver path (pipeline.dedup_semantic) collects them.

1. Embed: one Ray task per shard reads the shard's manifest rows, drops the earlier passes'
   decisions (their ``shard=N/`` folders) and looks the survivors up in the embedding cache;
   the driver gets counts. Shards with uncached survivors go to the same ``ShardEmbedder``
   actor pool as the driver path, which publishes their cache files. After this step every
   survivor has a cached row: the cache files are the pass's intermediate.
2. Centroids: k-means on the driver (``kmeans_centroids``: the driver path's settings and
   seed) over at most ``partitions * 256`` cached embeddings, those with the smallest hash of
   their key (faiss.Kmeans samples down to 256 per centroid itself, so this loses nothing it
   would use); the sample depends on the keys only, never on workers or blocks. It is fed in
   priority order, like the driver path's input: when the sample holds every survivor (up to
   256 per partition, as in the tests) the centroids are the driver path's.
3. Assign and resolve: a Ray Data map over the shards gives each survivor its nearest
   centroid (``nearest_centroid``); a groupby on the partition resolves each one best-first
   (``resolve_partitions``, the rule the driver path calls on all partitions at once) and
   emits drop rows only.

Memory: the driver holds per-shard counts, the sample (up to 1.25 x partitions x 256 x D
float32 while it is cut down: 0.25 GB per 1,000 partitions at D = 768) and the centroids; a
partition group holds its members' rows (about ``semantic_partition_size`` x D float32).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from curation.dedup.cluster import priority_order
from curation.dedup.config import DedupConfig
from curation.dedup.embed import cache_folder, embedding_matrix, match_cache, read_shard_cache
from curation.dedup.encoder import describe_encoder
from curation.dedup.semantic import (
    KMEANS_SAMPLE_PER_CENTROID,
    key_hashes,
    kmeans_centroids,
    nearest_centroid,
    partitions_for,
    resolve_partitions,
    sample_limit,
)
from pipeline.dedup_semantic import embed_shards
from runtime.storage import Location, list_files
from schemas.layout import MANIFESTS_DIR, manifest_file, plan_partition, shard_of

log = logging.getLogger(__name__)
COLUMNS = ["key", "shard", "source_uri", "sha256", "width", "height"]
SURVIVOR_SCHEMA = pa.schema(
    [("key", pa.string()), ("shard", pa.int64()), ("source_uri", pa.string()),
     ("sha256", pa.string()), ("width", pa.int64()), ("height", pa.int64())]
)  # fmt: skip


def semantic_drops_on_ray(
    dataset: Location, config: DedupConfig, decided: list[Location], num_partitions: int
) -> ray.data.Dataset | None:
    """Drop rows (DROP_SCHEMA) of the semantic duplicates among the samples that no folder of
    ``decided`` (earlier passes' drops, partitioned by shard) names; None if < 2 survivors."""
    encoder = describe_encoder(config.semantic_model)  # before any work, not inside an actor
    image_size = encoder.input_size(config.semantic_image_size)
    fingerprint, cache = cache_folder(dataset, encoder, image_size)
    manifests = list_files(dataset.join(MANIFESTS_DIR), ".parquet")
    shards = [shard_of(f.uri.rsplit("/", 1)[1]) for f in manifests]
    where = dict(dataset=dataset, cache=cache, fingerprint=fingerprint, decided=decided)
    n = _embed_missing(where, shards, config, fingerprint, image_size)
    if n < 2:
        return None
    k = partitions_for(n, config.semantic_partition_size)
    centroids = ray.put(_centroids(where, shards, n, k, config.semantic_seed))
    dim = pq.read_schema(list_files(cache, ".parquet")[0].path, filesystem=cache.fs)
    assign = dict(where=where, centroids=[centroids], dim=dim.field("embedding").type.list_size)
    return (
        ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        .map_batches(_assigned, fn_kwargs=assign, batch_format="pyarrow")
        .groupby("partition", num_partitions=num_partitions)
        .map_groups(resolve_partitions, fn_kwargs={"threshold": config.semantic_threshold},
                    batch_format="pyarrow")
    )  # fmt: skip


def _embed_missing(
    where: dict, shards: list[int], config: DedupConfig, fingerprint: str, image_size: int
) -> int:
    """Embed (and cache) every survivor without a cached row; returns the survivors' count."""
    found = [_to_embed.remote(where, s) for s in shards]
    counts = ray.get([count for count, _ in found])  # (survivors, cached) per shard
    todo = [items for (_, items), (n, cached) in zip(found, counts, strict=True) if n > cached]
    survivors, cached, embedded = sum(n for n, _ in counts), sum(c for _, c in counts), 0
    if todo:  # the pool caches each shard; only a row count per shard comes back
        pool = embed_shards(
            ray.data.from_arrow_refs(todo), where["dataset"], config, fingerprint, image_size
        )
        rows = pool.map_batches(_row_count, batch_format="pyarrow").iter_rows()
        embedded = sum(int(row["rows"]) for row in rows)
    log.info(
        "semantic embeddings (%s): %d from the cache, %d embedded",
        where["cache"].uri, cached, embedded,
    )  # fmt: skip
    return survivors


def _centroids(where: dict, shards: list[int], n: int, k: int, seed: int) -> np.ndarray | None:
    """[k, D] k-means centroids over the sample (step 2 of the docstring); None for k = 1."""
    if k <= 1:  # one partition: nothing to train (kmeans_partitions' rule)
        return None
    size = k * KMEANS_SAMPLE_PER_CENTROID
    limit = sample_limit(n, size)
    parts = ray.get([_sample.remote(where, s, limit) for s in shards])
    sample = pa.concat_tables([part for part in parts if part is not None])
    sample = sample.sort_by([("hash", "ascending"), ("key", "ascending")]).slice(0, size)
    keys = np.array(sample["key"].to_pylist(), dtype=object)
    order = priority_order(keys, sample["area"].to_numpy())
    x = embedding_matrix(sample["embedding"])[order]  # [S, D], best first
    log.info("semantic k-means: %d partitions from %d of %d embeddings", k, len(x), n)
    return kmeans_centroids(x, k, seed)


# -- per shard, in Ray tasks ---------------------------------------------------------------


def shard_survivors(dataset: Location, shard: int, decided: list[Location]) -> pa.Table:
    """The shard's manifest rows (SURVIVOR_SCHEMA) that no folder of ``decided`` names."""
    manifest = dataset.join(manifest_file(shard))
    rows = pq.read_table(manifest.path, filesystem=manifest.fs, columns=COLUMNS)
    rows = rows.select(COLUMNS).cast(SURVIVOR_SCHEMA)
    gone = [
        pq.read_table(f.path, filesystem=f.fs, columns=["key"])["key"]
        for folder in decided
        for f in list_files(folder.join(plan_partition(shard)), ".parquet")
    ]
    if not gone:
        return rows
    dropped = pa.chunked_array([c for column in gone for c in column.chunks], pa.string())
    return rows.filter(pc.invert(pc.is_in(rows["key"], dropped)))


def _with_embeddings(where: dict, shard: int) -> tuple[pa.Table, pa.Table]:
    """(the shard's survivors with ``row``: their cached row or null, the cache file)."""
    survivors = shard_survivors(where["dataset"], shard, where["decided"])
    cached = read_shard_cache(where["dataset"], where["fingerprint"], shard)
    return match_cache(cached, survivors).sort_by("key"), cached


@ray.remote(num_returns=2)
def _to_embed(where: dict, shard: int) -> tuple[tuple[int, int], pa.Table]:
    """((survivors, cached), one ShardEmbedder row {shard, keys, sha256} of the uncached)."""
    rows, _ = _with_embeddings(where, shard)
    miss = rows.filter(pc.is_null(rows["row"]))
    items = pa.table(
        {
            "shard": pa.array([shard], pa.int64()),
            "keys": pa.array([miss["key"].to_pylist()], pa.list_(pa.string())),
            "sha256": pa.array([miss["sha256"].to_pylist()], pa.list_(pa.string())),
        }
    )
    return (rows.num_rows, rows.num_rows - miss.num_rows), items


def _embedded(where: dict, shard: int) -> tuple[pa.Table, pa.ChunkedArray | None]:
    """(survivors, their embeddings or None if none) of the shard: each survivor must have a
    cached row (the embedding step made them)."""
    rows, cached = _with_embeddings(where, shard)
    if not rows.num_rows:
        return rows, None
    if rows["row"].null_count:
        raise RuntimeError(f"shard {shard}: {rows['row'].null_count} survivors not embedded")
    return rows, cached["embedding"].take(rows["row"])


@ray.remote
def _sample(where: dict, shard: int, limit: np.uint64) -> pa.Table | None:
    """The shard's survivors whose key hashes to at most ``limit``: key, hash, area, embedding."""
    rows, vectors = _embedded(where, shard)
    if vectors is None:
        return None
    hashes = key_hashes(rows["key"].to_pylist())
    chosen = pa.array(np.flatnonzero(hashes <= limit))
    return pa.table(
        {
            "key": rows["key"].take(chosen),
            "hash": pa.array(hashes).take(chosen),
            "area": _area(rows).take(chosen),
            "embedding": vectors.take(chosen),
        }
    )


def _assigned(batch: pa.Table, where: dict, centroids: list, dim: int) -> pa.Table:
    """The survivors of the batch's shards with area, embedding and nearest ``partition``."""
    (centroids,) = ray.get(centroids)
    out = [_assigned_schema(dim).empty_table()]
    for shard in batch["shard"].to_pylist():
        rows, vectors = _embedded(where, int(shard))
        if vectors is None:
            continue
        x = embedding_matrix(vectors)  # [n, D]
        parts = 0 if centroids is None else nearest_centroid(x, centroids)
        out.append(
            pa.table(
                {
                    "key": rows["key"],
                    "shard": rows["shard"],
                    "source_uri": rows["source_uri"],
                    "area": _area(rows),
                    "partition": pa.array(np.broadcast_to(parts, rows.num_rows), pa.int64()),
                    "embedding": vectors,
                },
                schema=_assigned_schema(dim),
            )
        )
    return pa.concat_tables(out)


def _area(rows: pa.Table) -> pa.Array:
    return pc.multiply(rows["width"], rows["height"]).combine_chunks()


def _assigned_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [("key", pa.string()), ("shard", pa.int64()), ("source_uri", pa.string()),
         ("area", pa.int64()), ("partition", pa.int64()),
         ("embedding", pa.list_(pa.float32(), dim))]
    )  # fmt: skip


def _row_count(batch: pa.Table) -> pa.Table:
    return pa.table({"rows": [batch.num_rows]})
