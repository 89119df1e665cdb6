"""Measure a fine-tuned checkpoint on labelled shards with the metrics of its task.

    python -m training.evaluate --checkpoint runs/pose \
        --data s3://bucket/labelled-val --output metrics.json

Pose is top-down on the ground-truth boxes (as COCO's gt-box protocol), scored with OKS AP
over the 308 points and over the 17 COCO body points. OKS is scaled by each person's
annotated area (COCO's ``area``); persons labelled without one are scored with their box
area ``w * h``, which reads high, and ``area_from_box`` counts them. As Sapiens tests, the
heatmaps are the mean of the crop's and its mirror image's (channels swapped by the
keypoint table), decoded with UDP and DARK refinement. The dense tasks are scored in the
network's input frame (the image fitted into the 4:3 input), ignoring padding;
segmentation reports IoU per class by name.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable

import numpy as np
import torch

from runtime import storage
from schemas.labelled import SEG_CLASSES
from training.checkpoint import load_file
from training.tasks import keypoints as kp
from training.tasks import metrics as M
from training.tasks.data import PrepareConfig, TaskStream
from training.tasks.heads import TaskModel
from training.tasks.losses import depth_values
from training.tasks.transforms import decode_heatmaps, flip_heatmaps, invert_affine, warp_points


def load_checkpoint(uri: str) -> tuple[TaskModel, dict]:
    """Model (eval mode, CPU) and its FinetuneConfig fields from a fine-tuning run folder (its
    latest checkpoint), a ``checkpoints/step_*`` folder, or a single ``.pt`` file holding
    ``{"model": state dict, "config": fields}`` (local or S3)."""
    from training import checkpoint
    from training.config import FinetuneConfig
    from training.finetune import build_model

    uri = uri.rstrip("/")
    if uri.endswith(".pt"):
        state = load_file(uri)
        weights, config = state["model"], state["config"]
    else:
        folder = checkpoint.latest(uri) or uri
        if not storage.exists(storage.locate(f"{folder}/model.pt")):
            raise FileNotFoundError(f"no fine-tuning checkpoint at {uri}")
        weights = load_file(f"{folder}/model.pt")
        config = load_file(f"{folder}/state.pt")["extra"]["config"]
    config = {**config, "pretrained": None}
    model = build_model(FinetuneConfig(**config))
    model.load_state_dict(weights)
    return model.eval(), config


def batches(uri: str, task: str, input_hw: tuple[int, int], batch_size: int) -> Iterable[dict]:
    stream = TaskStream(uri, PrepareConfig(task=task, input_hw=input_hw, train=False))
    return torch.utils.data.DataLoader(stream, batch_size=batch_size)


Predict = Callable[[torch.Tensor], torch.Tensor]


def evaluate(
    predict: Predict, uri: str, task: str, input_hw: tuple[int, int], batch_size: int = 8,
    flip_test: bool = True,
):  # fmt: skip
    """Metrics of ``predict`` (images [N, 3, H, W] -> head output) on a labelled dataset;
    ``flip_test`` (pose) averages the heatmaps of each crop and its mirror image."""
    loader = batches(uri, task, input_hw, batch_size)
    with torch.no_grad():
        if task == "pose":
            return _pose(predict, loader, flip_test)
        return {"seg": _seg, "depth": _depth, "normal": _normal}[task](predict, loader)


def pose_heatmaps(predict: Predict, images: torch.Tensor, flip_test: bool) -> np.ndarray:
    """Heatmaps [N, K, h, w] of crops [N, 3, H, W], with Sapiens' flip test if asked."""
    heat = predict(images).float().numpy()
    if not flip_test:
        return heat
    mirrored = predict(torch.flip(images, dims=[-1])).float().numpy()
    return 0.5 * (heat + flip_heatmaps(mirrored, kp.FLIP_PERM))


def _pose(predict: Predict, loader: Iterable[dict], flip_test: bool) -> dict:
    gts, dts, fallback = [], [], 0
    for batch in loader:
        heat = pose_heatmaps(predict, batch["image"], flip_test)  # [N, K, h, w]
        xy, scores = decode_heatmaps(heat, stride=4)
        for i in range(len(heat)):
            image_xy = warp_points(xy[i], invert_affine(batch["matrix"][i].numpy()))
            points = batch["keypoints"][i].numpy()  # [K, 3]
            image_id = len(gts) + 1
            gts.append({"id": image_id, "image_id": image_id, "keypoints": points,
                        "bbox": batch["bbox"][i].tolist(), "area": float(batch["area"][i]),
                        "iscrowd": 0})  # fmt: skip
            det = np.concatenate([image_xy, np.ones((len(image_xy), 1))], 1)
            dts.append({"image_id": image_id, "keypoints": det, "scores": scores[i]})
        fallback += int(batch["area_from_box"].sum())
    return {
        **_pose_scores(gts, dts, None),
        **{f"body_{k}": v for k, v in _pose_scores(gts, dts, kp.BODY_INDEX).items()},
        "instances": len(gts),
        "area_from_box": fallback,
        "flip_test": flip_test,
    }


def _pose_scores(gts: list[dict], dts: list[dict], points: np.ndarray | None) -> dict:
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


def _seg(predict: Predict, loader: Iterable[dict]) -> dict:
    metrics = M.SegMetrics(SEG_CLASSES)
    for batch in loader:
        logits = predict(batch["image"]).float()
        logits = torch.nn.functional.interpolate(
            logits, size=batch["label"].shape[-2:], mode="bilinear"
        )
        metrics.update(logits.argmax(1).numpy(), batch["label"].numpy())
    return metrics.compute()


def _depth(predict: Predict, loader: Iterable[dict]) -> dict:
    metrics = M.DepthMetrics()
    for batch in loader:
        raw = predict(batch["image"]).float()
        raw = torch.nn.functional.interpolate(raw, size=batch["mask"].shape[-2:], mode="bilinear")
        pred = depth_values(raw)[:, 0].numpy()
        for p, g, m in zip(pred, batch["depth_raw"].numpy(), batch["mask"].numpy(), strict=True):
            metrics.update(p, g, m)
    return metrics.compute()


def _normal(predict: Predict, loader: Iterable[dict]) -> dict:
    metrics = M.NormalMetrics()
    for batch in loader:
        out = predict(batch["image"]).float()
        out = torch.nn.functional.interpolate(out, size=batch["mask"].shape[-2:], mode="bilinear")
        pred = out.permute(0, 2, 3, 1).numpy()
        gt = batch["normal"].permute(0, 2, 3, 1).numpy()
        for p, g, m in zip(pred, gt, batch["mask"].numpy(), strict=True):
            metrics.update(p, g, m)
    return metrics.compute()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a fine-tuned checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="run folder, step folder or .pt")
    parser.add_argument("--data", required=True, help="labelled dataset (local or s3://)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", help="write the metrics here as JSON")
    parser.add_argument(
        "--no-flip-test", action="store_true", help="pose: score crops without their mirror"
    )
    args = parser.parse_args(argv)
    model, config = load_checkpoint(args.checkpoint)
    result = evaluate(
        model, args.data, config["task"], tuple(config["input_size"]), args.batch_size,
        flip_test=not args.no_flip_test,
    )  # fmt: skip
    result = {"task": config["task"], "checkpoint": args.checkpoint, "data": args.data, **result}
    text = json.dumps(result, indent=1)
    if args.output:
        storage.write_bytes_atomic(storage.locate(os.fspath(args.output)), text.encode())
    print(text)


if __name__ == "__main__":
    main()
