"""Crawl throughput against img2dataset, side by side in one run (issue 13).

    uv run --locked python bench/crawl_vs_img2dataset.py            # 3000 and 9000 URLs x 3
    uv run --locked python bench/crawl_vs_img2dataset.py --quick    # smoke run: 300 URLs x 1

What it does:
- installs img2dataset 1.47.0 into its own throwaway venv (``--i2d-venv``; reused when present;
  not a project dependency);
- generates a deterministic corpus of distinct photo-like images of web size (long side 640-2000,
  mean about 1.4 MP, JPEG quality 90, 1 in 50 PNG and 1 in 50 WebP), cached in ``--corpus``;
- serves it from a private nginx (system package) on 127.0.0.1, outside the measured tree;
- runs img2dataset (``--resize_mode no --skip_reencode True``, 2 processes x 32 threads, 500 per
  shard) and ``python -m pipeline.build_humans300m --detector none`` (validation, both hashes,
  pHash, manifests, rejections and dedup on) alternately, the order flipping each repetition;
- reports per run the wall images/s (process start to exit: start-up included), the CPU-ms per
  image of the whole process tree (every descendant's /proc/<pid>/stat utime+stime, Ray's raylet,
  GCS and workers included), the peak PSS of the tree, the load average, and the medians and
  ratio per size.

``--politeness`` adds a run of our job per repetition with the cluster-wide per-host limiter
off, to show what it costs. ``--sizes 3000,9000,27000 --only ours`` is the memory check.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.gettempdir())
I2D_VERSION = "1.47.0"
CLOCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# -- corpus ------------------------------------------------------------------------------------

ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 5 / 4)
_NOISE: np.ndarray | None = None


def _noise() -> np.ndarray:
    """One shared sensor-noise field; each image takes a crop at its own offset (fast)."""
    global _NOISE
    if _NOISE is None:
        rng = np.random.default_rng(12345)
        _NOISE = rng.normal(0, 6, size=(2200, 2200, 3)).astype(np.int16)
    return _NOISE


def image_spec(i: int) -> tuple[int, int, str]:
    """(width, height, format) of image ``i``: long side uniform in 640-2000, mean ~1.4 MP."""
    rng = np.random.default_rng(i)
    long = int(rng.uniform(640, 2000))
    short = int(long / ASPECTS[i % len(ASPECTS)])
    width, height = (short, long) if i % 3 == 1 else (long, short)
    fmt = "PNG" if i % 50 == 7 else "WEBP" if i % 50 == 32 else "JPEG"
    return width, height, fmt


def make_image(i: int) -> bytes:
    """A distinct photo-like image: smooth colour field, soft figure-like shapes, noise."""
    import io

    width, height, fmt = image_spec(i)
    rng = np.random.default_rng(1_000_003 + i)
    grid = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        w = rng.uniform(0.05, 0.3) * width
        h = w * rng.uniform(1.5, 3.0)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)(box, fill=colour)
    noise = _noise()
    y, x = int(rng.integers(0, 2200 - height + 1)), int(rng.integers(0, 2200 - width + 1))
    pixels = np.asarray(image, dtype=np.int16) + noise[y : y + height, x : x + width]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    params = {"quality": 90} if fmt in ("JPEG", "WEBP") else {"compress_level": 6}
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _write_one(args: tuple[Path, int]) -> None:
    folder, i = args
    path = folder / name_of(i)
    if not path.exists():
        tmp = path.with_suffix(".part")
        tmp.write_bytes(make_image(i))
        tmp.rename(path)


def name_of(i: int) -> str:
    return f"{i:06d}." + {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[image_spec(i)[2]]


def make_corpus(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(folder, i) for i in range(count) if not (folder / name_of(i)).exists()]
    if todo:
        started = time.perf_counter()
        with Pool(os.cpu_count() or 1) as pool:
            pool.map(_write_one, todo, chunksize=16)
        print(f"generated {len(todo)} images in {time.perf_counter() - started:.0f} s")
    return [name_of(i) for i in range(count)]


# -- nginx -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ image/jpeg jpg; image/png png; image/webp webp; }}
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def start_nginx(root: Path, run: Path) -> tuple[subprocess.Popen, int]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        sys.exit("error: nginx not found (apt-get install -y nginx)")
    port = free_port()
    run.mkdir(parents=True, exist_ok=True)
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, port=port, root=root))
    server = subprocess.Popen([nginx, "-c", str(conf), "-p", str(run)], stderr=subprocess.PIPE)
    for _ in range(50):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return server, port
        time.sleep(0.1)
    server.kill()
    sys.exit(f"error: nginx did not start: {server.stderr.read().decode()[-500:]}")


# -- img2dataset venv ---------------------------------------------------------------------------


def ensure_img2dataset(venv: Path) -> Path:
    exe = venv / "bin" / "img2dataset"
    if exe.exists():
        return exe
    print(f"installing img2dataset {I2D_VERSION} into {venv} (about a minute)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"img2dataset=={I2D_VERSION}"], check=True
    )
    return exe


# -- measuring a process tree -------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, start time, utime+stime ticks) of ``pid`` from /proc, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12])


def _title(pid: int) -> str:
    """A process's title, short: Ray workers show the task they run (``ray::MapBatches(...)``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    first = words[0].rsplit("/", 1)[-1]
    if first.startswith("python") and len(words) > 1:  # the script or module it runs
        rest = words[2] if words[1] == "-m" and len(words) > 2 else words[1]
        return f"python {rest.rsplit('/', 1)[-1]}"[:60]
    return first[:60]


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMeter:
    """CPU seconds and peak PSS of a process and every descendant, dead ones included.

    Ray's workers are children of the raylet, not waited for by the driver, so rusage misses
    them: every 0.2 s this scans /proc for the tree (a process once seen stays counted, by pid
    and start time) and keeps each one's last utime+stime; PSS (not RSS: the object store's
    shared pages would count once per process) is summed once a second.
    """

    def __init__(self, root_pid: int) -> None:
        self.root = root_pid
        self.cpu_ticks: dict[tuple[int, int], int] = {}
        self.by_name: dict[str, int] = {}  # CPU ticks by process title (Ray retitles workers)
        self.pids_by_name: dict[str, set[int]] = {}
        self.peak_pss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _scan(self, with_memory: bool) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(int(entry))
                if st is not None:
                    stats[int(entry)] = st
        members = {self.root}
        known = {pid for pid, _ in self.cpu_ticks}
        changed = True
        while changed:  # descendants, and processes seen before (reparented when parents exit)
            changed = False
            for pid, (ppid, _, _) in stats.items():
                if pid not in members and (ppid in members or pid in known):
                    members.add(pid)
                    changed = True
        pss = 0
        for pid in members:
            if pid in stats:
                _, start, ticks = stats[pid]
                before = self.cpu_ticks.get((pid, start), 0)
                if ticks > before:
                    name = _title(pid)
                    self.by_name[name] = self.by_name.get(name, 0) + ticks - before
                    self.pids_by_name.setdefault(name, set()).add(pid)
                self.cpu_ticks[(pid, start)] = max(ticks, before)
                if with_memory:
                    pss += _pss(pid)
        self.peak_pss = max(self.peak_pss, pss)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._scan(with_memory=self.samples % 5 == 0)
            self.samples += 1

    def stop(self) -> float:
        """Stops sampling; returns the tree's CPU seconds."""
        self._stop.set()
        self._thread.join()
        return sum(self.cpu_ticks.values()) / CLOCK


