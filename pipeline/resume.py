"""What a rerun finds: finished samples, leftovers of a killed run, the next shard number.

A sample is finished once its key is in a published manifest or in a rejections file (other
than the plan's ``duplicate_input`` rows, whose key belongs to the first listing). Everything
else a killed run left behind (a tar whose manifest never appeared, temporary files) is removed,
and its samples are processed again; a dedup rewrite it had decided is published first.

Finished keys are never gathered in one place: they are spread over the plan's partitions
(``finished_by_partition``; on Ray from ``ray_above`` finished rows, through the plan's
file-based shuffle: ``pipeline.plan.write_by_partition`` and ``read_partition``) into
``finished-<p>.parquet`` files, and the task that reads plan
partition ``p`` drops the keys of ``finished-<p>`` only (``unfinished_inputs``): its time and
memory follow its own partition, not the dataset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.dedup.apply import finish_commits
from curation.kept import describe
from curation.writer import table_to_parquet_bytes
from pipeline.plan import Plan, partition_of, read_partition, write_by_partition
from runtime.storage import Location, delete, exists, list_files, locate, write_bytes_atomic
from schemas import Reason, kept_columns
from schemas.layout import (
    MANIFESTS_DIR,
    REJECTIONS_DIR,
    SHARDS_DIR,
    STAGING_DIR,
    plan_dir,
    shard_of,
)

if TYPE_CHECKING:
    import ray.data

RAY_ABOVE_ROWS = 200_000  # finished rows from which they are spread over partitions on Ray
UNFINISHED_BATCH_ROWS = 65_536  # rows per block handed to the stream


def remove_leftovers(dataset: Location) -> list[str]:
    """Finish the dedup rewrites a killed run had decided (before anything reads the shards),
    delete unpublished shards and temporary files; returns what was removed."""
    finish_commits(dataset)
    removed = []
    manifests = {
        shard_of(f.path.rsplit("/", 1)[-1])
        for f in list_files(dataset.join(MANIFESTS_DIR), ".parquet")
    }
    for tar in list_files(dataset.join(SHARDS_DIR), ".tar"):
        if shard_of(tar.path.rsplit("/", 1)[-1]) not in manifests:
            delete(tar)
            removed.append(tar.uri)
    if not dataset.is_s3:
        for folder in (SHARDS_DIR, MANIFESTS_DIR, REJECTIONS_DIR, STAGING_DIR):
            for leftover in _hidden_or_temporary(dataset.join(folder)):
                delete(leftover)
                removed.append(leftover.uri)
    return removed


def _hidden_or_temporary(folder: Location) -> list[Location]:
    try:
        infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return [
        folder.join(info.base_name)
        for info in infos
        if info.type == pafs.FileType.File
        and (info.base_name.startswith(".") or folder.path.endswith("tmp"))
    ]


def check_kept_columns(dataset: Location, columns: pa.Schema) -> None:
    """Refuse a run whose kept input columns (``--keep-columns``, with their types) are not
    those of the manifests ``dataset`` already holds: every manifest has one schema."""
    files = list_files(dataset.join(MANIFESTS_DIR), ".parquet")
    if not files:
        return
    held = kept_columns(pq.read_schema(files[0].path, filesystem=files[0].fs))
    if [(f.name, f.type) for f in held] != [(f.name, f.type) for f in columns]:
        raise ValueError(
            f"--keep-columns: {dataset.uri} holds manifests with kept columns "
            f"{describe(held)}; this run would write {describe(columns)}: keep the same "
            "columns, or write to another --output"
        )


def next_shard_number(dataset: Location) -> int:
    shards = [
        shard_of(f.path.rsplit("/", 1)[-1])
        for f in list_files(dataset.join(MANIFESTS_DIR), ".parquet")
    ]
    return max(shards, default=-1) + 1


@dataclass
class Finished:
    """Finished keys split by plan partition: the driver keeps their folder and count only."""

    folder: Location  # finished-<p>.parquet: the unique finished keys of plan partition p
    keys: int


def finished_by_partition(
    dataset: Location, plan: Plan, ray_above: int = RAY_ABOVE_ROWS
) -> Finished:
    """Spread the keys of every sample already kept or rejected over ``plan``'s partitions.

    Recomputed on every run (the dataset changed since the last one). Below ``ray_above``
    manifest and rejection rows (counted from Parquet footers) the driver does it; from there
    a task per manifest or rejections file stages its keys sorted by partition and a task per
    partition reads its row groups of them (as the plan's read and resolve tasks do).
    """
    folder = dataset.join(plan_dir(plan.plan_id), "finished")
    with contextlib.suppress(FileNotFoundError):
        folder.fs.delete_dir(folder.path)
    manifests = [f.path for f in list_files(dataset.join(MANIFESTS_DIR), ".parquet")]
    rejections = [f.path for f in list_files(dataset.join(REJECTIONS_DIR), ".parquet")]
    context = {"folder": folder.uri, "partitions": plan.partitions}
    rows = sum(pq.read_metadata(p, filesystem=dataset.fs).num_rows for p in manifests + rejections)
    if not rows:
        return Finished(folder, 0)
    if rows < ray_above:
        fs = dataset.fs
        tables = [_read_keys(fs, manifests, None), _read_keys(fs, rejections, _REDONE)]
        keys = _keyed(pa.concat_tables(tables), plan.partitions)
        counts = [
            _write_finished(
                keys.filter(pc.equal(keys["partition"], int(p)))["key"], int(p), context
            )
            for p in np.unique(keys["partition"].to_numpy())
        ]
        return Finished(folder, sum(counts))
    import ray.data

    files = [{"file": path, "rejections": False} for path in manifests]
    files += [{"file": path, "rejections": True} for path in rejections]
    context["stage"] = folder.join("stage").uri
    staged = (
        ray.data.from_items([{"index": i, **f} for i, f in enumerate(files)],
                            override_num_blocks=len(files))  # a task per file
        .map(_stage_finished, fn_kwargs={"context": context})
        .take_all()
    )  # fmt: skip
    context["staged"] = [r["file"] for r in staged if r["keys"]]
    partitions = [{"partition": p} for p in range(plan.partitions)]
    counts = (
        ray.data.from_items(partitions, override_num_blocks=len(partitions))  # a task each
        .map(_finish_partition, fn_kwargs={"context": context})
        .take_all()
    )
    with contextlib.suppress(FileNotFoundError):
        folder.fs.delete_dir(folder.join("stage").path)
    return Finished(folder, sum(c["keys"] for c in counts))


_STAGE_SCHEMA = pa.schema([("key", pa.string()), ("partition", pa.int32())])


def _stage_finished(item: dict, context: dict) -> dict:
    """The keys of one manifest or rejections file, staged sorted by plan partition."""
    fs = locate(context["folder"]).fs
    keys = _read_keys(fs, [item["file"]], _REDONE if item["rejections"] else None)
    keys = pa.table({"key": pc.drop_null(keys["key"])})
    file = locate(context["stage"]).join(f"{item['index']:06d}.parquet")
    file.fs.create_dir(file.path.rsplit("/", 1)[0])
    with (
        file.fs.open_output_stream(file.path) as out,
        pq.ParquetWriter(out, _STAGE_SCHEMA) as writer,
    ):
        write_by_partition(writer, keys, context["partitions"])
    return {"file": file.uri, "keys": keys.num_rows}


def _finish_partition(item: dict, context: dict) -> dict:
    """finished-<p> from partition p's row groups of the staged keys (none written if empty)."""
    partition = item["partition"]
    if not context["staged"]:
        return {"partition": partition, "keys": 0}
    keys = read_partition(context["staged"], partition, ["key"])["key"]
    return {"partition": partition, "keys": _write_finished(keys, partition, context)}


# a rejection finishes its sample, but a duplicate_input row's key belongs to the first listing
_REDONE = pc.field("reason") != str(Reason.DUPLICATE_INPUT)


def _read_keys(fs: pafs.FileSystem, paths: list[str], where) -> pa.Table:
    if not paths:
        return pa.table({"key": pa.array([], pa.string())})
    ds = pads.dataset(paths, filesystem=fs, format="parquet")
    # one schema for both kinds: a manifest's key is "not null", a rejection's may be null
    return pa.table({"key": ds.to_table(columns=["key"], filter=where)["key"]})


def _keyed(batch: pa.Table, partitions: int) -> pa.Table:
    """The keys of ``batch`` without nulls (malformed inputs), with their plan partition."""
    keys = pc.drop_null(batch["key"])
    return pa.table({"key": keys, "partition": partition_of(keys, partitions)})


def _write_finished(keys: pa.ChunkedArray, partition: int, context: dict) -> int:
    """Write partition ``partition``'s unique finished keys (nothing if none); their number."""
    if not len(keys):
        return 0
    keys = pa.table({"key": pc.unique(keys.combine_chunks())})
    file = locate(context["folder"]).join(f"finished-{partition:04d}.parquet")
    write_bytes_atomic(file, table_to_parquet_bytes(keys))
    return keys.num_rows


def unfinished_inputs(dataset: Location, plan: Plan, finished: Finished) -> ray.data.Dataset:
    """The plan's inputs without the finished ones, as a Ray Dataset (one task a partition)."""
    import ray.data

    paths = [f.path for f in plan.files]
    if not finished.keys:
        return ray.data.read_parquet(paths, filesystem=dataset.fs)
    return ray.data.from_items(
        [{"file": f.uri} for f in plan.files], override_num_blocks=len(plan.files)
    ).map_batches(
        _unfinished,
        batch_size=1,
        fn_kwargs={"finished": finished.folder.uri},
        batch_format="pyarrow",
    )


def _read_rows(file: Location, start: int, length: int | None) -> pa.Table:
    if start == 0 and length is None:
        return pq.read_table(file.path, filesystem=file.fs)
    with file.fs.open_input_file(file.path) as stream:
        parquet = pq.ParquetFile(stream)
        end = parquet.metadata.num_rows if length is None else start + length
        groups, first, offset = [], None, 0
        for g in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(g).num_rows
            if offset < end and offset + rows > start:
                groups.append(g)
                first = offset if first is None else first
            offset += rows
        if not groups:
            return parquet.schema_arrow.empty_table()
        table = parquet.read_row_groups(groups)
    return table.slice(start - first, end - start)


def _unfinished(item: pa.Table, finished: str) -> Iterator[pa.Table]:
    table = unfinished_rows(item["file"][0].as_py(), finished)
    for start in range(0, table.num_rows, UNFINISHED_BATCH_ROWS):
        yield table.slice(start, UNFINISHED_BATCH_ROWS)


def unfinished_rows(
    plan_file_uri: str, finished: str | None, start: int = 0, length: int | None = None
) -> pa.Table:
    """The rows of one plan partition file (of rows ``start`` to ``start + length`` only, when
    given) whose key is not in the same partition's finished keys (``Finished.folder``'s uri;
    None: nothing is finished). Only the row groups holding those rows are read."""
    plan_file = locate(plan_file_uri)
    table = _read_rows(plan_file, start, length)
    if finished is None:
        return table
    partition = plan_file.path.rsplit("-", 1)[1].split(".")[0]
    done = locate(finished).join(f"finished-{partition}.parquet")
    if exists(done):
        keys = pq.read_table(done.path, filesystem=done.fs)["key"].combine_chunks()
        table = table.filter(pc.invert(pc.is_in(table["key"], value_set=keys)))
    return table
