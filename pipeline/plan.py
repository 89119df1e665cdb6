"""The plan: every input the user named, read once, keyed, and split into partitions.

1. Split (driver): each input becomes parts (``curation.sources.split_input``): a folder's
   files in chunks, each tar, a Parquet list by row groups, a txt/jsonl list by line-aligned
   byte ranges (a gzipped or csv/tsv list stays whole). Byte ranges get their first line number
   from a count of the newlines of the ranges before them (one task per range).
   The number of plan partitions is fixed here, from those counts and the parts' sizes
   (``_estimated_rows``): the read tasks sort their rows into partitions.
2. Read (a task per part): the part is read with ``curation.sources``' rules, keys are
   computed, the good rows are staged under ``_work/plan-<id>/stage/<part>.parquet``, sorted
   by the key's partition with one Parquet row group per partition (``write_by_partition``),
   and the malformed rows (row number and value) become a ``malformed_input`` rejections file.
   It returns counts.
3. Resolve (a task per partition): reads its row groups of every staged file
   (``read_partition``: row-group statistics pick them, the others are not read); the first
   listing of a source in input order wins (each row carries its part and its place in the
   part), the survivors are written as ``inputs-<p>.parquet`` and the repeats as
   ``duplicate_input`` rejections.

Steps 2-3 are a file-based shuffle: rows cross from read to resolve tasks through files under
``_work/``, not Ray's object store. Ray Data's hash-shuffle groupby did this before: at 16M URLs
on 2 cores it once kept the job waiting 10 minutes after every reduce task had finished (the
executor's operator shutdown never returned). A part's file holds one row group per partition:
files = parts (not parts x partitions), and a resolve task reads each part's footer and its
own row group (on S3: two or three range GETs per part and partition).

The plan is marked done (``DONE.json``) last: a rerun with the same inputs skips every step,
and a rerun after a crash clears what the crashed build left (its partitions, staged rows and
rejection files) and builds again. The driver holds the parts, a count row per part and per
partition: nothing per URL (a folder's files are listed a part at a time, each part's paths
written to ``stage/listing/`` for its task).

Below ``ray_above`` bytes of input (estimated) the same steps run one after another in the
driver: Ray's fixed costs (a few seconds for tasks and a shuffle) outweigh the work there.

Secrets: the plan is what a rerun fetches, so it keeps each ``source_uri`` in full, signed
query strings and ``user:pass@`` included; everything the job publishes holds the redacted form
(``curation.redact``), and the key is derived from the full URL so both agree across reruns.
``_work/`` is private to the job and never published, and a plan that holds any secret is
deleted by ``forget_secrets`` as soon as the stream has accounted for every input: a rerun of a
finished job then reads its inputs again instead of keeping credentials on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curation import kept
from curation.redact import redact_uri
from curation.sources import (
    BYTE_RANGE,
    InputPart,
    SourceConfig,
    count_lines,
    iter_part,
    kept_schema,
    number_parts,
    split_input,
    write_listing,
)
from curation.writer import table_to_parquet_bytes, write_rejections
from runtime.storage import (
    Location,
    delete,
    exists,
    list_files,
    locate,
    read_bytes,
    write_bytes_atomic,
)
from schemas import PASSTHROUGH_COLUMNS, Reason, Stage, sample_key
from schemas.layout import REJECTIONS_DIR, plan_dir

PLAN_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source_uri", pa.string()),
        *((name, pa.string()) for name in PASSTHROUGH_COLUMNS),
        ("extra", pa.string()),
        (kept.KEPT, pa.string()),  # the kept columns' values, JSON (their types: Plan.columns)
        (BYTE_RANGE, pa.string()),
        # input order: part number << 32 | row within the part; the first listing wins
        ("order", pa.int64()),
    ]
)
PART_BYTES = 32 << 20  # a read task's share of a large list (its memory is a few times this)
ROWS_PER_PARTITION = 1_000_000  # about, per plan partition (a resolve or resume task's rows)
ROW_BYTES = 32  # bytes of a list per row, at least (a short URL and its newline): to size plans
TAR_MEMBER_BYTES = 1024  # a tar member with data: a header and a block, so a row per KiB at most
STAGE_RUN_ROWS = 1_000_000  # rows a read task sorts into partitions at once (its memory)
REJECTIONS_CHUNK = 100_000  # malformed rows per rejections file of a part
RAY_ABOVE_BYTES = 8 << 20  # estimated input bytes from which the plan runs on Ray (bench)
# a crawl task reads the row groups holding its slice of a partition (pipeline.crawl)
PLAN_ROW_GROUP_ROWS = 16_384
ROW_BITS = 32  # rows per part < 2**32: a part is at most PART_BYTES of text or a few row groups
STAGE_SCHEMA = PLAN_SCHEMA.append(pa.field("partition", pa.int32()))


@dataclass
class Plan:
    plan_id: str
    files: list[Location]  # partitions of unique inputs, inputs-<p>.parquet
    rows: int  # unique inputs to process
    malformed: int
    duplicates: int
    partitions: int  # the hash partitions keys are spread over (partition_of)
    secrets: int = 0  # inputs whose URL holds a secret (the plan is deleted once done)
    # the kept input columns and their types (curation.kept), fixed when the plan was built
    columns: pa.Schema = dataclasses.field(default_factory=lambda: pa.schema([]))


def plan_id(config: SourceConfig) -> str:
    spec = {"inputs": list(config.inputs), "url_column": config.url_column}
    if config.allow_file_and_s3_in_lists:  # other rows are usable: another plan
        spec["allow_file_and_s3_in_lists"] = True
    if config.caption_column != "caption":
        # the caption column changes the planned rows; left out at its default, so that plans
        # written before it existed keep their id and their jobs resume on them
        spec["caption_column"] = config.caption_column
    if config.keep_columns:  # the same: left out when none are kept
        spec["keep_columns"] = list(config.keep_columns)
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]


def _marker(dataset: Location, config: SourceConfig) -> Location:
    return dataset.join(plan_dir(plan_id(config)), "DONE.json")


def plan_is_done(dataset: Location, config: SourceConfig) -> bool:
    """Whether a run already planned these inputs (a rerun reads the plan, not the inputs)."""
    return exists(_marker(dataset, config))


def planned_columns(dataset: Location, config: SourceConfig) -> pa.Schema:
    """The kept columns' types of the plan of ``config``: as recorded when it was built, else
    read from the inputs now (``kept_schema``: cheap, and refuses bad settings before Ray)."""
    marker = _marker(dataset, config)
    if exists(marker):
        return kept.schema_from_text(json.loads(read_bytes(marker)).get("columns"))
    return kept_schema(config)


def partition_of(keys: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Plan partition of each key (keys are uniform hex: their first 7 digits spread them)."""
    head = pc.utf8_slice_codeunits(keys, 0, 7).to_numpy(zero_copy_only=False).astype("S7")
    digits = _HEX[head.view(np.uint8).reshape(-1, 7)].astype(np.int64)
    return (digits @ (16 ** np.arange(6, -1, -1, dtype=np.int64))) % partitions


