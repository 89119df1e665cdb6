"""Inputs: URL lists, local folders, S3 prefixes and existing WebDataset tars.

``iter_inputs`` turns each input the user names into a stream of ``InputBatch``es: rows with
a ``source_uri`` (what the fetch stage reads), the passthrough columns, the columns named by
``keep_columns`` (typed, see ``curation.kept``) and an ``extra`` JSON of the other columns, plus the rows that could not be used (malformed lines, missing URLs, tar
members that are links or devices), which become rejections carrying their raw value.

Trust: the inputs the operator names (folders, ``s3://`` prefixes, tars, the lists themselves)
are read with the job's own access. The entries *inside* a URL list are not: lists come from the
web, so an entry may only name ``http``/``https`` unless ``allow_file_and_s3_in_lists`` is set;
``file://`` and ``s3://`` entries become ``refused_scheme`` rejections, never reads. Lines are
read in bounded memory (``MAX_LINE_BYTES``) and every carried column is stored redacted.
An input that cannot be read at all (a truncated ``.gz``, a file that is not a tar) raises
``ValueError`` naming it. Nothing here fetches image bytes.

For a distributed plan an input is first cut into ``InputPart``s (``split_input``) that tasks
read independently (``iter_part``) with the same rules: a folder's files in chunks, each tar
whole, a Parquet list by row groups, an uncompressed txt/jsonl list by line-aligned byte ranges.
A folder or prefix is listed as a stream (local: ``os.scandir``; S3: ``ListObjectsV2`` pages of
1,000 keys) and its parts come one at a time: whoever splits it holds one part's paths, never the
whole listing, and can hand each part's paths to its task in a file (``write_listing``).
A gzipped list cannot be split (a deflate stream has no entry points) and neither can a csv/tsv
list (a quoted field may hold a newline, so a line boundary need not be a record boundary): each
is one part, read by one task.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation import kept
from curation.redact import redact_text, redact_uri
from runtime.storage import Location, locate, s3_endpoint
from schemas import PASSTHROUGH_COLUMNS, SAMPLE_SCHEMA, Reason, Stage

LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".parquet")
FETCHABLE_SCHEMES = ("http", "https", "s3", "file")
LIST_SCHEMES = ("http", "https")  # what an entry of a URL list may name by default
RAW_LIMIT = 1000  # characters of an unusable row's raw value kept in its rejection
MAX_LINE_BYTES = 1 << 20  # a longer line of a list is an unusable row, never read into memory
MAX_META_BYTES = 1 << 20  # a tar's {key}.json larger than this is not read (nor held in memory)
BATCH_ROWS = 10_000
FILES_PER_PART = 100_000  # a folder's files per part (what the lister holds at a time)
S3_PAGE_KEYS = 1000  # keys per ListObjectsV2 call (S3's most)
SPLITTABLE_TEXT = (".txt", ".jsonl", ".json", ".ndjson")  # one record per line
INFER_ROWS = 1000  # first records of a JSON list whose values give its kept columns' types
CSV_INFER_BYTES = 1 << 20  # first bytes of a csv/tsv list whose text gives them (pyarrow's block)
# Internal column: "offset:size" of a member inside a tar (tar sources only).
BYTE_RANGE = "byte_range"


@dataclass(kw_only=True)
class SourceConfig:
    inputs: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "URL lists (txt/csv/tsv/jsonl/parquet, .gz too), local folders, "
            "s3:// prefixes or WebDataset .tar files; repeat the flag for several"
        },
    )
    url_column: str = field(
        default="url",
        metadata={"help": "column holding the image URL in csv/tsv/jsonl/parquet lists"},
    )
    allow_file_and_s3_in_lists: bool = field(
        default=False,
        metadata={
            "help": "let entries of URL lists name file:// and s3:// (read with this job's "
            "own file access and AWS credentials); only for lists you wrote yourself"
        },
    )
    caption_column: str = field(
        default="caption",
        metadata={
            "help": "column holding the caption in csv/tsv/jsonl/parquet lists (e.g. TEXT for "
            "LAION-style parquet); it becomes the manifest's caption and the shards' .txt"
        },
    )
    # Opt-in: a column named here is no longer a string in ``extra`` but a manifest column of
    # its input type, fixed when the plan is built (curation.kept).
    keep_columns: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "input columns of csv/tsv/jsonl/parquet lists to keep as manifest columns "
            "of their own type (e.g. similarity,NSFW,original_width); the other columns go "
            "to extra as text"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = (self.inputs,)
        self.inputs = tuple(self.inputs)
        if not self.url_column or not self.caption_column:
            raise ValueError("url_column and caption_column must not be empty")
        if isinstance(self.keep_columns, str):
            self.keep_columns = (self.keep_columns,)
        # "a,b" as well as "a" "b": column names with commas cannot be kept
        names = [n.strip() for item in self.keep_columns for n in str(item).split(",")]
        self.keep_columns = tuple(n for n in names if n)
        for name in self.keep_columns:
            if name in SAMPLE_SCHEMA.names or name in (self.url_column, self.caption_column):
                what = "a manifest column" if name in SAMPLE_SCHEMA.names else "the URL or caption"
                raise ValueError(
                    f"keep_columns: {name!r} is {what} already; keep other input columns only"
                )
        if len(set(self.keep_columns)) != len(self.keep_columns):
            raise ValueError("keep_columns: a column is named twice")


@dataclass
class Unusable:
    """An input row that cannot be processed: it becomes one rejection row."""

    where: str  # "urls.csv:12", "shard.tar#k1.jpg"
    detail: str
    raw: str | None  # the row's URL, else its text: stored redacted and cut to RAW_LIMIT
    reason: Reason = Reason.MALFORMED_INPUT

    def rejection(self) -> dict:
        """The REJECTION_SCHEMA row (no key: an unusable row has no source to key)."""
        return {
            "key": None,
            "source_uri": None if self.raw is None else redact_uri(self.raw, RAW_LIMIT),
            "stage": str(Stage.SOURCE),
            "reason": str(self.reason),
            "detail": redact_uri(f"{self.where}: {self.detail}", RAW_LIMIT),
            "rejected_at": dt.datetime.now(dt.UTC),
        }


@dataclass
class InputBatch:
    # source_uri, passthrough columns, extra (JSON str or None), byte_range, and kept (JSON
    # str or None: curation.kept) when columns are kept
    rows: list[dict]
    malformed: list[Unusable]


@dataclass(frozen=True)
class InputPart:
    """A piece of one input that a task reads on its own (``iter_part``).

    ``start``/``end``: a byte range of a txt/jsonl list or a range of Parquet row groups
    (``end`` None: to the end). ``first_number``: the row number of the part's first line or
    row in its file, for malformed-row messages; 0 until ``count_lines`` has been summed over
    the earlier ranges of the file (``number_parts``). ``files``: a folder's image files, or
    ``listing``: the file holding them (``write_listing``).
    """

    kind: str  # "list", "tar" or "files"
    uri: str
    start: int = 0
    end: int | None = None
    first_number: int = 1
    files: tuple[str, ...] = ()
    size: int = 0  # bytes to read (files: their number), to size the work
    listing: str = ""  # URI of a Parquet file of the part's files (a "path" column)


def iter_inputs(spec: str, config: SourceConfig) -> Iterator[InputBatch]:
    """Batches of input rows from one user-named input (a list, folder, prefix or tar)."""
    columns = kept_schema(config)
    for part in split_input(spec, config):
        yield from iter_part(part, config, columns)


def input_kind(spec: str) -> tuple[Location, str]:
    """(location, "folder" | "tar" | "list") of a user-named input; a metadata lookup only.

    Raises FileNotFoundError for a missing input, ValueError for one of no known kind or that
    cannot be looked at (an S3 prefix without credentials, an unreachable endpoint).
    """
    loc = locate(spec)
    try:
        info = loc.fs.get_file_info(loc.path)
    except OSError as exc:
        raise ValueError(f"cannot read input {spec}: {str(exc).splitlines()[0]}") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {spec}")
    if info.type == pafs.FileType.Directory:
        return loc, "folder"
    if _base(loc.path).endswith(".tar"):
        return loc, "tar"
    if _base(loc.path).endswith(LIST_SUFFIXES):
        return loc, "list"
    raise ValueError(
        f"{spec}: not a folder, .tar or URL list ({', '.join(LIST_SUFFIXES)}, optionally .gz)"
    )


def split_input(
    spec: str, config: SourceConfig, part_bytes: int | None = None
) -> Iterator[InputPart] | list[InputPart]:
    """The parts of one user-named input, in input order (see the module docstring).

    Without ``part_bytes`` lists stay whole. A text list cut into byte ranges gets parts whose
    ``first_number`` is 0: count their lines (``count_lines``) and call ``number_parts``.
    A folder's parts come as they are listed (an iterator): keep ``write_listing``'s parts,
    not the listed ones, to keep memory flat.
    """
    loc, kind = input_kind(spec)
    if kind == "folder":
        return _split_tree(loc)
    size = loc.fs.get_file_info(loc.path).size
    if kind == "tar":
        return [InputPart("tar", loc.uri, size=size)]
    base = _base(loc.path)
    if base.endswith(".parquet"):
        return _split_parquet(loc, config, part_bytes)
    gzipped = loc.path.endswith(".gz")
    if part_bytes and not gzipped and base.endswith(SPLITTABLE_TEXT) and size > part_bytes:
        return _split_text(loc, size, part_bytes)
    return [InputPart("list", loc.uri, size=size * (4 if gzipped else 1))]


def iter_part(
    part: InputPart, config: SourceConfig, columns: pa.Schema | None = None
) -> Iterator[InputBatch]:
    """Batches of input rows of one part, as ``iter_inputs`` reads them from the whole input.

    ``columns``: the kept columns' types (``kept_schema``), fixed when the plan was built; a
    row whose value does not fit its column's type is an unusable row saying so.
    """
    loc = locate(part.uri)
    columns = columns if columns is not None else pa.schema([])
    if part.kind == "files":
        yield from _iter_files(loc, part.files or _read_listing(part.listing))
    elif part.kind == "tar":
        yield from _iter_tar(loc)
    elif _base(loc.path).endswith(".parquet"):
        yield from _iter_parquet(loc, config, part, columns)
    else:
        yield from _iter_list(loc, config, part, columns)


def kept_schema(config: SourceConfig) -> pa.Schema:
    """The types of ``config.keep_columns``, read from every input (see ``curation.kept``).

    A metadata read per Parquet list, the first ``INFER_ROWS`` records of a JSON list, the
    first ``CSV_INFER_BYTES`` of a csv/tsv list. ValueError naming the column and the input
    for an input without the column (folders, tars and txt lists have none), a type that
    cannot be carried, or inputs whose types disagree.
    """
    if not config.keep_columns:
        return pa.schema([])
    found: dict[str, tuple[pa.DataType, str]] = {}
    for spec in config.inputs:
        loc, kind = input_kind(spec)
        base = _base(loc.path)
        if kind != "list" or base.endswith(".txt"):
            what = "a txt list" if kind == "list" else f"a {kind}"
            raise ValueError(
                f"--keep-columns: {spec} is {what}, which has no columns; keep columns of "
                "csv/tsv/jsonl/parquet lists only"
            )
        types = _column_types(loc, config)
        for name in config.keep_columns:
            if name not in types:
                raise ValueError(
                    f"--keep-columns: no column {name!r} in {loc.uri} "
                    f"(columns: {', '.join(list(types)[:20])})"
                )
            kind_here = kept.plain(types[name])
            if not kept.carried(kind_here):
                raise ValueError(
                    f"--keep-columns: column {name!r} of {loc.uri} is {kind_here}; columns "
                    "of booleans, integers, floats, strings and lists or structs of them "
                    "can be kept"
                )
            seen, where = found.get(name, (None, loc.uri))
            merged = kept.unify(seen, kind_here)
            if merged is None:
                raise ValueError(
                    f"--keep-columns: column {name!r} is {seen} in {where} but {kind_here} in "
                    f"{loc.uri}; the inputs must agree"
                )
            found[name] = (merged, where if seen is not None else loc.uri)
    names = config.keep_columns
    return pa.schema([pa.field(name, kept.final(found[name][0])) for name in names])


def _column_types(loc: Location, config: SourceConfig) -> dict[str, pa.DataType]:
    """Column name -> type of one list, as ``kept_schema`` reads it."""
    base = _base(loc.path)
    if base.endswith(".parquet"):
        with loc.fs.open_input_file(loc.path) as stream:
            schema = _open_parquet(loc, stream, config).schema_arrow
        return {f.name: f.type for f in schema}
    with io.BufferedReader(loc.fs.open_input_stream(loc.path, compression=None)) as raw:
        stream = gzip.GzipFile(fileobj=raw) if loc.path.endswith(".gz") else raw
        try:
            if base.endswith((".csv", ".tsv")):
                return _csv_types(stream, "\t" if base.endswith(".tsv") else ",", loc.uri)
            return _json_types(stream, loc.uri, config.keep_columns)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"{loc.uri}: truncated or corrupt gzip ({exc})") from exc


def _csv_types(stream, delimiter: str, where: str) -> dict[str, pa.DataType]:
    """The types pyarrow's CSV reader infers from a list's first block; the ones it infers that
    are not ``kept.CSV_TYPES`` (dates, timestamps, none in the block) are text."""
    import pyarrow.csv as pacsv

    head = stream.read(CSV_INFER_BYTES)
    head = head[: head.rfind(b"\n") + 1] or head  # whole lines: a cut one would mislead
    try:
        reader = pacsv.open_csv(
            io.BytesIO(head),
            read_options=pacsv.ReadOptions(block_size=CSV_INFER_BYTES + 1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        )
    except pa.ArrowException as exc:
        raise ValueError(f"{where}: cannot infer column types ({exc})") from None
    types = {}
    for f in reader.schema:
        types[f.name] = f.type if any(f.type.equals(t) for t in kept.CSV_TYPES) else pa.string()
    return types


def _json_types(stream, where: str, names: tuple[str, ...]) -> dict[str, pa.DataType]:
    """Every column of a JSON list's first ``INFER_ROWS`` records; those in ``names`` with the
    type of their values there (null for none), ValueError when these are of several types."""
    values: dict[str, list] = {}
    records = _jsonl_records(_bounded_lines(stream))
    for count, (_, record, _, _) in enumerate(records):
        if count >= INFER_ROWS:
            break
        for name, value in (record or {}).items():
            seen = values.setdefault(name, [])
            if value is not None and name in names:
                seen.append(value)
    types = {}
    for name, seen in values.items():
        try:
            types[name] = pa.array(seen).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            kinds = ", ".join(sorted({type(v).__name__ for v in seen}))
            raise ValueError(
                f"--keep-columns: column {name!r} of {where} holds values of several types in "
                f"its first {INFER_ROWS} rows ({kinds})"
            ) from None
    return types


def count_lines(part: InputPart) -> int:
    """Newlines in a text part's byte range: the line numbers its successors start from."""
    loc = locate(part.uri)
    count = 0
    with _open_range(loc, part.start, part.end) as stream:
        while chunk := stream.read(1 << 22):
            count += chunk.count(b"\n")
    return count


