"""Detector stage images/s on Ray against a bare loop of Ultralytics ``model.predict``.

    uv run python bench/detector.py --images 128 --batch-size 16 --cpus 2 --device cpu

Both sides run the same weights on the same ``det_input`` arrays (made by
``curation.detect.detector_input`` from synthetic images), at the same batch size, input size,
thresholds and thread count. The floor is a plain loop over ``model.predict`` in this process
(warmed up, images already in BGR). The stage is ``pipeline.detect_stage.add_filter_stages``
over a materialised Ray dataset, timed to the end of ``materialize()``: actor start-up and
model load included. It runs on 2N images, streamed back; the rate after the first batch is the
steady state without those fixed costs. The floor runs before and after the stage; the ratio uses
the mean. Without ``--weights`` a yolo11n with random weights is built from its YAML (speed
does not depend on the weights' values; note that random weights find more boxes than a
trained model, which costs a little more NMS and bookkeeping per image).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.detect import DetectorConfig, detector_input  # noqa: E402


def synthetic_images(n: int, width: int, height: int) -> list[Image.Image]:
    """Blocky noise photos (portrait every third one), decoded as the validate stage would."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        w, h = (height, width) if i % 3 == 2 else (width, height)
        small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        images.append(Image.fromarray(small).resize((w, h), Image.Resampling.NEAREST))
    return images


def bare_loop(model, inputs: list[np.ndarray], config: DetectorConfig, device: str) -> float:
    """Seconds for the floor: model.predict over BGR copies, batch by batch."""
    bgr = [np.ascontiguousarray(a[..., ::-1]) for a in inputs]
    half = config.half and device.startswith("cuda")
    start = time.perf_counter()
    for k in range(0, len(bgr), config.batch_size):
        model.predict(
            bgr[k : k + config.batch_size],
            imgsz=config.image_size,
            conf=config.conf,
            iou=config.iou,
            max_det=config.max_det,
            classes=[0],
            device=device,
            quantize=16 if half else None,
            verbose=False,
        )
    return time.perf_counter() - start


def stage_run(rows: list[dict], config: DetectorConfig) -> tuple[float, float, int]:
    """The Ray stage over ``rows`` (a materialised dataset), streamed to this process.

    Returns (seconds to the last batch, steady images/s after the first batch, rows judged):
    the first batch carries actor start-up and model load, later ones only the work.
    """
    import ray

    from pipeline.detect_stage import add_filter_stages

    ds = ray.data.from_items(rows).materialize()
    start = time.perf_counter()
    arrivals, judged = [], 0
    for batch in add_filter_stages(ds, config, []).iter_batches(
        batch_size=None, batch_format="numpy"
    ):
        arrivals.append((time.perf_counter(), len(batch["key"])))
        judged += sum(1 for d in batch["detector"] if d is not None)
    later = sum(n for _, n in arrivals[1:])
    steady = later / (arrivals[-1][0] - arrivals[0][0]) if later else float("nan")
    return arrivals[-1][0] - start, steady, judged


def machine_info(device: str) -> str:
    import torch
    import ultralytics

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "curation", "pipeline", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none used"
    return (
        f"commit {commit}{' (+ uncommitted changes)' if dirty else ''}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; GPU {gpu}; "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"ultralytics {ultralytics.__version__}"
    )


def build_random_weights(folder: Path) -> Path:
    from ultralytics import YOLO

    path = folder / "yolo11n-random.pt"
    model = YOLO("yolo11n.yaml")
    model.model.names = {0: "person", **{i: f"class{i}" for i in range(1, 80)}}
    model.save(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="local weights; default: random yolo11n")
    parser.add_argument(
        "--images", type=int, default=128, help="N for the floor; the stage runs 2N"
    )
    parser.add_argument("--size", default="1280x960", help="synthetic image size WxH")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda:0 or auto")
    parser.add_argument("--cpus", type=int, default=2, help="threads (floor) = CPUs per actor")
    parser.add_argument("--gpu-fraction", type=float, default=1.0)
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")

    import ray
    import torch
    from ultralytics import YOLO

    from curation.detect import pick_device

    device = pick_device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="bench-detector-"))
    weights = Path(args.weights) if args.weights else build_random_weights(workdir)
    config = DetectorConfig(
        weights=str(weights),
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=device,
        cpus_per_actor=args.cpus,
        gpu_fraction=args.gpu_fraction,
    )
    width, height = (int(v) for v in args.size.split("x"))
    images = synthetic_images(2 * args.images, width, height)
    inputs = [detector_input(im, args.image_size) for im in images]
    rows = [
        {
            "key": f"k{i}",
            "status": "ok",
            "stage": None,
            "reason": None,
            "detail": None,
            "width": im.width,
            "height": im.height,
            "det_input": a,
        }
        for i, (im, a) in enumerate(zip(images, inputs, strict=True))
    ]

    torch.set_num_threads(args.cpus)
    model = YOLO(str(weights))
    bare_loop(model, inputs[: args.batch_size], config, device)  # warm-up: fuse, allocate
    floor_before = bare_loop(model, inputs[: args.images], config, device)

    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}},
    )
    total, steady, judged = stage_run(rows, config)
    ray.shutdown()
    assert judged == len(rows), "every row must be judged"
    floor_after = bare_loop(model, inputs[: args.images], config, device)

    floor = (floor_before + floor_after) / 2
    n = args.images
    rate_floor, rate_total = n / floor, len(rows) / total
    print(machine_info(device))
    print(
        f"weights {weights.name}, {args.size} -> image size {args.image_size}, batch {args.batch_size}, "
        f"device {device}, {args.cpus} threads / CPUs per actor"
    )
    print(
        f"bare model.predict loop, {n} images: {rate_floor:7.1f} images/s "
        f"({floor_before:.2f} s before, {floor_after:.2f} s after the stage)"
    )
    print(
        f"stage, {len(rows)} images, start-up included: {rate_total:7.1f} images/s "
        f"({total:.2f} s) = {rate_total / rate_floor:.2f}x the floor"
    )
    print(
        f"stage, steady state after the first batch: {steady:7.1f} images/s "
        f"= {steady / rate_floor:.2f}x the floor"
    )


if __name__ == "__main__":
    main()
