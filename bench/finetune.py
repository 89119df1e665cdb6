"""Fine-tuning throughput (training images/s) per task, without Ray.

    uv run python bench/finetune.py --preset vit_test --size 64 48 --batch 8 --steps 20
    python bench/finetune.py --preset sapiens_0.3b --size 1024 768 --batch 4 --device cuda --bf16

Each task runs full training steps (forward, loss, backward, AdamW) on synthetic rendered
batches prepared once. The floor measured in the same run is the backbone alone (forward +
backward of a sum over its features, same optimiser), so ``ratio`` is the share of the
backbone's speed a task keeps once its head and loss are added.
"""

from __future__ import annotations

import argparse
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.labelled import TASKS  # noqa: E402
from training.config import FinetuneConfig  # noqa: E402
from training.tasks.data import prepare  # noqa: E402
from training.tasks.model import build_model  # noqa: E402
from training.tasks.registry import TASKS_BY_NAME  # noqa: E402
from training.tasks.synthetic import synthetic_samples  # noqa: E402
from training.tasks.task import PrepareConfig  # noqa: E402


def _batch(task: str, size: tuple[int, int], batch: int, device: str) -> dict:
    samples = synthetic_samples(batch, seed=0, height=size[0] * 3 // 2, width=size[1] * 3 // 2)
    cfg = PrepareConfig(task=task, input_hw=size, train=True)
    items = [prepare(s, cfg, random.Random(0))[0] for s in samples]
    return {k: torch.stack([i[k] for i in items]).to(device) for k in items[0]}


def _time(step, steps: int, device: str) -> float:
    for _ in range(2):  # warm-up
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_task(task: str | None, args) -> float:
    """Images/s of ``task`` (None: the backbone alone)."""
    cfg = FinetuneConfig(task=task or "seg", dataset="-", output="-", preset=args.preset,
                         image_size=tuple(args.size), head_channels=args.head_channels)  # fmt: skip
    model = build_model(cfg).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = _batch(task or "seg", cfg.image_size, args.batch, args.device)

    def step() -> None:
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = (
                TASKS_BY_NAME[task].loss(model(batch["image"]), batch, cfg)
                if task
                else model.encoder(batch["image"]).float().mean()
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return args.steps * args.batch / _time(step, args.steps, args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vit_test")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 48))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--head-channels", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    )
    print(f"commit {commit} | torch {torch.__version__} | {device} | threads "
          f"{torch.get_num_threads()} | preset {args.preset} {args.size[0]}x{args.size[1]} | "
          f"batch {args.batch} | steps {args.steps} | bf16 {args.bf16}")  # fmt: skip
    floor = bench_task(None, args)
    print(f"{'backbone':>8}: {floor:8.1f} images/s (floor)")
    for task in TASKS:
        rate = bench_task(task, args)
        print(f"{task:>8}: {rate:8.1f} images/s  ratio to backbone {rate / floor:.2f}")


if __name__ == "__main__":
    main()
