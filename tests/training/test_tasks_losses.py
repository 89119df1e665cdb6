"""Each task loss against a float64 reference written out from its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.labelled import IGNORE_INDEX, NUM_CLASSES
from training.tasks.losses import (
    depth_loss,
    normal_loss,
    pose_loss,
    seg_class_weights,
    seg_loss,
)


def test_seg_class_weights_are_sapiens():
    # CLASS_WEIGHT of facebookresearch/sapiens seg/configs/sapiens_seg/goliath (28 classes).
    sapiens = [0.1, 10, 3, 2, 4, 4, 2, 2, 6, 10, 3, 3, 1, 4, 4, 2, 2, 6, 10, 3, 3, 1, 1,
               10, 10, 10, 10, 10]  # fmt: skip
    assert seg_class_weights() == [float(w) for w in sapiens]


@pytest.mark.parametrize("topk", [3, 128, 400])
def test_pose_loss_keeps_the_hardest_keypoints(topk):
    rng = np.random.default_rng(topk)
    n, k = 3, 308 if topk > 10 else 9
    pred, target = rng.normal(size=(2, n, k, 4, 3))
    weight = (rng.random((n, k)) < 0.7).astype(np.float64)
    got = pose_loss(*(torch.from_numpy(a) for a in (pred, target, weight)), topk=topk)
    per_point = np.zeros((n, k))
    for b in range(n):
        for j in range(k):
            per_point[b, j] = np.mean(
                (weight[b, j] * pred[b, j] - weight[b, j] * target[b, j]) ** 2
            )
    kept = min(topk, k)
    ref = np.mean([np.sort(row)[::-1][:kept].sum() / kept for row in per_point])
    assert got.item() == pytest.approx(ref, rel=1e-12)


def test_seg_loss_scales_by_class_weight_over_labelled_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, NUM_CLASSES, 6, 5))
    label = rng.integers(0, NUM_CLASSES, (2, 6, 5))
    label[rng.random(label.shape) < 0.2] = IGNORE_INDEX
    weights = np.array(seg_class_weights())
    total, count = 0.0, 0
    for b, y, x in np.ndindex(label.shape):
        c = label[b, y, x]
        if c == IGNORE_INDEX:
            continue
        z = logits[b, :, y, x]
        log_softmax = z[c] - (z.max() + np.log(np.exp(z - z.max()).sum()))
        total += -weights[c] * log_softmax
        count += 1
    got = seg_loss(torch.from_numpy(logits), torch.from_numpy(label))
    assert got.item() == pytest.approx(total / count, rel=1e-12)
    ones = torch.ones(NUM_CLASSES, dtype=torch.float64)
    plain = seg_loss(torch.from_numpy(logits), torch.from_numpy(label), ones)
    assert plain.item() == pytest.approx(
        torch.nn.functional.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(label), ignore_index=IGNORE_INDEX
        ).item(),
        rel=1e-12,
    )


def test_depth_loss_is_sapiens_silog():
    rng = np.random.default_rng(1)
    n, h, w = 3, 7, 6
    depth = rng.uniform(-0.5, 1.5, (n, 1, h, w))  # a linear head can go below 0
    target = rng.uniform(0, 1, (n, h, w))
    mask = rng.random((n, h, w)) < 0.6
    target[0, 0, 0], mask[0, 0, 0] = 0.0, True  # the nearest point: no log, not counted
    depth[1, 0, 0, 0], mask[1, 0, 0], target[1, 0, 0] = -30.0, True, 0.5  # clamped at 1e-6
    mask[2] = False  # no foreground: left out of the mean
    got = depth_loss(*(torch.from_numpy(a) for a in (depth, target, mask)))
    per_image = []
    for b in range(n):
        valid = mask[b] & (target[b] > 1e-6)
        if not valid.any():
            continue
        pred = np.maximum(depth[b, 0][valid], 1e-6)  # clamped as SiLogLoss clamps
        g = np.log(target[b][valid]) - np.log(pred)
        per_image.append(np.sqrt(np.mean(g**2) - 0.5 * np.mean(g) ** 2))
    assert len(per_image) == 2
    assert got.item() == pytest.approx(np.mean(per_image), rel=1e-10)


def test_normal_loss_is_l1_plus_cosine_on_the_raw_prediction():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(2, 3, 5, 4))  # not unit length: L1 sees it as it is
    target = rng.normal(size=(2, 3, 5, 4))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    mask = rng.random((2, 5, 4)) < 0.5
    got = normal_loss(*(torch.from_numpy(a) for a in (pred, target, mask)))
    p = np.moveaxis(pred, 1, -1)[mask]
    t = np.moveaxis(target, 1, -1)[mask]
    cos = np.sum(p * t, 1) / np.linalg.norm(p, axis=1)
    ref = np.mean(1 - cos) + np.mean(np.abs(p - t).sum(1))
    assert got.item() == pytest.approx(ref, rel=1e-10)
