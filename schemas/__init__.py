"""Pyarrow schemas and naming rules shared by every stage (no Ray, no torch)."""

from schemas.manifest import (
    PASSTHROUGH_COLUMNS,
    REJECTION_SCHEMA,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    SchemaError,
    check_version,
    conform,
    kept_columns,
    member_names,
    row_to_json,
    rows_to_table,
    sample_key,
    sample_schema,
    shard_name,
)
from schemas.reasons import REASON_STAGE, Reason, Stage

__all__ = [
    "PASSTHROUGH_COLUMNS",
    "REASON_STAGE",
    "REJECTION_SCHEMA",
    "SAMPLE_SCHEMA",
    "SCHEMA_VERSION",
    "Reason",
    "SchemaError",
    "Stage",
    "check_version",
    "conform",
    "kept_columns",
    "member_names",
    "row_to_json",
    "rows_to_table",
    "sample_key",
    "sample_schema",
    "shard_name",
]