def measure(cmd: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """Run ``cmd`` to completion; wall seconds, tree CPU seconds and peak PSS."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        meter = TreeMeter(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    cpu = meter.stop()
    # the root's own rusage covers the children it waited for, even between two samples
    cpu = max(cpu, usage.ru_utime + usage.ru_stime)
    if proc.returncode != 0:
        print(log.read_text()[-3000:])
        sys.exit(f"error: {cmd[0]} exited with {proc.returncode}; log in {log}")
    by_name = {
        f"{name} ({len(meter.pids_by_name[name])} processes)": ticks / CLOCK
        for name, ticks in meter.by_name.items()
    }
    return {"wall": wall, "cpu": cpu, "pss": meter.peak_pss, "load": load, "by_name": by_name}


# -- the two tools ------------------------------------------------------------------------------


def run_img2dataset(exe: Path, urls: Path, out: Path, log: Path) -> tuple[dict, int]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(exe), "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out),
        "--output_format", "webdataset", "--processes_count", "2", "--thread_count", "32",
        "--number_sample_per_shard", "500", "--resize_mode", "no", "--skip_reencode", "True",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = measure(cmd, out.parent, env, log)
    kept = 0
    for stats in out.glob("*_stats.json"):
        import json

        kept += json.loads(stats.read_text()).get("successes", 0)
    return result, kept


def run_ours(urls: Path, out: Path, log: Path, extra: list[str]) -> tuple[dict, int]:
    import json

    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pipeline.build_humans300m", "--input", str(urls),
        "--output", str(out), "--detector", "none", "--fetch-allow-private-addresses", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # on a loaded machine (load average 20-40 here) Ray's start-up waits time out: the raylet
    # registering, and its agents writing their ports (the raylet then aborts)
    env.setdefault("RAY_raylet_start_wait_time_s", "120")
    env.setdefault("RAY_agent_register_timeout_ms", "120000")
    result = measure(cmd, ROOT, env, log)
    summary = json.loads((out / "summary.json").read_text())
    result["phases"] = summary.get("phases_s", {})
    return result, summary["counts"]["kept"]


# -- report -------------------------------------------------------------------------------------


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out + ("+uncommitted" if dirty else "")


def line(tool: str, n: int, r: dict, kept: int) -> str:
    phases = r.get("phases")
    shown = ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) if phases else ""
    return (
        f"  {tool:<22} {n:>6} URLs  {n / r['wall']:7.1f} images/s  wall {r['wall']:6.1f} s  "
        f"{1000 * r['cpu'] / n:5.2f} CPU-ms/image  ({100 * r['cpu'] / r['wall']:.0f}% CPU)  "
        f"peak PSS {r['pss'] / 2**20:6.0f} MiB  kept {kept}  load {r['load']:.1f}"
        + (f"  [{shown}]" if shown else "")
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="3000,9000", help="URL counts, comma-separated")
    p.add_argument("--reps", type=int, default=3, help="repetitions (alternating the order)")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 URLs, 1 repetition")
    p.add_argument("--only", choices=("both", "ours", "img2dataset"), default="both")
    p.add_argument(
        "--politeness", action="store_true",
        help="also run our job with the cluster-wide per-host limiter off, to show its cost",
    )  # fmt: skip
    p.add_argument(
        "--images", type=int, default=0,
        help="distinct images to generate (default: the largest size); a larger size lists "
        "them again with ?copy=K queries (distinct URLs, same bytes: for memory checks)",
    )  # fmt: skip
    p.add_argument("--corpus", default=str(TMP / "crawl-bench-corpus"))
    p.add_argument("--i2d-venv", default=str(TMP / "img2dataset-venv"))
    p.add_argument("--workdir", default=str(TMP / "crawl-bench-work"))
    p.add_argument("--ours-args", default="", help="extra flags for our job (space-separated)")
    p.add_argument(
        "--cpu-by-process", action="store_true",
        help="after each run, its CPU seconds by process title (where the CPU goes)",
    )  # fmt: skip
    args = p.parse_args()
    sizes = [300] if args.quick else [int(s) for s in args.sizes.split(",")]
    reps = 1 if args.quick else args.reps
    if min(sizes) < 1 or reps < 1:
        sys.exit("error: sizes and reps must be positive")
    bench_started = time.perf_counter()

    exe = ensure_img2dataset(Path(args.i2d_venv)) if args.only != "ours" else None
    corpus = Path(args.corpus)
    names = make_corpus(corpus, args.images or max(sizes))
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server, port = start_nginx(corpus, work / "nginx")
    megapixels = [image_spec(i)[0] * image_spec(i)[1] / 1e6 for i in range(len(names))]
    size_mb = sum((corpus / n).stat().st_size for n in names) / 1e6
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.0f} GiB; python {platform.python_version()}; "
        f"commit {commit()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"corpus: {len(names)} distinct images, mean {statistics.mean(megapixels):.2f} MP, "
        f"{size_mb:.0f} MB (JPEG q90, 1 in 50 PNG, 1 in 50 WebP), nginx on 127.0.0.1:{port}"
    )
    ours_extra = args.ours_args.split()
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for n in sizes:
            urls = work / f"urls-{n}.txt"
            urls.write_text(
                "".join(
                    f"http://127.0.0.1:{port}/{names[i % len(names)]}"
                    + (f"?copy={i // len(names)}" if i >= len(names) else "")
                    + "\n"
                    for i in range(n)
                )
            )
            runs = []
            if args.only in ("both", "img2dataset"):
                runs.append("img2dataset")
            if args.only in ("both", "ours"):
                runs.append("ours")
                if args.politeness:
                    runs.append("ours, limiter off")
            for rep in range(reps):
                order = runs if rep % 2 == 0 else runs[::-1]
                for tool in order:
                    log = work / f"{tool.split(',')[0]}-{n}-{rep}.log"
                    out = work / f"out-{n}"
                    if tool == "img2dataset":
                        r, kept = run_img2dataset(exe, urls, out, log)
                    else:
                        extra = ours_extra + (
                            ["--no-fetch-cluster-wide-limits"] if "off" in tool else []
                        )
                        r, kept = run_ours(urls, out, log, extra)
                    results.setdefault((tool, n), []).append(r)
                    print(line(tool, n, r, kept), flush=True)
                    if args.cpu_by_process:
                        ranked = sorted(r["by_name"].items(), key=lambda x: -x[1])
                        for name, seconds in ranked[:12]:
                            print(f"      {seconds:6.2f} CPU-s  {name}")
    finally:
        server.terminate()
        server.wait()
    print("\nmedians (wall images/s, start-up included; CPU of the whole process tree):")
    for n in sizes:
        median = {}
        for tool in ("img2dataset", "ours", "ours, limiter off"):
            rs = results.get((tool, n))
            if not rs:
                continue
            rate = statistics.median(n / r["wall"] for r in rs)
            cpu = statistics.median(1000 * r["cpu"] / n for r in rs)
            pss = max(r["pss"] for r in rs) / 2**20
            median[tool] = (rate, cpu)
            loads = ", ".join(f"{r['load']:.1f}" for r in rs)
            print(
                f"  {n:>6} URLs  {tool:<18} {rate:7.1f} images/s  {cpu:5.2f} CPU-ms/image  "
                f"peak PSS {pss:5.0f} MiB  (load {loads})"
            )
        if "img2dataset" in median and "ours" in median:
            (ri, ci), (ro, co) = median["img2dataset"], median["ours"]
            print(f"  {n:>6} URLs  ours / img2dataset: {ro / ri:.2f}x images/s, {co / ci:.2f}x CPU")
    print(
        f"bench took {time.perf_counter() - bench_started:.0f} s; "
        f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
