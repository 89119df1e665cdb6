"""The stream when no filter stage runs: plain Ray tasks that fetch, validate, sign and write.

With a detector or classifiers, images travel from the fetch tasks through the filter actors
to the sink (Ray Data, ``pipeline.build_humans300m._build_stream``). Without them nothing sits
between fetching and writing, so one task does both, as img2dataset's processes do: its images
go from the socket into its shard's temporary tar and never through Ray's object store, and
the job runs no Ray Data executor, autoscaling actor or write workers. On the crawl benchmark
(``bench/crawl_vs_img2dataset.py``) that Ray Data pipeline spent about as much CPU around the
fetch tasks as in them.

The driver holds no URL: it reads the plan partitions' row counts from their footers, and each
crawl task reads its own ``rows_per_task`` rows (a slice of a large partition, or several small
ones: ``task_slices``), less the finished ones (``pipeline.resume.unfinished_rows``). Each
crawl task writes its own shards (numbers from the job's ``ProgressCounter``) and rejections
file, and is not retried: a retry would write the same samples twice; a rerun resumes.
"""

from __future__ import annotations

import math
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import ray

from curation.record import OK
from pipeline.resume import unfinished_rows
from pipeline.sink import Output, SampleWriter, WriteStats
from pipeline.stages import (
    StageConfig,
    decided_row,
    fetch_input,
    fetch_pool,
    fetcher_for,
    process_one,
)

if TYPE_CHECKING:
    from pipeline.plan import Plan
    from pipeline.resume import Finished
    from runtime.storage import Location

TASKS_PER_CPU = 4  # a small job's inputs are split into this many tasks per CPU at least


class StreamFailed(RuntimeError):
    """A crawl task failed; what finished tasks wrote is kept and a rerun resumes."""


def rows_per_task(todo: int, cpus: int, max_samples: int, batch_size: int) -> int:
    """Inputs per crawl task: enough tasks for every CPU to finish together on a small job
    (``TASKS_PER_CPU`` each), a shard's worth at most on a large one."""
    balanced = math.ceil(todo / max(1, cpus * TASKS_PER_CPU))
    return max(1, min(max_samples, max(batch_size, balanced)))


def crawl(
    plan: Plan,
    finished: Finished,
    todo: int,
    stage: StageConfig,
    output: Output,
    batch_size: int,
) -> list[WriteStats]:
    """Fetch, validate, sign and write every unfinished input of ``plan``; the tasks' stats.

    After a failed task (a bug, a full disk, a lost node) no new task starts; the running ones
    finish and publish their work, then ``StreamFailed`` says how many failed and why: the
    rerun resumes with their inputs only.
    """
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_task = rows_per_task(todo, cpus, output.max_samples, batch_size)
    finished_uri = finished.folder.uri if finished.keys else None
    running: list[Any] = []
    stats: list[WriteStats] = []
    failures: list[str] = []

    def collect(done: list[Any]) -> None:
        for ref in done:
            try:
                stats.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                failures.append(_cause(exc))

    for slices in task_slices(plan.files, per_task):
        if failures:
            break
        # One task per CPU and none queued: a task waiting in ray.get (a shard number, a
        # host's slot) lends its CPU to queued work, and Ray would start another worker
        # process for it (a second or more of CPU to import Ray and these modules).
        if len(running) >= cpus:
            done, running = ray.wait(running, num_returns=1)
            collect(done)
        running.append(_crawl_task.remote(slices, finished_uri, stage, output, batch_size))
    collect(_all(running))
    if failures:
        raise StreamFailed(
            f"{len(failures)} crawl task(s) failed (first: {failures[0]}); what the others "
            "wrote is kept: run the same command again to process the rest"
        )
    return stats


def _all(refs: list[Any]) -> list[Any]:
    """``refs``, once every one of them has finished (failed ones included)."""
    if refs:
        ray.wait(refs, num_returns=len(refs))
    return refs


Slice = tuple[str, int, int]  # (plan partition file, first row, rows)


def task_slices(files: list[Location], per_task: int) -> Iterator[list[Slice]]:
    """The plan's rows in crawl tasks of ``per_task`` rows (the last may hold fewer): a slice
    of a large partition, or small partitions together (a small job's partitions are small,
    and each task writes shards of its own). Reads only the partitions' footers."""
    task: list[Slice] = []
    rows = 0
    for file in files:
        total, start = plan_rows(file), 0
        while start < total:
            length = min(per_task - rows, total - start)
            task.append((file.uri, start, length))
            rows += length
            start += length
            if rows >= per_task:
                yield task
                task, rows = [], 0
    if task:
        yield task


def plan_rows(file: Location) -> int:
    """Rows of a plan partition file, from its footer."""
    return pq.read_metadata(file.path, filesystem=file.fs).num_rows


def _cause(exc: Exception) -> str:
    """The last line of a task's error (its exception), short: for a one-line message."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


@ray.remote(num_cpus=1, max_retries=0)
def _crawl_task(
    slices: list[Slice],
    finished: str | None,
    stage: StageConfig,
    output: Output,
    batch_size: int,
) -> WriteStats:
    name = f"{output.run_id}-{uuid.uuid4().hex[:12]}"
    writer = SampleWriter(output, stage.progress, name)
    try:
        rows = [
            row
            for plan_file, start, length in slices
            for row in unfinished_rows(plan_file, finished, start, length).to_pylist()
        ]
        crawl_rows(rows, stage, writer, batch_size)
        return writer.close()
    finally:
        writer.discard()


def crawl_rows(rows: list[dict], stage: StageConfig, writer: SampleWriter, batch_size: int) -> None:
    """Fetch, validate and sign ``rows`` (plan rows) concurrently, handing each decided row
    to ``writer`` as soon as it is done: at most ``stage.fetch.concurrency`` images are held.
    Outcomes go to the job's progress counter every ``batch_size`` rows."""
    fetcher = fetcher_for(stage)
    pool = fetch_pool(stage.fetch.concurrency)
    # Finished rows come back through one queue: concurrent.futures.wait would lock every
    # pending future for each one that finishes (64 lock round trips a row, under the GIL).
    finished: queue.SimpleQueue = queue.SimpleQueue()
    cancelled = threading.Event()

    def one(row: dict) -> None:
        if cancelled.is_set():
            finished.put(None)
            return
        try:
            finished.put(decided_row(row, process_one(fetcher, fetch_input(row), stage), stage))
        except BaseException as exc:  # re-raised in the task's thread
            finished.put(exc)

    todo = iter(rows)
    in_flight = 0
    kept, rejected = 0, Counter()
    try:
        while True:
            for row in todo:
                pool.submit(one, row)
                in_flight += 1
                if in_flight >= stage.fetch.concurrency:
                    break
            if not in_flight:
                break
            row = finished.get()
            in_flight -= 1
            if isinstance(row, BaseException):
                raise row
            writer.add(row)
            if row["status"] == OK:
                kept += 1
            else:
                rejected[row["reason"]] += 1
            if kept + sum(rejected.values()) >= batch_size or not in_flight:
                if stage.progress is not None and (kept or rejected):
                    stage.progress.add.remote(kept, dict(rejected))
                kept, rejected = 0, Counter()
    finally:
        cancelled.set()  # queued rows end at once; those being fetched end by their deadline
        fetcher.release_idle()
