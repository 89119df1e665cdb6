"""Each metric against an independent reference on the same inputs."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from schemas.labelled import NUM_CLASSES, SEG_CLASSES
from training.tasks import keypoints
from training.tasks.metrics import (
    DepthMetrics,
    NormalMetrics,
    SegMetrics,
    align_scale_shift,
    oks_ap,
    oks_matrix,
)


def _random_coco(rng: np.random.Generator, sigmas: np.ndarray, images: int = 12):
    """Ground truths and noisy detections (with misses, false positives, crowds, ties)."""
    gts, dts = [], []
    num_kpts = len(sigmas)
    ann_id = 1
    for image_id in range(1, images + 1):
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(20, 120, 2)
            kx = x + rng.uniform(0, w, num_kpts)
            ky = y + rng.uniform(0, h, num_kpts)
            v = rng.choice([0, 1, 2], size=num_kpts, p=[0.2, 0.2, 0.6])
            if rng.random() < 0.1:
                v[:] = 0  # no labelled keypoint: ignored by COCO
            kp = np.stack([kx * (v > 0), ky * (v > 0), v], 1).ravel()
            gts.append({
                "id": ann_id, "image_id": image_id, "category_id": 1,
                "keypoints": kp.tolist(), "num_keypoints": int((v > 0).sum()),
                "bbox": [x, y, w, h], "area": float(w * h * rng.uniform(0.5, 1.0)),
                "iscrowd": int(rng.random() < 0.08),
            })  # fmt: skip
            ann_id += 1
            if rng.random() < 0.85:
                # Noise on the scale OKS tolerates for each point: some hits, some misses.
                spread = sigmas * np.sqrt(w * h) * rng.uniform(0.1, 2.5)
                noise = rng.normal(0, 1, (num_kpts, 2)) * spread[:, None]
                det = np.stack([kx + noise[:, 0], ky + noise[:, 1], np.ones(num_kpts)], 1)
                score = float(np.round(rng.uniform(0, 1), 1))  # rounding makes ties
                dts.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "keypoints": det.ravel().tolist(),
                        "score": score,
                    }
                )
        for _ in range(int(rng.integers(0, 3))):  # false positives
            det = np.stack(
                [rng.uniform(0, 300, num_kpts), rng.uniform(0, 300, num_kpts), np.ones(num_kpts)], 1
            )
            dts.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": det.ravel().tolist(),
                    "score": float(rng.uniform()),
                }
            )
    return gts, dts


def _cocoeval_ap(tmp_path, gts, dts, sigmas, images: int) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({
        "images": [{"id": i, "width": 400, "height": 400} for i in range(1, images + 1)],
        "annotations": gts,
        "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}],
    }))  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        result = coco.loadRes(dts)
        ev = COCOeval(coco, result, iouType="keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


@pytest.mark.parametrize(("seed", "num_kpts"), [(0, 17), (1, 17), (2, 308), (3, 308)])
def test_oks_ap_equals_cocoeval(tmp_path, seed, num_kpts):
    rng = np.random.default_rng(seed)
    sigmas = keypoints.SIGMAS if num_kpts == 308 else keypoints.COCO_SIGMAS
    gts, dts = _random_coco(rng, sigmas)
    stats = _cocoeval_ap(tmp_path, gts, dts, sigmas, images=12)
    ours = oks_ap(gts, dts, sigmas)
    assert 0.0 < stats[0] < 1.0  # a case that exercises both hits and misses
    assert ours["AP"] == pytest.approx(stats[0], abs=1e-6)
    assert ours["AP50"] == pytest.approx(stats[1], abs=1e-6)
    assert ours["AP75"] == pytest.approx(stats[2], abs=1e-6)
    assert ours["AR"] == pytest.approx(stats[5], abs=1e-6)


def _crowded_coco(rng: np.random.Generator, sigmas: np.ndarray, images: int = 8):
    """Scenes of 4 to 12 overlapping people around one spot: areas well below the box, crowd
    regions, duplicate and swapped detections, and more than 20 detections in some images."""
    gts, dts = [], []
    k = len(sigmas)
    for image_id in range(1, images + 1):
        spot = rng.uniform(50, 250, 2)
        people = []
        for _ in range(int(rng.integers(4, 13))):
            x, y = spot + rng.normal(0, 25, 2)
            w, h = rng.uniform(30, 90, 2)
            v = rng.choice([0, 1, 2], size=k, p=[0.3, 0.2, 0.5])
            kx, ky = x + rng.uniform(0, w, k), y + rng.uniform(0, h, k)
            crowd = int(rng.random() < 0.1)
            gts.append({
                "id": len(gts) + 1, "image_id": image_id, "category_id": 1,
                "keypoints": np.stack([kx * (v > 0), ky * (v > 0), v], 1).ravel().tolist(),
                "num_keypoints": int((v > 0).sum()), "bbox": [x, y, w, h],
                "area": float(w * h * rng.uniform(0.2, 0.7)), "iscrowd": crowd,
            })  # fmt: skip
            people.append((kx, ky, w * h))
        for j, (kx, ky, box) in enumerate(people):
            for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.1, 0.6, 0.2, 0.1]))):
                if rng.random() < 0.15:  # the detection lands on a neighbour
                    kx, ky, box = people[(j + 1) % len(people)]
                spread = sigmas * np.sqrt(box) * rng.uniform(0.05, 2.0)
                noise = rng.normal(0, 1, (k, 2)) * spread[:, None]
                det = np.stack([kx + noise[:, 0], ky + noise[:, 1], np.ones(k)], 1)
                dts.append({"image_id": image_id, "category_id": 1,
                            "keypoints": det.ravel().tolist(),
                            "score": float(np.round(rng.uniform(0, 1), 2))})  # fmt: skip
        for _ in range(int(rng.integers(0, 16))):  # false positives among the crowd
            det = np.stack([*(spot[:, None] + rng.normal(0, 40, (2, k))), np.ones(k)], 1)
            dts.append({"image_id": image_id, "category_id": 1, "score": float(rng.uniform()),
                        "keypoints": det.ravel().tolist()})  # fmt: skip
    return gts, dts


@pytest.mark.parametrize(("seed", "num_kpts"), [(10, 17), (11, 17), (12, 308), (13, 308)])
def test_oks_ap_equals_cocoeval_on_crowded_scenes(tmp_path, seed, num_kpts):
    rng = np.random.default_rng(seed)
    sigmas = keypoints.SIGMAS if num_kpts == 308 else keypoints.COCO_SIGMAS
    gts, dts = _crowded_coco(rng, sigmas)
    counts = np.bincount([d["image_id"] for d in dts])
    assert counts.max() > 20  # COCO keeps the 20 best-scored detections per image
    stats = _cocoeval_ap(tmp_path, gts, dts, sigmas, images=8)
    ours = oks_ap(gts, dts, sigmas)
    assert 0.0 < stats[0] < 1.0
    for name, i in (("AP", 0), ("AP50", 1), ("AP75", 2), ("AR", 5)):
        assert ours[name] == pytest.approx(stats[i], abs=1e-9), name


def test_oks_matrix_against_float64_formula():
    """OKS = mean over labelled points of exp(-d^2 / (2 * area * (2 sigma)^2)), scaled by
    the annotation's area (not the box's)."""
    rng = np.random.default_rng(7)
    sigmas = keypoints.SIGMAS
    gts, dts = _crowded_coco(rng, sigmas, images=1)
    gts = [g for g in gts if g["num_keypoints"] > 0]
    got = oks_matrix(dts, gts, sigmas)
    for i, d in enumerate(dts):
        for j, g in enumerate(gts):
            gk, dk = np.reshape(g["keypoints"], (-1, 3)), np.reshape(d["keypoints"], (-1, 3))
            labelled = gk[:, 2] > 0
            d2 = np.sum((dk[:, :2] - gk[:, :2]) ** 2, 1)[labelled]
            ref = np.mean(np.exp(-d2 / (2 * g["area"] * (2 * sigmas[labelled]) ** 2)))
            assert got[i, j] == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_oks_ap_perfect_and_empty():
    rng = np.random.default_rng(5)
    gts, _ = _random_coco(rng, np.array(keypoints.COCO_SIGMAS))
    gts = [g for g in gts if g["num_keypoints"] > 0 and not g["iscrowd"]]
    perfect = [{"image_id": g["image_id"], "keypoints": g["keypoints"], "score": 1.0} for g in gts]
    assert oks_ap(gts, perfect, np.array(keypoints.COCO_SIGMAS))["AP"] == pytest.approx(1.0)
    assert oks_ap([], [], np.array(keypoints.COCO_SIGMAS))["AP"] == -1.0


def test_miou_against_per_class_sets():
    rng = np.random.default_rng(0)
    metrics = SegMetrics(SEG_CLASSES)
    preds, labels = [], []
    for _ in range(3):
        gt = rng.integers(0, 6, (20, 30))
        gt[rng.random(gt.shape) < 0.1] = 255  # unlabelled pixels
        pred = np.where(rng.random(gt.shape) < 0.7, gt % 255, rng.integers(0, 7, gt.shape))
        metrics.update(pred, gt)
        preds.append(pred)
        labels.append(gt)
    pred, gt = np.concatenate(preds), np.concatenate(labels)
    valid = gt != 255
    expected = []
    for c in range(NUM_CLASSES):
        inter = np.sum((pred == c) & (gt == c) & valid)
        union = np.sum(((pred == c) | (gt == c)) & valid)
        expected.append(inter / union if union else None)
    got = metrics.compute()
    assert list(got["IoU"]) == list(SEG_CLASSES)  # named, in class-id order
    for e, g in zip(expected, got["IoU"].values(), strict=True):
        assert (e is None and g is None) or g == pytest.approx(e, abs=1e-12)
    present = [e for e in expected if e is not None]
    assert len(present) == 7  # classes 0..6 occur; the rest are left out of the mean
    assert got["mIoU"] == pytest.approx(np.mean(present), abs=1e-12)


def test_angular_error_against_float64():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(40, 50, 3))
    pred = gt + rng.normal(scale=0.4, size=gt.shape)
    mask = rng.random((40, 50)) < 0.6
    metrics = NormalMetrics()
    metrics.update(pred.astype(np.float32), gt.astype(np.float32), mask)
    got = metrics.compute()
    p, g = pred[mask], gt[mask]
    cos = np.sum(p * g, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(g, axis=1)
    ref = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert got["mean"] == pytest.approx(ref.mean(), abs=1e-3)
    assert got["median"] == pytest.approx(np.median(ref), abs=1e-3)
    for thr in (11.25, 22.5, 30):
        assert got[f"within_{thr:g}"] == pytest.approx(np.mean(ref < thr), abs=2e-3)


def test_depth_alignment_recovers_scale_and_shift():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 3.0, (30, 40))
    mask = rng.random(gt.shape) < 0.5
    pred = (gt - 0.7) / 2.5  # an affine copy: alignment makes it exact
    np.testing.assert_allclose(align_scale_shift(pred, gt, mask)[mask], gt[mask], atol=1e-9)
    metrics = DepthMetrics()
    metrics.update(pred, gt, mask)
    noisy = pred + rng.normal(scale=0.05, size=pred.shape)
    metrics.update(noisy, gt, mask)
    got = metrics.compute()
    # Reference for the noisy image: closed-form least squares in float64.
    p, g = noisy[mask], gt[mask]
    s = np.cov(p, g, bias=True)[0, 1] / np.var(p)
    a = s * p + (g.mean() - s * p.mean())
    rmse = np.sqrt(np.mean((a - g) ** 2))
    assert got["RMSE"] == pytest.approx(rmse / 2, rel=1e-6)  # mean of 0 and rmse
    assert got["AbsRel"] == pytest.approx(np.mean(np.abs(a - g) / g) / 2, rel=1e-6)
    assert got["delta1"] == pytest.approx((1 + np.mean(np.maximum(a / g, g / a) < 1.25)) / 2)