_HEX = np.zeros(256, np.int64)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)


def load_or_build_plan(
    dataset: Location,
    config: SourceConfig,
    partitions: int = 16,
    *,
    ray_above: int = RAY_ABOVE_BYTES,
    part_bytes: int = PART_BYTES,
    columns: pa.Schema | None = None,
) -> Plan:
    """The plan of ``config.inputs`` under ``dataset``'s ``_work/``, built unless already done.

    ``partitions`` is a minimum: more are used so that none holds over ``ROWS_PER_PARTITION``
    inputs. From ``ray_above`` estimated input bytes the build runs on Ray (already started).
    ``columns``: the kept columns' types when already read (``planned_columns``).
    """
    pid = plan_id(config)
    folder = dataset.join(plan_dir(pid))
    marker = _marker(dataset, config)
    if exists(marker):
        done = json.loads(read_bytes(marker))
        files = list_files(folder, ".parquet")
        # a plan built before partitions were counted wrote every one of its partitions
        partitions = done.get("partitions", len(files))
        summary = [done[k] for k in ("rows", "malformed", "duplicates")]
        columns = kept.schema_from_text(done.get("columns"))
        return Plan(pid, files, *summary, partitions, done.get("secrets", 0), columns)
    if columns is None:
        columns = kept_schema(config)
    return _Build(dataset, folder, pid, config, partitions, ray_above, part_bytes, columns).run()


