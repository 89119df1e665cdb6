"""Semantic (embedding) dedup, SemDeDup style: k-means partitions, cosine search inside, and
the best-first decision in each partition. Embedding: curation.dedup.embed; the model:
curation.dedup.encoder.

Engine-free: ``semantic_pairs`` is plain FAISS (on a GPU when FAISS sees one), and
``resolve_partitions`` is a rule over Arrow tables keyed by the ``partition`` column (see
curation.dedup.drops): the driver path calls it on every survivor, the Ray path inside a
groupby on the partition.

Determinism: the k-means input is in priority order with a fixed seed. FAISS on a GPU computes
k-means with other kernels than on a CPU, so a GPU and a CPU run may partition differently.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import pyarrow as pa

from curation.dedup.cluster import greedy_canonical, priority_order
from curation.dedup.drops import DROP_SCHEMA
from curation.dedup.embed import embedding_matrix
from schemas import Reason

# faiss GPU k-NN selects at most 2048 neighbours; a partition row with more above the threshold
# than this is searched again exactly on the CPU (semantic_pairs).
GPU_MAX_K = 1024


def partitions_for(n: int, partition_size: int) -> int:
    """Number of k-means partitions: about ``partition_size`` vectors each, at least 1."""
    return max(1, math.ceil(n / partition_size))


@functools.cache
def gpu_resources():
    """FAISS GPU resources when FAISS sees a GPU (a faiss-gpu build on a GPU node), else None."""
    import faiss

    return faiss.StandardGpuResources() if faiss.get_num_gpus() > 0 else None


def _kmeans(x: np.ndarray, k: int, seed: int):
    import faiss

    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False,
        gpu=gpu_resources() is not None,
    )  # fmt: skip
    kmeans.train(x)
    return kmeans


def kmeans_partitions(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Partition of each row of ``x`` [N, D] (L2-normalised) by spherical k-means."""
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64)
    _, assign = _kmeans(x, k, seed).index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def kmeans_centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[k, D] centroids of ``kmeans_partitions``'s k-means (same settings) over ``x``."""
    return np.asarray(_kmeans(x, k, seed).centroids, dtype=np.float32)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Partition of each row of ``x`` [N, D]: its nearest of ``centroids`` [k, D] by inner
    product, on the CPU. On the CPU this is the search ``kmeans_partitions`` runs (its index
    is an IndexFlatIP holding the centroids), whatever rows are searched together."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, assign = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return assign[:, 0].astype(np.int64)


# k-means needs no more than this many vectors per centroid: faiss.Kmeans itself samples down
# to it (max_points_per_centroid), so a sample of this size loses nothing it would use.
KMEANS_SAMPLE_PER_CENTROID = 256


def key_hashes(keys: list[str]) -> np.ndarray:
    """[N] uint64 hash of each key: the k-means sample's order, independent of the workers."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") for k in keys],
        dtype=np.uint64,
    )


def sample_limit(n: int, size: int) -> np.uint64:
    """Keys whose hash is at most this are the sample's candidates: all of them when ``size``
    >= ``n``, else about 1.25 ``size`` of the ``n`` (the ``size`` smallest hashes are kept)."""
    top = 2**64 - 1
    if size >= n:
        return np.uint64(top)
    return np.uint64(min(top, int(min(1.0, 1.25 * size / n + 1e-3) * 2**64)))


def resolve_partition(
    keys: list[str], areas: np.ndarray, x: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-first resolution inside one k-means partition: (dropped rows, the row each names,
    their cosine), rows of the inputs. Pairs never cross partitions, so this decides what the
    driver path's global resolution decides for these rows."""
    order = priority_order(np.asarray(keys, dtype=object), areas)
    ranked = np.ascontiguousarray(x[order])  # [n, D], best first
    parts = np.zeros(len(ranked), dtype=np.int64)
    canonical = greedy_canonical(len(ranked), semantic_pairs(ranked, threshold, parts))
    ranks = np.flatnonzero(canonical != np.arange(len(ranked)))
    # one dot product at a time, as the driver path writes its detail
    cosine = np.array([float(ranked[r] @ ranked[canonical[r]]) for r in ranks])
    return order[ranks], order[canonical[ranks]], cosine


def semantic_pairs(x: np.ndarray, threshold: float, partitions: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, in the same partition with cosine >= ``threshold``; [P, 2] int64.

    ``x`` [N, D] float32 L2-normalised, so inner product is cosine. On a GPU: k-NN within the
    partition (FAISS has no GPU range search), exact unless a row has ``GPU_MAX_K`` neighbours
    at or above the threshold, in which case that partition is searched again on the CPU.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    resources = gpu_resources()
    out = []
    for part in np.unique(partitions):
        members = np.flatnonzero(partitions == part)
        if len(members) < 2:
            continue
        xm = np.ascontiguousarray(x[members])
        pairs = _gpu_pairs(resources, xm, threshold) if resources is not None else None
        if pairs is None:
            pairs = _cpu_pairs(xm, threshold)
        out.append(members[pairs])
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


def _cpu_pairs(x: np.ndarray, threshold: float) -> np.ndarray:
    """Local pairs (i < j) with cosine >= threshold: FAISS IndexFlatIP range search."""
    import faiss

    # FAISS keeps inner products strictly above the radius: search just below, filter exactly
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, sims, found = index.range_search(x, radius)
    rows = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64)))
    keep = (sims >= threshold) & (rows < found)
    return np.stack([rows[keep], found[keep]], axis=1)


def _gpu_pairs(resources, x: np.ndarray, threshold: float) -> np.ndarray | None:
    """As _cpu_pairs with a GPU brute-force k-NN; None when the k nearest may not hold every
    neighbour at or above the threshold (the k-th is itself at or above it)."""
    import faiss

    k = min(len(x), GPU_MAX_K)
    sims, found = faiss.knn_gpu(resources, x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    if k < len(x) and bool((sims[:, -1] >= threshold).any()):
        return None
    rows = np.repeat(np.arange(len(x)), k)
    sims, found = sims.ravel(), found.ravel().astype(np.int64)
    keep = (sims >= threshold) & (rows < found)
    return np.stack([rows[keep], found[keep]], axis=1)


def resolve_partitions(table: pa.Table, threshold: float) -> pa.Table:
    """Keyed by ``partition`` (key, shard, source_uri, area, partition, embedding): in each
    k-means partition, drop rows (DROP_SCHEMA) of the members a better member duplicates."""
    partition = table["partition"].to_numpy()
    keys = table["key"].to_pylist()
    areas = table["area"].to_numpy()
    x = embedding_matrix(table["embedding"])  # [n, D]
    dropped, kept, cosines = [], [], []
    for part in np.unique(partition):
        members = np.flatnonzero(partition == part)
        d, k, c = resolve_partition(
            [keys[i] for i in members], areas[members], x[members], threshold
        )
        dropped += members[d].tolist()
        kept += members[k].tolist()
        cosines += c.tolist()
    take = pa.array(dropped, pa.int64())
    return pa.table(
        [
            table["key"].take(take),
            table["shard"].take(take).cast(pa.int64()),
            table["source_uri"].take(take),
            pa.array([str(Reason.DUPLICATE_SEMANTIC)] * len(dropped), pa.string()),
            pa.array([keys[i] for i in kept], pa.string()),
            pa.array([f"embedding cosine {c:.4f}" for c in cosines], pa.string()),
        ],
        schema=DROP_SCHEMA,
    )
