"""Measure a fine-tuned checkpoint on labelled shards with the metrics of its task.

    python -m training.evaluate --checkpoint runs/finetune-pose/checkpoint_000001 \
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
    """Model (eval mode, CPU) and its FinetuneConfig fields from ``checkpoint.pt`` or a Ray
    checkpoint folder holding it (local or S3)."""
    from training.finetune import FinetuneConfig, build_model

    loc = storage.locate(uri)
    if not loc.path.endswith(".pt"):
        loc = loc.join("checkpoint.pt")
    if not storage.exists(loc):
        raise FileNotFoundError(f"no fine-tuning checkpoint at {loc.uri}")
    state = torch.load(io.BytesIO(storage.read_bytes(loc)), map_location="cpu", weights_only=False)
    config = {**state["config"], "pretrained": None}
    model = build_model(FinetuneConfig(**config))
    model.load_state_dict(state["model"])
    return model.eval(), config


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
            points = batch["keypoints"][i].numpy()
            x, y, w, h = batch["bbox"][i].tolist()
            image_id = len(gts) + 1
            gts.append({"id": image_id, "image_id": image_id, "keypoints": points.ravel().tolist(),
                        "num_keypoints": int((points[:, 2] > 0).sum()), "bbox": [x, y, w, h],
                        "area": w * h, "iscrowd": 0})  # fmt: skip
            det = np.concatenate([image_xy, np.ones((len(image_xy), 1))], 1)
            dts.append({"image_id": image_id, "keypoints": det.ravel().tolist(),
                        "score": float(scores[i].mean())})  # fmt: skip
    return {**M.oks_ap(gts, dts, kp.SIGMAS), "instances": len(gts)}


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
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or its folder")
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
