"""The end of the stream: a Ray Data Datasink that writes shards, manifests and rejections.

Each write task receives a bundle of at least one shard's worth of bytes (Ray Data bundles
blocks for us), streams kept samples into shards capped by count and bytes, and writes the
rejected rows of its bundle as one rejections file. Shard numbers come from the job's counter
actor (``pipeline.progress.ProgressCounter``), so they are unique across tasks and runs. Write tasks are not retried by Ray: a retry would
write the same samples twice; a rerun of the job resumes instead.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from curation import kept
from curation.record import OK
from curation.writer import ShardBuilder, write_rejections
from pipeline.stages import extra_to_map
from runtime.storage import locate
from schemas import PASSTHROUGH_COLUMNS, sample_schema

_UTC = dt.UTC


@dataclass
class WriteStats:
    shards: list[int]
    kept: int
    rejected: int
    bytes: int


class ShardDatasink(ray.data.Datasink[WriteStats]):
    """Writes the stream's rows; ``counter``: the job's ``ProgressCounter`` (shard numbers),
    ``columns``: the plan's kept input columns (``pipeline.plan.Plan.columns``)."""

    def __init__(
        self,
        output_uri: str,
        max_samples: int,
        max_bytes: int,
        counter: Any,
        run_id: str,
        columns: pa.Schema | None = None,
    ) -> None:
        self.output_uri = output_uri
        self.columns = columns if columns is not None else pa.schema([])
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.counter = counter
        self.run_id = run_id
        self.stats: list[WriteStats] = []

    @property
    def min_bytes_per_write(self) -> int:
        return self.max_bytes

    def write(self, blocks, ctx) -> WriteStats:
        dataset = locate(self.output_uri)
        stats = WriteStats([], 0, 0, 0)
        rejections: list[dict] = []
        builder: ShardBuilder | None = None
        try:
            for block in blocks:
                for row in _rows(block):
                    if row["status"] != OK:
                        rejections.append(rejection_row(row))
                        continue
                    if builder is None:
                        shard = ray.get(self.counter.next_shard.remote())
                        builder = ShardBuilder(dataset, shard, sample_schema(self.columns))
                    builder.add(manifest_row(row, self.columns), row["image"])
                    if len(builder) >= self.max_samples or builder.num_bytes >= self.max_bytes:
                        self._publish(builder, stats)
                        builder = None
            if builder is not None:
                self._publish(builder, stats)
                builder = None
        finally:
            if builder is not None:
                builder.discard()
        if rejections:
            name = f"{self.run_id}-{ctx.task_idx:06d}-{uuid.uuid4().hex[:8]}"
            write_rejections(dataset, name, rejections)
            stats.rejected = len(rejections)
        return stats

    @staticmethod
    def _publish(builder: ShardBuilder, stats: WriteStats) -> None:
        builder.publish()
        stats.shards.append(builder.shard)
        stats.kept += len(builder)
        stats.bytes += builder.num_bytes

    def on_write_complete(self, write_result) -> None:
        self.stats = list(write_result.write_returns)


def _rows(block: pa.Table) -> list[dict]:
    """Rows of a block as dicts (Ray Data blocks are Arrow tables or pandas frames)."""
    if isinstance(block, pa.Table):
        return block.to_pylist()
    return block.to_dict("records")


def _timestamp(micros: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(micros) / 1e6, tz=_UTC)


def _status(value: Any) -> int | None:
    return None if value is None or int(value) < 0 else int(value)


def _value(row: dict, name: str) -> Any:
    """A column's value, None for missing: Ray may turn an all-None column into NaN floats."""
    value = row.get(name)
    return None if isinstance(value, float) and value != value else value


def manifest_row(row: dict, columns: pa.Schema | None = None) -> dict:
    """A kept in-flight row as a manifest row (the writer fills shard and members), with the
    values of the kept input columns ``columns``."""
    row = {name: _value(row, name) for name in row}
    persons = row.get("persons")
    prefilter = row.get("prefilter")
    return {
        "key": row["key"],
        "source_uri": row["source_uri"],
        **{name: row.get(name) for name in PASSTHROUGH_COLUMNS},
        "extra": extra_to_map(row.get("extra")),
        "sha256": row["sha256"],
        "num_bytes": int(row["num_bytes"]),
        "format": row["format"],
        "width": int(row["width"]),
        "height": int(row["height"]),
        "mode": row.get("mode"),
        "fetched_at": _timestamp(row["fetched_at"]),
        "http_status": _status(row.get("http_status")),
        "prefilter": list(prefilter) if prefilter is not None else None,
        "persons": list(persons) if persons is not None else None,
        "num_persons": None if row.get("num_persons") is None else int(row["num_persons"]),
        "detector": row.get("detector"),
        "pixel_hash": row.get("pixel_hash"),
        "phash": int(np.uint64(row["phash"])) if row.get("pixel_hash") else None,
        **(kept.decode(row.get(kept.KEPT), columns) if columns is not None else {}),
    }


def rejection_row(row: dict) -> dict:
    row = {name: _value(row, name) for name in row}
    return {
        "key": row.get("key"),
        "source_uri": row.get("source_uri"),
        "stage": row["stage"],
        "reason": row["reason"],
        "detail": row.get("detail"),
        "http_status": _status(row.get("http_status")),
        "rejected_at": _timestamp(row["fetched_at"])
        if row.get("fetched_at")
        else dt.datetime.now(_UTC),
    }
