"""The sample and rejection manifests: the contract between stages and with analysts.

One Parquet file of samples beside each tar shard (same rows, same order), plus Parquet files
of rejections. A dataset built with ``--keep-columns`` has those input columns, typed, after
``SAMPLE_SCHEMA``'s in every one of its manifests (``sample_schema``). Both carry ``SCHEMA_VERSION`` in their schema metadata; readers refuse other
major versions rather than guess.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

# 1.1: summary.json's config is typed (schemas.summary.SummaryConfig); manifests unchanged
# 1.2: kept input columns (--keep-columns) may follow SAMPLE_SCHEMA's in the sample manifests
SCHEMA_VERSION = "1.2"
_VERSION_KEY = b"humans300m.schema_version"
_KIND_KEY = b"humans300m.kind"

# Columns copied from an input list when present (any other input column lands in ``extra``).
PASSTHROUGH_COLUMNS = ("caption", "license", "attribution", "page_url")

PERSON_BOX = pa.struct(
    [
        ("x0", pa.float32()),  # box in original image pixels, after EXIF orientation
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("score", pa.float32()),
        ("passes", pa.bool_()),  # satisfies the keep rule (score and size)
        # 4:3 (height:width) crop around the box for top-down use; null unless requested
        ("crop_x0", pa.float32()),
        ("crop_y0", pa.float32()),
        ("crop_x1", pa.float32()),
        ("crop_y1", pa.float32()),
    ]
)

PREFILTER_RESULT = pa.struct(
    [
        ("classifier", pa.string()),  # the configured classifier's name
        ("label", pa.string()),  # top label
        ("score", pa.float32()),
    ]
)

_SAMPLE_FIELDS = [
    # identity and placement
    pa.field("key", pa.string(), nullable=False),  # sample_key(source_uri)
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("image_member", pa.string(), nullable=False),  # tar member holding the bytes
    pa.field("json_member", pa.string(), nullable=False),  # tar member holding this row
    pa.field("source_uri", pa.string(), nullable=False),
    # passthrough from the input list
    *(pa.field(name, pa.string()) for name in PASSTHROUGH_COLUMNS),
    pa.field("extra", pa.map_(pa.string(), pa.string())),
    # the original bytes
    pa.field("sha256", pa.string(), nullable=False),  # hex digest of the original bytes
    pa.field("num_bytes", pa.int64(), nullable=False),
    pa.field("format", pa.string(), nullable=False),  # Pillow format name: JPEG, PNG, WEBP, ...
    pa.field("width", pa.int32(), nullable=False),  # after EXIF orientation
    pa.field("height", pa.int32(), nullable=False),
    pa.field("mode", pa.string()),  # Pillow mode of the original: RGB, CMYK, I;16, P, RGBA ...
    pa.field("fetched_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("http_status", pa.int16()),  # null for local files, S3 objects and tars
    # filled by later stages; present and null until then
    pa.field("prefilter", pa.list_(PREFILTER_RESULT)),
    pa.field("persons", pa.list_(PERSON_BOX)),
    pa.field("num_persons", pa.int16()),  # persons passing the keep rule
    pa.field("detector", pa.string()),  # JSON identity: model, weights sha256, version, ...
    pa.field("pixel_hash", pa.string()),  # hex digest of the decoded RGB pixels
    pa.field("phash", pa.uint64()),  # 64-bit DCT perceptual hash
    pa.field("dup_cluster", pa.string()),  # key of the canonical sample of its cluster
    pa.field("dup_cluster_size", pa.int32()),
]

_REJECTION_FIELDS = [
    pa.field("key", pa.string()),  # null when the input had no usable source
    pa.field("source_uri", pa.string()),
    pa.field("stage", pa.string(), nullable=False),  # schemas.reasons.Stage
    pa.field("reason", pa.string(), nullable=False),  # schemas.reasons.Reason
    pa.field("detail", pa.string()),  # human-readable specifics (status, exception, ...)
    pa.field("http_status", pa.int16()),
    pa.field("duplicate_of", pa.string()),  # canonical key, for dedup rejections
    pa.field("rejected_at", pa.timestamp("us", tz="UTC"), nullable=False),
]


def _with_meta(fields: list[pa.Field], kind: str) -> pa.Schema:
    return pa.schema(fields, metadata={_VERSION_KEY: SCHEMA_VERSION.encode(), _KIND_KEY: kind})


SAMPLE_SCHEMA = _with_meta(_SAMPLE_FIELDS, "samples")
REJECTION_SCHEMA = _with_meta(_REJECTION_FIELDS, "rejections")


def sample_schema(kept: pa.Schema | None = None) -> pa.Schema:
    """The sample manifests' schema of a dataset: SAMPLE_SCHEMA, then its kept input columns
    (``curation.kept``; nullable: an input row may lack a value)."""
    if kept is None or not kept.names:
        return SAMPLE_SCHEMA
    fields = [*_SAMPLE_FIELDS, *(f.with_nullable(True) for f in kept)]
    return _with_meta(fields, "samples")


def kept_columns(schema: pa.Schema) -> pa.Schema:
    """The kept input columns of a sample manifest's schema: those after SAMPLE_SCHEMA's."""
    own = set(SAMPLE_SCHEMA.names)
    return pa.schema([f for f in schema if f.name not in own])


class SchemaError(ValueError):
    """A table does not match the manifest contract (wrong columns, types or version)."""


def sample_key(source_uri: str) -> str:
    """Stable 24-hex-digit key of a source: the same URI always gives the same key.

    96 bits keep the chance of any collision among 10^9 sources below 10^-10.
    """
    return hashlib.sha256(source_uri.encode("utf-8")).hexdigest()[:24]


def member_names(key: str, image_ext: str) -> tuple[str, str]:
    """Tar member names of a sample: its image bytes and its JSON manifest row."""
    return f"{key}.{image_ext}", f"{key}.json"


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


def schema_version_of(schema: pa.Schema) -> str | None:
    meta = schema.metadata or {}
    raw = meta.get(_VERSION_KEY)
    return raw.decode() if raw is not None else None


def check_version(schema: pa.Schema, where: str = "manifest") -> None:
    """Refuse manifests written under another major schema version."""
    found = schema_version_of(schema)
    if found is None:
        raise SchemaError(f"{where}: no schema version in its metadata; not a humans300m manifest")
    if found.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaError(
            f"{where}: schema version {found}, this code reads {SCHEMA_VERSION}; "
            "convert the dataset or use a matching release"
        )


def conform(table: pa.Table, schema: pa.Schema, where: str = "table") -> pa.Table:
    """Validate ``table`` against ``schema`` and return it in the schema's column order.

    Missing nullable columns are added as nulls; unknown columns, missing required columns,
    nulls in required columns and uncastable types raise SchemaError.
    """
    names = set(table.column_names)
    unknown = names - set(schema.names)
    if unknown:
        raise SchemaError(f"{where}: unknown columns {sorted(unknown)}")
    columns = []
    for field in schema:
        if field.name not in names:
            if not field.nullable:
                raise SchemaError(f"{where}: missing required column {field.name!r}")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"{where}: column {field.name!r} is {column.type}, expected {field.type}"
                ) from exc
        if not field.nullable and column.null_count:
            raise SchemaError(f"{where}: required column {field.name!r} has nulls")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def rows_to_table(
    rows: list[Mapping[str, Any]], schema: pa.Schema, where: str = "rows"
) -> pa.Table:
    """Build a validated table from row dicts (keys outside the schema are an error)."""
    for row in rows:
        unknown = set(row) - set(schema.names)
        if unknown:
            raise SchemaError(f"{where}: unknown columns {sorted(unknown)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    try:
        table = pa.Table.from_pydict(columns, schema=schema.remove_metadata())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{where}: {exc}") from exc
    return conform(table, schema, where)


def row_to_json(row: Mapping[str, Any]) -> bytes:
    """The ``.json`` member stored beside each image: its manifest row, JSON-encoded."""

    def default(value: Any) -> Any:
        if hasattr(value, "isoformat"):
            return value.isoformat()
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return json.dumps(dict(row), default=default, sort_keys=True, separators=(",", ":")).encode()
