"""MAE pretraining throughput and model FLOPs utilisation per preset, PyTorch only (no Ray).

    python bench/pretrain_gpu.py                       # all four presets, 1024x1024, bf16, cuda
    python bench/pretrain_gpu.py --preset sapiens_0.6b --batch 32 --compile
    uv run python bench/pretrain_gpu.py --device cpu --preset vit_test --img-size 64 --batch 4

Each step is a full training step (forward with mask 0.75, norm-pix loss, backward, AdamW)
on random images already on the device, so the figure is the model's, not the loader's.
Without ``--batch`` the largest power of two that fits is searched (the step is tried, an
out-of-memory error halves it). MFU = images/s x analytic training FLOPs per image
(training.models.flops, 3x forward, recomputation not counted) / the device's dense bf16
peak; on a device without a known peak the achieved TFLOP/s are printed instead.
"""

from __future__ import annotations

import argparse
import gc
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.models.flops import mae_train_flops, peak_flops  # noqa: E402
from training.models.mae import MAE, MAEConfig  # noqa: E402
from training.models.vit import PRESETS  # noqa: E402
from training.parallel import parallelize  # noqa: E402

PAPER_PRESETS = ("sapiens_0.3b", "sapiens_0.6b", "sapiens_1b", "sapiens_2b")


def build(args, name: str, device: torch.device):
    cfg = MAEConfig(encoder=PRESETS[name](img_size=args.img_size), mask_ratio=args.mask_ratio)
    model = MAE(cfg).to(device)
    blocks = [model.encoder.blocks, model.decoder_blocks]
    model = parallelize(
        model, blocks=blocks, strategy="none", device=device, bf16=args.bf16,
        activation_checkpointing=args.activation_checkpointing, compile=args.compile,
    )  # fmt: skip
    fused = device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused)
    return cfg, model, opt


def step_fn(model, opt, imgs, bf16: bool, device: torch.device):
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = model(imgs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, name: str, batch: int, device: torch.device) -> float:
    """images/s over ``args.steps`` steps after ``args.warmup`` warm-up steps."""
    cfg, model, opt = build(args, name, device)
    imgs = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
    step = step_fn(model, opt, imgs, args.bf16, device)
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return batch * args.steps / (time.perf_counter() - start)


def largest_batch(args, name: str, device: torch.device) -> tuple[int, float]:
    batch = args.max_batch
    while batch >= 1:
        try:
            return batch, measure(args, name, batch, device)
        except torch.OutOfMemoryError:
            pass
        # outside the except block, so the failed attempt's tensors are unreachable
        gc.collect()
        torch.cuda.empty_cache()
        batch //= 2
    raise RuntimeError(f"{name}: even a batch of 1 does not fit on {device}")


def device_label(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=list(PAPER_PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--img-size", type=int, default=1024, help="square input side")
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--batch", type=int, help="fixed batch; default: largest that fits")
    parser.add_argument(
        "--max-batch", type=int, default=256, help="first batch tried by the search"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    label = device_label(device)
    peak = peak_flops(label)
    print(f"# {label}, torch {torch.__version__}, commit {commit.stdout.strip() or 'unknown'}")
    print(f"# {args.img_size}x{args.img_size}, mask {args.mask_ratio}, bf16 {args.bf16}, "
          f"compile {args.compile}, activation checkpointing {args.activation_checkpointing}")  # fmt: skip
    print("preset         batch  images/s  TFLOP/s  MFU")
    for name in args.preset:
        if args.batch:
            batch, rate = args.batch, measure(args, name, args.batch, device)
        else:
            batch, rate = largest_batch(args, name, device)
        cfg = MAEConfig(encoder=PRESETS[name](img_size=args.img_size), mask_ratio=args.mask_ratio)
        achieved = rate * mae_train_flops(cfg)
        mfu = f"{achieved / peak:.1%}" if peak else "n/a (no peak for this device)"
        print(f"{name:<14} {batch:>5} {rate:>9.2f} {achieved / 1e12:>8.2f}  {mfu}")
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
