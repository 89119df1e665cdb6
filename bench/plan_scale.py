"""The plan and resume steps at millions of synthetic URLs: wall, CPU and driver peak RSS.

    uv run --locked python bench/plan_scale.py --sizes 1M,4M,16M
    uv run --locked python bench/plan_scale.py --sizes 1M,4M --old b69db1c   # alternate old/new
    uv run --locked python bench/plan_scale.py --sizes 30k,100k,300k --crossover

Each step runs in a fresh child process on its own embedded local Ray (as the job does), with
no fetching: "plan" builds the plan of one txt URL list (1% repeats, 0.1% malformed lines);
"resume" finds the finished samples (half of the plan's keys, written as rejection files
beforehand by a separate child) and streams the unfinished inputs to a row count, the job's
path up to the fetch stage. Printed per step: wall seconds (the step alone, in the child),
CPU seconds of the whole process tree during the step (``/proc/<pid>/stat`` of the child and
every process below it or in its session, sampled every 0.2 s: Ray's workers are not children
the driver waits for, and CPU of a process that ends between samples is lost), and the
driver's peak RSS during the step (sampled every 20 ms).

Both codes run from ``git archive`` copies (``--new``, default HEAD; ``--old COMMIT``), so
editing the checkout during a run changes nothing; with ``--old`` they alternate, each size
starting with the other one. Its resume broadcasts every finished
key to every batch, about 0.8 s a batch at 4M finished keys: it is run up to ``--old-resume-max``.
``--crossover`` times the plan on Ray against the plan in the driver (``ray_above``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def write_urls(path: Path, n: int) -> None:
    """n lines: distinct URLs, every 100th repeating an earlier one, every 1000th malformed."""
    with path.open("w") as out:
        lines = []
        for i in range(n):
            if i % 1000 == 999:
                lines.append(f"not a url {i}\n")
            elif i % 100 == 50:
                lines.append(f"https://img{(i // 2) % 997}.example.com/p/{i // 2:09d}/photo.jpg\n")
            else:
                lines.append(f"https://img{i % 997}.example.com/p/{i:09d}/photo.jpg\n")
            if len(lines) >= 100_000:
                out.writelines(lines)
                lines = []
        out.writelines(lines)


# -- the parent: children, /proc sampling, the table ---------------------------------------


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; "
        f"Python {platform.python_version()}"
    )


def short(commit: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", commit],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _stat(pid: int) -> tuple[int, int, int, float] | None:
    """(ppid, session, start time, CPU seconds) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (
        int(fields[1]),
        int(fields[3]),
        int(fields[19]),
        (int(fields[11]) + int(fields[12])) / TICK,
    )


class TreeCPU:
    """CPU seconds of a process and everything below it or in its session (sampled)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[tuple[int, int], float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.2)

    def sample(self) -> None:
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (stat := _stat(int(name))):
                stats[int(name)] = stat
        tree = {self.root}
        changed = True
        while changed:  # descendants, by parent links
            changed = False
            for pid, (ppid, session, _, _) in stats.items():
                if pid not in tree and (ppid in tree or session == self.root):
                    tree.add(pid)
                    changed = True
        with self.lock:
            for pid in tree & set(stats):
                _, _, start, cpu = stats[pid]
                self.seen[(pid, start)] = cpu

    def total(self) -> float:
        self.sample()
        with self.lock:
            return sum(self.seen.values())

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def run_child(tree: Path, args: list[str], timeout: float) -> dict:
    """Run one step in a child; returns its JSON result with the tree's CPU seconds added."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(tree)
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    env.setdefault("RAY_raylet_start_wait_time_s", "180")  # the default 30 s fails at load 30+
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    cpu = TreeCPU(proc.pid)
    marks: dict[str, float] = {}
    result: dict = {}
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            line = line.strip()
            if line in ("START", "END"):
                marks[line] = cpu.total()
            elif line.startswith("{"):
                result = json.loads(line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"step over {timeout:.0f} s")
        proc.wait()
    except TimeoutError:
        os.killpg(proc.pid, 9)
        proc.wait()
        result = {"error": "timeout"}
    finally:
        cpu.close()
        err = proc.stderr.read()
    if proc.returncode and not result.get("error"):
        result = {"error": err.strip().splitlines()[-1] if err.strip() else "failed"}
    if "START" in marks and "END" in marks:
        result["cpu_s"] = marks["END"] - marks["START"]
    return result


