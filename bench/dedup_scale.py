"""Near-duplicate search over 1M, 2M, 4M synthetic 64-bit hashes with planted duplicates.

    uv run python bench/dedup_scale.py [--sizes 1000000 2000000 4000000] [--radius 8]
    uv run python bench/dedup_scale.py --pass-seeds 50   # whole run_dedup pass, 300 samples
    uv run python bench/dedup_scale.py --pass-seeds 50 --ray-above 0   # its Ray path forced
    uv run python bench/dedup_scale.py --part-size 0   # every table over the whole input

Each size runs in a fresh subprocess (clean peak RSS). Recall is measured against brute
force (FAISS IndexBinaryFlat) for a sample of query hashes: of all pairs within the radius
that involve a sampled query, the fraction the banded search found.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def planted(n: int, radius: int, seed: int) -> np.ndarray:
    """n unique hashes: 90% uniform random, 10% copies of one of them with 1..radius bits flipped."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    copies = n // 10
    flips = rng.integers(1, radius + 1, copies)
    bits = np.argsort(rng.random((copies, 64)), axis=1)
    masks = np.zeros(copies, dtype=np.uint64)
    for k in range(radius):
        use = flips > k
        masks[use] |= np.uint64(1) << bits[use, k].astype(np.uint64)
    base[n - copies :] = base[rng.integers(0, n - copies, copies)] ^ masks
    return np.unique(base)


def one(n: int, radius: int, threads: int, queries: int, part_size: int | None) -> dict:
    from curation.dedup.near import PART_SIZE, banded_pairs, exact_pairs

    hashes = planted(n, radius, seed=n)
    stats: dict = {}
    load_start = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    pairs = banded_pairs(
        hashes,
        radius,
        threads=threads,
        part_size=PART_SIZE if part_size is None else part_size or 2**32,
        stats=stats,
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    load_end = os.getloadavg()[0]
    sample = np.random.default_rng(0).choice(len(hashes), queries, replace=False)
    reference = np.sort(exact_pairs(hashes, radius, queries=sample), axis=1)
    found = set(map(tuple, pairs.tolist()))
    hit = sum(tuple(p) in found for p in reference.tolist())
    return dict(
        n=len(hashes),
        radius=radius,
        method=stats["method"],
        tables=stats["tables"],
        groups=stats["groups"],  # table groups, each splitting the input once
        partition_bits=stats["partition_bits"],
        seconds=round(seconds, 2),
        cpu_seconds=round(cpu, 2),  # all threads; steadier than wall time on a shared machine
        load=f"{load_start:.1f} -> {load_end:.1f}",  # 1-minute load average, 2 cores
        candidates=stats["candidates"],  # candidate pairs verified, summed over tables
        pairs=len(pairs),
        reference_pairs=len(reference),
        recall=round(hit / max(1, len(reference)), 4),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )


def whole_pass(seeds: int, semantic_model: str | None, ray_above: int | None = None) -> None:
    """``run_dedup`` on a generated dataset of 6 samples per seed (tests' planted families), on a
    local 2-CPU Ray started beforehand (start-up not timed); first run, then an idempotent rerun."""
    import tempfile
    from pathlib import Path

    import ray

    from curation.dedup.config import DedupConfig
    from pipeline.dedup import run_dedup
    from tests.pipeline.test_dedup import build

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": root}},
    )
    config = DedupConfig(semantic=semantic_model is not None, semantic_model=semantic_model)
    if ray_above is not None:  # 0: the Ray Data path (pipeline.dedup_ray) whatever the size
        config.ray_above = ray_above
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp) / "ds", range(seeds))
        for label in ("first run", "rerun"):
            start = time.perf_counter()
            counts = run_dedup(str(Path(tmp) / "ds"), config)
            print(f"{label}: {time.perf_counter() - start:.1f} s, {6 * seeds} samples, {counts}")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000])
    parser.add_argument("--radius", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument(
        "--part-size",
        type=int,
        help="hashes per part (default curation.dedup.near.PART_SIZE); 0: no split",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pass-seeds", type=int, help="time run_dedup on 6 x this many samples")
    parser.add_argument("--semantic-model", help="with --pass-seeds: TorchScript for semantic")
    parser.add_argument("--ray-above", type=int, help="with --pass-seeds: DedupConfig.ray_above")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.radius, args.threads, args.queries, args.part_size)))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; numpy {np.__version__}; commit {commit.stdout.strip()}"
    )
    if args.pass_seeds:
        whole_pass(args.pass_seeds, args.semantic_model, args.ray_above)
        return
    results = []
    for n in args.sizes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--radius",
                str(args.radius),
                "--threads",
                str(args.threads),
                "--queries",
                str(args.queries),
                *([] if args.part_size is None else ["--part-size", str(args.part_size)]),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        print(
            f"time({results[-1]['n']}) / time({results[0]['n']}) = "
            f"{results[-1]['seconds'] / results[0]['seconds']:.2f}; cpu time ratio "
            f"{results[-1]['cpu_seconds'] / results[0]['cpu_seconds']:.2f}"
        )


if __name__ == "__main__":
    main()
