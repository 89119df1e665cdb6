"""Earlier releases (``against``): their dedup index, and the samples already in one.

A sample is in an earlier release when it has the same bytes (sha256) as one of its samples,
else the same decoded pixels, else (near) a pHash within the radius; it names the smallest
earlier key with the same bytes or pixels, or the nearest earlier pHash, then the smallest key
(``curation.dedup.cluster.previous_matches``). The rules are functions over Arrow tables keyed
by a partition column (see curation.dedup.drops): ``hash_matches`` by hash value,
``first_matches`` by key.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.drops import as_drops
from runtime.storage import Location, delete, list_files, locate
from schemas import Reason
from schemas.layout import DEDUP_INDEX_DIR

# What a release keeps of each kept sample for a later release's ``against``.
INDEX_COLUMNS = ["key", "sha256", "pixel_hash", "phash", "width", "height"]

# hash_matches' rows, keyed by ``h``: one per (sample, hash value) of both sides
HASH_ROW_SCHEMA = pa.schema(
    [
        ("h", pa.string()),
        ("kind", pa.int8()),  # 0: same bytes (sha256), 1: same pixels
        ("side", pa.int8()),  # 0: this dataset, 1: the earlier release
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
    ]
)
# first_matches' rows, keyed by ``key``: a sample of this dataset and an earlier key it matches
MATCH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
        ("kind", pa.int8()),
        ("match", pa.string()),
    ]
)


def read_index(uri: str) -> tuple[Location, list[Location]]:
    """An earlier release's location and its dedup_index files (refused when it has none)."""
    files = list_files(locate(uri).join(DEDUP_INDEX_DIR), ".parquet")
    if not files:
        raise FileNotFoundError(
            f"{uri} has no {DEDUP_INDEX_DIR}/: run dedup on it with write_index"
        )
    return locate(uri), files


def clear_index(dataset: Location) -> Location:
    """Remove the dataset's index files before a new index is written; returns its folder."""
    index = dataset.join(DEDUP_INDEX_DIR)
    for file in list_files(index, ".parquet"):
        with contextlib.suppress(FileNotFoundError):
            delete(file)
    return index


def index_rows(kept: pa.Table) -> pa.Table:
    """The index rows of kept samples (manifest rows)."""
    return kept.select(INDEX_COLUMNS)


def hash_rows(batch: pa.Table, side: int, pixels: bool) -> pa.Table:
    """One row per (sample, hash value): ``s:<sha256>``, and ``p:<pixel hash>`` where known
    and ``pixels`` is on. ``side`` 0: this dataset's rows; 1: the index's (no shard)."""
    n = batch.num_rows

    def rows(h: pa.Array, kind: int) -> pa.Table:
        return pa.table(
            [
                h,
                pa.array(np.full(n, kind, np.int8)),
                pa.array(np.full(n, side, np.int8)),
                batch["key"].cast(pa.string()),
                batch["shard"].cast(pa.int64()) if side == 0 else pa.nulls(n, pa.int64()),
                batch["source_uri"].cast(pa.string()) if side == 0 else pa.nulls(n, pa.string()),
            ],
            schema=HASH_ROW_SCHEMA,
        )

    out = [rows(pc.binary_join_element_wise("s:", batch["sha256"].cast(pa.string()), ""), 0)]
    if pixels:
        by_pixels = rows(
            pc.binary_join_element_wise("p:", batch["pixel_hash"].cast(pa.string()), ""), 1
        )
        out.append(by_pixels.filter(pc.is_valid(by_pixels["h"])))
    return pa.concat_tables(out)


def hash_matches(rows: pa.Table) -> pa.Table:
    """Keyed by ``h`` (HASH_ROW_SCHEMA): this dataset's samples holding a hash value that the
    earlier release holds too, each with the smallest earlier key holding it (MATCH_SCHEMA)."""
    side = rows["side"]
    earlier = rows.filter(pc.equal(side, 1)).group_by("h").aggregate([("key", "min")])
    current = rows.filter(pc.equal(side, 0))
    found = current.join(earlier, keys="h", join_type="inner")
    return pa.table(
        [found["key"], found["shard"], found["source_uri"], found["kind"], found["key_min"]],
        schema=MATCH_SCHEMA,
    )


def first_matches(matches: pa.Table, uri: str) -> pa.Table:
    """Keyed by ``key`` (MATCH_SCHEMA): one drop row per sample, its byte match before its
    pixel match."""
    ranked = matches.sort_by([("key", "ascending"), ("kind", "ascending")])
    best = ranked.group_by("key", use_threads=False).aggregate(  # in order: "first" is the best
        [("shard", "first"), ("source_uri", "first"), ("match", "first")]
    )
    n = best.num_rows
    return as_drops(
        pa.table(
            {
                "key": best["key"],
                "shard": best["shard_first"],
                "source_uri": best["source_uri_first"],
                "reason": pa.array([str(Reason.DUPLICATE_PREVIOUS_RELEASE)] * n, pa.string()),
                "duplicate_of": best["match_first"],
                "detail": pa.array([f"{uri}: same bytes or pixels"] * n, pa.string()),
            }
        )
    )
