"""Task heads on the ViT feature map and the model that joins them to the backbone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from schemas.labelled import NUM_CLASSES, NUM_KEYPOINTS
from training.models.vit import VisionTransformer


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    out_channels: int  # output maps
    num_deconv: int  # stride-2 transposed convolutions (each doubles the resolution)


# Pose: 2 deconvs -> 1/4 of the input (256x192 heatmaps at 1024x768). Dense tasks: 3 -> 1/2.
HEADS = {
    "pose": HeadSpec(out_channels=NUM_KEYPOINTS, num_deconv=2),
    "seg": HeadSpec(out_channels=NUM_CLASSES, num_deconv=3),
    "depth": HeadSpec(out_channels=1, num_deconv=3),
    "normal": HeadSpec(out_channels=3, num_deconv=3),
}


class DeconvHead(nn.Module):
    """``num_deconv`` x (4x4 stride-2 deconv, GroupNorm, ReLU), then a 1x1 conv.

    GroupNorm rather than BatchNorm: per-worker batches of a few crops make batch
    statistics noisy, and group statistics do not depend on the batch at all.
    """

    def __init__(self, in_dim: int, spec: HeadSpec, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_dim
        for _ in range(spec.num_deconv):
            layers += [
                nn.ConvTranspose2d(c_in, channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.GroupNorm(math.gcd(32, channels), channels),
                nn.ReLU(inplace=True),
            ]
            c_in = channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, spec.out_channels, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        # [N, D, gh, gw] -> [N, out, gh * 2^num_deconv, gw * 2^num_deconv]
        return self.final(self.deconv(features))


class TaskModel(nn.Module):
    """Backbone + head; normals come out unit length, depth raw (see losses.depth_values)."""

    def __init__(self, encoder: VisionTransformer, task: str, head_channels: int) -> None:
        super().__init__()
        if task not in HEADS:
            raise ValueError(f"unknown task {task!r}; choose from {sorted(HEADS)}")
        self.task = task
        self.encoder = encoder
        self.head = DeconvHead(encoder.config.embed_dim, HEADS[task], head_channels)

    def forward(self, images: Tensor) -> Tensor:
        out = self.head(self.encoder(images))  # [N, out, h, w]
        if self.task == "normal":
            out = F.normalize(out, dim=1, eps=1e-6)
        return out


def load_pretrained(encoder: VisionTransformer, state: dict) -> int:
    """Load an MAE (or encoder) checkpoint into ``encoder``; returns tensors loaded.

    Accepts a bare state dict or one under "model" / "state_dict" / "encoder"; keeps the
    encoder's keys (with or without an ``encoder.`` prefix), drops the MAE decoder, and
    interpolates the position table to this encoder's grid.
    """
    from training.models.vit import load_encoder_state

    for key in ("model", "state_dict", "encoder"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    own = set(encoder.state_dict())
    picked = {k.removeprefix("encoder."): v for k, v in state.items()}
    picked = {k: v for k, v in picked.items() if k in own}
    missing = own - set(picked)
    if missing:
        raise ValueError(
            f"pretrained checkpoint lacks {len(missing)} encoder tensors, e.g. "
            f"{sorted(missing)[:3]}; is it a checkpoint of the same preset?"
        )
    with torch.no_grad():
        load_encoder_state(encoder, picked, strict=True)
    return len(picked)