@dataclass
class _Build:
    dataset: Location
    folder: Location
    pid: str
    config: SourceConfig
    partitions: int
    ray_above: int
    part_bytes: int
    columns: pa.Schema

    def run(self) -> Plan:
        self._clear()  # whatever a crashed build of this plan left
        listing = self.folder.join("stage", "listing")
        parts = []
        for spec in self.config.inputs:
            for part in split_input(spec, self.config, self.part_bytes):
                if part.files:  # a folder's files go to their task in a file, not kept here
                    part = write_listing(part, listing.join(f"{len(parts):06d}.parquet"))
                parts.append(part)
        on_ray = sum(p.size for p in parts) >= self.ray_above
        parts, lines = self._number(parts, on_ray)
        footers: dict[str, tuple[int, ...]] = {}  # a Parquet list's parts share its footer
        estimate = sum(_estimated_rows(p, n, footers) for p, n in zip(parts, lines, strict=True))
        # fixed before any row is read: the read tasks sort their rows into these partitions
        partitions = max(self.partitions, -(-estimate // ROWS_PER_PARTITION))
        context = {
            "dataset": self.dataset.uri,
            "stage": self.folder.join("stage").uri,
            "pid": self.pid,
            "config": self.config,
            "columns": self.columns,
            "partitions": partitions,
        }
        read = _read_on_ray(parts, context) if on_ray else _read_here(parts, context)
        offsets = np.concatenate([[0], np.cumsum([r["rows"] for r in read])[:-1]]).tolist()
        staged = [r["file"] for r in read if r["rows"]]
        context.update(folder=self.folder.uri, offsets=offsets, staged=staged)
        resolve = _resolve_on_ray if on_ray else _resolve_here
        resolved = resolve(partitions, context) if staged else []
        summary = {
            "rows": sum(r["rows"] for r in resolved),
            "malformed": sum(r["malformed"] for r in read),
            "duplicates": sum(r["duplicates"] for r in resolved),
            "partitions": partitions,
            "secrets": sum(r["secrets"] for r in read),
        }
        self._clear_stage()
        write_bytes_atomic(
            self.folder.join("DONE.json"),
            json.dumps(
                {
                    "inputs": list(self.config.inputs),
                    **summary,
                    "columns": kept.schema_to_text(self.columns),  # what every rerun carries
                }
            ).encode(),
        )
        return Plan(self.pid, list_files(self.folder, ".parquet"), **summary, columns=self.columns)

    def _number(
        self, parts: list[InputPart], on_ray: bool
    ) -> tuple[list[InputPart], list[int | None]]:
        """The parts with their first line numbers, and each part's lines where counted."""
        ranges = [i for i, p in enumerate(parts) if not p.first_number]
        lines: list[int | None] = [None] * len(parts)
        if not ranges:
            return parts, lines
        if on_ray:
            import ray.data

            items = [{"index": i, "part": _dump(parts[i])} for i in ranges]
            counted = (
                ray.data.from_items(items, override_num_blocks=len(items))  # a task per range
                .map(_count_row)
                .take_all()
            )
            counts = [r["lines"] for r in sorted(counted, key=lambda r: r["index"])]
        else:
            counts = [count_lines(parts[i]) for i in ranges]
        for i, count in zip(ranges, counts, strict=True):
            lines[i] = count
        return number_parts(parts, [n or 0 for n in lines]), lines

    def _clear(self) -> None:
        self._clear_stage()
        for file in list_files(self.folder):
            delete(file)
        for file in list_files(self.dataset.join(REJECTIONS_DIR), ".parquet"):
            if file.path.rsplit("/", 1)[-1].startswith(f"source-{self.pid}-"):
                delete(file)

    def _clear_stage(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.folder.fs.delete_dir(self.folder.join("stage").path)


def _estimated_rows(part: InputPart, lines: int | None, footers: dict) -> int:
    """At least the rows of a part, about: counted lines, listed files, a Parquet list's row
    groups, else from its bytes.

    An overestimate only makes more, smaller partitions; lists of URLs shorter than
    ``ROW_BYTES`` make fewer, larger ones.
    """
    if lines is not None:
        return lines
    if part.kind == "files":
        return part.size
    if part.kind == "list" and part.uri.lower().removesuffix(".gz").endswith(".parquet"):
        if part.uri not in footers:  # a LAION row is ~10x ROW_BYTES: count, not guess
            footers[part.uri] = _row_group_rows(part.uri)
        return sum(footers[part.uri][part.start : part.end])
    return part.size // (TAR_MEMBER_BYTES if part.kind == "tar" else ROW_BYTES) + 1


def _row_group_rows(uri: str) -> tuple[int, ...]:
    """Rows of each row group of a Parquet list (read from its footer)."""
    file = locate(uri)
    meta = pq.read_metadata(file.path, filesystem=file.fs)
    return tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))


def _dump(part: InputPart) -> str:
    return json.dumps(dataclasses.asdict(part))


def _load(text: str) -> InputPart:
    fields = json.loads(text)
    return InputPart(**{**fields, "files": tuple(fields["files"])})


def _count_row(row: dict) -> dict:
    return {"index": row["index"], "lines": count_lines(_load(row["part"]))}


# -- read: one task per part ---------------------------------------------------------------


def _read_here(parts: list[InputPart], context: dict) -> list[dict]:
    return [read_part(index, part, context) for index, part in enumerate(parts)]


def _read_on_ray(parts: list[InputPart], context: dict) -> list[dict]:
    import ray.data

    items = [{"index": i, "part": _dump(p)} for i, p in enumerate(parts)]
    read = (
        ray.data.from_items(items, override_num_blocks=len(items))  # a task per part
        .map(_read_row, fn_kwargs={"context": context})
        .take_all()
    )
    return sorted(read, key=lambda r: r["index"])


def _read_row(row: dict, context: dict) -> dict:
    return read_part(row["index"], _load(row["part"]), context)


def read_part(index: int, part: InputPart, context: dict) -> dict:
    """Read one part: stage its keyed rows, publish its malformed rows; returns its counts.

    Streams: a part that cannot be split (a gzipped list) may hold any number of rows, so
    rows are staged in runs of ``STAGE_RUN_ROWS`` (each sorted into the plan's partitions)
    and malformed rows published in chunks.
    """
    config = context["config"]
    dataset = locate(context["dataset"])
    file = locate(context["stage"]).join(f"{index:06d}.parquet")
    malformed: list[dict] = []
    run: list[pa.Table] = []
    rows = chunks = bad = secrets = 0
    # Staged in place, never in a temporary folder outside the dataset: the rows hold full URLs
    # (secrets included), and the rebuild after a kill -9 clears the stage folder. Locally a
    # hidden name until complete; an S3 object appears only once its upload completes.
    folder, name = file.path.rsplit("/", 1)
    partial = file.path if dataset.is_s3 else f"{folder}/.{name}.tmp"
    file.fs.create_dir(folder)
    with (
        file.fs.open_output_stream(partial) as out,
        pq.ParquetWriter(out, STAGE_SCHEMA, compression="zstd") as writer,
    ):
        for batch in iter_part(part, config, context["columns"]):
            malformed.extend(item.rejection() for item in batch.malformed)
            for row in batch.rows:
                row["key"] = sample_key(row["source_uri"])  # the full URL: stable keys
                secrets += redact_uri(row["source_uri"]) != row["source_uri"]
                row["order"] = (index << ROW_BITS) | rows
                rows += 1
            if batch.rows:
                run.append(pa.Table.from_pylist(batch.rows, schema=PLAN_SCHEMA))
            if sum(t.num_rows for t in run) >= STAGE_RUN_ROWS:
                write_by_partition(writer, pa.concat_tables(run), context["partitions"])
                run = []
            if len(malformed) >= REJECTIONS_CHUNK:
                _publish_malformed(dataset, context, index, chunks, malformed)
                bad, chunks, malformed = bad + len(malformed), chunks + 1, []
        if run:
            write_by_partition(writer, pa.concat_tables(run), context["partitions"])
    if rows >= 1 << ROW_BITS:
        raise ValueError(f"{part.uri}: over {1 << ROW_BITS} rows in one part")
    if partial != file.path:
        file.fs.move(partial, file.path)
    if malformed:
        _publish_malformed(dataset, context, index, chunks, malformed)
    return {
        "index": index,
        "file": file.uri,
        "rows": rows,
        "malformed": bad + len(malformed),
        "secrets": secrets,
    }


def write_by_partition(writer: pq.ParquetWriter, table: pa.Table, partitions: int) -> None:
    """Append ``table``'s rows to ``writer`` sorted by their key's plan partition, a row group
    per partition, in a ``partition`` column (its statistics are what ``read_partition`` reads).
    Rows keep their order within a partition."""
    if not table.num_rows:
        return
    partition = partition_of(table["key"], partitions)
    by_partition = np.argsort(partition, kind="stable")
    table = table.take(pa.array(by_partition)).append_column(
        "partition", pa.array(partition[by_partition], pa.int32())
    )
    numbers = table["partition"].to_numpy()
    starts = np.flatnonzero(np.diff(numbers, prepend=-1))
    for start, end in zip(starts, [*starts[1:], len(numbers)], strict=True):
        writer.write_table(table.slice(start, end - start), row_group_size=end - start)


def read_partition(files: list[str], partition: int, columns: list[str] | None = None) -> pa.Table:
    """The rows of plan partition ``partition`` in files written by ``write_by_partition``.

    Arrow's dataset reader skips row groups whose ``partition`` statistics exclude it: a task
    reads each file's footer and its own row groups, not the other partitions' rows.
    """
    if not files:
        return pa.table({})
    fs = locate(files[0]).fs
    paths = [uri.removeprefix("s3://") for uri in files]  # Location.path of each (one fs)
    data = pads.dataset(paths, filesystem=fs, format="parquet")
    table = data.to_table(columns=columns, filter=pc.field("partition") == partition)
    return table.drop_columns([c for c in ["partition"] if c in table.column_names])


def _publish_malformed(
    dataset: Location, context: dict, index: int, chunk: int, rows: list[dict]
) -> None:
    write_rejections(dataset, f"source-{context['pid']}-malformed-{index:06d}-{chunk:04d}", rows)


# -- resolve: one task per partition -------------------------------------------------------


def _resolve_here(partitions: int, context: dict) -> list[dict]:
    return [resolve_partition(p, context) for p in range(partitions)]


def _resolve_on_ray(partitions: int, context: dict) -> list[dict]:
    import ray.data

    items = [{"partition": p} for p in range(partitions)]
    return (
        ray.data.from_items(items, override_num_blocks=partitions)  # a task per partition
        .map(_resolve_row, fn_kwargs={"context": context})
        .take_all()
    )


def _resolve_row(row: dict, context: dict) -> dict:
    return resolve_partition(row["partition"], context)


def resolve_partition(partition: int, context: dict) -> dict:
    """One plan partition from the staged files: its counts (nothing written if empty)."""
    table = read_partition(context["staged"], partition)
    if not table.num_rows:
        return {"partition": partition, "rows": 0, "duplicates": 0}
    return _resolve_group(table, partition, context)


def _resolve_group(table: pa.Table, partition: int, context: dict) -> dict:
    """One plan partition: keep each key's first listing, write it and the repeats' rejections."""
    table = table.select(PLAN_SCHEMA.names).sort_by([("key", "ascending"), ("order", "ascending")])
    keys = table["key"].combine_chunks()
    first = np.ones(len(keys), bool)
    if len(keys) > 1:
        first[1:] = pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    unique = table.filter(pa.array(first)).sort_by("order")
    folder = locate(context["folder"])
    write_bytes_atomic(
        folder.join(f"inputs-{partition:04d}.parquet"),
        table_to_parquet_bytes(unique, row_group_size=PLAN_ROW_GROUP_ROWS),
    )
    repeats = np.flatnonzero(~first)
    if len(repeats):
        winner = np.flatnonzero(first)[np.cumsum(first) - 1]  # each row's first listing
        order = table["order"].to_numpy()
        offsets = np.asarray(context["offsets"], np.int64)
        position = offsets[order >> ROW_BITS] + (order & ((1 << ROW_BITS) - 1))
        now = dt.datetime.now(dt.UTC)
        uris = [redact_uri(u) for u in table["source_uri"].take(pa.array(repeats)).to_pylist()]
        rows = [
            {"key": keys[int(i)].as_py(), "source_uri": uri, "stage": str(Stage.SOURCE),
             "reason": str(Reason.DUPLICATE_INPUT),
             "detail": f"input #{position[i]} repeats input #{position[winner[i]]}",
             "rejected_at": now}
            for i, uri in zip(repeats, uris, strict=True)
        ]  # fmt: skip
        name = f"source-{context['pid']}-duplicates-{partition:04d}"
        write_rejections(locate(context["dataset"]), name, rows)
    return {"partition": partition, "rows": unique.num_rows, "duplicates": len(repeats)}


def forget_secrets(dataset: Location, plan: Plan) -> bool:
    """Delete a finished plan that holds secrets (see the module docstring); True if deleted."""
    if not plan.secrets:
        return False
    folder = dataset.join(plan_dir(plan.plan_id))
    delete(folder.join("DONE.json"))  # first: a half-deleted plan is never taken as done
    for file in list_files(folder, ".parquet"):
        delete(file)
    with contextlib.suppress(FileNotFoundError):  # the finished keys of its partitions
        folder.fs.delete_dir(folder.join("finished").path)
    return True
