"""Run a fine-tuned checkpoint on images and write overlays a person can look at.

    python -m training.predict --task pose --checkpoint runs/pose \
        --images photos/*.jpg --output overlays/

Pose draws the skeleton and keypoints on the image (top-down on a whole-image box unless
--boxes gives a JSON of {file name: [[x, y, w, h], ...]}); seg blends the coloured part map;
depth and normals are written as colour maps beside the image ({name}.{task}.png).

--checkpoint takes a fine-tuning run, a task model ``.pt`` (``training.import_sapiens``
writes one), or one of Meta's released Sapiens task files as it is (``.pth`` or TorchScript),
imported on the fly at --input-size.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from training.tasks.model import load_model
from training.tasks.registry import TASKS_BY_NAME


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    from training.sapiens_format import SapiensFormatError

    parser = argparse.ArgumentParser(description="Write prediction overlays as PNG.")
    parser.add_argument("--task", required=True, choices=["pose", "seg", "depth", "normal"])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--output", default="predictions")
    parser.add_argument("--boxes", help="pose: JSON {file name: [[x, y, w, h], ...]}")
    parser.add_argument("--input-size", type=int, nargs=2, default=(1024, 768),
                        metavar=("H", "W"), help="a Sapiens file's input height and width")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        model, config = load_model(args.checkpoint, tuple(args.input_size))
    except SapiensFormatError as exc:
        parser.error(str(exc))
    if config["task"] != args.task:
        parser.error(f"checkpoint is for task {config['task']!r}, not {args.task!r}")
    boxes = json.loads(Path(args.boxes).read_text()) if args.boxes else {}
    os.makedirs(args.output, exist_ok=True)
    task = TASKS_BY_NAME[args.task]
    for path in args.images:
        image = np.asarray(Image.open(path).convert("RGB"))
        name = os.path.basename(path)
        person_boxes = boxes.get(name, [[0, 0, image.shape[1], image.shape[0]]])
        overlay = task.render(model, image, person_boxes, tuple(config["input_size"]))
        out = os.path.join(args.output, f"{os.path.splitext(name)[0]}.{args.task}.png")
        Image.fromarray(overlay).save(out)
        print(out)


if __name__ == "__main__":
    main()
