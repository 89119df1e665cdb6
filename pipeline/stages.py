"""The CPU half of the curation stream: fetch, validate and sign each input, one batch at a time.

Runs as Ray Data tasks (``map_batches`` with a plain function). Inside a task a thread pool
fetches and decodes concurrently: fetching waits on the network and Pillow releases the GIL while
decoding, so a task keeps one core busy while many downloads are in flight.
"""

from __future__ import annotations

import hashlib
import json
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from curation.fetch import FetchConfig, Fetcher
from curation.kept import KEPT
from curation.record import REJECTED, Batch, object_column
from curation.redact import redact_text, redact_uri
from curation.sources import BYTE_RANGE
from curation.validate import Rejected, ValidateConfig, decode
from pipeline.progress import report
from schemas import PASSTHROUGH_COLUMNS, Reason, Stage
from schemas.record import FLOW_ONLY, STAGE_COLUMNS, record_dtype


@dataclass(frozen=True)
class StageConfig:
    fetch: FetchConfig
    validate: ValidateConfig
    det_size: int  # long side of det_input for the detector/classifiers; 0 when none runs
    detector_identity: str | None = None  # manifest value when no detector stage fills it
    limiters: tuple = ()  # the job's HostLimiter actors (pipeline.politeness); () per process
    progress: object = None  # the job's ProgressCounter when this is the stream's last stage


# input columns that travel with a row to the sink: the named passthrough columns, the other
# input columns as JSON (``extra``) and the kept columns' values (``curation.kept``)
CARRIED = (*PASSTHROUGH_COLUMNS, "extra", KEPT)

_FETCHERS: dict[str, Fetcher] = {}


def fetcher_for(config: StageConfig) -> Fetcher:
    """One fetcher per worker process, config and job: connection pools are reused across
    tasks, and the job's per-host limits go through its limiter actors."""
    key = repr(config.fetch) + repr(config.limiters)  # an actor's repr holds its id
    if key not in _FETCHERS:
        slots = None
        if config.limiters:
            from pipeline.politeness import host_slots

            fetch = config.fetch
            slots = host_slots(config.limiters, fetch.per_host_concurrency, fetch.per_host_rate)
        if len(_FETCHERS) >= 4:  # fetchers of finished jobs in a long-lived worker
            _FETCHERS.pop(next(iter(_FETCHERS)))
        _FETCHERS[key] = Fetcher(config.fetch, slots)
    return _FETCHERS[key]


@lru_cache(maxsize=4)
def fetch_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="fetch")


def fetch_and_validate(batch: Batch, config: StageConfig) -> Batch:
    """Adds the fetch, validate and signature columns (curation.record) to an input batch."""
    inputs = [
        (str(uri), None if rng is None else str(rng))
        for uri, rng in zip(
            batch["source_uri"], batch.get(BYTE_RANGE, [None] * len(batch["key"])), strict=True
        )
    ]
    fetcher = fetcher_for(config)
    try:
        results = list(
            fetch_pool(config.fetch.concurrency).map(
                lambda item: process_one(fetcher, item, config), inputs
            )
        )
    finally:
        fetcher.release_idle()  # slots kept for the next request go back between batches
    # from here on only the stored form of the URL: the key was derived from the full one
    out: Batch = {
        "key": batch["key"],
        "source_uri": object_column([redact_uri(uri) for uri, _ in inputs]),
    }
    out.update({name: batch[name] for name in CARRIED if name in batch})
    for name, default in stage_columns(config):
        values = [result.get(name, default) for result in results]
        if default is None or name in FLOW_ONLY:
            out[name] = object_column(values)
        else:  # a numeric manifest column, its null written as the default
            out[name] = np.asarray(values, dtype=record_dtype(name))
    report(config.progress, out)
    return out


def stage_columns(config: StageConfig) -> list[tuple[str, Any]]:
    """(name, value when the row has none) of each column this stage adds."""
    columns = []
    for name, default in STAGE_COLUMNS.items():
        if name == "det_input" and not config.det_size:
            continue  # no filter stage reads it: an empty array per row costs a conversion
        columns.append((name, config.detector_identity if name == "detector" else default))
    return columns


def decided_row(row: dict, result: dict, config: StageConfig) -> dict:
    """An input row (a plan row) with its ``process_one`` result: the in-flight row, as one of
    ``fetch_and_validate``'s output rows, that ``pipeline.sink`` writes."""
    out = {"key": row["key"], "source_uri": redact_uri(str(row["source_uri"]))}
    out.update({name: row[name] for name in CARRIED if name in row})
    out.update({name: result.get(name, default) for name, default in stage_columns(config)})
    return out


def fetch_input(row: dict) -> tuple[str, str | None]:
    """What ``process_one`` reads for a plan row: its URI and byte range (a tar member's)."""
    byte_range = row.get(BYTE_RANGE)
    return str(row["source_uri"]), None if byte_range is None else str(byte_range)


# Many threads wait on the network, but only a few decode at once: decoding is CPU-bound
# (Pillow releases the GIL, so two overlap on two cores) and each decode of a large photo holds
# tens of megabytes, so this also bounds a worker's memory.
# Slots are tokens in a SimpleQueue, whose get blocks in C (a Semaphore waits on a Python
# Condition); alternating runs showed no measurable difference in CPU an image either way.
_DECODE_SLOTS: queue.SimpleQueue = queue.SimpleQueue()
for _ in range(2):
    _DECODE_SLOTS.put(None)


def process_one(fetcher: Fetcher, item: tuple[str, str | None], config: StageConfig) -> dict:
    """Fetch, decode and sign one input; a rejection is a dict with status/stage/reason."""
    uri, byte_range = item
    fetched = fetcher.fetch(uri, byte_range)
    base: dict[str, Any] = {"fetched_at": time.time_ns() // 1000}
    if fetched.http_status is not None:
        base["http_status"] = fetched.http_status
    if fetched.reason is not None:
        return {**base, **_rejected(Stage.FETCH, fetched.reason, fetched.detail)}
    _DECODE_SLOTS.get()
    try:
        return {**base, **_validate_and_sign(fetched.data or b"", config)}
    finally:
        _DECODE_SLOTS.put(None)


def _validate_and_sign(data: bytes, config: StageConfig) -> dict:
    from curation.dedup.signatures import signatures

    try:
        decoded = decode(data, config.validate, min_long_side=config.det_size)
    except Rejected as rejection:
        return _rejected(Stage.VALIDATE, rejection.reason, rejection.detail)
    pixel_digest, phash = signatures(decoded.image)
    row = {
        "image": data,
        "format": decoded.format,
        "mode": decoded.mode,
        "width": decoded.width,
        "height": decoded.height,
        "sha256": hashlib.sha256(data).hexdigest(),
        "num_bytes": len(data),
        "pixel_hash": pixel_digest,
        "phash": phash,
    }
    if config.det_size:
        from curation.detect import detector_input

        row["det_input"] = detector_input(decoded.image, config.det_size)
    return row


def _rejected(stage: Stage, reason: Reason, detail: str) -> dict:
    # details quote URLs, redirect targets and the first bytes of bodies: never their secrets
    detail = redact_text(detail)[:2000]
    return {"status": REJECTED, "stage": str(stage), "reason": str(reason), "detail": detail}


def extra_to_map(extra: object) -> list[tuple[str, str]] | None:
    """The in-flight ``extra`` JSON string as the manifest's map<string, string> value."""
    if not extra:
        return None
    return sorted(json.loads(str(extra)).items())
