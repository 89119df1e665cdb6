"""Evaluation metrics of the four tasks, written from their definitions.

Pose: object keypoint similarity (OKS) average precision exactly as COCO defines it
(pycocotools ``COCOeval`` with ``iouType="keypoints"``, area range "all", 20 detections per
image, OKS thresholds 0.50:0.05:0.95, 101 recall points). Segmentation: IoU per class from a
confusion matrix. Depth: RMSE, AbsRel and delta < 1.25 after a per-image least-squares scale
and shift of the prediction onto the ground truth over foreground pixels. Normals: angle
between unit vectors over foreground pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 20


def oks_matrix(dts: Sequence[dict], gts: Sequence[dict], sigmas: np.ndarray) -> np.ndarray:
    """OKS of each detection (rows) against each ground truth (columns)."""
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    out = np.zeros((len(dts), len(gts)))
    for j, gt in enumerate(gts):
        g = np.asarray(gt["keypoints"], dtype=np.float64)
        xg, yg, vg = g[0::3], g[1::3], g[2::3]
        visible = vg > 0
        x, y, w, h = gt["bbox"]
        for i, dt in enumerate(dts):
            d = np.asarray(dt["keypoints"], dtype=np.float64)
            xd, yd = d[0::3], d[1::3]
            if visible.any():
                dx, dy = xd - xg, yd - yg
            else:  # no labelled point: distance to a box twice the size of the gt box
                dx = np.maximum(0, x - w - xd) + np.maximum(0, xd - (x + 2 * w))
                dy = np.maximum(0, y - h - yd) + np.maximum(0, yd - (y + 2 * h))
            e = (dx**2 + dy**2) / var / (gt["area"] + np.spacing(1)) / 2
            if visible.any():
                e = e[visible]
            out[i, j] = np.sum(np.exp(-e)) / e.shape[0]
    return out


def _match_image(dts: list[dict], gts: list[dict], sigmas: np.ndarray) -> dict[str, np.ndarray]:
    """Greedy matching of one image's detections, per OKS threshold (COCO's evaluateImg)."""
    dts = sorted(dts, key=lambda d: -d["score"])[:MAX_DETS]  # stable, like mergesort
    ignore = np.array(
        [bool(g.get("iscrowd", 0)) or g.get("num_keypoints", 1) == 0 for g in gts], dtype=bool
    )
    order = np.argsort(ignore, kind="mergesort")
    gts = [gts[i] for i in order]
    ignore, crowd = ignore[order], np.array([bool(g.get("iscrowd", 0)) for g in gts], dtype=bool)
    ious = oks_matrix(dts, gts, sigmas) if dts and gts else np.zeros((len(dts), len(gts)))
    t_count = len(OKS_THRESHOLDS)
    gt_taken = np.zeros((t_count, len(gts)), dtype=bool)
    dt_matched = np.zeros((t_count, len(dts)), dtype=bool)
    dt_ignored = np.zeros((t_count, len(dts)), dtype=bool)
    for t, thr in enumerate(OKS_THRESHOLDS):
        for d in range(len(dts)):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(len(gts)):
                if gt_taken[t, g] and not crowd[g]:
                    continue
                if m > -1 and not ignore[m] and ignore[g]:
                    break  # gts are sorted: only ignored ones remain
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m == -1:
                continue
            dt_ignored[t, d], dt_matched[t, d], gt_taken[t, m] = ignore[m], True, True
    return {
        "scores": np.array([d["score"] for d in dts], dtype=np.float64),
        "matched": dt_matched,
        "ignored": dt_ignored,
        "gt_ignored": ignore,
    }


def oks_ap(gts: Sequence[dict], dts: Sequence[dict], sigmas: np.ndarray) -> dict[str, float]:
    """COCO keypoint AP, AP50, AP75 and AR over all images.

    ``gts``: COCO annotations (image_id, keypoints [x, y, v] * K, bbox, area, optional
    iscrowd and num_keypoints). ``dts``: COCO results (image_id, keypoints, score).
    Returns -1 for every figure when there is no ground truth to find (as COCO does).
    """
    by_image: dict[Any, tuple[list, list]] = {}
    for g in gts:
        by_image.setdefault(g["image_id"], ([], []))[0].append(g)
    for d in dts:
        by_image.setdefault(d["image_id"], ([], []))[1].append(d)
    # Images in id order: ties in score are then broken as COCO breaks them.
    per_image = [_match_image(by_image[i][1], by_image[i][0], sigmas) for i in sorted(by_image)]
    if not per_image:
        return {"AP": -1.0, "AP50": -1.0, "AP75": -1.0, "AR": -1.0}
    scores = np.concatenate([e["scores"] for e in per_image])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e["matched"] for e in per_image], axis=1)[:, order]
    ignored = np.concatenate([e["ignored"] for e in per_image], axis=1)[:, order]
    positives = int(np.count_nonzero(~np.concatenate([e["gt_ignored"] for e in per_image])))
    if positives == 0:
        return {"AP": -1.0, "AP50": -1.0, "AP75": -1.0, "AR": -1.0}
    precision, recall = _precision_recall(matched, ignored, positives)
    return {
        "AP": float(precision.mean()),
        "AP50": float(precision[0].mean()),
        "AP75": float(precision[5].mean()),
        "AR": float(recall.mean()),
    }


def _precision_recall(
    matched: np.ndarray, ignored: np.ndarray, positives: int
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at RECALL_POINTS and final recall, per threshold."""
    tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
    precision = np.zeros((len(OKS_THRESHOLDS), len(RECALL_POINTS)))
    recall = np.zeros(len(OKS_THRESHOLDS))
    for t in range(len(OKS_THRESHOLDS)):
        rc = tp[t] / positives
        pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
        recall[t] = rc[-1] if len(rc) else 0.0
        pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision envelope
        idx = np.searchsorted(rc, RECALL_POINTS, side="left")
        valid = idx < len(pr)
        precision[t, : int(valid.sum())] = pr[idx[valid]]
    return precision, recall


