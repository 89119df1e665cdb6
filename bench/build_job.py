"""Curation job throughput vs the floor: a bare Pillow decode loop over the same images.

    uv run python bench/build_job.py --images 1200 --repeat-sizes 1,2,4,8 --distinct 1200

Generates photo-like JPEGs of mixed sizes (up to 4000 px), serves them on 127.0.0.1 and runs
the job (no detector, no dedup: the I/O, validate, sign and write path) on an embedded local
Ray, warmed by a first small job. Prints images/s per core for both (the job's end-to-end rate
from its summary: plan, stream, write), their ratio, and the peak memory (PSS) of the whole
process tree for corpora of N, 2N, ... images, split into the object store (bounded by its
size) and the rest, which must not grow with the corpus.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.synthetic import photo_jpeg  # noqa: E402

SIZES = [
    (640, 480),
    (1024, 768),
    (1280, 960),
    (1600, 1200),
    (2048, 1536),
    (3000, 2000),
    (4000, 3000),
]


def make_corpus(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            width, height = SIZES[i % len(SIZES)]
            if i % 3 == 1:
                width, height = height, width
            path.write_bytes(photo_jpeg(width, height, seed=i, quality=88))
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_floor(paths: list[Path]) -> float:
    """Images/s of one core doing nothing but a full Pillow decode of each file."""
    blobs = [p.read_bytes() for p in paths]
    start = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
    return len(blobs) / (time.perf_counter() - start)


class PeakMemory:
    """Samples the memory of this process and all its descendants (Ray included).

    Sums PSS, not RSS: the object store's shared pages are mapped by every worker that reads
    them, and RSS would count them once per process. ``peak_store`` is the part of that sum
    in the object store's shared-memory file (bounded by the store's size; Ray spills to disk
    past it), sampled every 10 s; ``peak_heaps`` is everything else (Python heaps, Arrow buffers, decode buffers,
    libraries), the part that would grow if the job held on to what it streams. ``breakdown``
    is the per-process PSS at the peak, by command name, to say where memory goes.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_store = 0
        self.peak_heaps = 0
        self.breakdown: dict[str, int] = {}
        self.cpu_seconds: dict[str, float] = {}  # user+system per process name, during the run
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}
        self.sampler_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        sample = 0
        # Reading smaps costs milliseconds per process and this thread shares the 2 cores
        # with the job: PSS (smaps_rollup) once a second, the object-store split (full smaps)
        # every 10th time; ``sampler_cpu_s`` reports what the sampling itself cost.
        while not self._stop.wait(1.0):
            sizes: dict[str, int] = {}
            store = -1
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    name = _process_name(proc)
                    times = proc.cpu_times()
                    cpu = times.user + times.system
                    self._cpu_start.setdefault(proc.pid, cpu)
                    # a worker's name changes with its task: account it under its last real one
                    last = self._cpu_last.get(proc.pid, (name, 0.0))[0]
                    self._cpu_last[proc.pid] = (last if name == "ray::IDLE" else name, cpu)
                    sizes[name] = sizes.get(name, 0) + proc.memory_full_info().pss
                    if sample % 10 == 0:
                        maps = proc.memory_maps(grouped=True)
                        store = max(store, 0) + sum(m.pss for m in maps if "plasma" in m.path)
            sample += 1
            total = sum(sizes.values())
            if store >= 0:
                self.peak_store = max(self.peak_store, store)
                self.peak_heaps = max(self.peak_heaps, total - store)
            if total > self.peak:
                self.peak, self.breakdown = total, sizes
        self.sampler_cpu_s = time.thread_time()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid, (name, cpu) in self._cpu_last.items():
            used = cpu - self._cpu_start[pid]
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + used


def _process_name(proc: psutil.Process) -> str:
    """Ray workers rename themselves (ray::IDLE, ray::MapWorker(...)); others by executable."""
    name = proc.name()
    cmdline = proc.cmdline()
    if cmdline and cmdline[0].startswith("ray::"):
        name = cmdline[0].split("(")[0]
    elif "http.server" in cmdline:
        name = "http.server (the bench's web server)"
    elif proc.pid == os.getpid():
        name = "driver"
    return name


