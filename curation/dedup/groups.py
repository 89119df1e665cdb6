"""Exact and pixel-hash groups: which samples share a signature, and who stays in each group.

A rule over Arrow tables keyed by the ``group`` column (see curation.dedup.drops):
``pipeline.dedup`` calls ``resolve_groups`` on every survivor at once, ``pipeline.dedup_ray``
inside a Ray Data groupby on ``group``; both decide the same.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.cluster import PRIORITY_SORT, with_priority
from curation.dedup.drops import DROP_SCHEMA
from schemas import Reason

GROUP_COLUMNS = ["key", "shard", "source_uri", "sha256", "width", "height", "group"]


def group_ids(sha256: pa.Array, pixel_hash: pa.Array, use_pixels: bool) -> pa.Array:
    """Group of each sample: its pixel hash when used and known, else its sha256.

    Arrow throughout: a pixel_hash column that is all null may arrive typed null (or, through
    numpy/pandas, as NaN floats), and the cast keeps such a block grouping by sha256.
    """
    by_sha = pc.binary_join_element_wise("s:", sha256.cast(pa.string()), "")
    if not use_pixels:
        return by_sha
    pixels = pixel_hash.cast(pa.string())
    by_pixels = pc.binary_join_element_wise("p:", pixels, "")
    return pc.if_else(pc.is_valid(pixels), by_pixels, by_sha)


def with_groups(table: pa.Table, use_pixels: bool) -> pa.Table:
    """``table`` narrowed to what ``resolve_groups`` reads, plus its ``group`` column."""
    group = group_ids(table["sha256"], table["pixel_hash"], use_pixels)
    return table.append_column("group", group).select(GROUP_COLUMNS)


def _run_starts(*columns: pa.ChunkedArray) -> np.ndarray:
    """Per row of sorted ``columns``: the position of the first row with the same values."""
    n = len(columns[0])
    new = np.zeros(n, dtype=bool)
    new[:1] = True
    for column in columns:
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        new[1:] |= pc.not_equal(column[1:], column[:-1]).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new)
    return starts[np.cumsum(new) - 1]


def resolve_groups(table: pa.Table) -> pa.Table:
    """Keyed by ``group`` (GROUP_COLUMNS): in each signature group the best sample stays and
    the others name it; byte copies are exact duplicates (their detail names the best holder
    of the same bytes), the rest pixel duplicates. Returns drop rows (DROP_SCHEMA)."""
    if table.num_rows < 2:
        return DROP_SCHEMA.empty_table()
    sort = [("group", "ascending"), *((name, "ascending") for name in PRIORITY_SORT)]
    ranked = with_priority(table).sort_by(sort)  # each group best first
    keys = np.asarray(ranked["key"].to_pylist(), dtype=object)
    best = _run_starts(ranked["group"])
    # the best holder of each row's bytes: first of its (group, sha256) run in priority order
    position = pa.array(np.arange(ranked.num_rows))
    by_sha = pa.table({"g": ranked["group"], "s": ranked["sha256"], "p": position})
    by_sha = by_sha.sort_by([("g", "ascending"), ("s", "ascending"), ("p", "ascending")])
    holder = np.empty(ranked.num_rows, dtype=np.int64)
    holder[by_sha["p"].to_numpy()] = by_sha["p"].to_numpy()[_run_starts(by_sha["g"], by_sha["s"])]
    dropped = np.flatnonzero(best != np.arange(ranked.num_rows))
    exact = holder[dropped] != dropped
    reasons = np.where(exact, str(Reason.DUPLICATE_EXACT), str(Reason.DUPLICATE_PIXELS))
    details = [
        f"same bytes (sha256) as {keys[h]}" if same else "same decoded pixels, other bytes"
        for h, same in zip(holder[dropped], exact, strict=True)
    ]
    rows = ranked.take(pa.array(dropped))
    return pa.table(
        [rows["key"], rows["shard"].cast(pa.int64()), rows["source_uri"],
         pa.array(reasons.tolist(), pa.string()), pa.array(keys[best[dropped]].tolist(), pa.string()),
         pa.array(details, pa.string())],
        schema=DROP_SCHEMA,
    )  # fmt: skip
