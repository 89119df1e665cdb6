"""The curation job: plan → fetch/validate/sign → filters → shards, then dedup and a summary.

Engine wiring only; the domain logic lives in ``curation``. Every step is resumable: the plan is
kept, finished samples are skipped, unpublished output is removed, and dedup is idempotent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from curation.classify import ClassifierConfig
from curation.dedup.config import DedupConfig
from curation.detect import DetectorConfig
from curation.fetch import FetchConfig
from curation.sources import SourceConfig
from curation.validate import ValidateConfig
from pipeline.plan import RAY_ABOVE_BYTES, ROWS_PER_PARTITION
from runtime.config import to_dict
from runtime.ray_env import start_ray
from runtime.storage import Location, write_bytes_atomic
from schemas import SCHEMA_VERSION
from schemas.layout import SUMMARY_FILE
from schemas.summary import SummaryConfig, validate_summary
from schemas.version import code_version

log = logging.getLogger("humans300m")


@dataclass(kw_only=True)
class OutputConfig:
    output: str = field(
        default="./humans300m", metadata={"help": "dataset folder or s3:// prefix to write"}
    )
    max_shard_samples: int = field(default=10_000, metadata={"help": "samples per shard at most"})
    # A write task gathers about one shard's bytes before it writes (pipeline/sink.py): 256 MB
    # lets shards be written while the crawl runs and bounds what the writer holds, where
    # 1 GB held a 3000-image job's every image until one write at its end.
    max_shard_bytes: int = field(
        default=256_000_000,
        metadata={
            "help": "image bytes per shard at most (about); also what a write task gathers "
            "before writing"
        },
    )

    def __post_init__(self) -> None:
        if self.max_shard_samples < 1 or self.max_shard_bytes < 1:
            raise ValueError("shard limits must be positive")


@dataclass(kw_only=True)
class RunConfig:
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster to join ('auto', 'ray://host:10001'); default: RAY_ADDRESS "
            "when set (ray job submit), else an embedded local Ray"
        },
    )
    batch_size: int = field(default=64, metadata={"help": "inputs per fetch/validate batch"})
    plan_partitions: int = field(
        default=16,
        metadata={
            "help": "partitions of the input plan at least (more are used so that none holds "
            f"over {ROWS_PER_PARTITION:,} inputs)"
        },
    )
    plan_ray_above: int = field(
        default=RAY_ABOVE_BYTES,
        metadata={"help": "input bytes (estimated) from which the plan is built on Ray"},
    )
    dedup: bool = field(default=True, metadata={"help": "run the dedup pass after writing"})
    progress_interval: float = field(
        default=10.0,
        metadata={
            "help": "seconds between progress lines when stdout is not a terminal (as under "
            "ray job submit); 0: none. A terminal gets a progress bar instead"
        },
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.plan_partitions < 1:
            raise ValueError("batch_size and plan_partitions must be positive")
        if self.plan_ray_above < 0:
            raise ValueError("plan_ray_above must not be negative")
        if not self.progress_interval >= 0:  # also refuses NaN
            raise ValueError("progress_interval must not be negative")


@dataclass(kw_only=True)
class JobConfig:
    source: SourceConfig
    fetch: FetchConfig
    validate: ValidateConfig
    detector: DetectorConfig
    classifiers: list[ClassifierConfig]
    dedup: DedupConfig
    output: OutputConfig
    run: RunConfig


def init_ray(config: RunConfig) -> None:
    start_ray(config.ray_address, log_to_driver=False)


def dataset_counts(dataset: Location) -> dict[str, Any]:
    """Counts from what the dataset holds (all runs): kept, rejected by stage and reason."""
    from curation.manifest import rejections_dataset, samples_dataset

    samples = samples_dataset(dataset.uri)
    kept = samples.count_rows()
    shards = len(samples.files)
    size = pc.sum(samples.to_table(columns=["num_bytes"])["num_bytes"]).as_py() or 0
    rejections = rejections_dataset(dataset.uri).to_table(columns=["stage", "reason"])
    by_stage: dict[str, dict[str, int]] = {}
    if rejections.num_rows:
        grouped = rejections.group_by(["stage", "reason"]).aggregate([([], "count_all")])
        for row in grouped.to_pylist():
            by_stage.setdefault(row["stage"], {})[row["reason"]] = row["count_all"]
    rejected = rejections.num_rows
    return {
        "counts": {
            "inputs": kept + rejected,
            "kept": kept,
            "rejected": rejected,
            "by_stage": by_stage,
        },
        "shards": shards,
        "bytes": int(size),
    }


def summary_config(config: JobConfig) -> SummaryConfig:
    """What the summary records of ``config``: the settings readers rely on, typed."""
    detector = config.detector if config.detector.enabled else None
    return SummaryConfig(
        detector=detector.weights if detector else None,
        keep_rule=detector.rule() if detector else None,
        classifiers=tuple(c.name for c in config.classifiers),
        dedup=config.run.dedup,
        job=to_dict(config),
    )


def write_summary(
    dataset: Location,
    config: JobConfig,
    started: float,
    processed: int,
    extra: dict,
    stream_s: float,
) -> dict:
    """Write ``summary.json``; ``stream_s``: seconds of the streaming pass, over which the
    rate without Ray start-up, planning, the stream's setup and dedup is computed."""
    wall = max(time.time() - started, 1e-9)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(),
        "config": summary_config(config).to_dict(),
        "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        **dataset_counts(dataset),
        "images_per_s": round(processed / wall, 2),
        "stream_images_per_s": round(processed / stream_s, 2) if stream_s > 0 else 0.0,
        "processed_this_run": processed,
        "wall_s": round(wall, 2),
        **extra,
    }
    validate_summary(summary)
    write_bytes_atomic(dataset.join(SUMMARY_FILE), json.dumps(summary, indent=2).encode())
    return summary


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
