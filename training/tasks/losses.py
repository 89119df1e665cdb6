"""Training losses of the four tasks, Sapiens' defaults. Predictions come at head resolution
and are resized to the label's resolution here (bilinear), so labels keep the input
resolution.

Read from facebookresearch/sapiens: pose ``KeypointOHKMMSELoss(use_target_weight=True,
topk=128)`` (``pose/configs/sapiens_pose/goliath``); segmentation ``CrossEntropyLoss`` with
the fixed ``CLASS_WEIGHT`` of ``seg/configs/sapiens_seg/goliath``; depth ``SiLogLoss``
(``seg/mmseg/models/losses/silog_loss.py``); normals ``CosineSimilarityLoss`` + ``L1Loss``
(``seg/configs/sapiens_normal``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from schemas.labelled import IGNORE_INDEX, SEG_CLASSES

POSE_TOPK = 128  # hard keypoints kept per crop (Sapiens' 308-point config)
DEPTH_EPS = 1e-6  # SiLogLoss: targets at or below are invalid, predictions clamped here
# Sapiens' per-class cross-entropy weights for its 28 classes: background 0.1, large parts
# 1 to 3, hands, feet, shoes 4 to 6, small parts (apparel, socks, lips, teeth, tongue) 10.
SEG_CLASS_WEIGHTS = {
    "Background": 0.1, "Apparel": 10, "Face_Neck": 3, "Hair": 2, "Left_Foot": 4,
    "Left_Hand": 4, "Left_Lower_Arm": 2, "Left_Lower_Leg": 2, "Left_Shoe": 6, "Left_Sock": 10,
    "Left_Upper_Arm": 3, "Left_Upper_Leg": 3, "Lower_Clothing": 1, "Right_Foot": 4,
    "Right_Hand": 4, "Right_Lower_Arm": 2, "Right_Lower_Leg": 2, "Right_Shoe": 6,
    "Right_Sock": 10, "Right_Upper_Arm": 3, "Right_Upper_Leg": 3, "Torso": 1,
    "Upper_Clothing": 1, "Lower_Lip": 10, "Upper_Lip": 10, "Lower_Teeth": 10,
    "Upper_Teeth": 10, "Tongue": 10,
}  # fmt: skip


def seg_class_weights() -> list[float]:
    """SEG_CLASS_WEIGHTS in class-id order."""
    return [float(SEG_CLASS_WEIGHTS[name]) for name in SEG_CLASSES]


def _resize(pred: Tensor, size: tuple[int, int]) -> Tensor:
    if pred.shape[-2:] == size:
        return pred
    return F.interpolate(pred, size=size, mode="bilinear", align_corners=False)


def pose_loss(heatmaps: Tensor, target: Tensor, weight: Tensor, topk: int = POSE_TOPK) -> Tensor:
    """MSE with online hard keypoint mining: heatmaps, target [N, K, h, w]; weight [N, K].

    Per crop and point the pixel mean of ``(weight * (heatmap - target))^2``; per crop the
    mean of its ``topk`` largest (unlabelled points count as 0 and still fill the k); then
    the mean over crops. ``topk`` is capped at K.
    """
    w = weight[:, :, None, None]
    per_point = ((heatmaps * w - target * w) ** 2).mean(dim=(2, 3))  # [N, K]
    k = min(topk, per_point.shape[1])
    return per_point.topk(k, dim=1, sorted=False).values.mean()


def seg_loss(logits: Tensor, label: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Class-weighted cross entropy: logits [N, C, h, w], label [N, H, W] (255 ignored).

    ``class_weights`` None means Sapiens' (SEG_CLASS_WEIGHTS). As mmseg reduces it, each
    labelled pixel's loss is scaled by its class weight and the sum is divided by the number
    of labelled pixels, not by the sum of weights (torch's weighted mean): the weights
    scale the loss, they do not only re-balance it. (mmseg divides by every pixel, ignored
    ones included; here padding outside the image is ignored, so it would weigh images by
    how much of the input they fill.)
    """
    logits = _resize(logits, tuple(label.shape[-2:]))
    if class_weights is None:
        class_weights = torch.tensor(seg_class_weights(), dtype=logits.dtype, device=logits.device)
    per_pixel = F.cross_entropy(
        logits, label, weight=class_weights.to(logits.dtype), ignore_index=IGNORE_INDEX,
        reduction="none",
    )  # fmt: skip
    return per_pixel.sum() / (label != IGNORE_INDEX).sum().clamp(min=1)


def depth_values(depth: Tensor) -> Tensor:
    """Depth as the loss and the metrics read it: the model's depth output (``TaskModel``)
    clamped at DEPTH_EPS, as SiLogLoss clamps before its log."""
    return depth.clamp(min=DEPTH_EPS)


def depth_loss(depth: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Sapiens' scale-invariant log loss, averaged over images.

    depth [N, 1, h, w] (the model's output); target [N, H, W] normalised per image to [0, 1] on the foreground;
    mask [N, H, W] bool. Valid pixels: foreground with target > DEPTH_EPS (the nearest
    point, at 0, has no log). Per image, with g = log(target) - log(pred) over valid pixels:
    sqrt(mean(g^2) - 0.5 * mean(g)^2). Images without a valid pixel are left out of the mean
    (Sapiens counts them as 0).
    """
    pred = depth_values(_resize(depth, tuple(target.shape[-2:])))[:, 0]  # [N, H, W]
    valid = mask & (target > DEPTH_EPS)
    g = torch.where(valid, torch.log(target.clamp(min=DEPTH_EPS)) - torch.log(pred), 0.0)
    m = valid.to(g.dtype)
    count = m.sum(dim=(1, 2))  # [N]
    mean = g.sum(dim=(1, 2)) / count.clamp(min=1)
    mean_sq = (g**2).sum(dim=(1, 2)) / count.clamp(min=1)
    # mean_sq - 0.5 mean^2 >= 0.5 mean_sq >= 0; the clamp keeps sqrt's gradient finite at 0.
    per_image = torch.sqrt((mean_sq - 0.5 * mean**2).clamp(min=1e-12))
    has = (count > 0).to(g.dtype)
    return (per_image * has).sum() / has.sum().clamp(min=1)


def normal_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Sapiens' normal loss on foreground pixels: pred [N, 3, h, w], target [N, 3, H, W]
    unit, mask [N, H, W]. (1 - cosine) between the normalised vectors plus the L1 distance
    summed over x, y, z of the prediction as given, each averaged over foreground pixels."""
    pred = _resize(pred, tuple(target.shape[-2:]))
    m = mask.to(pred.dtype)
    cos = (F.normalize(pred, dim=1, eps=1e-6) * F.normalize(target, dim=1, eps=1e-6)).sum(1)
    l1 = (pred - target).abs().sum(dim=1)  # [N, H, W]
    return ((l1 + 1 - cos) * m).sum() / m.sum().clamp(min=1)
