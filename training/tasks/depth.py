"""Relative depth of the person's pixels (Sapiens' depth task), scored after a per-image
scale and shift alignment."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from training.tasks import metrics as M
from training.tasks import transforms as T
from training.tasks.heads import HeadSpec
from training.tasks.losses import depth_loss, depth_values
from training.tasks.shards import Sample
from training.tasks.task import DenseTask, Predict, foreground, resized

# How the depth head's last conv becomes depth. Sapiens' depth head regresses depth directly
# ("linear": its released depth models are read that way). Heads trained here put a softplus on
# it: with a linear output about half of a fresh head's pixels start below SiLogLoss' clamp with
# no gradient, and short runs did not learn (40 steps on the synthetic figures: loss 8.2 -> 8.8).
DEPTH_OUTPUTS = ("softplus", "linear")


class DepthTask(DenseTask):
    def output_layer(self, cfg) -> nn.Module:
        if cfg.depth_output not in DEPTH_OUTPUTS:
            raise ValueError(
                f"unknown depth output {cfg.depth_output!r}; choose from {DEPTH_OUTPUTS}"
            )
        return nn.Softplus() if cfg.depth_output == "softplus" else nn.Identity()

    def targets(
        self, sample: Sample, matrix: np.ndarray, hw: tuple[int, int], flip: bool
    ) -> dict[str, Tensor]:
        mask = foreground(sample, matrix, hw)
        depth = T.warp_image(sample.depth, matrix, hw, nearest=True)
        return {"mask": torch.from_numpy(mask), "depth_raw": torch.from_numpy(depth),
                "depth": torch.from_numpy(normalise_depth(depth, mask))}  # fmt: skip

    def loss(self, out: Tensor, batch: dict, cfg) -> Tensor:
        return depth_loss(out.float(), batch["depth"], batch["mask"])

    def evaluate(self, predict: Predict, loader: Iterable[dict], flip_test: bool) -> dict:
        metrics = M.DepthMetrics()
        for batch in loader:
            pred = depth_values(resized(predict(batch["image"]), batch["mask"]))[:, 0].numpy()
            for p, g, m in zip(pred, batch["depth_raw"].numpy(), batch["mask"].numpy(),
                               strict=True):  # fmt: skip
                metrics.update(p, g, m)
        return metrics.compute()

    def picture(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The image and, beside it, the depth as a colour map (near bright)."""
        import matplotlib

        d = depth_values(torch.from_numpy(out[..., 0])).numpy()
        d = (d - d.min()) / max(float(np.ptp(d)), 1e-6)
        colour = (matplotlib.colormaps["magma"](1 - d)[..., :3] * 255).astype(np.uint8)
        return np.concatenate([image, colour], axis=1)


def normalise_depth(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image [0, 1] over the foreground (0 elsewhere): relative, not metric, depth."""
    if not mask.any():
        return np.zeros_like(depth, dtype=np.float32)
    lo, hi = depth[mask].min(), depth[mask].max()
    return np.where(mask, (depth - lo) / max(hi - lo, 1e-6), 0).astype(np.float32)


DEPTH = DepthTask(
    name="depth",
    # 4 deconvs + 2 convs of 384 channels -> the full input resolution
    head=HeadSpec(out_channels=1, num_deconv=4, num_conv=2, channels=384),
    light_deconv=3,  # 1/2 of the input, as the other dense tasks
    patch_padding=0,
    sapiens_prefix="decode_head.",
)
