"""Near-duplicate pair search (curation.dedup.near): exactness of the covering tables, the
table split used by run_dedup, and the bit-sampling fallback for larger radii."""

from __future__ import annotations

import numpy as np
import pytest

from curation.dedup.near import (
    COVERING_BASIS,
    COVERING_MAX_RADIUS,
    banded_pairs,
    covering_mask,
    exact_pairs,
    near_pairs,
    partition_bits,
    split_tables,
    table_groups,
    tables_needed,
)


def planted(n: int, radius: int, seed: int) -> np.ndarray:
    """Unique hashes: random ones plus copies with 1..radius + 2 random bits flipped."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    copies = n // 4
    for k in range(copies):
        bits = rng.choice(64, size=1 + k % (radius + 2), replace=False)
        base[n - 1 - k] = base[k] ^ np.uint64(sum(1 << int(b) for b in bits))
    return np.unique(base)


def test_covering_words_have_28_to_36_bits() -> None:
    words = [int(covering_mask(COVERING_MAX_RADIUS, t)) for t in range(511)]
    weights = [w.bit_count() for w in words]
    assert len(set(words)) == 511
    assert min(weights) == 28 and max(weights) == 36
    assert len(COVERING_BASIS) == COVERING_MAX_RADIUS + 1 == 9


@pytest.mark.parametrize("radius", [8, 5])
def test_every_difference_set_within_radius_misses_some_table(radius: int) -> None:
    """The covering property itself, on random and on clustered sets of flipped bits."""
    rng = np.random.default_rng(radius)
    masks = np.array([covering_mask(radius, t) for t in range(2 ** (radius + 1) - 1)])
    sets = [rng.choice(64, size=radius, replace=False) for _ in range(3000)]
    sets += [np.arange(s, s + radius) for s in range(64 - radius + 1)]  # runs of bits
    for bits in sets:
        flipped = np.uint64(sum(1 << int(b) for b in bits))
        assert np.any((masks & flipped) == 0), bits


@pytest.mark.parametrize("radius", [8, 3, 0])
def test_covering_search_equals_brute_force(radius: int) -> None:
    hashes = planted(20_000, radius, seed=radius)
    found = banded_pairs(hashes, radius, threads=2)
    assert found.dtype == np.int64 and found.shape[1] == 2
    assert np.array_equal(found, exact_pairs(hashes, radius))
    assert radius == 0 or len(found) > 1000


@pytest.mark.parametrize("radius", [8, 4])
def test_split_into_parts_equals_brute_force(radius: int) -> None:
    """Groups of tables that split the hashes into parts (what large inputs do) find exactly
    the brute-force pairs, whether parts or tables are spread over the threads."""
    hashes = planted(20_000, radius, seed=10 + radius)
    exact = exact_pairs(hashes, radius)
    for part_size, threads in [(2_500, 2), (700, 1), (12_000, 3)]:
        stats: dict = {}
        found = banded_pairs(hashes, radius, threads=threads, part_size=part_size, stats=stats)
        assert stats["partition_bits"] == partition_bits(len(hashes), part_size) > 0
        assert 1 < stats["groups"] < stats["tables"]
        assert np.array_equal(found, exact), (part_size, threads)
    assert len(exact) > 1000


def test_table_groups_tile_the_tables_on_shared_positions() -> None:
    masks = [covering_mask(8, t) for t in range(511)]
    assert [len(table_groups(masks, bits)) for bits in (0, 1, 3)] == [1, 9, 19]
    for bits in (2, 4):
        groups = table_groups(masks, bits)
        members = sorted(t for _, group in groups for t in group)
        assert members == list(range(511))  # every table in exactly one group
        for positions, group in groups:
            assert int(positions).bit_count() == bits
            assert all(int(masks[t]) & int(positions) == int(positions) for t in group)
    assert partition_bits(500_000) == 0 and partition_bits(4_000_000) == 3
    assert partition_bits(10**9) == 6  # capped


def test_table_subsets_union_to_the_whole_search() -> None:
    hashes = planted(10_000, 8, seed=1)
    total = tables_needed(8, len(hashes), 0.99)
    assert total == 511
    bounds = np.linspace(0, total, 4).astype(int)
    parts = [
        banded_pairs(hashes, 8, tables=range(a, b), part_size=3_000)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    union = np.unique(np.concatenate(parts), axis=0)
    assert np.array_equal(union, banded_pairs(hashes, 8))
    assert all(np.all(p[:, 0] < p[:, 1]) for p in parts)
    # What run_dedup spreads over tasks: whole groups, every table once, balanced.
    shares = split_tables(8, len(hashes), 3, part_size=3_000)
    assert sorted(t for share in shares for t in share) == list(range(total))
    assert len(shares) == 3 and max(map(len, shares)) - min(map(len, shares)) <= 64
    parts = [banded_pairs(hashes, 8, tables=share, part_size=3_000) for share in shares]
    assert np.array_equal(np.unique(np.concatenate(parts), axis=0), banded_pairs(hashes, 8))
    assert split_tables(8, 100, 1000) == [[t] for t in range(511)]  # never an empty search


def test_stats_and_small_inputs() -> None:
    stats: dict = {}
    hashes = planted(5_000, 8, seed=2)
    pairs = banded_pairs(hashes, 8, stats=stats)
    assert stats["method"] == "covering" and stats["tables"] == 511
    assert stats["candidates"] >= len(pairs) > 0
    for n in (0, 1):
        assert banded_pairs(hashes[:n], 8).shape == (0, 2)


def test_sampling_fallback_for_larger_radius_reports_no_false_pairs() -> None:
    radius = COVERING_MAX_RADIUS + 2
    hashes = planted(20_000, radius, seed=3)
    stats: dict = {}
    found = banded_pairs(hashes, radius, stats=stats)
    exact = exact_pairs(hashes, radius)
    assert stats["method"] == "sampling"
    assert stats["tables"] == tables_needed(radius, len(hashes), 0.99)
    found_set = set(map(tuple, found.tolist()))
    assert found_set <= set(map(tuple, exact.tolist()))  # verified: never a false pair
    assert len(found) >= 0.97 * len(exact)  # recall 0.99 is for the worst case, d = radius
    # Splitting the input into parts changes how the same tables are searched, not what.
    assert np.array_equal(found, banded_pairs(hashes, radius, part_size=3_000, threads=2))
    with pytest.raises(ValueError):
        banded_pairs(hashes, radius, method="covering")


def test_near_pairs_switches_to_banded_search() -> None:
    hashes = planted(3_000, 8, seed=4)
    assert np.array_equal(
        near_pairs(hashes, 8, exact_below=100), near_pairs(hashes, 8, exact_below=10_000)
    )
