"""The in-flight record: every column of the batches that flow between curation stages.

Stages pass ``dict[str, np.ndarray]`` batches (``curation.record``). A column that the sample
manifest keeps takes its type from ``SAMPLE_SCHEMA``; its numpy dtype in a batch is derived
here (``record_dtype``), never written again. The other columns only travel between stages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from schemas.manifest import SAMPLE_SCHEMA

OK = "ok"
REJECTED = "rejected"

# Columns of the plan's input rows (pipeline.plan): key, source_uri, the passthrough columns,
# ``extra`` (the other input columns, as JSON text until the writer maps them) and ``kept``
# (the --keep-columns values, as JSON text until the writer types them: curation.kept).

# Every column the stages add, by the stage that fills it, with its value in a row that stage
# never reached. A numeric default stands for null (the writer stores null); a column whose
# default is None travels as an object array until its stage fills it.
STAGE_COLUMNS: dict[str, Any] = {
    # every stage: the row's outcome; stage, reason and detail go to the rejection manifest
    "status": OK, "stage": None, "reason": None, "detail": None,
    # fetch: the original bytes (to the tar), HTTP status (-1: not HTTP), fetch time in µs
    "image": None, "http_status": -1, "fetched_at": 0,
    # validate (width and height after EXIF orientation)
    "format": None, "mode": None, "width": 0, "height": 0, "sha256": None, "num_bytes": 0,
    # signatures, from the same decode
    "pixel_hash": None, "phash": 0,
    # the detector's and classifiers' input, from the same decode: HxWx3 uint8 RGB, long side =
    # their input size; (0, 0, 3) when no stage reads it or the row was rejected
    "det_input": np.zeros((0, 0, 3), dtype=np.uint8),
    # prefilter: [{classifier, label, score}]; detect: [PERSON_BOX], the passing count, identity
    "prefilter": None, "persons": None, "num_persons": None, "detector": None,
}  # fmt: skip

FLOW_ONLY = ("status", "stage", "reason", "detail", "image", "det_input")


def record_dtype(name: str) -> np.dtype:
    """The numpy dtype of manifest column ``name`` in a batch: the manifest's own integer type,
    int64 microseconds since the epoch for a timestamp, object for anything else."""
    kind = SAMPLE_SCHEMA.field(name).type
    if pa.types.is_timestamp(kind):
        return np.dtype(np.int64)
    if pa.types.is_integer(kind):
        return np.dtype(kind.to_pandas_dtype())
    return np.dtype(object)
