"""Input columns carried into the manifest with their own types (``--keep-columns``).

The types are fixed once, when the plan is built, from the inputs themselves
(``curation.sources.kept_schema``): a Parquet list's Arrow types, the types of a JSON list's
values, the types pyarrow's CSV reader infers from the first block of a csv/tsv list. They are
recorded with the plan and are the same in every manifest file of a dataset.

Between the plan and the writer a row's values travel as one JSON object (the ``kept``
column): JSON holds every carried type exactly (booleans, integers, floats with NaN, strings,
lists and structs of them), so the in-flight batches need no per-dataset columns, and the writer
builds the typed columns from the recorded schema (``decode``). Types JSON cannot hold
(timestamps, dates, decimals, binary) are refused when the plan is built, by name.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pyarrow as pa

from curation.redact import redact_text

KEPT = "kept"  # the in-flight column: a row's kept values as a JSON object (None: none)
# what pyarrow's CSV reader reads as null in a column that is not a string column
CSV_NULLS = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null")
)  # fmt: skip
# what the CSV reader infers that is carried as it is; anything else (dates, timestamps, a
# column empty in the first block) is carried as the text it was written as
CSV_TYPES = (pa.int64(), pa.float64(), pa.bool_(), pa.string())


def carried(kind: pa.DataType) -> bool:
    """Whether values of ``kind`` can be carried (they survive a JSON round trip)."""
    if pa.types.is_null(kind) or pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return True
    if pa.types.is_floating(kind):
        return not pa.types.is_float16(kind)  # its Python values are numpy scalars
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return carried(kind.value_type)
    if pa.types.is_struct(kind):
        return all(carried(kind.field(i).type) for i in range(kind.num_fields))
    return False


def plain(kind: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column's value type (what its values are), else ``kind``."""
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def unify(a: pa.DataType | None, b: pa.DataType) -> pa.DataType | None:
    """The one type of two inputs' columns: null (no values seen) gives way; None: they differ."""
    if a is None or pa.types.is_null(a):
        return b
    if pa.types.is_null(b) or a.equals(b):
        return a
    return None


def final(kind: pa.DataType) -> pa.DataType:
    """The manifest type of a column: one without any value in any input is text."""
    return pa.string() if pa.types.is_null(kind) else kind


def convert(value: Any, kind: pa.DataType, text: bool) -> Any:
    """``value`` of an input row as a value of ``kind``, redacted; ValueError when it is not.

    ``text``: the value is a csv/tsv field (a string, read as pyarrow reads CSV). A JSON value
    must be of the type: an integer column refuses 1.5 (pyarrow would truncate it) and a
    boolean column refuses 1. A string column takes any value, non-strings as their JSON text,
    as ``extra`` does.
    """
    if value is None:
        return None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return redact_text(value if isinstance(value, str) else json.dumps(value, default=str))
    try:
        if text:
            return None if value in CSV_NULLS else pa.scalar(value).cast(kind).as_py()
        wrong = isinstance(value, bool) != pa.types.is_boolean(kind) or (
            pa.types.is_integer(kind) and not isinstance(value, int)
        )
        if wrong:
            raise TypeError
        return redacted(pa.scalar(value, kind).as_py())
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        raise ValueError(f"{redact_text(shown)[:100]!r} is not {kind}") from None


def redacted(value: Any) -> Any:
    """``value`` with every string in it redacted (lists carry signed URLs)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    return value


def encode(values: dict[str, Any]) -> str | None:
    """A row's kept values as the in-flight JSON text (None when every value is null)."""
    present = {name: value for name, value in values.items() if value is not None}
    return json.dumps(present, sort_keys=True) if present else None


def decode(text: object, schema: pa.Schema) -> dict[str, Any]:
    """The manifest values of the kept columns of ``schema`` from a row's in-flight JSON."""
    values = json.loads(str(text)) if text else {}
    return {name: values.get(name) for name in schema.names}


def schema_to_text(schema: pa.Schema) -> str:
    """The kept columns' schema as text for the plan's record (exact: Arrow IPC, base64)."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str | None) -> pa.Schema:
    if not text:
        return pa.schema([])
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def describe(schema: pa.Schema) -> str:
    """``similarity: double, NSFW: string`` (or ``none``) for messages."""
    return ", ".join(f"{f.name}: {f.type}" for f in schema) or "none"
