"""Training losses of the four tasks. Predictions come at head resolution and are resized
to the label's resolution here (bilinear), so labels keep the input resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from schemas.labelled import IGNORE_INDEX

DEPTH_EPS = 1e-2  # added before the log: normalised depth reaches 0 at the nearest pixel
SILOG_LAMBDA = 0.85  # weight of the scale-invariance term (Eigen et al. use 0.5 to 1)


def _resize(pred: Tensor, size: tuple[int, int]) -> Tensor:
    if pred.shape[-2:] == size:
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


def pose_loss(heatmaps: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Visibility-weighted MSE: heatmaps, target [N, K, h, w]; weight [N, K] in {0, 1}."""
    per_point = ((heatmaps - target) ** 2).mean(dim=(2, 3))  # [N, K]
    return (per_point * weight).sum() / weight.sum().clamp(min=1)


def seg_loss(logits: Tensor, label: Tensor, class_weights: Tensor | None) -> Tensor:
    """Class-weighted cross entropy: logits [N, C, h, w], label [N, H, W] (255 ignored)."""
    logits = _resize(logits, tuple(label.shape[-2:]))
    return F.cross_entropy(logits, label, weight=class_weights, ignore_index=IGNORE_INDEX)


def depth_values(raw: Tensor) -> Tensor:
    """Positive relative depth from the head's raw output."""
    return F.softplus(raw)


def depth_loss(raw: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Scale-invariant log loss on foreground pixels, averaged over images.

    raw [N, 1, h, w]; target [N, H, W] normalised per image to [0, 1]; mask [N, H, W] bool.
    Per image: mean(g^2) - lambda * mean(g)^2 with g = log(pred + eps) - log(target + eps).
    Images without foreground contribute nothing.
    """
    pred = depth_values(_resize(raw, tuple(target.shape[-2:])))[:, 0]  # [N, H, W]
    g = torch.log(pred + DEPTH_EPS) - torch.log(target + DEPTH_EPS)
    m = mask.float()
    count = m.sum(dim=(1, 2))  # [N]
    mean = (g * m).sum(dim=(1, 2)) / count.clamp(min=1)
    mean_sq = (g**2 * m).sum(dim=(1, 2)) / count.clamp(min=1)
    per_image = mean_sq - SILOG_LAMBDA * mean**2
    has_fg = (count > 0).float()
    return (per_image * has_fg).sum() / has_fg.sum().clamp(min=1)


def normal_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 + (1 - cosine) on foreground: pred [N, 3, h, w] unit, target [N, 3, H, W] unit."""
    pred = F.normalize(_resize(pred, tuple(target.shape[-2:])), dim=1, eps=1e-6)
    m = mask.float()
    l1 = (pred - target).abs().sum(dim=1)  # [N, H, W]
    cos = (pred * target).sum(dim=1)
    return ((l1 + 1 - cos) * m).sum() / m.sum().clamp(min=1)
