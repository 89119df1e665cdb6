"""The end of the stream: decided in-flight rows into shards, manifests and rejections.

``SampleWriter`` streams kept samples into shards capped by count and bytes and writes the
rejected rows it was given as one rejections file. The crawl tasks (``pipeline.crawl``) use it
directly; with filter stages, the Ray Data sink (``pipeline.datasink``) uses it in each write
task. Shard numbers come from the job's counter actor (``pipeline.progress.ProgressCounter``),
so they are unique across tasks and runs. Ray Data is not imported here: a crawl worker would
spend most of a second of CPU importing it.
"""

from __future__ import annotations

import datetime as dt
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


@dataclass(frozen=True)
class Output:
    """Where and how the job's shards are written."""

    uri: str
    max_samples: int  # per shard
    max_bytes: int  # image bytes per shard, about
    run_id: str  # names the rejections files
    columns: pa.Schema | None = None  # the plan's kept input columns (Plan.columns)


class SampleWriter:
    """Writes decided in-flight rows: kept ones streamed into shards capped by count and
    bytes, rejected ones gathered into one rejections file written by ``close``.

    ``counter``: the job's ``ProgressCounter``, which hands out shard numbers; ``name``: the
    rejections file's name, unique to the writing task. A shard is visible only once
    published; ``discard`` (or an exception before ``close``) removes the unpublished one.
    """

    def __init__(self, output: Output, counter: Any, name: str) -> None:
        self.dataset = locate(output.uri)
        self.columns = output.columns if output.columns is not None else pa.schema([])
        self.max_samples = output.max_samples
        self.max_bytes = output.max_bytes
        self.counter = counter
        self.name = name
        self.stats = WriteStats([], 0, 0, 0)
        self._rejections: list[dict] = []
        self._builder: ShardBuilder | None = None

    def add(self, row: dict) -> None:
        if row["status"] != OK:
            self._rejections.append(rejection_row(row))
            return
        if self._builder is None:
            shard = ray.get(self.counter.next_shard.remote())
            self._builder = ShardBuilder(self.dataset, shard, sample_schema(self.columns))
        self._builder.add(manifest_row(row, self.columns), row["image"])
        if len(self._builder) >= self.max_samples or self._builder.num_bytes >= self.max_bytes:
            self._publish()

    def close(self) -> WriteStats:
        """Publish the open shard, then write the rejections; what was written."""
        if self._builder is not None:
            self._publish()
        if self._rejections:
            write_rejections(self.dataset, self.name, self._rejections)
            self.stats.rejected = len(self._rejections)
            self._rejections = []
        return self.stats

    def discard(self) -> None:
        if self._builder is not None:
            self._builder.discard()
            self._builder = None

    def _publish(self) -> None:
        builder, self._builder = self._builder, None
        try:
            builder.publish()
        except BaseException:
            builder.discard()
            raise
        self.stats.shards.append(builder.shard)
        self.stats.kept += len(builder)
        self.stats.bytes += builder.num_bytes


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
