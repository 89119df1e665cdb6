r"""Run a fine-tuned checkpoint on images and write overlays a person can look at.

    python -m training.predict --task pose --checkpoint runs/pose \
        --images photos/*.jpg --output overlays/

Pose draws the skeleton and keypoints on the image (top-down on a whole-image box unless
--boxes gives a JSON file of {file name: [[x, y, w, h], ...]}); seg blends the coloured part map;
depth and normals are written as colour maps beside the image ({name}.{task}.png).

--checkpoint takes a fine-tuning run, a task model ``.pt`` (``training.import_sapiens``
writes one), or one of Meta's released Sapiens task files as it is (``.pth`` or TorchScript),
imported on the fly at --image-size. Every image, the boxes and the checkpoint are checked
before the first overlay is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from training.tasks.model import load_model
from training.tasks.registry import TASKS_BY_NAME


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from training import cli
    from training.config import PredictConfig

    def body() -> None:
        parser = cli.parser(PredictConfig, "python -m training.predict", __doc__)
        cfg = cli.config(parser.parse_args(argv))
        names: dict[str, str] = {}
        for path in cfg.images:
            check_image(path)
            out = os.path.splitext(os.path.basename(path))[0]
            if names.setdefault(out, path) != path:  # one overlay would replace the other
                raise cli.InputError(f"--images {names[out]} and {path} share the name {out!r}")
        boxes = read_boxes(cfg.boxes) if cfg.boxes else {}
        cli.refuse_file(cfg.output, "--output")
        cli.require(cfg.checkpoint, "--checkpoint", "file or folder")
        model, config = load_model(cfg.checkpoint, cfg.image_size)
        if config["task"] != cfg.task:
            raise cli.InputError(f"checkpoint is for task {config['task']!r}, not {cfg.task!r}")
        os.makedirs(cfg.output, exist_ok=True)
        task = TASKS_BY_NAME[cfg.task]
        for path in cfg.images:
            image = np.asarray(Image.open(path).convert("RGB"))
            name = os.path.basename(path)
            person_boxes = boxes.get(name, [[0, 0, image.shape[1], image.shape[0]]])
            overlay = task.render(model, image, person_boxes, tuple(config["image_size"]))
            out = os.path.join(cfg.output, f"{os.path.splitext(name)[0]}.{cfg.task}.png")
            Image.fromarray(overlay).save(out)
            print(out)

    return cli.run_main(body)


def check_image(path: str) -> None:
    """Refuse a path that is not a readable image file (InputError, one line)."""
    from PIL import Image

    from training.cli import InputError, require

    require(path, "--images", "file")
    try:
        with Image.open(path) as image:
            image.verify()  # reads the whole file: a truncated one fails here, not mid-run
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, ImportError) as exc:
        # ImportError: a lazily registered opener without its decoder probed the file (once
        # Ultralytics is imported, Pillow's open tries a HEIF plugin that is not installed)
        raise InputError(f"--images {path}: not a readable image ({exc})") from None


def read_boxes(path: str) -> dict[str, list[list[float]]]:
    """The ``--boxes`` JSON: {file name: [[x, y, w, h], ...]}, checked (InputError)."""
    from training.cli import InputError, require

    require(path, "--boxes", "file")
    try:
        boxes = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--boxes {path}: not valid JSON ({exc})") from None
    if not isinstance(boxes, dict):
        raise InputError(f"--boxes {path}: expected {{file name: [[x, y, w, h], ...]}}")
    for name, listed in boxes.items():
        if not isinstance(listed, list) or not all(_is_box(b) for b in listed):
            raise InputError(f"--boxes {path}: {name!r} needs a list of [x, y, w, h], w, h > 0")
    return boxes


def _is_box(box: object) -> bool:
    numbers = isinstance(box, list) and len(box) == 4
    numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    return numbers and all(np.isfinite(box)) and box[2] > 0 and box[3] > 0


if __name__ == "__main__":
    raise SystemExit(main())
