"""Training metrics as JSONL and TensorBoard, MFU arithmetic and reconstruction pictures.

Only rank 0 logs. JSONL and TensorBoard files live in a local folder (TensorBoard cannot
write to S3 itself); pictures too.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch


class MetricsLog:
    def __init__(self, log_dir: str, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.log_dir = log_dir
        self.enabled = enabled
        self._tb = None
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
            self._jsonl = open(os.path.join(log_dir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(log_dir, "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def throughput(
    *, images: int, seconds: float, flops_per_image: float, world_size: int, peak: float | None
) -> dict[str, float]:
    """images/s (all ranks), achieved TFLOP/s per device and MFU when the peak is known."""
    rate = images / max(seconds, 1e-9)
    achieved = rate * flops_per_image / world_size
    out = {"images_per_s": rate, "tflops_per_device": achieved / 1e12}
    if peak:
        out["mfu"] = achieved / peak
    return out


def save_reconstruction(
    path: str, imgs: torch.Tensor, masked: torch.Tensor, recon: torch.Tensor, pasted: torch.Tensor
) -> None:
    """A PNG grid, one column per image: input / masked input / reconstruction /
    reconstruction with the visible patches pasted back. Inputs are [N, 3, H, W] in [0, 1]."""
    from torchvision.utils import save_image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rows = torch.cat([imgs, masked, recon, pasted]).float().clamp(0, 1).cpu()
    save_image(rows, path, nrow=imgs.shape[0], padding=2)
