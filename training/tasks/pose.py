"""Pose: 308 keypoint heatmaps per person crop, top-down (Sapiens' pose task).

Evaluation is top-down on the ground-truth boxes (as COCO's gt-box protocol), scored with
OKS AP over the 308 points and over the 17 COCO body points. OKS is scaled by each person's
annotated area (COCO's ``area``); persons labelled without one are scored with their box
area ``w * h``, which reads high, and ``area_from_box`` counts them. As Sapiens tests, the
heatmaps are the mean of the crop's and its mirror image's (channels swapped by the
keypoint table), decoded with UDP and DARK refinement.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from schemas.labelled import NUM_KEYPOINTS
from training.tasks import keypoints as kp
from training.tasks import metrics as M
from training.tasks import transforms as T
from training.tasks.heads import HeadSpec
from training.tasks.losses import pose_loss
from training.tasks.shards import Sample
from training.tasks.task import Predict, PrepareConfig, Task, jitter, predict_crop


class PoseTask(Task):
    def items(self, sample: Sample, cfg: PrepareConfig, rng: random.Random) -> list[dict]:
        """One item per person: the person's 4:3 box crop and its heatmap targets."""
        return [_person_item(sample, i, cfg, rng) for i in range(len(sample.meta.persons))]

    def loss(self, out: Tensor, batch: dict, cfg) -> Tensor:
        return pose_loss(out.float(), batch["heatmap"], batch["weight"])

    def evaluate(self, predict: Predict, loader: Iterable[dict], flip_test: bool) -> dict:
        gts, dts, fallback = [], [], 0
        for batch in loader:
            heat = pose_heatmaps(predict, batch["image"], flip_test)  # [N, K, h, w]
            xy, scores = T.decode_heatmaps(heat, stride=4)
            for i in range(len(heat)):
                image_xy = T.warp_points(xy[i], T.invert_affine(batch["matrix"][i].numpy()))
                points = batch["keypoints"][i].numpy()  # [K, 3]
                image_id = len(gts) + 1
                gts.append({"id": image_id, "image_id": image_id, "keypoints": points,
                            "bbox": batch["bbox"][i].tolist(), "area": float(batch["area"][i]),
                            "iscrowd": 0})  # fmt: skip
                det = np.concatenate([image_xy, np.ones((len(image_xy), 1))], 1)
                dts.append({"image_id": image_id, "keypoints": det, "scores": scores[i]})
            fallback += int(batch["area_from_box"].sum())
        return {
            **_scores(gts, dts, None),
            **{f"body_{k}": v for k, v in _scores(gts, dts, kp.BODY_INDEX).items()},
            "instances": len(gts),
            "area_from_box": fallback,
            "flip_test": flip_test,
        }

    def render(
        self, model: Predict, image: np.ndarray, boxes: list, hw: tuple[int, int]
    ) -> np.ndarray:
        """The skeleton and keypoints of each box's person drawn on the image."""
        from PIL import Image, ImageDraw

        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        radius = max(1, round(min(image.shape[:2]) / 150))
        for box in boxes:
            center, size = T.box_to_region(box, aspect=hw[1] / hw[0])
            heat, matrix = predict_crop(model, image, center, size, hw)
            xy, scores = T.decode_heatmaps(heat[None], stride=4)
            pts = T.warp_points(xy[0], T.invert_affine(matrix))
            for a, b in kp.SKELETON:
                draw.line([tuple(pts[a]), tuple(pts[b])], fill=(0, 255, 0), width=radius)
            for (x, y), s in zip(pts, scores[0], strict=True):
                if s > 0.1:
                    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 0, 0))
        return np.asarray(canvas)


def _person_item(sample: Sample, index: int, cfg: PrepareConfig, rng: random.Random) -> dict:
    person = sample.meta.persons[index]
    h, w = cfg.input_hw
    flip, scale, rot = jitter(cfg, rng)
    center, size = T.box_to_region(person.bbox, aspect=w / h, padding=cfg.box_padding)
    matrix = T.affine_to_crop(center, size * scale, (h, w), rotation_deg=rot, flip=flip)
    points = np.asarray(person.keypoints, dtype=np.float64).reshape(-1, 3)
    box_area = float(person.bbox[2]) * float(person.bbox[3])
    crop_points = T.warp_keypoints(points, matrix, kp.FLIP_PERM if flip else None)
    heat, weight = T.heatmap_targets(crop_points, (h // 4, w // 4), stride=4, sigma=cfg.sigma)
    return {
        "image": torch.from_numpy(T.normalise_image(T.warp_image(sample.image, matrix, (h, w)))),
        "heatmap": torch.from_numpy(heat),  # [K, h/4, w/4]
        "weight": torch.from_numpy(weight),  # [K]
        "matrix": torch.from_numpy(matrix),  # image -> crop, to map predictions back
        "keypoints": torch.from_numpy(points),  # [K, 3] in the original image
        "bbox": torch.tensor(person.bbox, dtype=torch.float64),
        # OKS scale: the annotated area; the box area where the labels have none.
        "area": torch.tensor(box_area if person.area is None else person.area, dtype=torch.float64),
        "area_from_box": torch.tensor(person.area is None),
    }


def pose_heatmaps(predict: Predict, images: Tensor, flip_test: bool) -> np.ndarray:
    """Heatmaps [N, K, h, w] of crops [N, 3, H, W], with Sapiens' flip test if asked."""
    heat = predict(images).float().numpy()
    if not flip_test:
        return heat
    mirrored = predict(torch.flip(images, dims=[-1])).float().numpy()
    return 0.5 * (heat + T.flip_heatmaps(mirrored, kp.FLIP_PERM))


def _scores(gts: list[dict], dts: list[dict], points: np.ndarray | None) -> dict:
    """COCO OKS AP and the normalised mean error (NME: distance over sqrt(box area), mean
    over labelled points) on the keypoints ``points`` (table indices; None: all 308)."""
    pick = slice(None) if points is None else points
    sigmas = kp.SIGMAS[pick]
    g = [{**a, "keypoints": a["keypoints"][pick].ravel().tolist(),
          "num_keypoints": int((a["keypoints"][pick, 2] > 0).sum())} for a in gts]  # fmt: skip
    d = [{"image_id": a["image_id"], "keypoints": a["keypoints"][pick].ravel().tolist(),
          "score": float(a["scores"][pick].mean())} for a in dts]  # fmt: skip
    errors = []
    for gt, dt in zip(gts, dts, strict=True):
        labelled = gt["keypoints"][pick, 2] > 0
        dist = np.linalg.norm(dt["keypoints"][pick, :2] - gt["keypoints"][pick, :2], axis=1)
        _, _, w, h = gt["bbox"]
        errors.append(dist[labelled] / np.sqrt(max(w * h, 1e-9)))
    nme = float(np.concatenate(errors).mean()) if errors else float("nan")
    return {**M.oks_ap(g, d, sigmas), "NME": nme}


POSE = PoseTask(
    name="pose",
    # 2 deconvs + 2 convs -> 1/4 of the input (256x192 heatmaps at 1024x768)
    head=HeadSpec(out_channels=NUM_KEYPOINTS, num_deconv=2, num_conv=2, channels=768),
    light_deconv=2,
    patch_padding=2,
    sapiens_prefix="head.",  # mmpose's HeatmapHead
)
