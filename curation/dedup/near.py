"""Pairs of 64-bit perceptual hashes within a Hamming radius: the "bucket" step of near dedup.

Two methods, both verified with exact Hamming distances (so they never report a false pair):

* ``exact_pairs``: brute force with a FAISS ``IndexBinaryFlat`` range search, O(N^2); used for
  small inputs and as the reference that the banded search is measured against.
* ``banded_pairs``: locality-sensitive hashing by bit sampling ("banding" of randomly chosen
  bits). Each of ``L`` tables keys every hash on ``k`` fixed random bit positions; two hashes
  at distance d share a table's key with probability C(64-d, k) / C(64, k), so L is chosen
  from a target recall at d = radius, the worst case inside the radius. Work per table is
  one uint64 sort of N values, so time grows about linearly with N.

Exact multi-index hashing (3 chunks of 21 bits probed within 2 bits) was ruled out here:
past 2^21 hashes its candidate count grows quadratically (about 1,400 per query at 4M).
"""

from __future__ import annotations

import math

import numpy as np

BITS = 64


def collision_probability(distance: int, key_bits: int) -> float:
    """Chance that two hashes ``distance`` bits apart agree on ``key_bits`` random positions."""
    return math.comb(BITS - distance, key_bits) / math.comb(BITS, key_bits)


def tables_for_recall(radius: int, key_bits: int, recall: float) -> int:
    """Number of tables so that a pair exactly ``radius`` bits apart is found with ``recall``."""
    p = collision_probability(radius, key_bits)
    if p >= 1.0:
        return 1
    return max(1, math.ceil(math.log(1.0 - recall) / math.log(1.0 - p)))


def default_sampled_bits(n: int) -> int:
    """Bits sampled per table: 22 keeps buckets near one hash each up to 4M hashes; past that
    about log2(N), so that the candidates per table stay linear in N (capped at 28)."""
    return int(min(28, max(22, math.ceil(math.log2(max(n, 2))))))


def table_mask(seed: int, table: int, sampled_bits: int) -> np.uint64:
    """The bit positions table ``table`` samples, as a mask; a pure function of its inputs."""
    positions = np.random.default_rng([seed, table]).choice(BITS, size=sampled_bits, replace=False)
    return np.uint64(sum(1 << int(p) for p in positions))


def _as_codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> [N, 8] uint8 codes, big-endian so that FAISS bit order is irrelevant."""
    return np.ascontiguousarray(hashes.astype(">u8")).view(np.uint8).reshape(-1, 8)


def exact_pairs(hashes: np.ndarray, radius: int, queries: np.ndarray | None = None) -> np.ndarray:
    """All pairs (i, j), i != j, with Hamming(hashes[i], hashes[j]) <= radius, by brute force.

    With ``queries`` (indices), only pairs whose first element is a query; otherwise every
    pair once with i < j. Returns an [P, 2] int64 array sorted by (i, j).
    """
    import faiss

    codes = _as_codes(np.asarray(hashes, dtype=np.uint64))
    index = faiss.IndexBinaryFlat(BITS)
    index.add(codes)
    rows = np.arange(len(codes)) if queries is None else np.asarray(queries, dtype=np.int64)
    lims, _, found = index.range_search(codes[rows], radius + 1)  # strict: distance < radius + 1
    first = np.repeat(rows, np.diff(lims).astype(np.int64))
    pairs = np.stack([first, found.astype(np.int64)], axis=1)
    keep = pairs[:, 0] != pairs[:, 1]
    if queries is None:
        keep &= pairs[:, 0] < pairs[:, 1]
    return _sorted_unique(pairs[keep])


def _sorted_unique(pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(pairs.astype(np.int64), axis=0)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def _table_pairs(hashes: np.ndarray, mask: np.uint64, radius: int) -> np.ndarray:
    """Verified pairs (i < j) of hashes that agree on the bits of ``mask``, as (i << 32) | j.

    The masked bits are hashed to 32 bits (multiplicative hashing; a rare collision only adds
    a candidate that verification removes) and packed above the row index, so a single
    uint64 sort (vectorised, much faster than argsort) groups the buckets.
    """
    keys = ((hashes & mask) * _GOLDEN) >> _SHIFT
    packed = np.sort((keys << _SHIFT) | np.arange(len(hashes), dtype=np.uint64))
    keys, rows = packed >> _SHIFT, (packed & _LOW32).astype(np.int64)
    same = keys[1:] == keys[:-1]
    starts = np.flatnonzero(same)
    found = []
    offset = 1
    while len(starts):  # pairs ``offset`` apart inside each run of equal keys
        found.append(np.stack([rows[starts], rows[starts + offset]], axis=1))
        starts = starts[starts + offset < len(same)]
        starts = starts[same[starts + offset]]
        offset += 1
    if not found:
        return np.empty(0, dtype=np.uint64)
    pairs = np.concatenate(found)
    pairs = pairs[np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= radius]
    low = np.minimum(pairs[:, 0], pairs[:, 1]).astype(np.uint64)
    high = np.maximum(pairs[:, 0], pairs[:, 1]).astype(np.uint64)
    return np.unique((low << _SHIFT) | high)  # one pair per uint64, (i << 32) | j


def tables_needed(radius: int, n: int, recall: float) -> int:
    return tables_for_recall(radius, default_sampled_bits(n), recall)


def banded_pairs(
    hashes: np.ndarray,
    radius: int,
    *,
    recall: float = 0.99,
    seed: int = 0,
    tables: range | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Pairs (i < j) of *distinct* hash values within ``radius``, by bit-sampling LSH.

    Pass unique hashes (identical values are grouped by the caller). ``tables`` picks a
    subset of the tables (for spreading them over workers; the union over all subsets is
    the full result). Deterministic for a given ``seed``. Returns [P, 2] int64 sorted by (i, j).
    """
    from concurrent.futures import ThreadPoolExecutor

    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) >= 2**32:
        raise ValueError("at most 2**32 - 1 hashes per call; partition larger inputs")
    sampled = default_sampled_bits(len(hashes))
    if tables is None:
        tables = range(tables_for_recall(radius, sampled, recall))
    masks = [table_mask(seed, t, sampled) for t in tables]
    merged = np.empty(0, dtype=np.uint64)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # numpy releases the GIL in sorts
        for start in range(0, len(masks), 16):  # merge as we go: pairs recur across tables
            batch = pool.map(lambda m: _table_pairs(hashes, m, radius), masks[start : start + 16])
            merged = np.unique(np.concatenate([merged, *batch]))
    return np.stack([merged >> _SHIFT, merged & _LOW32], axis=1).astype(np.int64)


def near_pairs(
    hashes: np.ndarray, radius: int, *, exact_below: int = 30_000, **banded
) -> np.ndarray:
    """Pairs within ``radius``: brute force (exact) for small inputs, banded search otherwise."""
    if len(hashes) < exact_below:
        return exact_pairs(hashes, radius)
    return banded_pairs(hashes, radius, **banded)