def number_parts(parts: list[InputPart], lines: list[int]) -> list[InputPart]:
    """Give byte-range parts (``first_number`` 0) their first line number from the line counts
    of the ranges before them in the same file (``lines[i]`` for ``parts[i]``)."""
    numbered, seen = [], 0
    for i, part in enumerate(parts):
        if part.first_number:
            numbered.append(part)
            continue
        if part.start == 0:
            seen = 0
        numbered.append(replace(part, first_number=seen + 1))
        seen += lines[i]
    return numbered


def _base(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    return name[:-3] if name.endswith(".gz") else name


def _split_tree(root: Location) -> Iterator[InputPart]:
    """Every file under a folder or prefix: images in chunks, each .tar file its own part.

    Parts come as the listing streams (``_walk``). Local folders come in directory order
    (``os.scandir``, stable for an unchanged folder; sorting would mean holding a whole
    directory's names), S3 prefixes in key order.
    """
    files: list[str] = []
    for path, size in _walk(root):
        name = path.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue  # hidden files: editor droppings, our own temporaries
        if name.lower().endswith(".tar"):
            if files:
                yield InputPart("files", root.uri, files=tuple(files), size=len(files))
                files = []
            yield InputPart("tar", _sibling(root, path).uri, size=size)
            continue
        files.append(path)
        if len(files) >= FILES_PER_PART:
            yield InputPart("files", root.uri, files=tuple(files), size=len(files))
            files = []
    if files:
        yield InputPart("files", root.uri, files=tuple(files), size=len(files))


def _walk(root: Location) -> Iterator[tuple[str, int]]:
    """(path, size) of every file under ``root``, streamed; a tar's size is what is used."""
    if root.is_s3:
        yield from _walk_s3(root)
        return
    folders, seen = [root.path], set()
    while folders:
        folder = folders.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue  # a link back up the tree: followed once, as pyarrow's listing did
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():
                        folders.append(entry.path)
                    elif entry.is_file():
                        tar = entry.name.lower().endswith(".tar")
                        yield entry.path, entry.stat().st_size if tar else 0
        except OSError as exc:  # an unreadable subfolder, a link to nowhere
            raise ValueError(f"cannot list {folder}: {exc.strerror or exc}") from None


def _walk_s3(root: Location) -> Iterator[tuple[str, int]]:
    """The keys under an S3 prefix, a ``ListObjectsV2`` page (1,000 keys) at a time.

    pyarrow's S3 listing returns a whole recursive listing as one list; boto3 pages it.
    """
    import boto3
    import botocore.exceptions

    bucket, _, prefix = root.path.partition("/")
    client = boto3.client("s3", endpoint_url=s3_endpoint())
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket,
        Prefix=f"{prefix}/" if prefix else "",
        PaginationConfig={"PageSize": S3_PAGE_KEYS},
    )
    try:
        for page in pages:
            for item in page.get("Contents", ()):
                if not item["Key"].endswith("/"):  # "folder" marker objects
                    yield f"{bucket}/{item['Key']}", item["Size"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise ValueError(f"cannot list {root.uri}: {str(exc).splitlines()[0]}") from None


def write_listing(part: InputPart, file: Location) -> InputPart:
    """``part`` with its files moved to ``file``: a folder's listing goes to the tasks that
    read it through files, not through the memory of the process that lists it."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"path": list(part.files)}), buffer, compression="zstd")
    file.fs.create_dir(file.path.rsplit("/", 1)[0])
    with file.fs.open_output_stream(file.path) as out:
        out.write(buffer.getvalue())
    return replace(part, files=(), listing=file.uri)


def _read_listing(uri: str) -> tuple[str, ...]:
    file = locate(uri)
    return tuple(pq.read_table(file.path, filesystem=file.fs)["path"].to_pylist())


def _iter_files(root: Location, files: tuple[str, ...]) -> Iterator[InputBatch]:
    for start in range(0, len(files), BATCH_ROWS):
        rows = [
            {"source_uri": _sibling(root, path).uri if root.is_s3 else f"file://{path}"}
            for path in files[start : start + BATCH_ROWS]
        ]
        yield InputBatch(rows, [])


def _sibling(root: Location, path: str) -> Location:
    uri = f"s3://{path}" if root.is_s3 else path
    return Location(root.fs, path, uri)


def _iter_tar(tar: Location) -> Iterator[InputBatch]:
    """Members of a tar (e.g. a WebDataset shard): each non-JSON file is one input.

    A ``{key}.json`` member beside an image is read as passthrough metadata for it. Links and
    devices become rejections (never followed); a tar that is truncated, lies about a member's
    size or is no tar at all raises ``ValueError``.
    """
    base_uri = tar.uri if tar.is_s3 else f"file://{tar.path}"
    rows: list[dict] = []
    unusable: list[Unusable] = []
    meta: dict[str, dict] = {}
    with tar.fs.open_input_file(tar.path) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for member in tf:
                    if member.isdir():
                        continue
                    where = f"{base_uri}#{member.name}"
                    if not member.isfile():
                        unusable.append(Unusable(where, _not_a_file(member), where))
                        continue
                    prefix, _, ext = member.name.partition(".")
                    if ext in ("json", "txt", "cls"):
                        if ext == "json" and member.size <= MAX_META_BYTES:
                            meta[prefix] = _json_or_empty(tf.extractfile(member))
                        continue
                    byte_range = f"{member.offset_data}:{member.size}"
                    rows.append({"source_uri": where, BYTE_RANGE: byte_range, "_prefix": prefix})
                end = tf.offset
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValueError(f"{tar.uri}: not a readable tar ({exc})") from exc
        _check_tar_end(stream, end, tar.uri)
    for row in rows:
        row.update(_passthrough(meta.get(row.pop("_prefix"), {}), url_column=None))
    for start in range(0, max(len(rows), 1), BATCH_ROWS):
        yield InputBatch(rows[start : start + BATCH_ROWS], unusable if start == 0 else [])


def _not_a_file(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"tar member is a symbolic link to {member.linkname!r}, not a file"
    if member.islnk():
        return f"tar member is a hard link to {member.linkname!r}, not a file"
    kind = "device" if member.isdev() else "special member"
    return f"tar member is a {kind} (type {member.type!r}), not a file"


def _check_tar_end(stream, offset: int, uri: str) -> None:
    """tarfile ends a listing quietly at a header it cannot read: tell that from a real end."""
    size = stream.size()
    if offset >= size:
        return
    block = stream.read_at(tarfile.BLOCKSIZE, offset)
    if block.strip(b"\0"):
        raise ValueError(
            f"{uri}: corrupt tar (unreadable header at byte {offset} of {size}: truncated, "
            "or a member's size is wrong)"
        )


def _json_or_empty(stream: io.BufferedReader | None) -> dict:
    try:
        value = json.loads(stream.read()) if stream else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _iter_list(
    loc: Location, config: SourceConfig, part: InputPart, columns: pa.Schema
) -> Iterator[InputBatch]:
    base = _base(loc.path)
    if part.start or part.end is not None:
        opened = _open_range(loc, part.start, part.end)
    else:
        opened = io.BufferedReader(loc.fs.open_input_stream(loc.path, compression=None))
    with opened as raw:
        stream = gzip.GzipFile(fileobj=raw) if loc.path.endswith(".gz") else raw
        lines = _bounded_lines(stream, part.first_number)
        text = base.endswith((".csv", ".tsv"))  # fields are strings, typed as pyarrow would
        if base.endswith(".txt"):
            records = _txt_records(lines)
        elif text:
            records = _csv_records(lines, "\t" if base.endswith(".tsv") else ",", loc.uri, config)
        else:
            records = _jsonl_records(lines)
        try:
            yield from _batched(records, loc.uri, config, columns, text)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"{loc.uri}: truncated or corrupt gzip ({exc})") from exc


def _split_text(loc: Location, size: int, part_bytes: int) -> list[InputPart]:
    """Byte ranges of about ``part_bytes`` that start at the beginning of a line."""
    starts = [0]
    with loc.fs.open_input_file(loc.path) as stream:
        while starts[-1] + part_bytes < size:
            stream.seek(starts[-1] + part_bytes)
            position = stream.tell()
            while chunk := stream.read(1 << 16):  # to the end of the line cut through
                newline = chunk.find(b"\n")
                if newline >= 0:
                    position += newline + 1
                    break
                position += len(chunk)
            if position >= size:
                break
            starts.append(position)
    ends = [*starts[1:], size]
    return [
        InputPart("list", loc.uri, start, end, first_number=0, size=end - start)
        for start, end in zip(starts, ends, strict=True)
    ]


class _Range(io.RawIOBase):
    """Bytes ``start`` to ``end`` of a random-access file, as a stream."""

    def __init__(self, stream, start: int, end: int | None) -> None:
        stream.seek(start)
        self.stream = stream
        self.left = (stream.size() if end is None else end) - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(min(len(buffer), self.left)) if self.left > 0 else b""
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


def _open_range(loc: Location, start: int, end: int | None) -> io.BufferedReader:
    return io.BufferedReader(_Range(loc.fs.open_input_file(loc.path), start, end), 1 << 20)


# A record: (line or row number, fields or None when unparsable, problem, the row's raw text)
Record = tuple[int, dict | None, str, str | None]
# A line of a list: (its number, its text with the line ending, True when cut at MAX_LINE_BYTES)
Line = tuple[int, str, bool]


def _bounded_lines(stream: io.BufferedIOBase, first_number: int = 1) -> Iterator[Line]:
    """The lines of a list, decoded as UTF-8 (a BOM dropped, invalid bytes replaced).

    A line longer than ``MAX_LINE_BYTES`` is cut there and the rest of it skipped in bounded
    reads: a list that is one 1 GB line costs a megabyte of memory, not gigabytes.
    """
    limit = MAX_LINE_BYTES
    number = first_number - 1
    while line := stream.readline(limit + 1):
        number += 1
        cut = len(line) > limit
        if cut:
            line = line[:limit]
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        text = line.decode("utf-8", errors="replace")
        yield number, text.removeprefix("\ufeff") if number == 1 else text, cut


def _too_long(number: int, text: str) -> Record:
    head = text[:RAW_LIMIT]
    return number, None, f"line longer than {MAX_LINE_BYTES} bytes (skipped)", head


def _txt_records(lines: Iterator[Line]) -> Iterator[Record]:
    for number, line, cut in lines:
        if cut:
            yield _too_long(number, line)
            continue
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, {"url": line}, "", line


def _csv_records(
    lines: Iterator[Line], delimiter: str, where: str, config: SourceConfig
) -> Iterator[Record]:
    cut_lines: list[tuple[int, str]] = []  # lines cut at the limit, not yet reported

    def texts() -> Iterator[str]:
        for number, text, cut in lines:
            if cut:
                cut_lines.append((number, text))
                yield "\n"  # a blank line: the reader skips it, the cut line is reported below
            else:
                yield text

    reader = csv.reader(texts(), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    if config.url_column not in header and "url" not in header:
        raise ValueError(
            f"{where}: no column {config.url_column!r} in the header "
            f"({', '.join(h[:40] for h in header[:20])}); set --url-column"
        )
    while True:
        try:
            values = next(reader)
        except StopIteration:
            values = None
        except csv.Error as exc:  # e.g. a field over the 128 KiB limit: the reader goes on
            yield reader.line_num, None, f"unreadable CSV row: {exc}", None
            continue
        while cut_lines:
            yield _too_long(*cut_lines.pop(0))
        if values is None:
            return
        if not values or values == [""]:
            continue
        raw = delimiter.join(values)
        if len(values) != len(header):
            yield reader.line_num, None, f"{len(values)} fields, header has {len(header)}", raw
            continue
        yield reader.line_num, dict(zip(header, values, strict=True)), "", raw


def _jsonl_records(lines: Iterator[Line]) -> Iterator[Record]:
    for number, line, cut in lines:
        if cut:
            yield _too_long(number, line)
            continue
        if not line.strip():
            continue
        raw = line.rstrip("\r\n")
        try:
            value = json.loads(line)
        except ValueError as exc:
            yield number, None, f"invalid JSON: {exc}", raw
            continue
        except RecursionError:  # "[[[[..." a million deep: valid JSON, too deep to parse
            yield number, None, "invalid JSON: nested too deeply", raw
            continue
        if isinstance(value, dict):
            yield number, value, "", raw
        else:
            yield number, None, f"expected a JSON object, got {type(value).__name__}", raw


def _split_parquet(loc: Location, config: SourceConfig, part_bytes: int | None) -> list[InputPart]:
    """Runs of whole row groups of about ``part_bytes`` (uncompressed) each."""
    with loc.fs.open_input_file(loc.path) as stream:
        parquet = _open_parquet(loc, stream, config)
        meta = parquet.metadata
        groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    size = sum(g.total_byte_size for g in groups)
    if not part_bytes or len(groups) < 2:
        return [InputPart("list", loc.uri, size=size)]
    parts, start, rows, taken = [], 0, 0, 0
    for g, group in enumerate(groups):
        taken += group.total_byte_size
        if taken >= part_bytes or g == len(groups) - 1:
            parts.append(
                InputPart("list", loc.uri, start, g + 1, first_number=rows + 1, size=taken)
            )
            rows += sum(groups[i].num_rows for i in range(start, g + 1))
            start, taken = g + 1, 0
    return parts


def _open_parquet(loc: Location, stream, config: SourceConfig) -> pq.ParquetFile:
    """A Parquet list whose URL column holds strings, else ``ValueError``."""
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{loc.uri}: not a readable Parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    if config.url_column not in schema.names:
        raise ValueError(
            f"{loc.uri}: no column {config.url_column!r} (columns: "
            f"{', '.join(schema.names)}); set --url-column"
        )
    url_type = schema.field(config.url_column).type
    if pa.types.is_dictionary(url_type):
        url_type = url_type.value_type
    if not (pa.types.is_string(url_type) or pa.types.is_large_string(url_type)):
        raise ValueError(
            f"{loc.uri}: column {config.url_column!r} holds {url_type}, not strings; "
            "set --url-column to the column of URLs"
        )
    return parquet


def _iter_parquet(
    loc: Location, config: SourceConfig, part: InputPart, columns: pa.Schema
) -> Iterator[InputBatch]:
    with loc.fs.open_input_file(loc.path) as stream:
        parquet = _open_parquet(loc, stream, config)
        groups = range(part.start, parquet.num_row_groups if part.end is None else part.end)
        first = part.first_number  # row number (1-based) of the batch's first row
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=list(groups)):
            rows = pa.Table.from_batches([batch]).to_pylist()
            records = [
                (first + i, row, "", json.dumps(row, default=str)) for i, row in enumerate(rows)
            ]
            first += batch.num_rows
            yield from _batched(iter(records), loc.uri, config, columns, typed=True)


def _batched(
    records: Iterator[Record],
    where: str,
    config: SourceConfig,
    columns: pa.Schema,
    text: bool = False,
    typed: bool = False,
) -> Iterator[InputBatch]:
    """Usable rows and unusable ones; ``columns``: the kept columns, whose values are read as
    csv text (``text``), taken as they are from a Parquet list whose types were checked when
    the plan was built (``typed``), or checked against their type (JSON values)."""
    batch = InputBatch([], [])
    for number, record, problem, raw in records:
        unusable = None
        if record is None:
            unusable = Unusable(f"{where}:{number}", problem, raw)
        else:
            url = record.get("url" if config.url_column not in record else config.url_column)
            value = url if isinstance(url, str) else raw
            if url is not None and not isinstance(url, str):
                value = json.dumps(url, default=str)  # a number, list, ...: as it was listed
            problem = url_problem(url)
            if problem:
                unusable = Unusable(f"{where}:{number}", problem, value)
            elif not config.allow_file_and_s3_in_lists and _scheme(url) not in LIST_SCHEMES:
                detail = (
                    f"{_scheme(url)}:// entry in a URL list refused (lists may name http(s) "
                    "only; see --allow-file-and-s3-in-lists)"
                )
                unusable = Unusable(f"{where}:{number}", detail, value, Reason.REFUSED_SCHEME)
        if unusable is None:
            try:
                row = {"source_uri": str(url).strip()}
                row.update(
                    _passthrough(
                        record, config.url_column, config.caption_column, config.keep_columns
                    )
                )
                if columns.names:
                    row[kept.KEPT] = _kept(record, columns, text, typed)
                batch.rows.append(row)
            except ValueError as exc:  # a kept column's value is not of its type
                unusable = Unusable(f"{where}:{number}", str(exc), value)
        if unusable is not None:
            batch.malformed.append(unusable)
        if len(batch.rows) + len(batch.malformed) >= BATCH_ROWS:
            yield batch
            batch = InputBatch([], [])
    if batch.rows or batch.malformed:
        yield batch


def _scheme(url: str) -> str:
    return urlparse(url.strip()).scheme.lower()


def url_problem(url: object) -> str:
    """Why ``url`` cannot be fetched, or "" when it looks usable."""
    if url is not None and not isinstance(url, str):
        return f"URL is not a string ({type(url).__name__})"
    if not url or not url.strip():
        return "missing URL"
    url = url.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        # urlparse silently drops tabs and newlines: what is fetched would not be what was listed
        return "control character inside URL"
    try:
        parsed = urlparse(url)
    except ValueError as exc:
        return f"unparsable URL: {exc}"
    if parsed.scheme.lower() not in FETCHABLE_SCHEMES:
        return f"unsupported URL scheme {parsed.scheme!r}" if parsed.scheme else "not a URL"
    if parsed.scheme.lower() in ("http", "https", "s3") and not parsed.netloc:
        return "URL without a host"
    if any(c.isspace() for c in url):
        return "whitespace inside URL"
    return ""


def _kept(record: dict, columns: pa.Schema, text: bool, typed: bool) -> str | None:
    """A row's kept values as in-flight JSON (``curation.kept``); ValueError for one not of its
    column's type."""
    values = {}
    for field_ in columns:
        value = record.get(field_.name)
        try:
            converted = kept.redacted(value) if typed else kept.convert(value, field_.type, text)
        except ValueError as exc:
            raise ValueError(f"kept column {field_.name!r}: {exc}") from None
        values[field_.name] = converted
    return kept.encode(values)


def _passthrough(
    record: dict,
    url_column: str | None,
    caption_column: str = "caption",
    keep: tuple[str, ...] = (),
) -> dict:
    """Split a record's other columns into the named passthrough columns and ``extra``.

    The caption comes from ``caption_column``; a column named ``caption`` beside another
    caption column is kept in ``extra`` rather than lost. Every value is stored redacted
    (``curation.redact``): lists carry signed URLs in ``page_url``, captions and extra columns
    as well as in the image URL, and none of them is ever fetched, so nothing needs their
    secrets.
    """
    sources = {name: name for name in PASSTHROUGH_COLUMNS} | {"caption": caption_column}
    columns = {source: name for name, source in sources.items()}  # input column -> manifest
    row: dict = {name: None for name in PASSTHROUGH_COLUMNS}
    extra = {}
    for name, value in record.items():
        if name in (url_column, "url", "source_uri", *keep) or value is None:
            continue
        if name in columns:
            row[columns[name]] = redact_text(str(value))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            extra[redact_text(str(name))] = redact_text(text)
    row["extra"] = json.dumps(extra, sort_keys=True) if extra else None
    return row
