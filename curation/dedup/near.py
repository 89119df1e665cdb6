"""Pairs of 64-bit perceptual hashes within a Hamming radius: the "bucket" step of near dedup.

Two methods, both verified with exact Hamming distances (so they never report a false pair):

* ``exact_pairs``: brute force with a FAISS ``IndexBinaryFlat`` range search, O(N^2); used for
  small inputs and as the reference that the banded search is measured against.
* ``banded_pairs``: hash tables that each key every hash on a subset of its 64 bits; two hashes
  are candidates when they agree on a table's bits, and every candidate is verified. Two ways
  to choose the subsets:

  - "covering" (radius <= 8, the default there): the 2^(radius+1) - 1 non-zero words of a
    binary linear code of length 64 and dimension radius + 1, used as bit masks (Pagh,
    "CoveringLSH: locality-sensitive hashing without false negatives", SODA 2016). A pair
    differing in a set D of at most ``radius`` bits agrees on every bit of the table whose
    word is zero on D, and such a word exists: the code's generator columns at D are at most
    ``radius`` vectors in a space of ``radius + 1`` dimensions, so a non-zero vector is
    orthogonal to all of them. So the search is exact (no pair missed), and the table count
    does not depend on N. The code is an extended BCH code whose words all have 28 to 36 bits,
    so random hashes share a key with probability at most 2^-28: candidates per table stay
    far below N up to about 2^28 hashes, and the work per table is linear in N.
  - "sampling" (larger radii): bit-sampling LSH. Each table keys on ``k`` random bit positions;
    two hashes at distance d share a key with probability C(64-d, k) / C(64, k), so the table
    count is chosen from a target recall at d = radius. Keeping buckets small needs k to grow
    with log2(N), and the table count grows with k (about 1.6x per 2 bits at radius 8), so the
    total work grows faster than N (about N^1.3 at radius 8).

Exact multi-index hashing (3 chunks of 21 bits probed within 2 bits) was ruled out here:
past 2^21 hashes its candidate count grows quadratically (about 1,400 per query at 4M).
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

BITS = 64

# Basis of a [64, 9, 28] binary linear code: the extended primitive BCH code of length 64 with
# designed distance 27 (generator polynomial: the minimal polynomials over GF(64) = GF(2)[x] /
# (x^6 + x + 1) of alpha^1..alpha^26, degree 53, so dimension 10), rows x^s g(x) for s = 1..9
# with an even-parity bit 63; the row for s = 0 is left out so that the all-ones word (which
# would be a table keyed on every bit) is not in the span. Every non-zero combination of these
# rows has between 28 and 36 set bits (checked by the tests).
COVERING_BASIS = (
    0x804EB24C5ABAA0DA,
    0x809D6498B57541B4,
    0x813AC9316AEA8368,
    0x82759262D5D506D0,
    0x84EB24C5ABAA0DA0,
    0x89D6498B57541B40,
    0x93AC9316AEA83680,
    0xA759262D5D506D00,
    0xCEB24C5ABAA0DA00,
)
COVERING_MAX_RADIUS = len(COVERING_BASIS) - 1


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


def covering_mask(radius: int, table: int) -> np.uint64:
    """Bits that covering table ``table`` (0 .. 2^(radius+1) - 2) keys on: the code word whose
    coefficients on the first ``radius + 1`` basis rows are the bits of ``table + 1``."""
    word, v = 0, table + 1
    for row in COVERING_BASIS[: radius + 1]:
        if v & 1:
            word ^= row
        v >>= 1
    return np.uint64(word)


def _method(radius: int, method: str) -> str:
    if method == "auto":
        return "covering" if 0 <= radius <= COVERING_MAX_RADIUS else "sampling"
    if method == "covering" and not 0 <= radius <= COVERING_MAX_RADIUS:
        raise ValueError(f"covering tables exist for radius 0..{COVERING_MAX_RADIUS}")
    if method not in ("covering", "sampling"):
        raise ValueError(f"unknown method {method!r}")
    return method


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
_HIGH32 = np.uint64(0xFFFFFFFF00000000)
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # uint32 index of a uint64's top half


_BLOCK = 32_768  # rows per block of the key pass: a block's arrays (3 x 256 KB) stay in L2


class _Scratch:
    """Per-thread buffers reused by every table: fresh N-sized temporaries would cost page
    faults on each table (numpy returns large arrays to the OS when freed)."""

    def __init__(self, n: int):
        self.packed = np.empty(n, dtype=np.uint64)
        self.block = np.empty(min(n, _BLOCK), dtype=np.uint64)
        self.rows = np.arange(min(n, _BLOCK), dtype=np.uint64)


def _table_pairs(
    hashes: np.ndarray, mask: np.uint64, radius: int, scratch: _Scratch
) -> tuple[np.ndarray, int]:
    """Verified pairs (i < j) of hashes that agree on the bits of ``mask``, as (i << 32) | j
    (each once, unsorted), and the number of candidate pairs checked.

    Each hash's masked bits are hashed to 32 bits (multiplicative hashing; a rare collision
    only adds a candidate that verification removes) and packed above its row number, so one
    in-place uint64 sort groups the buckets. The packing runs block by block so that its
    intermediate passes stay in cache: per hash, one read of the hash and one write of the
    packed value reach memory, and the sort and one scan of the sorted values are the only
    other passes over N.
    """
    n = len(hashes)
    packed, block, rows = scratch.packed, scratch.block, scratch.rows
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        out, key = packed[start:stop], block[: stop - start]
        np.bitwise_and(hashes[start:stop], mask, out=key)
        np.multiply(key, _GOLDEN, out=key)
        np.bitwise_and(key, _HIGH32, out=key)  # the product's top 32 bits: the bucket key
        np.add(rows[: stop - start], np.uint64(start), out=out)
        np.bitwise_or(out, key, out=out)
    packed.sort()
    keys = packed.view(np.uint32)[_HIGH_HALF::2]  # the bucket keys in sorted order, no copy
    same = keys[1:] == keys[:-1]
    starts = np.flatnonzero(same)
    firsts, seconds = [], []
    offset = 1
    while len(starts):  # pairs ``offset`` apart inside each run of equal keys
        firsts.append(packed[starts])
        seconds.append(packed[starts + offset])
        starts = starts[starts + offset < len(same)]
        starts = starts[same[starts + offset]]
        offset += 1
    if not firsts:
        return np.empty(0, dtype=np.uint64), 0
    # Inside a run the rows ascend (they are the low bits of the sorted values), so i < j.
    i = np.concatenate(firsts) & _LOW32
    j = np.concatenate(seconds) & _LOW32
    near = np.bitwise_count(hashes[i] ^ hashes[j]) <= radius
    # One uint64 per pair, (i << 32) | j; unsorted (the caller's merge sorts and dedups).
    return (i[near] << _SHIFT) | j[near], len(i)


def tables_needed(radius: int, n: int, recall: float, method: str = "auto") -> int:
    """Tables ``banded_pairs`` uses for ``n`` hashes (covering: 2^(radius+1) - 1, any n)."""
    if _method(radius, method) == "covering":
        return 2 ** (radius + 1) - 1
    return tables_for_recall(radius, default_sampled_bits(n), recall)


def banded_pairs(
    hashes: np.ndarray,
    radius: int,
    *,
    recall: float = 0.99,
    seed: int = 0,
    tables: range | None = None,
    threads: int = 1,
    method: str = "auto",
    stats: dict | None = None,
) -> np.ndarray:
    """Pairs (i < j) of *distinct* hash values within ``radius``, by hash tables on bit subsets.

    Pass unique hashes (identical values are grouped by the caller). ``method`` "covering"
    (the "auto" choice for radius <= 8) finds every pair, so ``recall`` and ``seed`` are not
    used; "sampling" finds a pair exactly ``radius`` bits apart with probability ``recall``.
    ``tables`` picks a subset of ``range(tables_needed(...))`` (for spreading them over
    workers; the union over all subsets is the full result). Deterministic. Returns [P, 2]
    int64 sorted by (i, j). ``stats``, if given, receives "method", "tables" and
    "candidates" (candidate pairs verified, summed over tables).
    """
    from concurrent.futures import ThreadPoolExecutor

    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if len(hashes) >= 2**32:
        raise ValueError("at most 2**32 - 1 hashes per call; partition larger inputs")
    method = _method(radius, method)
    if tables is None:
        tables = range(tables_needed(radius, len(hashes), recall, method))
    if method == "covering":
        masks = [covering_mask(radius, t) for t in tables]
    else:
        sampled = default_sampled_bits(len(hashes))
        masks = [table_mask(seed, t, sampled) for t in tables]
    local = threading.local()

    def search(mask: np.uint64) -> tuple[np.ndarray, int]:
        if not hasattr(local, "scratch"):
            local.scratch = _Scratch(len(hashes))
        return _table_pairs(hashes, mask, radius, local.scratch)

    merged, pending, candidates = np.empty(0, dtype=np.uint64), [], 0
    with ThreadPoolExecutor(max_workers=threads) as pool:  # numpy releases the GIL in sorts
        for start in range(0, len(masks), 16):
            for pairs, count in pool.map(search, masks[start : start + 16]):
                pending.append(pairs)
                candidates += count
            # Pairs recur across tables (one d bits apart is in about 2^(9-d) covering tables):
            # dedup once the pending ones outnumber the merged ones, so each is sorted O(1) times.
            if sum(map(len, pending)) > max(len(merged), 1 << 20):
                merged, pending = np.unique(np.concatenate([merged, *pending])), []
    merged = np.unique(np.concatenate([merged, *pending]))
    if stats is not None:
        stats.update(method=method, tables=len(masks), candidates=candidates)
    return np.stack([merged >> _SHIFT, merged & _LOW32], axis=1).astype(np.int64)


def near_pairs(
    hashes: np.ndarray, radius: int, *, exact_below: int = 30_000, **banded
) -> np.ndarray:
    """Pairs within ``radius``: brute force (exact) for small inputs, banded search otherwise."""
    if len(hashes) < exact_below:
        return exact_pairs(hashes, radius)
    return banded_pairs(hashes, radius, **banded)