def code_tree(commit: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1M,4M,16M")
    p.add_argument("--new", metavar="COMMIT", default="HEAD", help="the code measured")
    p.add_argument("--old", metavar="COMMIT", help="also run this commit's code, alternating")
    p.add_argument("--old-resume-max", default="1M", help="largest size for the old resume")
    p.add_argument("--crossover", action="store_true", help="plan on Ray vs in the driver")
    p.add_argument("--work", default=None, help="folder for URL lists and outputs (temp)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per step at most")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--urls", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--ray-above", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    work = Path(args.work or tempfile.mkdtemp(prefix="plan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    new = short(args.new)
    codes = [(f"new {new}", code_tree(new, work / f"code-{new}"))]
    if args.old:
        old = short(args.old)
        codes.append((f"old {old}", code_tree(old, work / f"code-{old}")))
    header = "| size | code | step | wall s | CPU s | driver peak RSS MiB | rows | load 1 min |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    old_resume_max = parse_size(args.old_resume_max)
    for turn, text in enumerate(args.sizes.split(",")):
        n = parse_size(text)
        urls = work / f"urls-{n}.txt"
        if not urls.exists():
            write_urls(urls, n)
        order = codes if turn % 2 == 0 else codes[::-1]  # alternate who goes first
        if args.crossover:
            order = [
                (f"new {new}, Ray", codes[0][1], 0),
                (f"new {new}, driver", codes[0][1], 1 << 50),
            ]
            order = order if turn % 2 == 0 else order[::-1]
        for name, tree, *ray_above in order:
            out = work / f"out-{n}"
            shutil.rmtree(out, ignore_errors=True)
            steps = ["plan"] if args.crossover else ["plan", "prepare", "resume"]
            for step in steps:
                if step == "resume" and name.startswith("old") and n > old_resume_max:
                    continue
                extra = ["--ray-above", str(ray_above[0])] if ray_above else []
                load = os.getloadavg()[0]
                r = run_child(
                    tree,
                    ["--step", step, "--urls", str(urls), "--out", str(out), *extra],
                    args.timeout,
                )
                if step == "prepare":
                    continue
                if "error" in r:
                    print(f"| {text} | {name} | {step} | {r['error']} | | | | {load:.1f} |")
                    continue
                print(
                    f"| {text} | {name} | {step} | {r['wall_s']:.1f} | {r.get('cpu_s', 0):.1f} "
                    f"| {r['peak_rss_mib']:.0f} | {r['rows']:,} | {load:.1f} |",
                    flush=True,
                )
            shutil.rmtree(out, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# -- the child: one step on its own Ray ----------------------------------------------------


class PeakRSS:
    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.now())
            self.stop.wait(0.02)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return max(self.peak, self.now())


def child(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from curation.sources import SourceConfig
    from runtime.storage import locate

    dataset = locate(args.out)
    config = SourceConfig(inputs=(args.urls,))
    if args.step == "prepare":
        return prepare(dataset, config)
    from runtime.ray_env import start_ray

    start_ray(None, log_to_driver=False)
    import pipeline.plan as plan_module
    import pipeline.resume as resume

    kwargs = {} if args.ray_above is None else {"ray_above": args.ray_above}
    print("START", flush=True)
    rss = PeakRSS()
    start = time.perf_counter()
    plan = plan_module.load_or_build_plan(dataset, config, **kwargs)
    if args.step == "plan":
        rows = plan.rows
    elif hasattr(resume, "finished_by_partition"):  # this change
        done = resume.finished_by_partition(dataset, plan)
        rows = count_rows(resume.unfinished_inputs(dataset, plan, done))
    else:  # before it: every finished key in the driver, broadcast to every batch
        import ray.data

        from pipeline.build_humans300m import _drop_finished

        done = resume.finished_keys(dataset)
        ds = ray.data.read_parquet([f.path for f in plan.files], filesystem=dataset.fs)
        rows = count_rows(
            ds.map_batches(_drop_finished, fn_kwargs={"done": done}, batch_format="pyarrow")
        )
    wall = time.perf_counter() - start
    peak = rss.close()
    print("END", flush=True)
    print(json.dumps({"wall_s": wall, "peak_rss_mib": peak / 2**20, "rows": rows}), flush=True)
    return 0


def count_rows(ds) -> int:
    import pyarrow as pa

    def rows(batch: pa.Table) -> pa.Table:
        return pa.table({"n": [batch.num_rows]})

    return int(ds.map_batches(rows, batch_format="pyarrow").sum("n") or 0)


def prepare(dataset, config) -> int:
    """Mark half of the plan's inputs finished: rejection files of 1M keys, as a run leaves."""
    import datetime as dt

    import pyarrow.parquet as pq

    from curation.writer import write_rejections
    from pipeline.plan import load_or_build_plan

    plan = load_or_build_plan(dataset, config)  # done by the plan step: read from its marker
    now = dt.datetime.now(dt.UTC)
    chunk, number = [], 0
    for file in plan.files:
        keys = pq.read_table(file.path, columns=["key"])["key"].to_pylist()[::2]
        chunk += [
            {"key": k, "source_uri": "x", "stage": "fetch", "reason": "http_error",
             "detail": "bench", "rejected_at": now}
            for k in keys
        ]  # fmt: skip
        while len(chunk) >= 1_000_000 or (chunk and file == plan.files[-1]):
            write_rejections(dataset, f"fetch-bench-{number:05d}", chunk[:1_000_000])
            chunk, number = chunk[1_000_000:], number + 1
    print(json.dumps({"prepared": number}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
