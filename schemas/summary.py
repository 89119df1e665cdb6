"""The dataset summary (``<output>/summary.json``): what a run did, for people and programs.

Its ``config`` is typed (``SummaryConfig``): the settings readers rely on, such as the person
keep rule, sit under fixed keys, whatever the job's flags are called, and the job's whole
configuration rides along under ``job`` for people.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.manifest import SCHEMA_VERSION, SchemaError

BOX_RULES = ("both_sides", "short_side", "long_side", "area")


@dataclass(frozen=True, kw_only=True)
class KeepRule:
    """Which detected persons count, and how many an image needs (all tests are strict >).

    The defaults are Sapiens': a person with score > 0.9 and a box over 300 px on both sides.
    """

    min_score: float = 0.9
    min_side: float = 300.0
    box_rule: str = "both_sides"
    min_area: float = 300.0 * 300.0
    min_persons: int = 1
    max_persons: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score < 1.0:
            raise ValueError(f"min_score must be in [0, 1), got {self.min_score}")
        if self.min_side < 0 or self.min_area < 0:
            raise ValueError("min_side and min_area must be >= 0")
        if self.box_rule not in BOX_RULES:
            raise ValueError(f"box_rule must be one of {BOX_RULES}, got {self.box_rule!r}")
        if self.min_persons < 1:
            raise ValueError(f"min_persons must be >= 1, got {self.min_persons}")
        if self.max_persons is not None and self.max_persons < self.min_persons:
            raise ValueError("max_persons must be >= min_persons")


@dataclass(frozen=True, kw_only=True)
class SummaryConfig:
    """``summary.json``'s ``config``: what a run kept and removed, under fixed keys."""

    detector: str | None  # person-detector weights; None: the job ran without the detector
    keep_rule: KeepRule | None  # the rule its persons were judged by; None without a detector
    classifiers: tuple[str, ...] = ()  # names of the pre-filter classifiers, in order
    dedup: bool  # whether the dedup pass ran after the stream
    job: dict[str, Any]  # the job's whole configuration (keys follow its flags), for people

    def __post_init__(self) -> None:
        if (self.detector is None) != (self.keep_rule is None):
            raise ValueError("detector and keep_rule go together: both set or both None")
        if self.detector is not None and not isinstance(self.detector, str):
            raise ValueError(f"detector is {type(self.detector).__name__}, not a string")
        if not all(isinstance(name, str) for name in self.classifiers):
            raise ValueError("classifiers must be names (strings)")
        if not isinstance(self.dedup, bool) or not isinstance(self.job, dict):
            raise ValueError("dedup must be a boolean and job a mapping")

    def to_dict(self) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), classifiers=list(self.classifiers))

    @classmethod
    def from_dict(cls, data: object) -> SummaryConfig:
        """The typed config of a written summary; SchemaError names what does not fit."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"summary: config is {type(data).__name__}, not a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
            raise SchemaError(f"summary: config keys missing {missing}, unknown {unknown}")
        rule, classifiers = data["keep_rule"], data["classifiers"]
        if not isinstance(classifiers, list | tuple):
            raise SchemaError(f"summary: config classifiers is {type(classifiers).__name__}")
        try:
            return cls(
                detector=data["detector"],
                keep_rule=None if rule is None else KeepRule(**rule),
                classifiers=tuple(classifiers),
                dedup=data["dedup"],
                job=data["job"],
            )
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"summary: config: {exc}") from None


def config_of(summary: Mapping[str, Any] | None) -> SummaryConfig | None:
    """The typed config of ``summary``; None when there is no summary or it records none (a
    subset of a dataset without one, or a summary written before schema 1.1 typed it)."""
    if summary is None or summary.get("config") is None:
        return None
    if summary.get("schema_version") == "1.0":  # its config was the job's, untyped
        return None
    return SummaryConfig.from_dict(summary["config"])


SUMMARY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": str,
    "code_version": str,  # git commit of the code that wrote the dataset, or "unknown"
    "config": (dict, type(None)),  # SummaryConfig; null when unknown (subset of a bare dataset)
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
    # start-up, planning, the stream's setup and dedup, which images_per_s counts
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
    config_of(summary)  # a config must be a SummaryConfig
    counts = summary["counts"]
    for name in ("inputs", "kept", "rejected", "by_stage"):
        if name not in counts:
            raise SchemaError(f"summary: counts lacks {name!r}")
    if counts["kept"] + counts["rejected"] != counts["inputs"]:
        raise SchemaError("summary: kept + rejected != inputs")