def run_job(base: str, names: list[str], workdir: Path) -> tuple[float, int, PeakMemory]:
    """(images/s end to end, kept, peak memory) for one job run.

    Shards of 64 MB (instead of 256 MB) so that, as in a job much larger than this corpus,
    writing finished shards overlaps with fetching the next ones.
    """
    from pipeline.build_humans300m import config_from_args, parser, run

    url_list = workdir / "urls.txt"
    url_list.write_text("".join(f"{base}/{name}\n" for name in names))
    output = workdir / "out"
    args = parser().parse_args([
        "--input", str(url_list), "--output", str(output), "--detector", "none", "--no-dedup",
        "--fetch-allow-private-addresses", "--validate-min-side", "64", "--max-shard-bytes", str(64 << 20),
    ])  # fmt: skip
    with PeakMemory() as memory:
        summary = run(config_from_args(args))
    return summary["images_per_s"], summary["counts"]["kept"], memory


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--repeat-sizes", default="1,2", help="corpus multiples for the memory check")
    p.add_argument(
        "--distinct", type=int, default=None,
        help="distinct image files to generate (default: all of them); past that, URLs repeat "
        "files with a query string (a new key to the job, the same bytes), since generating "
        "thousands of 12 MP photos here takes about 0.5 s each",
    )  # fmt: skip
    p.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "humans300m-bench-corpus")
    )
    p.add_argument(
        "--object-store-mb", type=int, default=None,
        help="cap Ray's shared-memory object store (its pages count in every process's RSS)",
    )  # fmt: skip
    args = p.parse_args()
    import ray

    from runtime.ray_env import start_ray  # before ray.init: no `uv run` worker wrapper

    multiples = [int(m) for m in args.repeat_sizes.split(",")]
    total = args.images * max(multiples)
    corpus = make_corpus(Path(args.cache), min(total, args.distinct or total))
    floor = decode_floor(corpus[: args.images])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    cores = os.cpu_count() or 1
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; commit {commit}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"corpus: {args.images} JPEGs, {sum(p.stat().st_size for p in corpus[: args.images]) / 1e6:.0f} MB, "
        f"sizes up to 4000x3000"
    )
    print(f"floor (bare Pillow decode, 1 core): {floor:.1f} images/s")
    # a separate process, as a real web server would be: not competing for the driver's GIL
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", args.cache],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    time.sleep(1.0)
    try:
        store = args.object_store_mb * 2**20 if args.object_store_mb else None
        # the job's own way of starting an embedded Ray, with the bench's resource caps
        start_ray(
            num_cpus=cores, include_dashboard=False, log_to_driver=False, object_store_memory=store
        )
        # A first small run pays the one-off costs (worker processes importing Ray Data,
        # pyarrow, torch via webdataset): reported apart, as a 300M-image job never sees them.
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run_job(base, [p.name for p in corpus[:8]], Path(tmp))
        print(
            f"cold start (first job of 8 images on a fresh local Ray): "
            f"{time.perf_counter() - started:.1f} s"
        )
        for multiple in multiples:
            names = [
                corpus[i % len(corpus)].name + (f"?copy={i // len(corpus)}" if i >= len(corpus) else "")
                for i in range(args.images * multiple)
            ]  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                rate, kept, memory = run_job(base, names, Path(tmp))
            print(
                f"job, {len(names)} images: {rate:.1f} images/s on {cores} cores = "
                f"{rate / cores:.1f} per core = {rate / cores / floor:.2f} x floor; "
                f"kept {kept}; peak memory of all processes (PSS): {memory.peak / 2**20:.0f} MiB; "
                f"peaks apart: object store {memory.peak_store / 2**20:.0f} MiB, the rest "
                f"{memory.peak_heaps / 2**20:.0f} MiB"
            )
            top = sorted(memory.breakdown.items(), key=lambda kv: -kv[1])
            print("  MiB at the peak: " + ", ".join(f"{n} {b / 2**20:.0f}" for n, b in top[:8]))
            busy = sorted(memory.cpu_seconds.items(), key=lambda kv: -kv[1])
            print(
                "  CPU seconds: "
                + ", ".join(f"{n} {c:.1f}" for n, c in busy[:8] if c >= 0.1)
                + f" (of which this memory sampler, in the driver: {memory.sampler_cpu_s:.1f})"
            )
    finally:
        server.terminate()
        ray.shutdown()


if __name__ == "__main__":
    main()
