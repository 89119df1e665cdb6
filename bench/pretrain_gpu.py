"""MAE pretraining throughput and model FLOPs utilisation per preset, PyTorch only (no Ray).

    python bench/pretrain_gpu.py                       # all four presets, 1024x1024, bf16, cuda
    python bench/pretrain_gpu.py --preset sapiens_0.6b --batch 32 --compile
    uv run python bench/pretrain_gpu.py --device cpu --preset vit_test --img-size 64 --batch 4

Each step is a full training step (forward with mask 0.75, norm-pix loss, backward, AdamW)
on random images already on the device, so the figure is the model's, not the loader's: uint8
channels-last batches, as the loader hands them over, normalised inside the step as the
training loop does. Without ``--batch`` the largest power of two that fits is searched (the
step is tried, an out-of-memory error halves it).

On CUDA: bf16 autocast with fp32 weights, fused AdamW, TF32 for the remaining fp32 matmuls and
convolutions, the caching allocator's expandable segments (fewer fragmentation OOMs in the
batch search), and attention restricted to the fused SDPA kernels (``--sdpa``; the model calls
``scaled_dot_product_attention`` without a mask, so flash applies): a silent fallback to the
unfused math kernel would be an error here, not a slow figure. Timing: ``--warmup`` steps
(compilation included with ``--compile``) are excluded, the timed steps are bracketed by
``torch.cuda.synchronize``. MFU = images/s x analytic training FLOPs per image
(models.flops, 3x forward, recomputation not counted) / the device's dense bf16
peak; on a device without a known peak the achieved TFLOP/s are printed instead.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# before CUDA is initialised: lets the allocator grow segments instead of fragmenting them
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.flops import mae_train_flops, peak_flops  # noqa: E402
from models.mae import MAE, MAEConfig  # noqa: E402
from models.vit import PRESETS  # noqa: E402
from training.parallel import parallelize  # noqa: E402

PAPER_PRESETS = ("sapiens_0.3b", "sapiens_0.6b", "sapiens_1b", "sapiens_2b")
SDPA = {
    "fused": [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
}  # fmt: skip


def build(args, name: str, device: torch.device):
    cfg = MAEConfig(encoder=PRESETS[name](image_size=args.image_size), mask_ratio=args.mask_ratio)
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


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """training.data.normalize (ImageNet mean/std), inlined: training.data needs OpenCV."""
    mean = torch.tensor((0.485, 0.456, 0.406), device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean) / std


def attention_kernels(args, device: torch.device):
    """The SDPA kernels allowed: fused ones only on CUDA (unless --sdpa any)."""
    if device.type != "cuda" or args.sdpa == "any":
        return contextlib.nullcontext()
    return sdpa_kernel(SDPA[args.sdpa])


def step_fn(model, opt, imgs, args, device: torch.device):
    def step() -> None:
        with attention_kernels(args, device):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss, _, _ = model(normalize(imgs))
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
    # what the loader yields: uint8 [B, H, W, 3] in memory, seen as [B, 3, H, W]
    shape = (batch, args.image_size, args.image_size, 3)
    imgs = torch.randint(0, 256, shape, dtype=torch.uint8, device=device).permute(0, 3, 1, 2)
    step = step_fn(model, opt, imgs, args, device)
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
    parser.add_argument(
        "--sdpa", choices=(*SDPA, "any"), default="fused",
        help="attention kernels allowed on CUDA (fused: flash, cuDNN or memory-efficient)",
    )  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    label = device_label(device)
    peak = peak_flops(label)
    print(f"# {label}, torch {torch.__version__}, commit {commit.stdout.strip() or 'unknown'}")
    print(f"# {args.image_size}x{args.image_size}, mask {args.mask_ratio}, bf16 {args.bf16}, "
          f"compile {args.compile}, activation checkpointing {args.activation_checkpointing}, "
          f"sdpa {args.sdpa if device.type == 'cuda' else 'any'}")  # fmt: skip
    print("preset         batch  images/s  TFLOP/s  MFU")
    for name in args.preset:
        if args.batch:
            batch, rate = args.batch, measure(args, name, args.batch, device)
        else:
            batch, rate = largest_batch(args, name, device)
        cfg = MAEConfig(
            encoder=PRESETS[name](image_size=args.image_size), mask_ratio=args.mask_ratio
        )
        achieved = rate * mae_train_flops(cfg)
        mfu = f"{achieved / peak:.1%}" if peak else "n/a (no peak for this device)"
        print(f"{name:<14} {batch:>5} {rate:>9.2f} {achieved / 1e12:>8.2f}  {mfu}")
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
