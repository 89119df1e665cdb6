"""Measure a fine-tuned checkpoint on labelled shards with the metrics of its task.

    python -m training.evaluate --checkpoint runs/pose \
        --dataset s3://bucket/labelled-val --output metrics.json

Each task scores itself (``Task.evaluate``): pose top-down on the ground-truth boxes with
OKS AP and Sapiens' flip test (``training.tasks.pose``); the dense tasks in the network's
input frame (the image fitted into the 4:3 input), ignoring padding; segmentation reports
IoU per class by name.
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    from training import cli
    from training.config import EvaluateConfig

    def body() -> None:
        parser = cli.parser(EvaluateConfig, "python -m training.evaluate", __doc__)
        cfg = cli.config(parser.parse_args(argv))
        if not storage.exists(storage.locate(cfg.checkpoint)):
            raise cli.InputError(f"--checkpoint {cfg.checkpoint}: no such file or folder")
        cli.require(cfg.dataset, "--dataset", "folder")
        if cfg.output:
            cli.refuse_folder(cfg.output, "--output")
        model, config = load_checkpoint(cfg.checkpoint)
        task, size = config["task"], tuple(config["image_size"])
        cli.require_labelled(cfg.dataset, task, size)
        result = evaluate(model, cfg.dataset, task, size, cfg.batch_size, flip_test=cfg.flip_test)
        result = {"task": task, "checkpoint": cfg.checkpoint, "dataset": cfg.dataset, **result}
        text = json.dumps(result, indent=1)
        if cfg.output:
            storage.write_bytes_atomic(storage.locate(os.fspath(cfg.output)), text.encode())
        print(text)

    return cli.run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
