"""Measure a fine-tuned checkpoint on labelled shards with the metrics of its task.

    python -m training.evaluate --checkpoint runs/pose \
        --data s3://bucket/labelled-val --output metrics.json

Pose is top-down on the ground-truth boxes (as COCO's gt-box protocol), scored with OKS AP
over the 308 points (object area = box area, since the labels carry no person masks); the
dense tasks are scored in the network's input frame (the image fitted into the 4:3 input),
ignoring padding.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Callable, Iterable

import numpy as np
import torch

from curation import storage
from schemas.labelled import NUM_CLASSES
from training.tasks import keypoints as kp
from training.tasks import metrics as M
from training.tasks.data import PrepareConfig, TaskStream
from training.tasks.heads import TaskModel
from training.tasks.losses import depth_values
from training.tasks.transforms import decode_heatmaps, invert_affine, warp_points


def load_checkpoint(uri: str) -> tuple[TaskModel, dict]:
    """Model (eval mode, CPU) and its FinetuneConfig fields from a fine-tuning run folder (its
    latest checkpoint), a ``checkpoints/step_*`` folder, or a single ``.pt`` file holding
    ``{"model": state dict, "config": fields}`` (local or S3)."""
    from training import checkpoint
    from training.finetune import FinetuneConfig, build_model

    uri = uri.rstrip("/")
    if uri.endswith(".pt"):
        state = _load(uri)
        weights, config = state["model"], state["config"]
    else:
        folder = checkpoint.latest(uri) or uri
        if not storage.exists(storage.locate(f"{folder}/model.pt")):
            raise FileNotFoundError(f"no fine-tuning checkpoint at {uri}")
        weights = _load(f"{folder}/model.pt")
        config = _load(f"{folder}/state.pt")["extra"]["config"]
    config = {**config, "pretrained": None}
    model = build_model(FinetuneConfig(**config))
    model.load_state_dict(weights)
    return model.eval(), config


def _load(uri: str):
    data = storage.read_bytes(storage.locate(uri))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def batches(uri: str, task: str, input_hw: tuple[int, int], batch_size: int) -> Iterable[dict]:
    stream = TaskStream(uri, PrepareConfig(task=task, input_hw=input_hw, train=False))
    return torch.utils.data.DataLoader(stream, batch_size=batch_size)


Predict = Callable[[torch.Tensor], torch.Tensor]


def evaluate(predict: Predict, uri: str, task: str, input_hw: tuple[int, int], batch_size: int = 8):
    """Metrics of ``predict`` (images [N, 3, H, W] -> head output) on a labelled dataset."""
    run = {"pose": _pose, "seg": _seg, "depth": _depth, "normal": _normal}[task]
    with torch.no_grad():
        return run(predict, batches(uri, task, input_hw, batch_size))


def _pose(predict: Predict, loader: Iterable[dict]) -> dict:
    gts, dts = [], []
    for batch in loader:
        heat = predict(batch["image"]).float().numpy()  # [N, K, h, w]
        xy, scores = decode_heatmaps(heat, stride=4)
        for i in range(len(heat)):
            image_xy = warp_points(xy[i], invert_affine(batch["matrix"][i].numpy()))
            points = batch["keypoints"][i].numpy()  # [K, 3]
            x, y, w, h = batch["bbox"][i].tolist()
            image_id = len(gts) + 1
            gts.append({"id": image_id, "image_id": image_id, "keypoints": points,
                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            det = np.concatenate([image_xy, np.ones((len(image_xy), 1))], 1)
            dts.append({"image_id": image_id, "keypoints": det, "scores": scores[i]})
    body = np.arange(len(kp.BODY))
    return {
        **_pose_scores(gts, dts, None),
        **{f"body_{k}": v for k, v in _pose_scores(gts, dts, body).items()},
        "instances": len(gts),
    }


def _pose_scores(gts: list[dict], dts: list[dict], points: np.ndarray | None) -> dict:
    """COCO OKS AP and the normalised mean error (NME: distance over sqrt(box area), mean
    over labelled points) on the keypoints ``points`` (None: all 308)."""
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
        errors.append(dist[labelled] / np.sqrt(max(gt["area"], 1e-9)))
    nme = float(np.concatenate(errors).mean()) if errors else float("nan")
    return {**M.oks_ap(g, d, sigmas), "NME": nme}


def _seg(predict: Predict, loader: Iterable[dict]) -> dict:
    metrics = M.SegMetrics(NUM_CLASSES)
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
    args = parser.parse_args(argv)
    model, config = load_checkpoint(args.checkpoint)
    result = evaluate(
        model, args.data, config["task"], tuple(config["input_size"]), args.batch_size
    )
    result = {"task": config["task"], "checkpoint": args.checkpoint, "data": args.data, **result}
    text = json.dumps(result, indent=1)
    if args.output:
        storage.write_bytes_atomic(storage.locate(os.fspath(args.output)), text.encode())
    print(text)


if __name__ == "__main__":
    main()
