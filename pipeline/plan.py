"""The plan: every input the user named, read once, keyed, and split into partitions.

Reading the inputs is the only step that runs on the driver: it streams them (a URL list of any
length needs only a partition's worth of memory), spreads the rows over hash partitions of their
key, drops repeated sources (the first listing wins, later ones become ``duplicate_input``
rejections) and records unusable rows (``curation.sources.Unusable``). The plan is written under
``_work/`` and marked done, so a rerun with the same inputs skips this step.

Secrets: the plan is what a rerun fetches, so it keeps each ``source_uri`` in full, signed
query strings and ``user:pass@`` included; everything the job publishes holds the redacted form
(``curation.redact``), and the key is derived from the full URL so both agree across reruns.
``_work/`` is private to the job and never published, and a plan that holds any secret is
deleted by ``forget_secrets`` as soon as the stream has accounted for every input: a rerun of a
finished job then reads its inputs again instead of keeping credentials on disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.redact import redact_uri
from curation.sources import BYTE_RANGE, SourceConfig, iter_inputs
from curation.storage import Location, delete, exists, list_files, read_bytes, write_bytes_atomic
from curation.writer import table_to_parquet_bytes, write_rejections
from schemas import PASSTHROUGH_COLUMNS, Reason, Stage, sample_key
from schemas.layout import WORK_DIR

PLAN_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source_uri", pa.string()),
        *((name, pa.string()) for name in PASSTHROUGH_COLUMNS),
        ("extra", pa.string()),
        (BYTE_RANGE, pa.string()),
        ("order", pa.int64()),  # position among all inputs: the first listing of a source wins
    ]
)
REJECTIONS_CHUNK = 100_000


@dataclass
class Plan:
    plan_id: str
    files: list[Location]  # partitions of unique inputs
    rows: int  # unique inputs to process
    malformed: int
    duplicates: int
    secrets: int = 0  # inputs whose URL holds a secret (the plan is deleted once done)


def plan_id(config: SourceConfig) -> str:
    spec = {"inputs": list(config.inputs), "url_column": config.url_column}
    if config.allow_file_and_s3_in_lists:  # other rows are usable: another plan
        spec["allow_file_and_s3_in_lists"] = True
    if config.caption_column != "caption":
        # the caption column changes the planned rows; left out at its default, so that plans
        # written before it existed keep their id and their jobs resume on them
        spec["caption_column"] = config.caption_column
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]


def _marker(dataset: Location, config: SourceConfig) -> Location:
    return dataset.join(WORK_DIR, f"plan-{plan_id(config)}", "DONE.json")


def plan_is_done(dataset: Location, config: SourceConfig) -> bool:
    """Whether a run already planned these inputs (a rerun reads the plan, not the inputs)."""
    return exists(_marker(dataset, config))


def load_or_build_plan(dataset: Location, config: SourceConfig, partitions: int = 16) -> Plan:
    pid = plan_id(config)
    folder = dataset.join(WORK_DIR, f"plan-{pid}")
    marker = _marker(dataset, config)
    if exists(marker):
        done = json.loads(read_bytes(marker))
        files = list_files(folder, ".parquet")
        return Plan(
            pid, files, done["rows"], done["malformed"], done["duplicates"], done.get("secrets", 0)
        )
    return _build(dataset, folder, pid, config, partitions)


def forget_secrets(dataset: Location, plan: Plan) -> bool:
    """Delete a finished plan that holds secrets (see the module docstring); True if deleted."""
    if not plan.secrets:
        return False
    folder = dataset.join(WORK_DIR, f"plan-{plan.plan_id}")
    delete(folder.join("DONE.json"))  # first: a half-deleted plan is never taken as done
    for file in list_files(folder, ".parquet"):
        delete(file)
    return True


def _build(
    dataset: Location, folder: Location, pid: str, config: SourceConfig, partitions: int
) -> Plan:
    malformed: list[dict] = []
    order = secrets = 0
    with _scratch(dataset, pid) as tmp:
        writers = [
            pq.ParquetWriter(os.path.join(tmp, f"{p:04d}.parquet"), PLAN_SCHEMA)
            for p in range(partitions)
        ]
        for spec in config.inputs:
            for batch in iter_inputs(spec, config):
                malformed.extend(item.rejection() for item in batch.malformed)
                rows = batch.rows
                for row in rows:
                    row["key"] = sample_key(row["source_uri"])  # the full URL: stable keys
                    secrets += redact_uri(row["source_uri"]) != row["source_uri"]
                    row["order"] = order
                    order += 1
                _spread(rows, writers)
        for writer in writers:
            writer.close()
        rows, duplicates = 0, []
        for p in range(partitions):
            unique, repeated = _dedupe(pq.read_table(os.path.join(tmp, f"{p:04d}.parquet")))
            duplicates.extend(repeated)
            rows += unique.num_rows
            write_bytes_atomic(
                folder.join(f"inputs-{p:04d}.parquet"), table_to_parquet_bytes(unique)
            )
    rejected = malformed + duplicates
    for start in range(0, len(rejected), REJECTIONS_CHUNK):
        chunk = rejected[start : start + REJECTIONS_CHUNK]
        write_rejections(dataset, f"source-{pid}-{start // REJECTIONS_CHUNK:05d}", chunk)
    summary = {
        "rows": rows, "malformed": len(malformed), "duplicates": len(duplicates), "secrets": secrets
    }  # fmt: skip
    write_bytes_atomic(
        folder.join("DONE.json"), json.dumps({"inputs": list(config.inputs), **summary}).encode()
    )
    files = list_files(folder, ".parquet")
    return Plan(pid, files, rows, len(malformed), len(duplicates), secrets)


@contextlib.contextmanager
def _scratch(dataset: Location, pid: str) -> Iterator[str]:
    """A private local folder for the partitions being built, removed once they are written.

    They hold full URLs, secrets included. The folder's name is fixed per output and plan, so
    the rerun that follows a kill -9 removes what the killed build left behind in it.
    """
    name = hashlib.sha256(f"{dataset.uri}\0{pid}".encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"humans300m-plan-{name}")
    shutil.rmtree(path, ignore_errors=True)
    os.mkdir(path, mode=0o700)  # fails if someone else made it meanwhile: never shared
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _spread(rows: list[dict], writers: list[pq.ParquetWriter]) -> None:
    """Append rows to the partition of their key (keys are uniform hex: any prefix spreads)."""
    if not rows:
        return
    table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)
    part = pa.array([int(row["key"][:7], 16) % len(writers) for row in rows], pa.int64())
    for p in range(len(writers)):
        chunk = table.filter(pc.equal(part, p))
        if chunk.num_rows:
            writers[p].write_table(chunk)


def _dedupe(table: pa.Table) -> tuple[pa.Table, list[dict]]:
    """Unique keys (first by order) and the rejection rows of the repeats."""
    table = table.sort_by("order")
    seen: dict[str, int] = {}
    keep = []
    repeated = []
    now = dt.datetime.now(dt.UTC)
    for i, (key, uri, position) in enumerate(
        zip(
            table["key"].to_pylist(),
            table["source_uri"].to_pylist(),
            table["order"].to_pylist(),
            strict=True,
        )
    ):
        if key in seen:
            repeated.append(
                {"key": key, "source_uri": redact_uri(uri), "stage": str(Stage.SOURCE),
                 "reason": str(Reason.DUPLICATE_INPUT),
                 "detail": f"input #{position} repeats input #{seen[key]}", "rejected_at": now}
            )  # fmt: skip
        else:
            seen[key] = position
            keep.append(i)
    return table.take(pa.array(keep, pa.int64())), repeated
