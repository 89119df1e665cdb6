"""The "cluster" step: turn duplicate relations into kept / dropped decisions, deterministically.

Priority of a sample: larger width*height first, then the smaller key. Every decision depends
only on the set of samples and their signatures, never on partitioning or worker count.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def priority_order(keys: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Indices sorted best first: area descending, then key ascending."""
    return np.lexsort((np.asarray(keys, dtype=str), -np.asarray(areas, dtype=np.int64)))


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


def resolve_chains(parent: dict[str, str]) -> dict[str, str]:
    """Follow dropped -> canonical links to the sample that is finally kept."""
    final = {}
    for key in parent:
        root, seen = key, set()
        while root in parent and root not in seen:
            seen.add(root)
            root = parent[root]
        final[key] = root
    return final


def cluster_sizes(duplicate_of: Iterable[str]) -> dict[str, int]:
    """Cluster size per canonical: itself plus each distinct sample naming it."""
    sizes: dict[str, int] = {}
    for canonical in duplicate_of:
        sizes[canonical] = sizes.get(canonical, 1) + 1
    return sizes
