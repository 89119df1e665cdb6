"""The "cluster" step: turn duplicate relations into kept / dropped decisions, deterministically.

Priority of a sample: larger width*height first, then the smaller key. Every decision depends
only on the set of samples and their signatures, never on partitioning or worker count.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The priority order as sort keys (ascending) of ``with_priority``'s columns: an Arrow sort, a
# Ray Data sort and ``priority_order`` rank the same (keys are ASCII: byte and code point
# order agree).
PRIORITY_SORT = ["neg_area", "key"]


def priority_order(keys: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Indices sorted best first: area descending, then key ascending."""
    return np.lexsort((np.asarray(keys, dtype=str), -np.asarray(areas, dtype=np.int64)))


def with_priority(batch: pa.Table) -> pa.Table:
    """``batch`` (key, width, height, ...) with ``neg_area``: sorted ascending by
    PRIORITY_SORT, best first."""
    area = pc.multiply(batch["width"].cast(pa.int64()), batch["height"].cast(pa.int64()))
    return batch.append_column("neg_area", pc.negate(area))


def ranked_best_first(table: pa.Table) -> pa.Table:
    """``with_priority`` rows sorted best first, in one process."""
    return with_priority(table).sort_by([(name, "ascending") for name in PRIORITY_SORT])


def greedy_canonical(n: int, pairs: np.ndarray) -> np.ndarray:
    """Canonical index of each of ``n`` items ranked best first (index = rank), given
    duplicate ``pairs`` (i, j).

    Walks items best first; an item not yet claimed is canonical and claims its unclaimed
    neighbours. So every dropped item is directly within the relation of its canonical (no
    chaining A~B~C dropping C for A), and the result is a pure function of the pairs.
    Returns ``canonical`` with canonical[i] == i for kept items.
    """
    canonical = np.arange(n)
    if len(pairs) == 0:
        return canonical
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    starts = np.searchsorted(pairs[:, 0], np.arange(n + 1))
    claimed = np.zeros(n, dtype=bool)
    for item in np.unique(pairs[:, 0]):  # ascending rank
        if claimed[item]:
            continue
        neighbours = pairs[starts[item] : starts[item + 1], 1]
        neighbours = neighbours[(neighbours > item) & ~claimed[neighbours]]
        claimed[neighbours] = True
        canonical[neighbours] = item
    return canonical


def item_pairs(unique_pairs: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Pairs of items (ranks) from pairs of distinct hash values (indices into the unique
    values), plus every pair of items sharing one value. Vectorised: no per-item Python."""
    inverse = np.asarray(inverse, dtype=np.int64).ravel()
    if len(inverse) == 0:
        return np.empty((0, 2), dtype=np.int64)
    order = np.argsort(inverse, kind="stable")  # items grouped by value, ranks ascending inside
    starts = np.searchsorted(inverse[order], np.arange(int(inverse.max()) + 2))
    sizes = np.diff(starts)
    out = [np.empty((0, 2), dtype=np.int64)]
    for size in np.unique(sizes[sizes > 1]):  # same value: all pairs inside each group
        first = starts[:-1][sizes == size]
        members = order[first[:, None] + np.arange(size)]
        a, b = np.triu_indices(int(size), 1)
        out.append(np.stack([members[:, a].ravel(), members[:, b].ravel()], axis=1))
    pairs = np.asarray(unique_pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs):  # distinct values: the cross product of their two groups
        u, v = pairs[:, 0], pairs[:, 1]
        count = sizes[u] * sizes[v]
        which = np.repeat(np.arange(len(pairs)), count)
        within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        a = order[starts[u[which]] + within // sizes[v[which]]]
        b = order[starts[v[which]] + within % sizes[v[which]]]
        out.append(np.stack([a, b], axis=1))
    return np.concatenate(out)


def resolve_near(
    unique: np.ndarray, inverse: np.ndarray, unique_pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy best-first over items ranked best first (item i has hash unique[inverse[i]]).

    Returns (dropped ranks, the rank each names, their Hamming distance): integers only, so
    the step can run anywhere the compact arrays are (the driver or a Ray task).
    """
    n = len(inverse)
    canonical = greedy_canonical(n, item_pairs(unique_pairs, inverse))
    ranks = np.flatnonzero(canonical != np.arange(n))
    kept = canonical[ranks]
    distance = np.bitwise_count(unique[inverse[ranks]] ^ unique[inverse[kept]]).astype(np.int64)
    return ranks, kept, distance


_RANK_BITS = 40  # old ranks below 2**40 (1e12): a match packs as distance << 40 | old rank


def previous_matches(
    n_current: int, unique: np.ndarray, inverse: np.ndarray, unique_pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items of an earlier release within the radius of current items: the nearest, then the
    smallest key (old items are ranked by key).

    ``inverse`` maps the current items (ranks 0..n_current-1) then the old items (old rank =
    position - n_current) to ``unique``; ``unique_pairs`` are the distinct values within the
    radius. Returns (current ranks with a match, the old rank matched, the distance).
    """
    inverse = np.asarray(inverse, dtype=np.int64).ravel()
    current, old = inverse[:n_current], inverse[n_current:]
    none = np.iinfo(np.int64).max
    old_min = np.full(len(unique), none, dtype=np.int64)  # smallest old rank per value
    np.minimum.at(old_min, old, np.arange(len(old), dtype=np.int64))
    pairs = np.asarray(unique_pairs, dtype=np.int64).reshape(-1, 2)
    same = np.repeat(np.arange(len(unique), dtype=np.int64), 2).reshape(-1, 2)
    edges = np.concatenate([pairs, pairs[:, ::-1], same])
    edges = edges[old_min[edges[:, 1]] != none]
    distance = np.bitwise_count(unique[edges[:, 0]] ^ unique[edges[:, 1]]).astype(np.int64)
    best = np.full(len(unique), none, dtype=np.int64)
    np.minimum.at(best, edges[:, 0], (distance << _RANK_BITS) | old_min[edges[:, 1]])
    ranks = np.flatnonzero(best[current] != none)
    score = best[current[ranks]]
    return ranks, score & ((1 << _RANK_BITS) - 1), score >> _RANK_BITS
