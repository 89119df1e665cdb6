"""The dataset summary (``<output>/summary.json``): what a run did, for people and programs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.manifest import SCHEMA_VERSION, SchemaError

SUMMARY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": str,
    "code_version": str,  # git commit of the code that wrote the dataset, or "unknown"
    "config": dict,  # the job's full configuration
    "started_at": str,  # ISO 8601, UTC
    "finished_at": str,
    "counts": dict,  # {"inputs", "kept", "rejected", "by_stage": {stage: {reason: n}}}
    "shards": int,
    "bytes": int,  # image bytes written to shards
    "images_per_s": (int, float),  # inputs processed per second of wall time (this run)
}

# Fields that only some datasets carry; checked when present.
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    # a subset (curation.subset): {"parent": uri, "predicate": SQL, "parent_code_version",
    # "parent_samples": n, "selected": n}
    "subset": dict,
    # inputs processed per second of the job's streaming pass (fetch to shards): without Ray
    # start-up, planning and dedup, which images_per_s counts
    "stream_images_per_s": (int, float),
}


def validate_summary(summary: Mapping[str, Any]) -> None:
    """Raise SchemaError unless ``summary`` holds every field with the right type."""
    for name, kind in SUMMARY_FIELDS.items():
        if name not in summary:
            raise SchemaError(f"summary: missing {name!r}")
        if not isinstance(summary[name], kind):
            raise SchemaError(f"summary: {name!r} is {type(summary[name]).__name__}")
    for name, kind in OPTIONAL_FIELDS.items():
        if name in summary and not isinstance(summary[name], kind):
            raise SchemaError(f"summary: {name!r} is {type(summary[name]).__name__}")
    if "subset" in summary and not {"parent", "predicate"} <= set(summary["subset"]):
        raise SchemaError("summary: subset lacks 'parent' or 'predicate'")
    if summary["schema_version"].split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaError(f"summary: schema version {summary['schema_version']}")
    counts = summary["counts"]
    for name in ("inputs", "kept", "rejected", "by_stage"):
        if name not in counts:
            raise SchemaError(f"summary: counts lacks {name!r}")
    if counts["kept"] + counts["rejected"] != counts["inputs"]:
        raise SchemaError("summary: kept + rejected != inputs")
