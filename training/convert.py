"""Bring your own labels: convert COCO keypoint JSON or image/label folders to labelled shards.

    python -m training.convert coco --json person_keypoints.json --images imgs/ --output out/
    python -m training.convert folders --images imgs/ --seg masks/ --output out/
    python -m training.convert folders --images imgs/ --depth depth/ --normal normals/ \
        --mask fg/ --output out/

COCO: 17-point annotations fill the same body points of the 308 (matched by name:
``schemas.keypoints.COCO_INDEX``) and leave the rest unlabelled (v = 0); 308-point
annotations must already be in Sapiens' order (``schemas.keypoints.KEYPOINT_NAMES``, as
Goliath's are) and are taken as they are. Each person keeps COCO's ``area`` (the OKS scale);
without one it is stored as unknown and evaluation falls back to the box area. Crowd
annotations and people without a labelled point are skipped.
Folders: labels are matched to images by file stem. Seg: 8-bit PNG of class ids. Depth:
``.npy`` float [H, W] or 16-bit PNG. Normals: ``.npy`` float [H, W, 3] or 8-bit RGB PNG
holding (n + 1) / 2 * 255. Mask: 8-bit PNG, non-zero = person; without --mask, depth > 0.
Images are stored as PNG so that labels and pixels stay aligned (no re-encoding loss).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from schemas.keypoints import COCO_INDEX, NUM_KEYPOINTS
from schemas.labelled import LabelError, SampleMeta
from training.tasks.shards import Sample, write_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(name).stem)


def _image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def coco_samples(json_path: str, image_dir: str) -> Iterator[Sample]:
    body = json.loads(Path(json_path).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in body.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    for info in body["images"]:
        persons = [p for a in by_image.get(info["id"], []) if (p := _coco_person(a))]
        if not persons:
            continue
        image = _image(Path(image_dir) / info["file_name"])
        h, w = image.shape[:2]
        yield Sample(
            meta=SampleMeta(key=_key(info["file_name"]), width=w, height=h, tasks=["pose"],
                            persons=persons, source=info["file_name"]),
            image=image,
        )  # fmt: skip


def _coco_person(ann: dict) -> dict | None:
    points = np.asarray(ann.get("keypoints", []), dtype=np.float64).reshape(-1, 3)
    if ann.get("iscrowd") or not (points[:, 2] > 0).any():
        return None
    if len(points) not in (len(COCO_INDEX), NUM_KEYPOINTS):
        raise LabelError(f"annotation {ann.get('id')}: {len(points)} keypoints, expected 17 or 308")
    full = np.zeros((NUM_KEYPOINTS, 3))
    full[list(COCO_INDEX) if len(points) == len(COCO_INDEX) else slice(None)] = points
    area = ann.get("area")
    return {"bbox": [float(v) for v in ann["bbox"]], "keypoints": full.ravel().tolist(),
            "area": None if area is None else float(area)}  # fmt: skip


def _find(folder: str | None, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    if folder is None:
        return None
    for suffix in suffixes:
        path = Path(folder) / f"{stem}{suffix}"
        if path.exists():
            return path
    raise LabelError(f"no label for {stem!r} in {folder} (looked for {', '.join(suffixes)})")


def _array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    from PIL import Image

    return np.asarray(Image.open(path))


def folder_samples(images: str, seg: str | None, depth: str | None, normal: str | None,
                   mask: str | None) -> Iterator[Sample]:  # fmt: skip
    tasks = [t for t, d in (("seg", seg), ("depth", depth), ("normal", normal)) if d]
    if not tasks:
        raise LabelError("give at least one of --seg, --depth, --normal")
    for path in sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image, stem = _image(path), path.stem
        sample = Sample(meta=SampleMeta(key=_key(path.name), width=image.shape[1],
                        height=image.shape[0], tasks=tasks, source=path.name), image=image)  # fmt: skip
        if seg:
            sample.seg = _array(_find(seg, stem, (".png",))).astype(np.uint8)
        if depth:
            sample.depth = _array(_find(depth, stem, (".npy", ".png"))).astype(np.float32)
        if normal:
            n = _array(_find(normal, stem, (".npy", ".png")))
            n = n.astype(np.float32) / 127.5 - 1 if n.dtype == np.uint8 else n.astype(np.float32)
            sample.normal = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        if depth or normal:
            m = _find(mask, stem, (".png",))
            sample.mask = _array(m) > 0 if m else sample.depth > 0 if depth else None
            if sample.mask is None:
                raise LabelError("normals without depth need --mask (the person mask)")
            if sample.mask.ndim == 3:
                sample.mask = sample.mask[..., 0]
        yield sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    coco = sub.add_parser("coco", help="COCO-style keypoint JSON")
    coco.add_argument("--json", required=True)
    folders = sub.add_parser("folders", help="image folder plus label folders")
    for name in ("seg", "depth", "normal", "mask"):
        folders.add_argument(f"--{name}")
    for p in (coco, folders):
        p.add_argument("--images", required=True, help="image folder")
        p.add_argument("--output", required=True, help="dataset folder or s3:// URI")
        p.add_argument("--per-shard", type=int, default=256)
    args = parser.parse_args(argv)
    if args.kind == "coco":
        samples, tasks = coco_samples(args.json, args.images), ["pose"]
    else:
        tasks = [t for t in ("seg", "depth", "normal") if getattr(args, t)]
        samples = folder_samples(args.images, args.seg, args.depth, args.normal, args.mask)
    try:
        count = write_dataset(os.fspath(args.output), samples, tasks, args.per_shard)
    except (LabelError, OSError, KeyError, json.JSONDecodeError) as err:
        parser.exit(2, f"error: {type(err).__name__}: {err}\n")
    print(f"wrote {count} samples to {args.output}")


if __name__ == "__main__":
    main()
