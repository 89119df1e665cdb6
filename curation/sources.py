"""Inputs: URL lists, local folders, S3 prefixes and existing WebDataset tars.

``iter_inputs`` turns each input the user names into a stream of ``InputBatch``es: rows with
a ``source_uri`` (what the fetch stage reads), the passthrough columns and an ``extra`` JSON of
the other columns, plus the rows that could not be used (malformed lines, missing URLs), which
become ``malformed_input`` rejections. Nothing here fetches image bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.storage import Location, locate
from schemas import PASSTHROUGH_COLUMNS

LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".parquet")
FETCHABLE_SCHEMES = ("http", "https", "s3", "file")
BATCH_ROWS = 10_000
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

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = (self.inputs,)
        self.inputs = tuple(self.inputs)
        if not self.url_column:
            raise ValueError("url_column must not be empty")


@dataclass
class InputBatch:
    rows: list[dict]  # source_uri, passthrough columns, extra (JSON str or None), byte_range
    malformed: list[tuple[str, str]]  # (source description, detail)


def iter_inputs(spec: str, config: SourceConfig) -> Iterator[InputBatch]:
    """Batches of input rows from one user-named input (a list, folder, prefix or tar)."""
    loc = locate(spec)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {spec}")
    if info.type == pafs.FileType.Directory:
        yield from _iter_tree(loc)
    elif _base(loc.path).endswith(".tar"):
        yield from _iter_tar(loc)
    elif _base(loc.path).endswith(LIST_SUFFIXES):
        yield from _iter_list(loc, config)
    else:
        raise ValueError(
            f"{spec}: not a folder, .tar or URL list ({', '.join(LIST_SUFFIXES)}, optionally .gz)"
        )


def _base(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    return name[:-3] if name.endswith(".gz") else name


def _iter_tree(root: Location) -> Iterator[InputBatch]:
    """Every file under a folder or prefix: images are fetched, .tar files are expanded."""
    selector = pafs.FileSelector(root.path, recursive=True)
    files = sorted(
        (i.path for i in root.fs.get_file_info(selector) if i.type == pafs.FileType.File),
    )
    rows: list[dict] = []
    for path in files:
        name = path.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue  # hidden files: editor droppings, our own temporaries
        if name.lower().endswith(".tar"):
            yield from _iter_tar(_sibling(root, path))
            continue
        rows.append({"source_uri": _sibling(root, path).uri if root.is_s3 else f"file://{path}"})
        if len(rows) >= BATCH_ROWS:
            yield InputBatch(rows, [])
            rows = []
    if rows:
        yield InputBatch(rows, [])


def _sibling(root: Location, path: str) -> Location:
    uri = f"s3://{path}" if root.is_s3 else path
    return Location(root.fs, path, uri)


def _iter_tar(tar: Location) -> Iterator[InputBatch]:
    """Members of a tar (e.g. a WebDataset shard): each non-JSON file is one input.

    A ``{key}.json`` member beside an image is read as passthrough metadata for it.
    """
    base_uri = tar.uri if tar.is_s3 else f"file://{tar.path}"
    rows: list[dict] = []
    meta: dict[str, dict] = {}
    with tar.fs.open_input_file(tar.path) as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            prefix, _, ext = member.name.partition(".")
            if ext in ("json", "txt", "cls"):
                if ext == "json":
                    meta[prefix] = _json_or_empty(tf.extractfile(member))
                continue
            rows.append(
                {
                    "source_uri": f"{base_uri}#{member.name}",
                    BYTE_RANGE: f"{member.offset_data}:{member.size}",
                    "_prefix": prefix,
                }
            )
    for row in rows:
        row.update(_passthrough(meta.get(row.pop("_prefix"), {}), url_column=None))
    for start in range(0, len(rows), BATCH_ROWS):
        yield InputBatch(rows[start : start + BATCH_ROWS], [])


def _json_or_empty(stream: io.BufferedReader | None) -> dict:
    try:
        value = json.loads(stream.read()) if stream else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _iter_list(loc: Location, config: SourceConfig) -> Iterator[InputBatch]:
    base = _base(loc.path)
    if base.endswith(".parquet"):
        yield from _iter_parquet(loc, config)
        return
    with loc.fs.open_input_stream(loc.path, compression=None) as raw:
        stream = gzip.GzipFile(fileobj=raw) if loc.path.endswith(".gz") else raw
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
        if base.endswith(".txt"):
            records = _txt_records(text)
        elif base.endswith((".csv", ".tsv")):
            records = _csv_records(text, delimiter="\t" if base.endswith(".tsv") else ",")
        else:
            records = _jsonl_records(text)
        yield from _batched(records, loc.uri, config)


def _txt_records(text: io.TextIOWrapper) -> Iterator[tuple[int, dict | None, str]]:
    for number, line in enumerate(text, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, {"url": line}, ""


def _csv_records(text: io.TextIOWrapper, delimiter: str) -> Iterator[tuple[int, dict | None, str]]:
    reader = csv.reader(text, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    for number, values in enumerate(reader, start=2):
        if not values or values == [""]:
            continue
        if len(values) != len(header):
            yield number, None, f"{len(values)} fields, header has {len(header)}"
            continue
        yield number, dict(zip(header, values, strict=True)), ""


def _jsonl_records(text: io.TextIOWrapper) -> Iterator[tuple[int, dict | None, str]]:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            yield number, None, f"invalid JSON: {exc}"
            continue
        if isinstance(value, dict):
            yield number, value, ""
        else:
            yield number, None, f"expected a JSON object, got {type(value).__name__}"


def _iter_parquet(loc: Location, config: SourceConfig) -> Iterator[InputBatch]:
    with loc.fs.open_input_file(loc.path) as stream:
        parquet = pq.ParquetFile(stream)
        if config.url_column not in parquet.schema_arrow.names:
            raise ValueError(
                f"{loc.uri}: no column {config.url_column!r} (columns: "
                f"{', '.join(parquet.schema_arrow.names)}); set --url-column"
            )
        offset = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            records = (
                (offset + i + 1, row, "")
                for i, row in enumerate(pa.Table.from_batches([batch]).to_pylist())
            )
            offset += batch.num_rows
            yield from _batched(records, loc.uri, config)


def _batched(
    records: Iterator[tuple[int, dict | None, str]], where: str, config: SourceConfig
) -> Iterator[InputBatch]:
    batch = InputBatch([], [])
    for number, record, problem in records:
        if record is not None:
            url = record.get("url" if config.url_column not in record else config.url_column)
            problem = url_problem(url)
        if problem:
            batch.malformed.append((f"{where}:{number}", problem))
        else:
            row = {"source_uri": str(url).strip()}
            row.update(_passthrough(record, url_column=config.url_column))
            batch.rows.append(row)
        if len(batch.rows) + len(batch.malformed) >= BATCH_ROWS:
            yield batch
            batch = InputBatch([], [])
    if batch.rows or batch.malformed:
        yield batch


def url_problem(url: object) -> str:
    """Why ``url`` cannot be fetched, or "" when it looks usable."""
    if not isinstance(url, str) or not url.strip():
        return "missing URL"
    url = url.strip()
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


def _passthrough(record: dict, url_column: str | None) -> dict:
    """Split a record's other columns into the named passthrough columns and ``extra``."""
    row: dict = {name: None for name in PASSTHROUGH_COLUMNS}
    extra = {}
    for name, value in record.items():
        if name in (url_column, "url", "source_uri") or value is None:
            continue
        if name in PASSTHROUGH_COLUMNS:
            row[name] = str(value)
        else:
            extra[str(name)] = value if isinstance(value, str) else json.dumps(value, default=str)
    row["extra"] = json.dumps(extra, sort_keys=True) if extra else None
    return row
