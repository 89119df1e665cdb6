"""Carve a subset of a dataset: a new WebDataset + manifests holding only the selected samples.

    python -m curation.subset --dataset data/humans-v1 --where "num_persons >= 2" \\
        --output data/humans-v1-multi

The predicate is DuckDB SQL over the ``samples`` view (any manifest column, kept input columns
and list functions on ``persons`` included). Image bytes are copied unchanged from the parent's tars;
rows keep every column, only ``shard``, ``image_member`` and ``json_member`` are renumbered.
The subset's ``summary.json`` keeps the parent's configuration (its filters still describe
the samples) and records the parent and the predicate under ``subset``. It is written last:
a subset without a summary is unfinished.

Duplicate-cluster columns still refer to the parent: a subset may hold a cluster's copies
without its canonical sample only if the parent did, which curated datasets never do.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow.parquet as pq

from curation.manifest import DatasetError, manifest_files, read_summary, samples_schema
from curation.query import connect, one_statement
from curation.writer import ShardBuilder, iter_shard
from runtime import config as cli
from runtime.storage import Location, exists, list_files, locate, write_bytes_atomic
from schemas import SCHEMA_VERSION, SchemaError
from schemas.layout import MANIFESTS_DIR, SHARDS_DIR, SUMMARY_FILE, manifest_file, shard_file
from schemas.summary import config_of, validate_summary
from schemas.version import code_version


@dataclass(kw_only=True)
class SubsetConfig:
    dataset: str = field(metadata={"help": "parent dataset folder or s3:// prefix"})
    where: str = field(
        metadata={
            "help": "DuckDB SQL predicate over the samples view, e.g. "
            "\"num_persons >= 2 AND license = 'cc0-1.0'\""
        }  # fmt: skip
    )
    output: str = field(metadata={"help": "subset folder or s3:// prefix"})
    max_shard_samples: int = field(
        default=1000, metadata={"help": "samples per output tar", "aliases": ["samples_per_shard"]}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace a dataset already at --output"}
    )

    def __post_init__(self) -> None:
        if self.max_shard_samples < 1:
            raise ValueError("--max-shard-samples must be at least 1")
        if not self.where.strip():
            raise ValueError("the predicate is empty")
        if locate(self.dataset).uri == locate(self.output).uri:
            raise ValueError("the output must differ from the parent dataset")


def select_keys(config: SubsetConfig) -> tuple[dict[int, set[str]], int]:
    """Selected sample keys by parent shard, and the parent's sample count.

    Raises duckdb.Error for a bad predicate (syntax, unknown column, wrong type) and
    ValueError for one that smuggles in a second statement.
    """
    con = connect(config.dataset)
    sql = f"SELECT shard, list(key) FROM samples WHERE ({config.where}) GROUP BY shard"
    rows = con.sql(one_statement(con, sql)).fetchall()  # "x; DROP VIEW ..." is refused
    total = con.sql("SELECT count(*) FROM samples").fetchone()[0]
    return {int(shard): set(keys) for shard, keys in rows}, int(total)


def _selected_samples(
    parent: Location, shard: int, keys: set[str]
) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Manifest row and image bytes of each selected sample of one parent shard, tar order."""
    manifest = parent.join(manifest_file(shard))
    with manifest.fs.open_input_file(manifest.path) as f:
        table = pq.read_table(f)
    rows = {row["key"]: row for row in table.to_pylist() if row["key"] in keys}
    found = 0
    for sample in iter_shard(parent.join(shard_file(shard))):
        row = rows.get(sample["__key__"])
        if row is None:
            continue
        image_ext = row["image_member"].split(".", 1)[1]
        if row["extra"] is not None:  # pyarrow gives a map as (key, value) pairs
            row["extra"] = dict(row["extra"])
        found += 1
        yield row, sample[image_ext]
    if found != len(keys):
        raise DatasetError(f"shard {shard}: {len(keys) - found} selected samples not in its tar")


def _refuse_existing(output: Location, overwrite: bool) -> None:
    present = exists(output.join(SUMMARY_FILE)) or list_files(output.join(MANIFESTS_DIR))
    if present and not overwrite:
        raise DatasetError(f"{output.uri} already holds a dataset; pass --overwrite to replace it")
    # manifests first: a tar without its manifest is invisible to readers
    for folder, suffix in ((MANIFESTS_DIR, ".parquet"), (SHARDS_DIR, ".tar")):
        for old in list_files(output.join(folder), suffix):
            old.fs.delete_file(old.path)  # a larger earlier subset must leave nothing behind


def write_subset(config: SubsetConfig) -> dict[str, Any]:
    """Write the subset and return its summary."""
    started, clock = dt.datetime.now(dt.UTC), time.monotonic()
    parent, output = locate(config.dataset), locate(config.output)
    selected, parent_samples = select_keys(config)
    schema = samples_schema(manifest_files(parent.uri))  # the parent's kept columns stay
    _refuse_existing(output, config.overwrite)
    shards, count, num_bytes = 0, 0, 0
    builder: ShardBuilder | None = None
    try:
        for shard in sorted(selected):
            for row, image in _selected_samples(parent, shard, selected[shard]):
                builder = builder or ShardBuilder(output, shards, schema)
                builder.add(row, image)
                count, num_bytes = count + 1, num_bytes + len(image)
                if len(builder) == config.max_shard_samples:
                    builder.publish()
                    builder, shards = None, shards + 1
        if builder is not None:
            builder.publish()
            builder, shards = None, shards + 1
    finally:
        if builder is not None:
            builder.discard()
    summary = _summary(config, started, time.monotonic() - clock, count, shards, num_bytes)
    summary["subset"]["parent_samples"] = parent_samples
    validate_summary(summary)
    write_bytes_atomic(output.join(SUMMARY_FILE), json.dumps(summary, indent=2).encode())
    return summary


def _summary(
    config: SubsetConfig, started: dt.datetime, seconds: float, count: int, shards: int,
    num_bytes: int,
) -> dict[str, Any]:  # fmt: skip
    parent = read_summary(config.dataset) or {}
    parent_config = config_of(parent or None)  # the parent's filters are the subset's too
    return {
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(),
        "config": parent_config.to_dict() if parent_config else None,
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "counts": {"inputs": count, "kept": count, "rejected": 0, "by_stage": {}},
        "shards": shards,
        "bytes": num_bytes,
        "images_per_s": count / seconds if seconds > 0 else 0.0,
        "subset": {
            "parent": locate(config.dataset).uri,
            "predicate": config.where,
            "parent_code_version": parent.get("code_version", "unknown"),
            "parent_samples": None,  # filled by the caller, who counted them
            "selected": count,
        },
    }


@cli.entry_point(duckdb.Error, DatasetError, SchemaError, OSError)
def main(argv: list[str] | None = None) -> int:
    parser = cli.command(
        SubsetConfig,
        prog="python -m curation.subset",
        description="Write a new dataset holding only the samples that match a SQL predicate.",
    )
    config = cli.parse(SubsetConfig, parser, argv)
    summary = write_subset(config)
    sub = summary["subset"]
    print(f"{sub['selected']} of {sub['parent_samples']} samples in {summary['shards']} shards "
          f"-> {locate(config.output).uri}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
