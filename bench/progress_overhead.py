"""What the curation job's progress costs per image: its per-batch count and its actor call.

    uv run python bench/progress_overhead.py --batch-size 64 --batches 2000

The stream's last stage calls ``pipeline.progress.report`` once per batch: ``outcomes`` counts
kept and rejected-by-reason with numpy, then one fire-and-forget ``ProgressCounter.add`` call
is submitted. Both are timed here in a Ray task, as in the job, on batches shaped like the
fetch stage's (object columns, a mix of reasons), and divided by the batch size: the figure to
hold against the job's own CPU time per image (9-14 CPU-ms in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np
import ray

from curation.record import OK, REJECTED, object_column
from pipeline.progress import ProgressCounter, outcomes, report

REASONS = ("http_error", "timeout", "too_small", "not_an_image", "opted_out")


def batch(size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rejected = rng.random(size) < 0.3
    reasons = [REASONS[i % len(REASONS)] if r else None for i, r in enumerate(rejected)]
    return {
        "status": object_column([REJECTED if r else OK for r in rejected]),
        "reason": object_column(reasons),
    }


@ray.remote(num_cpus=1)
def timed(size: int, batches: int, counter) -> tuple[float, float]:
    """(seconds counting, seconds counting and reporting) for ``batches`` batches."""
    data = [batch(size, i) for i in range(batches)]
    start = time.perf_counter()
    for b in data:
        outcomes(b)
    counted = time.perf_counter() - start
    start = time.perf_counter()
    for b in data:
        report(counter, b)
    return counted, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=2000)
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; commit {commit.stdout.strip()}"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    counter = ProgressCounter.remote()
    ray.get(counter.snapshot.remote())  # the actor is up
    counted, reported = ray.get(timed.remote(args.batch_size, args.batches, counter))
    images = args.batch_size * args.batches
    deadline = time.monotonic() + 30  # the task's calls may still be on their way
    while True:
        kept, rejected = ray.get(counter.snapshot.remote())
        if kept + sum(rejected.values()) == images or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert kept + sum(rejected.values()) == images, "the counter lost batches"
    print(
        f"{args.batches} batches of {args.batch_size}: count {counted / images * 1e6:.2f} µs "
        f"per image, count and report {reported / images * 1e6:.2f} µs per image "
        f"({reported / args.batches * 1e6:.0f} µs per batch)"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
