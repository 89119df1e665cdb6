"""Pretraining loader throughput: decoded + augmented images/s per core, against the floor.

    uv run python bench/pretrain_loader.py --images 300 --size 1280 960 --out-size 224 1024
    uv run python bench/pretrain_loader.py --corpus mixed --images 140 --out-size 224 1024

The floor, measured in the same run over the same image bytes, is a bare Pillow loop:
``Image.open(bytes).convert("RGB")`` (a full decode, nothing else). The loader does more
(tar reading, shuffle buffer, EXIF handling, RandomResizedCrop with a bicubic resize, flip,
uint8 tensor) but may decode JPEGs at a reduced scale when the crop allows it, so
``ratio = loader / floor`` can exceed 1 at small output sizes. Both run in one process on
one core (OMP_NUM_THREADS=1); ``--processes`` adds multi-process DataLoader figures, with
the loader processes' ring of shared batch buffers and without it (a fresh buffer per batch).

Corpora: ``fixed`` (default) is ``--images`` JPEGs of ``--size``, all alike; ``mixed`` cycles
through the sizes of the curation bench (bench/build_job.py, 640x480 to 4000x3000, every
third one portrait, ``curation.synthetic.photo_jpeg`` q=88). Each rate is given both by wall
time and by this process's CPU time (user + system): on a shared machine the wall figures
move with the other jobs' load, the CPU ones much less (both are printed; neither is tuned).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_job's corpus sizes


def photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG with photo-like statistics: smooth shapes plus fine noise (q=90)."""
    small = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    base = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (height, width, 3))
    pixels = np.clip(np.asarray(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def mixed_corpus(count: int) -> list[bytes]:
    """The curation bench's corpus: its sizes in turn, every third image portrait."""
    from build_job import SIZES

    from curation.synthetic import photo_jpeg

    images = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        if i % 3 == 1:
            width, height = height, width
        images.append(photo_jpeg(width, height, seed=i, quality=88))
    return images


def write_shards(root: str, images: list[bytes], per_shard: int) -> None:
    import datetime as dt
    import hashlib

    import pyarrow.parquet as pq
    import webdataset as wds

    from schemas import SAMPLE_SCHEMA, layout, row_to_json, rows_to_table, sample_key

    os.makedirs(f"{root}/{layout.SHARDS_DIR}", exist_ok=True)
    os.makedirs(f"{root}/{layout.MANIFESTS_DIR}", exist_ok=True)
    for shard in range(0, len(images), per_shard):
        number, rows = shard // per_shard, []
        with wds.TarWriter(f"{root}/{layout.shard_file(number)}", encoder=False) as tar:
            for i, data in enumerate(images[shard : shard + per_shard]):
                key = sample_key(f"bench://{number}/{i}")
                size = Image.open(io.BytesIO(data)).size
                row = {
                    "key": key, "shard": number, "image_member": f"{key}.jpg",
                    "json_member": f"{key}.json", "source_uri": f"bench://{number}/{i}",
                    "sha256": hashlib.sha256(data).hexdigest(), "num_bytes": len(data),
                    "format": "JPEG", "width": size[0], "height": size[1],
                    "fetched_at": dt.datetime.now(dt.UTC),
                }  # fmt: skip
                rows.append(row)
                tar.write({"__key__": key, "jpg": data, "json": row_to_json(row)})
        pq.write_table(rows_to_table(rows, SAMPLE_SCHEMA), f"{root}/{layout.manifest_file(number)}")


def floor_rate(images: list[bytes]) -> tuple[float, float]:
    """Images/s of a bare Pillow decode, by wall time and by CPU time."""
    start, cpu = time.perf_counter(), time.process_time()
    for data in images:
        Image.open(io.BytesIO(data)).convert("RGB")
    return (
        len(images) / (time.perf_counter() - start),
        len(images) / (time.process_time() - cpu),
    )


def loader_rate(
    root: str, out_size: int, count: int, workers: int, ring: bool = True
) -> tuple[float, float, list[int]]:
    """Images/s of the loader, by wall time and by CPU time: this process's plus, with
    ``workers`` > 0, that of its loader processes (so images per CPU-second in all); and the
    batch buffers each process allocated. Without ``ring``, the loader processes take a fresh
    shared buffer for every batch (as before the ring; nothing is returned to them)."""
    import psutil

    from training.data import PretrainDataConfig, make_loader

    cfg = PretrainDataConfig(
        dataset=root, image_size=(out_size, out_size), batch_size=16, num_workers=workers,
        shuffle_buffer=64,
    )  # fmt: skip
    batches = make_loader(cfg)
    if not ring:
        batches.dataset.returned = None  # read by the loader processes when they start
    stream = iter(batches)
    next(stream)  # start-up (process spawn, first shard) is not throughput
    me = psutil.Process()

    def cpu_time() -> float:
        # the loader processes are persistent, so the same ones are read before and after
        children = sum(c.cpu_times().user + c.cpu_times().system for c in me.children())
        return time.process_time() + children

    seen, start, cpu = 0, time.perf_counter(), cpu_time()
    while seen < count:
        seen += next(stream).shape[0]
    wall, cpu = seen / (time.perf_counter() - start), seen / (cpu_time() - cpu)
    return wall, cpu, batches.allocated


def processes(root: str, out: int, count: int, workers: int, rounds: int, floor: float) -> None:
    """The loader through ``workers`` processes, with and without its ring of shared buffers
    (alternating rounds; best of each by CPU time, ratio to the floor's CPU rate)."""
    runs: dict[bool, list] = {True: [], False: []}
    for _ in range(rounds):
        for ring in (True, False):
            runs[ring].append(loader_rate(root, out, count, workers, ring=ring))
    for ring, label in ((True, "ring"), (False, "fresh buffers")):
        wall, per_cpu, allocated = max(runs[ring], key=lambda r: r[1])
        print(
            f"{out}x{out}: loader with {workers} processes, {label}: {per_cpu:.1f} images per "
            f"CPU-second (all processes), ratio {per_cpu / floor:.2f}; {wall:.1f} images/s by "
            f"wall time; buffers allocated {allocated} (rounds: "
            f"{', '.join(f'{r[1]:.0f}' for r in runs[ring])})"
        )


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Pillow {Image.__version__}, "
        f"commit {commit.stdout.strip() or 'unknown'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="distinct images generated")
    parser.add_argument("--corpus", choices=("fixed", "mixed"), default="fixed")
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 960), help="fixed: W H")
    parser.add_argument("--out-size", type=int, nargs="+", default=(224, 1024), help="crop sides")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--processes", type=int, default=0, help="also time N loader processes")
    args = parser.parse_args()
    if args.corpus == "mixed":
        images = mixed_corpus(args.images)
        label = "mixed sizes 640x480-4000x3000"
    else:
        rng = np.random.default_rng(0)
        images = [photo_like(rng, *args.size) for _ in range(args.images)]
        label = f"{args.size[0]}x{args.size[1]}"
    print(f"# {machine()}")
    mean_kb = np.mean([len(i) for i in images]) / 1e3
    print(f"# {len(images)} JPEGs {label}, mean {mean_kb:.0f} kB; load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as root:
        write_shards(root, images, per_shard=50)
        floor_rate(images[:10])  # warm caches
        for out in args.out_size:
            # alternate floor and loader rounds; the best of each resists a noisy machine
            floors, rates = [], []
            for _ in range(args.rounds):
                floors.append(floor_rate(images))
                rates.append(loader_rate(root, out, len(images), workers=0)[:2])
            for i, clock in enumerate(("wall", "cpu")):
                floor, rate = max(f[i] for f in floors), max(r[i] for r in rates)
                print(
                    f"{out}x{out} by {clock} time: floor (bare Pillow decode) {floor:.1f} "
                    f"images/s, loader {rate:.1f} images/s per core, ratio {rate / floor:.2f} "
                    f"(rounds: floor {', '.join(f'{f[i]:.0f}' for f in floors)}; "
                    f"loader {', '.join(f'{r[i]:.0f}' for r in rates)})"
                )
            if args.processes:
                cpu_floor = max(f[1] for f in floors)
                processes(root, out, 2 * len(images), args.processes, args.rounds, cpu_floor)
        print(f"# load {os.getloadavg()}")


if __name__ == "__main__":
    main()
