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
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from schemas.labelled import NUM_CLASSES
from training.tasks import keypoints as kp
from training.tasks import transforms as T
from training.tasks.losses import depth_values

# A fixed, distinct colour per class (Background black).
CLASS_COLOURS = np.array(
    [[0, 0, 0]]
    + [[(37 * i) % 256, (91 * i + 80) % 256, (151 * i + 40) % 256] for i in range(1, NUM_CLASSES)],
    dtype=np.uint8,
)


def _forward(model, image: np.ndarray, center, size, hw) -> tuple[np.ndarray, np.ndarray]:
    matrix = T.affine_to_crop(center, size, hw)
    crop = T.warp_image(image, matrix, hw)
    with torch.no_grad():
        out = model(torch.from_numpy(T.normalise_image(crop))[None]).float()
    return out[0].numpy(), matrix


def pose_overlay(model, image: np.ndarray, boxes: list, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    radius = max(1, round(min(image.shape[:2]) / 150))
    for box in boxes:
        center, size = T.box_to_region(box, aspect=hw[1] / hw[0])
        heat, matrix = _forward(model, image, center, size, hw)
        xy, scores = T.decode_heatmaps(heat[None], stride=4)
        pts = T.warp_points(xy[0], T.invert_affine(matrix))
        for a, b in kp.SKELETON:
            draw.line([tuple(pts[a]), tuple(pts[b])], fill=(0, 255, 0), width=radius)
        for (x, y), s in zip(pts, scores[0], strict=True):
            if s > 0.1:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 0, 0))
    return np.asarray(canvas)


def dense_output(model, image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Head output resized back onto the image: [H, W, C]."""
    h, w = image.shape[:2]
    center, size = T.image_region(w, h, aspect=hw[1] / hw[0])
    out, matrix = _forward(model, image, center, size, hw)
    out = torch.nn.functional.interpolate(torch.from_numpy(out)[None], size=hw, mode="bilinear")[0]
    back = T.invert_affine(matrix)
    return T.warp_image(out.permute(1, 2, 0).numpy().copy(), back, (h, w))


def render(task: str, model, image: np.ndarray, boxes: list, hw: tuple[int, int]) -> np.ndarray:
    if task == "pose":
        return pose_overlay(model, image, boxes, hw)
    out = dense_output(model, image, hw)
    if task == "seg":
        parts = CLASS_COLOURS[out.argmax(-1)]
        return (0.5 * image + 0.5 * parts).astype(np.uint8)
    if task == "depth":
        import matplotlib

        d = depth_values(torch.from_numpy(out[..., 0])).numpy()
        d = (d - d.min()) / max(float(np.ptp(d)), 1e-6)
        colour = (matplotlib.colormaps["magma"](1 - d)[..., :3] * 255).astype(np.uint8)
        return np.concatenate([image, colour], axis=1)
    n = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-6)
    return np.concatenate([image, ((n * [1, -1, -1] + 1) * 127.5).astype(np.uint8)], axis=1)


def load_model(uri: str, input_size: tuple[int, int]):
    """(model, config fields) of a run, a task ``.pt`` or a Sapiens task file."""
    from runtime import storage
    from training import import_sapiens
    from training.evaluate import load_checkpoint

    loc = storage.locate(uri)
    if loc.is_s3 or not os.path.isdir(loc.path):
        data = storage.read_bytes(loc)
        try:
            state = import_sapiens.read_state_dict(data, uri)
        except import_sapiens.SapiensFormatError:
            state = None  # not a bare state dict: our task .pt ({"model", "config"})
        if state is not None and import_sapiens.is_sapiens(state):
            imported = import_sapiens.convert(state)
            if imported.task is None:
                raise import_sapiens.SapiensFormatError(f"{uri}: a backbone, not a task model")
            model, cfg = import_sapiens.task_model(imported, input_size)
            return model, dataclasses.asdict(cfg)
    return load_checkpoint(uri)


def main(argv: list[str] | None = None) -> None:
    from PIL import Image

    from training.import_sapiens import SapiensFormatError

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
    for path in args.images:
        image = np.asarray(Image.open(path).convert("RGB"))
        name = os.path.basename(path)
        person_boxes = boxes.get(name, [[0, 0, image.shape[1], image.shape[0]]])
        overlay = render(args.task, model, image, person_boxes, tuple(config["input_size"]))
        out = os.path.join(args.output, f"{os.path.splitext(name)[0]}.{args.task}.png")
        Image.fromarray(overlay).save(out)
        print(out)


if __name__ == "__main__":
    main()
