"""Measure a fine-tuned checkpoint on labelled shards with the metrics of its task.

    python -m training.evaluate --checkpoint runs/pose \
        --data s3://bucket/labelled-val --output metrics.json

Each task scores itself (``Task.evaluate``): pose top-down on the ground-truth boxes with
OKS AP and Sapiens' flip test (``training.tasks.pose``); the dense tasks in the network's
input frame (the image fitted into the 4:3 input), ignoring padding; segmentation reports
IoU per class by name.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable

import torch

from runtime import storage
from training.tasks.data import TaskStream
from training.tasks.model import load_checkpoint
from training.tasks.registry import TASKS_BY_NAME
from training.tasks.task import Predict, PrepareConfig


def batches(uri: str, task: str, input_hw: tuple[int, int], batch_size: int) -> Iterable[dict]:
    stream = TaskStream(uri, PrepareConfig(task=task, input_hw=input_hw, train=False))
    return torch.utils.data.DataLoader(stream, batch_size=batch_size)


def evaluate(
    predict: Predict, uri: str, task: str, input_hw: tuple[int, int], batch_size: int = 8,
    flip_test: bool = True,
):  # fmt: skip
    """Metrics of ``predict`` (images [N, 3, H, W] -> head output) on a labelled dataset, as
    the task scores them; ``flip_test`` (pose) averages the heatmaps of each crop and its
    mirror image."""
    loader = batches(uri, task, input_hw, batch_size)
    with torch.no_grad():
        return TASKS_BY_NAME[task].evaluate(predict, loader, flip_test)


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