class SegMetrics:
    """Accumulates a confusion matrix; IoU per class (by name) and mIoU over the classes
    that occur (in the labels or the predictions)."""

    def __init__(self, class_names: Sequence[str], ignore_index: int = 255) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        k = self.num_classes
        self.confusion = np.zeros((k, k), dtype=np.int64)  # [gt, pred]

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and label {gt.shape} differ in shape")
        keep = gt != self.ignore_index
        k = self.num_classes
        flat = gt[keep].astype(np.int64) * k + pred[keep].astype(np.int64)
        self.confusion += np.bincount(flat, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, Any]:
        """mIoU, pixel accuracy and ``IoU``: {class name: IoU, or None if it never occurs}."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        return {
            "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "IoU": {
                name: None if np.isnan(v) else float(v)
                for name, v in zip(self.class_names, iou, strict=True)
            },
            "pixel_accuracy": float(tp.sum() / max(self.confusion.sum(), 1)),
        }


def align_scale_shift(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``s * pred + t`` with (s, t) minimising the squared error to gt over ``mask``."""
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    a = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, g, rcond=None)
    return s * pred.astype(np.float64) + t


class DepthMetrics:
    """Mean over images of RMSE, AbsRel and delta<1.25 after scale-and-shift alignment."""

    def __init__(self, min_depth: float = 1e-3) -> None:
        self.min_depth = min_depth  # aligned predictions are clamped here before ratios
        self.rows: list[tuple[float, float, float]] = []

    def update(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> None:
        mask = mask.astype(bool) & (gt > self.min_depth)
        if mask.sum() < 2:
            return  # too few foreground pixels to fit a scale and a shift
        aligned = np.maximum(align_scale_shift(pred, gt, mask)[mask], self.min_depth)
        g = gt[mask].astype(np.float64)
        rmse = float(np.sqrt(np.mean((aligned - g) ** 2)))
        absrel = float(np.mean(np.abs(aligned - g) / g))
        delta = float(np.mean(np.maximum(aligned / g, g / aligned) < 1.25))
        self.rows.append((rmse, absrel, delta))

    def compute(self) -> dict[str, float]:
        if not self.rows:
            return {"RMSE": float("nan"), "AbsRel": float("nan"), "delta1": float("nan")}
        rmse, absrel, delta = np.mean(np.array(self.rows), axis=0)
        return {"RMSE": float(rmse), "AbsRel": float(absrel), "delta1": float(delta)}


def angular_error_deg(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Angle in degrees between [..., 3] vectors (normalised here), in float32."""
    p = pred.astype(np.float32)
    g = gt.astype(np.float32)
    p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-8)
    g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-8)
    cos = np.clip(np.sum(p * g, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


class NormalMetrics:
    """Mean and median angular error and the share of pixels within 11.25, 22.5, 30 degrees."""

    def __init__(self) -> None:
        self.errors: list[np.ndarray] = []

    def update(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> None:
        self.errors.append(angular_error_deg(pred[mask.astype(bool)], gt[mask.astype(bool)]))

    def compute(self) -> dict[str, float]:
        err = np.concatenate(self.errors) if self.errors else np.zeros(0, dtype=np.float32)
        if err.size == 0:
            return {
                k: float("nan")
                for k in ("mean", "median", "within_11.25", "within_22.5", "within_30")
            }
        out = {"mean": float(err.mean(dtype=np.float64)), "median": float(np.median(err))}
        for thr in (11.25, 22.5, 30.0):
            out[f"within_{thr:g}"] = float(np.mean(err < thr))
        return out
