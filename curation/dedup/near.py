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

Past ``PART_SIZE`` hashes the tables run in groups that share a few key positions
(``table_groups``); a group splits the input once on the values at those positions (a pair
that agrees on a table's key agrees on them too) and runs each table on each part, which stays
in cache across the group's tables. Without the split every table streams the whole array from
memory and the cost per hash grows with N (4M hashes cost 5.1x 1M; split, 4.2x).

Exact multi-index hashing (3 chunks of 21 bits probed within 2 bits) was ruled out here:
past 2^21 hashes its candidate count grows quadratically (about 1,400 per query at 4M).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterable

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

# Hashes per part when the input is split before the tables run (see ``banded_pairs``): the
# part's hashes and sort buffer (2 x 4 MB) stay near the core across a group's tables, where
# one 4M-hash array (32 MB) streams from memory on every table.
PART_SIZE = 1 << 19
MAX_PARTITION_BITS = 6  # past 2^6 parts a group holds few tables: more partition passes than saved


class _Scratch:
    """Per-thread buffers reused by every table: fresh N-sized temporaries would cost page
    faults on each table (numpy returns large arrays to the OS when freed)."""

    def __init__(self, n: int):
        self.packed = np.empty(n, dtype=np.uint64)
        self.block = np.empty(min(n, _BLOCK), dtype=np.uint64)
        self.rows = np.arange(min(n, _BLOCK), dtype=np.uint64)


def _sorted_keys(hashes: np.ndarray, mask: np.uint64, scratch: _Scratch) -> np.ndarray:
    """``(bucket key << 32) | row`` for every hash, sorted: a view of the scratch buffer.

    The bucket key hashes the bits of ``mask`` to 32 bits (multiplicative hashing; a rare
    collision only adds a candidate that verification removes). The packing runs block by
    block so that its intermediate passes stay in cache: per hash, one read of the hash and one
    write of the packed value reach memory, and the in-place sort is the only other pass.
    """
    n = len(hashes)
    packed, block, rows = scratch.packed[:n], scratch.block, scratch.rows
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        out, key = packed[start:stop], block[: stop - start]
        np.bitwise_and(hashes[start:stop], mask, out=key)
        np.multiply(key, _GOLDEN, out=key)
        np.bitwise_and(key, _HIGH32, out=key)  # the product's top 32 bits: the bucket key
        np.add(rows[: stop - start], np.uint64(start), out=out)
        np.bitwise_or(out, key, out=out)
    packed.sort()
    return packed


def _table_pairs(
    hashes: np.ndarray, mask: np.uint64, radius: int, scratch: _Scratch
) -> tuple[np.ndarray, int]:
    """Verified pairs (i < j) of hashes that agree on the bits of ``mask``, as (i << 32) | j
    (each once, unsorted), and the number of candidate pairs checked."""
    packed = _sorted_keys(hashes, mask, scratch)
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


def partition_bits(n: int, part_size: int = PART_SIZE) -> int:
    """Bits a group of tables splits ``n`` hashes on, so that parts hold about ``part_size``."""
    if n <= part_size:
        return 0
    return min(MAX_PARTITION_BITS, math.ceil(math.log2(n / part_size)))


def table_groups(masks: list[np.uint64], bits: int) -> list[tuple[np.uint64, list[int]]]:
    """Tile tables into groups that share ``bits`` key positions: [(positions mask, indices)].

    Two hashes that agree on a table's mask agree on any of its positions, so a group may
    split the hashes by the values at its shared positions and run each of its tables on each
    part alone. Greedy: a group grows from the position most remaining tables key on, then the
    position most of those also key on, and so on (511 covering tables: 9 groups at 1 bit, 19
    at 3, 30 at 4). Deterministic; every table is in exactly one group.
    """
    words = np.array([int(m) for m in masks], dtype=np.uint64)
    has = ((words[:, None] >> np.arange(BITS, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    left = np.ones(len(words), dtype=bool)
    groups = []
    while left.any():
        members, positions = left.copy(), 0
        for _ in range(bits):
            counts = has[members].sum(axis=0)
            counts[[p for p in range(BITS) if positions >> p & 1]] = -1
            best = int(counts.argmax())
            positions |= 1 << best
            members &= has[:, best]
        groups.append((np.uint64(positions), np.flatnonzero(members).tolist()))
        left &= ~members
    return groups


def _split(hashes: np.ndarray, positions: np.uint64):
    """Rows of ``hashes`` ordered by their bits at ``positions`` (ascending inside each part),
    the hashes in that order, and the part boundaries."""
    n = len(hashes)
    if positions == 0:
        return None, hashes, [0, n]
    packed = _sorted_keys(hashes, positions, _Scratch(n))
    keys = packed.view(np.uint32)[_HIGH_HALF::2]
    bounds = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), n]
    rows = np.bitwise_and(packed, _LOW32, out=packed)
    return rows, hashes[rows], bounds


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; in place. np.unique costs 6-10x more here (numpy 2.4)."""
    values.sort()
    keep = np.empty(len(values), dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def tables_needed(radius: int, n: int, recall: float, method: str = "auto") -> int:
    """Tables ``banded_pairs`` uses for ``n`` hashes (covering: 2^(radius+1) - 1, any n)."""
    if _method(radius, method) == "covering":
        return 2 ** (radius + 1) - 1
    return tables_for_recall(radius, default_sampled_bits(n), recall)


def _masks(method: str, radius: int, n: int, tables: list[int], seed: int) -> list[np.uint64]:
    if method == "covering":
        return [covering_mask(radius, t) for t in tables]
    sampled = default_sampled_bits(n)
    return [table_mask(seed, t, sampled) for t in tables]


def split_tables(
    radius: int,
    n: int,
    tasks: int,
    *,
    recall: float = 0.99,
    seed: int = 0,
    method: str = "auto",
    part_size: int = PART_SIZE,
) -> list[list[int]]:
    """The tables for ``n`` hashes split over at most ``tasks`` searches (``banded_pairs``'s
    ``tables``), balanced by table count: whole groups where they fit a fair share, so that a
    search splits the input about as few times as one search would; a larger group (all
    tables are one group below ``part_size`` hashes) is cut into shares."""
    method = _method(radius, method)
    tables = list(range(tables_needed(radius, n, recall, method)))
    count = max(1, min(tasks, len(tables)))
    fair = math.ceil(len(tables) / count)
    groups = table_groups(_masks(method, radius, n, tables, seed), partition_bits(n, part_size))
    pieces = [group[i : i + fair] for _, group in groups for i in range(0, len(group), fair)]
    shares: list[list[int]] = [[] for _ in range(count)]
    for piece in sorted(pieces, key=len, reverse=True):  # largest first to the lightest share
        min(shares, key=len).extend(tables[t] for t in piece)
    return [sorted(share) for share in shares if share]


def banded_pairs(
    hashes: np.ndarray,
    radius: int,
    *,
    recall: float = 0.99,
    seed: int = 0,
    tables: Iterable[int] | None = None,
    threads: int = 1,
    method: str = "auto",
    part_size: int = PART_SIZE,
    stats: dict | None = None,
) -> np.ndarray:
    """Pairs (i < j) of *distinct* hash values within ``radius``, by hash tables on bit subsets.

    Pass unique hashes (identical values are grouped by the caller). ``method`` "covering"
    (the "auto" choice for radius <= 8) finds every pair, so ``recall`` and ``seed`` are not
    used; "sampling" finds a pair exactly ``radius`` bits apart with probability ``recall``.
    ``tables`` picks a subset of ``range(tables_needed(...))`` (for spreading them over
    workers; the union over all subsets is the full result). Deterministic. Returns [P, 2]
    int64 sorted by (i, j). ``stats``, if given, receives "method", "tables", "candidates"
    (candidate pairs verified, summed over tables), "groups" and "partition_bits".

    Above ``part_size`` hashes the tables run in groups (``table_groups``) that each split the
    hashes once into about ``part_size``-sized parts: a part stays in cache across its group's
    tables, so the cost per hash and table stays flat as N grows (one array per table streaming
    from memory made 4M hashes cost 5.2x 1M; split, about 4.3x).
    """
    from concurrent.futures import ThreadPoolExecutor

    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n >= 2**32:
        raise ValueError("at most 2**32 - 1 hashes per call; partition larger inputs")
    method = _method(radius, method)
    if tables is None:
        tables = range(tables_needed(radius, n, recall, method))
    masks = _masks(method, radius, n, list(tables), seed)
    bits = partition_bits(n, part_size)
    groups = table_groups(masks, bits)
    local = threading.local()

    def search(part: np.ndarray, rows: np.ndarray | None, group: list[int]):
        scratch = getattr(local, "scratch", None)
        if scratch is None or len(scratch.packed) < len(part):
            scratch = local.scratch = _Scratch(len(part))
        found, count = [], 0
        for t in group:
            pairs, checked = _table_pairs(part, masks[t], radius, scratch)
            found.append(pairs)
            count += checked
        found = np.concatenate(found)
        if rows is not None and len(found):  # part rows -> input rows; ascending, so i < j
            found = (rows[found >> _SHIFT] << _SHIFT) | rows[found & _LOW32]
        return found, count

    merged, pending, candidates = np.empty(0, dtype=np.uint64), [], 0
    with ThreadPoolExecutor(max_workers=threads) as pool:  # numpy releases the GIL in sorts
        # Each group's split is queued before the previous group's tables, so that a thread
        # splits while the others search rather than all waiting for it.
        next_split = pool.submit(_split, hashes, groups[0][0]) if groups else None
        for g, (_, group) in enumerate(groups):
            rows, ordered, bounds = next_split.result()
            if g + 1 < len(groups):
                next_split = pool.submit(_split, hashes, groups[g + 1][0])
            parts = list(zip(bounds[:-1], bounds[1:], strict=True))
            # Work items: a part and a share of the group's tables, at least 4 per thread so
            # that unequal items and the split queued ahead leave no thread idle for long.
            chunks = math.ceil(4 * threads / len(parts))
            items = [
                (ordered[a:b], None if rows is None else rows[a:b], group[c::chunks])
                for a, b in parts
                for c in range(min(chunks, len(group)))
            ]
            for pairs, count in pool.map(lambda item: search(*item), items):
                pending.append(pairs)
                candidates += count
            # Pairs recur across tables (one d bits apart is in about 2^(9-d) covering tables):
            # dedup once the pending ones outnumber the merged ones, so each is sorted O(1) times.
            if sum(map(len, pending)) > max(len(merged), 1 << 20):
                merged, pending = _unique(np.concatenate([merged, *pending])), []
    merged = _unique(np.concatenate([merged, *pending]))
    if stats is not None:
        stats.update(
            method=method,
            tables=len(masks),
            candidates=candidates,
            groups=len(groups),
            partition_bits=bits,
        )
    return np.stack([merged >> _SHIFT, merged & _LOW32], axis=1).astype(np.int64)


def near_pairs(
    hashes: np.ndarray, radius: int, *, exact_below: int = 30_000, **banded
) -> np.ndarray:
    """Pairs within ``radius``: brute force (exact) for small inputs, banded search otherwise."""
    if len(hashes) < exact_below:
        return exact_pairs(hashes, radius)
    return banded_pairs(hashes, radius, **banded)
