"""Exact and pixel-hash groups: which samples share a signature, and who stays in each group.

Engine-free. ``pipeline.dedup`` resolves the groups on the driver for small datasets and inside
a Ray Data groupby for large ones; both call ``resolve_group``, so both decide the same.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.cluster import priority_order
from schemas import Reason

# A drop row as the passes write it (Parquet under <dataset>/_work/dedup/ on the Ray path).
DROP_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("detail", pa.string()),
    ]
)
DROP_COLUMNS = DROP_SCHEMA.names
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
    """``table`` narrowed to what ``resolve_group`` reads, plus its ``group`` column."""
    group = group_ids(table["sha256"], table["pixel_hash"], use_pixels)
    return table.append_column("group", group).select(GROUP_COLUMNS)


def candidate_rows(table: pa.Table, use_pixels: bool) -> pa.Table:
    """Rows of ``table`` (narrowed, with ``group``) whose group has two or more members."""
    table = with_groups(table, use_pixels)
    counts = table.group_by("group").aggregate([("key", "count")])
    shared = counts.filter(pc.greater(counts["key_count"], 1))["group"]
    return table.filter(pc.is_in(table["group"], shared))


def resolve_group(group) -> pa.Table:
    """One signature group (pandas, GROUP_COLUMNS): the best sample stays, the others name it.
    Returns drop rows (DROP_SCHEMA)."""
    if len(group) < 2:
        return DROP_SCHEMA.empty_table()
    order = priority_order(group["key"].to_numpy(), (group["width"] * group["height"]).to_numpy())
    ranked = group.iloc[order]
    best = ranked.iloc[0]["key"]
    first_with_sha: dict[str, str] = {}
    out = []
    for key, shard, source_uri, sha in zip(
        ranked["key"], ranked["shard"], ranked["source_uri"], ranked["sha256"], strict=True
    ):
        holder = first_with_sha.setdefault(sha, key)  # byte copies name their first holder
        if key == best:
            continue
        if holder != key:
            reason, detail = Reason.DUPLICATE_EXACT, f"same bytes (sha256) as {holder}"
        else:
            reason, detail = Reason.DUPLICATE_PIXELS, "same decoded pixels, other bytes"
        out.append([key, int(shard), source_uri, str(reason), best, detail])
    return pa.Table.from_pylist(
        [dict(zip(DROP_COLUMNS, row, strict=True)) for row in out], schema=DROP_SCHEMA
    )


def resolve_locally(candidates: pa.Table) -> list[dict]:
    """``resolve_group`` over every group of ``candidates`` in one process; drop rows."""
    frame = candidates.to_pandas()
    rows: list[dict] = []
    for _, group in frame.groupby("group", sort=True):
        rows.extend(resolve_group(group.reset_index(drop=True)).to_pylist())
    return rows
