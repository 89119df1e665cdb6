"""Fixed costs of a small curation job on a fresh local Ray, per phase (issue 13, item 3).

    uv run --locked python bench/small_job.py                       # 100 URLs, this tree, x3
    uv run --locked python bench/small_job.py --compare main        # main and this tree, alternating

Runs ``python -m pipeline.build_humans300m --detector none`` (an embedded Ray started and
stopped by each run) over ``--urls`` images of the crawl bench's corpus served by a private
nginx on 127.0.0.1, and prints per run: the wall seconds from process start to exit, the CPU
seconds of the whole process tree (Ray's raylet, GCS, agents and workers included), and the
job's own phases from its summary (start Ray, plan, stream setup, stream, dedup). ``--compare
REF`` runs the same job with ``git archive REF``'s code, alternating with this tree, so that
the load of a shared machine falls on both alike: compare CPU seconds there, not wall.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crawl_vs_img2dataset import (  # noqa: E402
    TMP,
    commit,
    make_corpus,
    measure,
    start_nginx,
)
from fetch_cpu import extract  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_job(code: Path, urls: Path, out: Path, log: Path) -> dict:
    import json

    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pipeline.build_humans300m", "--input", str(urls),
        "--output", str(out), "--detector", "none", "--fetch-allow-private-addresses",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(code)
    # as in crawl_vs_img2dataset: at load 20-40 Ray's start-up waits time out otherwise
    env.setdefault("RAY_raylet_start_wait_time_s", "120")
    env.setdefault("RAY_agent_register_timeout_ms", "120000")
    result = measure(cmd, code, env, log)
    result["phases"] = json.loads((out / "summary.json").read_text()).get("phases_s", {})
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--urls", type=int, default=100, help="URLs in the job")
    p.add_argument("--reps", type=int, default=3, help="runs per code version")
    p.add_argument("--compare", metavar="REF", help="git ref to run alternately with this tree")
    p.add_argument("--corpus", default=str(TMP / "crawl-bench-corpus"))
    args = p.parse_args()
    if args.urls < 1 or args.reps < 1:
        sys.exit("error: --urls and --reps must be positive")
    names = make_corpus(Path(args.corpus), args.urls)
    work = Path(tempfile.mkdtemp(prefix="small-job-"))
    server, port = start_nginx(Path(args.corpus), work / "nginx")
    urls = work / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:{port}/{name}\n" for name in names))
    print(
        f"{args.urls} URLs, commit {commit()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    versions = {"this tree": ROOT}
    if args.compare:
        versions = {args.compare: extract(args.compare, work / "ref"), **versions}
    results: dict[str, list[dict]] = {name: [] for name in versions}
    try:
        for rep in range(args.reps):
            order = list(versions) if rep % 2 == 0 else list(versions)[::-1]
            for name in order:
                r = run_job(versions[name], urls, work / "out", work / f"job-{rep}.log")
                results[name].append(r)
                phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
                print(
                    f"  {name:<10} wall {r['wall']:5.1f} s  tree CPU {r['cpu']:5.1f} s  "
                    f"load {r['load']:.1f}  [{phases}]",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("\nmedians:")
    for name, rs in results.items():
        per_phase = ", ".join(
            f"{k} {statistics.median(r['phases'].get(k, 0.0) for r in rs):.1f}"
            for k in rs[0]["phases"]
        )
        print(
            f"  {name:<10} wall {statistics.median(r['wall'] for r in rs):5.1f} s  tree CPU "
            f"{statistics.median(r['cpu'] for r in rs):5.1f} s  [{per_phase}]"
        )
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
