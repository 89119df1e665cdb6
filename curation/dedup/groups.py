"""Exact and pixel-hash groups: which samples share a signature, and who stays in each group.

Engine-free. ``pipeline.dedup`` resolves the groups on the driver for small datasets and on a
Ray Data hash shuffle for large ones; both call ``resolve_group``, so both decide the same.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.cluster import priority_order
from schemas import Reason

DROP_COLUMNS = ["key", "source_uri", "reason", "duplicate_of", "detail"]


def group_ids(sha256, pixel_hash, use_pixels: bool) -> np.ndarray:
    """Group of each sample: its pixel hash when used and known, else its sha256."""
    return np.array(
        [
            f"p:{p}" if use_pixels and p is not None else f"s:{s}"
            for p, s in zip(pixel_hash, sha256, strict=True)
        ],
        dtype=object,
    )


def candidate_rows(table: pa.Table, use_pixels: bool) -> pa.Table:
    """Rows of ``table`` (with a ``group`` column added) whose group has two or more members."""
    groups = group_ids(
        table["sha256"].to_pylist(), table["pixel_hash"].to_pylist(), use_pixels
    ).tolist()
    table = table.append_column("group", pa.array(groups, pa.string()))
    counts = table.group_by("group").aggregate([("key", "count")])
    shared = counts.filter(pc.greater(counts["key_count"], 1))["group"]
    return table.filter(pc.is_in(table["group"], shared))


def resolve_group(group):
    """One signature group (pandas): the best sample stays, the others name it."""
    import pandas as pd

    if len(group) < 2:
        return pd.DataFrame(columns=DROP_COLUMNS)
    order = priority_order(group["key"].to_numpy(), (group["width"] * group["height"]).to_numpy())
    ranked = group.iloc[order]
    best = ranked.iloc[0]["key"]
    first_with_sha: dict[str, str] = {}
    out = []
    for key, source_uri, sha in zip(
        ranked["key"], ranked["source_uri"], ranked["sha256"], strict=True
    ):
        holder = first_with_sha.setdefault(sha, key)  # byte copies name their first holder
        if key == best:
            continue
        if holder != key:
            reason, detail = Reason.DUPLICATE_EXACT, f"same bytes (sha256) as {holder}"
        else:
            reason, detail = Reason.DUPLICATE_PIXELS, "same decoded pixels, other bytes"
        out.append([key, source_uri, str(reason), best, detail])
    return pd.DataFrame(out, columns=DROP_COLUMNS)


def resolve_locally(candidates: pa.Table) -> list[dict]:
    """``resolve_group`` over every group of ``candidates`` in one process; drop rows."""
    frame = candidates.to_pandas()
    rows: list[dict] = []
    for _, group in frame.groupby("group", sort=True):
        rows.extend(resolve_group(group.reset_index(drop=True)).to_dict("records"))
    return rows
