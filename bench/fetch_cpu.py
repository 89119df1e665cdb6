"""CPU per image of the fetch task itself, in one process (issue 13).

    uv run --locked python bench/fetch_cpu.py                     # this tree, 5 reps
    uv run --locked python bench/fetch_cpu.py --compare main      # main and this tree, alternating
    uv run --locked python bench/fetch_cpu.py --profile           # py-spy: where the CPU goes

``pipeline.stages.fetch_and_validate`` (fetch over HTTP, validate, sha256, pixel hash, pHash,
the batch's columns) runs in a fresh process over ``--images`` images of the crawl bench's
corpus (``bench/crawl_vs_img2dataset.py`` generates it), served by a private nginx on 127.0.0.1,
in batches of ``--batch-size`` as the job's tasks get them; one warm-up batch of other images
first (imports, connection pools). What is reported per run: the process's own CPU seconds
(getrusage: every thread; nginx is outside it) per image, and the wall seconds. Ray is not
started: this is the work of one task, not the job's.

``--compare REF`` extracts ``git archive REF`` into a temporary folder and runs the same
measurement with that code first on the import path, alternating with this tree, each rep in
a fresh process, so that the load of a shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crawl_vs_img2dataset import TMP, commit, make_corpus, start_nginx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def child(port: int, names: list[str], batch_size: int, warmup: list[str]) -> None:
    """The measured process: prints one JSON line of CPU and wall seconds."""
    import numpy as np

    from curation.fetch import FetchConfig
    from curation.validate import ValidateConfig
    from pipeline.stages import StageConfig, fetch_and_validate
    from schemas.record import OK

    config = StageConfig(
        fetch=FetchConfig(allow_private_addresses=True),
        validate=ValidateConfig(),
        det_size=0,
        detector_identity=json.dumps({"model": "none"}),
    )

    def batches(listed: list[str]):
        for start in range(0, len(listed), batch_size):
            part = listed[start : start + batch_size]
            urls = np.array([f"http://127.0.0.1:{port}/{name}" for name in part], dtype=object)
            yield {"key": np.array([f"{i:08x}" for i in range(len(part))]), "source_uri": urls}

    for batch in batches(warmup):
        fetch_and_validate(batch, config)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    kept = 0
    for batch in batches(names):
        out = fetch_and_validate(batch, config)
        kept += int((out["status"] == OK).sum())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(json.dumps({"cpu": cpu, "wall": wall, "images": len(names), "kept": kept}))


def extract(ref: str, into: Path) -> Path:
    """``git archive ref`` of this repository, unpacked into ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_child(code: Path, args: list[str], profile: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    if profile is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        cmd = [spy, "record", "--rate", "250", "--format", "raw", "-o", str(profile),
               "--threads", "--", *cmd]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: measuring {code} failed:\n{out.stderr[-3000:]}")
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]  # py-spy prints too
    return json.loads(lines[-1])


# Leaf frames where a thread waits rather than works: py-spy's idle detection misses waits on
# locks and queues taken in C (the pool's idle threads, the decode slots' semaphore).
WAITING = ("Condition.wait", "Semaphore.acquire", "_worker (concurrent/futures/thread.py:81)")


def show_profile(raw: Path, top: int) -> None:
    """Self and inclusive shares of py-spy's collapsed stacks, imports and waits left out."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = skipped = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("thread ", "process "))]
        n = int(count)
        if not frames or frames[-1].startswith(WAITING) or "importlib._bootstrap" in stack:
            skipped += n
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    print(f"\nprofile: {total} samples at work ({skipped} waiting or importing left out)")
    for title, table in (("self", own), ("inclusive", inclusive)):
        print(f"  top {top} by {title}:")
        for frame, n in sorted(table.items(), key=lambda item: -item[1])[:top]:
            print(f"    {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=400, help="images measured per run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=5, help="runs per code version")
    p.add_argument("--compare", metavar="REF", help="git ref to measure alternately with this tree")
    p.add_argument("--profile", action="store_true", help="one run under py-spy; top frames")
    p.add_argument("--top", type=int, default=30, help="frames listed by --profile")
    p.add_argument("--profile-out", help="keep py-spy's collapsed stacks in this file")
    p.add_argument("--corpus", default=str(TMP / "crawl-bench-corpus"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--names", help=argparse.SUPPRESS)
    p.add_argument("--warmup", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.port, args.names.split(","), args.batch_size, args.warmup.split(","))
        return
    if args.images < 1 or args.reps < 1 or args.batch_size < 1:
        sys.exit("error: --images, --reps and --batch-size must be positive")

    corpus = Path(args.corpus)
    names = make_corpus(corpus, args.images + args.batch_size)
    warmup, measured = names[: args.batch_size], names[args.batch_size :]
    work = Path(tempfile.mkdtemp(prefix="fetch-cpu-"))
    server, port = start_nginx(corpus, work / "nginx")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}; commit {commit()}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"{len(measured)} images per run, batches of {args.batch_size}, nginx on port {port}")
    child_args = ["--port", str(port), "--batch-size", str(args.batch_size),
                  "--names", ",".join(measured), "--warmup", ",".join(warmup)]  # fmt: skip
    versions = {"this tree": ROOT}
    if args.compare:
        versions = {args.compare: extract(args.compare, work / "ref"), **versions}
    results: dict[str, list[dict]] = {name: [] for name in versions}
    try:
        if args.profile:
            raw = Path(args.profile_out or work / "profile.txt")
            r = run_child(ROOT, child_args, raw)
            print(f"  under py-spy: {1000 * r['cpu'] / r['images']:.2f} CPU-ms/image")
            show_profile(raw, args.top)
            return
        for rep in range(args.reps):
            order = list(versions) if rep % 2 == 0 else list(versions)[::-1]
            for name in order:
                load = os.getloadavg()[0]
                r = run_child(versions[name], child_args)
                results[name].append(r)
                print(
                    f"  {name:<12} {1000 * r['cpu'] / r['images']:6.2f} CPU-ms/image  "
                    f"wall {r['wall']:5.1f} s  kept {r['kept']}/{r['images']}  load {load:.1f}",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("\nmedians:")
    for name, rs in results.items():
        per_image = sorted(1000 * r["cpu"] / r["images"] for r in rs)
        print(
            f"  {name:<12} {statistics.median(per_image):6.2f} CPU-ms/image "
            f"(range {per_image[0]:.2f}-{per_image[-1]:.2f}, {len(rs)} runs)"
        )
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
