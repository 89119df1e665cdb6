"""The integer-only cluster steps both dedup paths share, against brute force."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.dedup.cluster import (
    greedy_canonical,
    item_pairs,
    previous_matches,
    resolve_near,
)
from curation.dedup.groups import group_ids

RADIUS = 3


def _hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n hashes from a few bases with a few bits flipped: many repeats and near pairs."""
    base = rng.integers(0, 2**63, 6, dtype=np.uint64)
    flips = rng.integers(0, 64, (n, 2)).astype(np.uint64)
    mask = (np.uint64(1) << flips[:, 0]) * (rng.random(n) < 0.7)
    mask |= (np.uint64(1) << flips[:, 1]) * (rng.random(n) < 0.3)
    return base[rng.integers(0, 6, n)] ^ mask.astype(np.uint64)


def _distance(a, b) -> int:
    return (int(a) ^ int(b)).bit_count()


def _unique_pairs(unique: np.ndarray) -> np.ndarray:
    return np.array(
        [
            (i, j)
            for i in range(len(unique))
            for j in range(i + 1, len(unique))
            if _distance(unique[i], unique[j]) <= RADIUS
        ],
        dtype=np.int64,
    ).reshape(-1, 2)


def test_item_pairs_and_resolve_near_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        hashes = _hashes(rng, 60)
        unique, inverse = np.unique(hashes, return_inverse=True)
        pairs = item_pairs(_unique_pairs(unique), inverse)
        got = {tuple(sorted(p)) for p in pairs.tolist()}
        want = {
            (i, j)
            for i in range(len(hashes))
            for j in range(i + 1, len(hashes))
            if _distance(hashes[i], hashes[j]) <= RADIUS
        }
        assert got == want and len(got) == len(pairs)
        ranks, kept, distances = resolve_near(unique, inverse, _unique_pairs(unique))
        canonical = greedy_canonical(len(hashes), np.array(sorted(want)).reshape(-1, 2))
        assert ranks.tolist() == np.flatnonzero(canonical != np.arange(len(hashes))).tolist()
        assert kept.tolist() == canonical[ranks].tolist()
        assert distances.tolist() == [
            _distance(hashes[r], hashes[k]) for r, k in zip(ranks, kept, strict=True)
        ]


def test_previous_matches_nearest_then_smallest_old_rank() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        current, old = _hashes(rng, 40), _hashes(rng, 30)
        unique, inverse = np.unique(np.concatenate([current, old]), return_inverse=True)
        ranks, olds, distances = previous_matches(
            len(current), unique, inverse, _unique_pairs(unique)
        )
        want = {}
        for i, h in enumerate(current):
            near = [(_distance(h, o), j) for j, o in enumerate(old) if _distance(h, o) <= RADIUS]
            if near:
                want[i] = min(near)
        got = {
            r: (d, o)
            for r, o, d in zip(ranks.tolist(), olds.tolist(), distances.tolist(), strict=True)
        }
        assert got == want


def test_group_ids_fall_back_to_sha256_when_pixels_unknown() -> None:
    sha = pa.array(["x", "y", "z"])
    pixels = pa.array([None, "p", None])
    assert group_ids(sha, pixels, True).to_pylist() == ["s:x", "p:p", "s:z"]
    assert group_ids(sha, pixels, False).to_pylist() == ["s:x", "s:y", "s:z"]
    all_null = pa.nulls(3)  # how an all-None column can arrive: typed null
    assert group_ids(sha, all_null, True).to_pylist() == ["s:x", "s:y", "s:z"]
