"""The dedup rules over Arrow tables (curation.dedup), without Ray: each decides what a
brute-force reading of its rule decides, and decides the same whether it is given the whole
table (the driver path) or any split that keeps each group of its partition column whole
(the Ray path's groupby)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.drops import (
    DROP_COLUMNS,
    chain_rows,
    cluster_sizes,
    drop_naming,
    follow_chains,
    rejection_naming,
    sample_naming,
)
from curation.dedup.groups import resolve_groups, with_groups
from curation.dedup.previous import first_matches, hash_matches, hash_rows


def split_by(table: pa.Table, column: str, parts: int) -> list[pa.Table]:
    """``table`` cut into ``parts`` tables, each group of ``column`` whole in one of them."""
    values = table[column].to_pylist()
    part = [int(hashlib.sha256(str(v).encode()).hexdigest(), 16) % parts for v in values]
    where = pa.array(part)
    return [table.filter(pc.equal(where, p)) for p in range(parts)]


def rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def same_on_any_split(rule, table: pa.Table, column: str, **kw) -> pa.Table:
    """The rule's output on the whole table, checked against 1-row-per-group and 3-way splits."""
    whole = rule(table, **kw)
    one_group_each = [
        table.filter(pc.equal(table[column], v)) for v in set(table[column].to_pylist())
    ]
    for split in (split_by(table, column, 3), one_group_each):
        assert rows(pa.concat_tables([rule(t, **kw) for t in split])) == rows(whole)
    return whole


def _samples(rng: np.random.Generator, n: int) -> pa.Table:
    """Signature rows with shared bytes and pixels; areas tie so the key breaks them."""
    return pa.table(
        {
            "key": [f"k{i:03d}" for i in rng.permutation(n)],
            "shard": rng.integers(0, 4, n),
            "source_uri": [f"u{i}" for i in range(n)],
            "sha256": [f"s{v}" for v in rng.integers(0, n // 3, n)],
            "pixel_hash": [None if v == 0 else f"p{v}" for v in rng.integers(0, 5, n)],
            "width": rng.choice([10, 20], n).astype(np.int32),
            "height": rng.choice([10, 20], n).astype(np.int32),
        }
    )


def _groups_brute_force(table: pa.Table, use_pixels: bool) -> list[tuple]:
    """Each group best first (area desc, key asc): the first stays; a later member with the
    bytes of an earlier one is an exact copy of the first such, the rest pixel copies."""
    groups: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        use = use_pixels and row["pixel_hash"] is not None
        groups.setdefault(f"p:{row['pixel_hash']}" if use else f"s:{row['sha256']}", []).append(row)
    out = []
    for members in groups.values():
        members.sort(key=lambda r: (-r["width"] * r["height"], r["key"]))
        best, holder = members[0]["key"], {}
        for row in members:
            first = holder.setdefault(row["sha256"], row["key"])
            if row["key"] == best:
                continue
            if first != row["key"]:
                reason, detail = "duplicate_exact", f"same bytes (sha256) as {first}"
            else:
                reason, detail = "duplicate_pixels", "same decoded pixels, other bytes"
            out.append((row["key"], row["shard"], row["source_uri"], reason, best, detail))
    return sorted(out)


def test_resolve_groups_is_the_rule_on_any_split() -> None:
    rng = np.random.default_rng(0)
    for use_pixels in (True, False):
        samples = _samples(rng, 60)
        drops = same_on_any_split(resolve_groups, with_groups(samples, use_pixels), "group")
        assert rows(drops) == _groups_brute_force(samples, use_pixels)
        reasons = set(drops["reason"].to_pylist())
        assert reasons == (
            {"duplicate_exact", "duplicate_pixels"} if use_pixels else {"duplicate_exact"}
        )


def test_previous_release_bytes_before_pixels_then_smallest_key() -> None:
    current = pa.table(
        {
            "key": ["a", "b", "c", "d"],
            "shard": [0, 0, 1, 1],
            "source_uri": ["ua", "ub", "uc", "ud"],
            "sha256": ["s1", "s2", "s3", "s9"],
            "pixel_hash": ["p1", "p2", None, "p9"],
        }
    )
    earlier = pa.table(
        {
            "key": ["z", "y", "x", "w"],
            "sha256": ["s1", "s5", "s3", "s6"],
            "pixel_hash": ["p2", "p2", "p1", "p2"],
        }
    )

    def decide(pixels: bool) -> dict[str, tuple[str, str]]:
        both = pa.concat_tables([hash_rows(current, 0, pixels), hash_rows(earlier, 1, pixels)])
        matches = same_on_any_split(hash_matches, both, "h")
        drops = same_on_any_split(first_matches, matches, "key", uri="v1")
        assert set(drops["detail"].to_pylist()) == {"v1: same bytes or pixels"}
        return {r["key"]: (r["reason"], r["duplicate_of"]) for r in drops.to_pylist()}

    # a: its bytes are z's (its pixels x's: bytes first); b: pixels of y and w and z -> w;
    # c: bytes of x; d: nothing
    release = "duplicate_previous_release"
    assert decide(True) == {"a": (release, "z"), "b": (release, "w"), "c": (release, "x")}
    assert decide(False) == {"a": (release, "z"), "c": (release, "x")}


def _drops(pairs: list[tuple[str, str]], shard: int = 0) -> pa.Table:
    return pa.table(
        {
            "key": [k for k, _ in pairs],
            "shard": [shard] * len(pairs),
            "source_uri": [f"u{k}" for k, _ in pairs],
            "reason": ["duplicate_near"] * len(pairs),
            "duplicate_of": [d for _, d in pairs],
            "detail": [""] * len(pairs),
        }
    )


def test_follow_chains_names_the_sample_finally_kept() -> None:
    earlier = _drops([("a", "b"), ("c", "d"), ("e", "b")])  # b, then d, dropped later
    later = _drops([("b", "f"), ("d", "g"), ("h", "i")])  # final already
    chained = pa.concat_tables([chain_rows(earlier, later=False), chain_rows(later, later=True)])
    final = same_on_any_split(follow_chains, chained, "link")
    assert final.column_names == DROP_COLUMNS
    assert {r["key"]: r["duplicate_of"] for r in final.to_pylist()} == {
        "a": "f", "c": "g", "e": "f",
    }  # fmt: skip


def test_cluster_sizes_count_each_member_once_and_only_samples() -> None:
    samples = pa.table({"key": ["k", "m", "n"], "shard": [3, 4, 5]})
    this_run = _drops([("a", "k"), ("b", "k"), ("c", "m"), ("e", "gone")])
    earlier = pa.table(
        {
            "key": ["a", "d", "x", "y"],
            "stage": ["dedup", "dedup", "dedup", "fetch"],
            "reason": ["duplicate_near", "duplicate_exact", "duplicate_previous_release", "http"],
            "duplicate_of": ["k", "m", "n", "n"],
        }
    )
    naming = pa.concat_tables(
        [sample_naming(samples), drop_naming(this_run), rejection_naming(earlier)]
    )
    sizes = same_on_any_split(cluster_sizes, naming, "canonical")
    # k: a (twice) and b; m: c and d; n: only an earlier release's and another stage's rows;
    # "gone" is no sample of the dataset
    assert rows(sizes) == [("k", 3, 3), ("m", 4, 3)]
