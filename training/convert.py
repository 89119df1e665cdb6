r"""Bring your own labels: convert COCO keypoint JSON or image/label folders to labelled shards.

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
Inputs are checked before anything is written (every image and label file present), and
``--output`` must be new: a converter that finds nothing to convert writes nothing.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from schemas.keypoints import COCO_INDEX, NUM_KEYPOINTS
from schemas.labelled import DATASET_FILE, LabelError, SampleMeta
from schemas.layout import SHARDS_DIR
from training.config import CocoConvertConfig, FoldersConvertConfig
from training.tasks.shards import Sample, write_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(name).stem)


def _image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def read_coco(json_path: str) -> dict:
    """A COCO keypoint JSON, checked for the keys the converter reads (LabelError)."""
    try:
        body = json.loads(Path(json_path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelError(f"--json {json_path}: not valid JSON ({exc})") from None
    ok = isinstance(body, dict) and isinstance(body.get("images"), list)
    ok = ok and isinstance(body.get("annotations", []), list)
    if not ok or not all(
        isinstance(i, dict) and {"id", "file_name"} <= set(i) for i in body["images"]
    ):
        raise LabelError(
            f"--json {json_path}: not COCO (needs images [{{id, file_name}}] and annotations)"
        )
    for ann in body.get("annotations", []):
        if not (isinstance(ann, dict) and {"image_id", "bbox"} <= set(ann)):
            raise LabelError(f"--json {json_path}: annotation {ann!r:.60} needs image_id and bbox")
    return body


def coco_samples(source: str | dict, image_dir: str) -> Iterator[Sample]:
    """Samples of a COCO keypoint JSON (a path, or its body from ``read_coco``)."""
    body = read_coco(source) if isinstance(source, str) else source
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


def image_files(images: str) -> list[Path]:
    return sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_samples(images: str, seg: str | None, depth: str | None, normal: str | None,
                   mask: str | None) -> Iterator[Sample]:  # fmt: skip
    tasks = [t for t, d in (("seg", seg), ("depth", depth), ("normal", normal)) if d]
    if not tasks:
        raise LabelError("give at least one of --seg, --depth, --normal")
    for path in image_files(images):
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


CONVERTERS = {  # subcommand: (config, help)
    "coco": (CocoConvertConfig, "COCO-style keypoint JSON"),
    "folders": (FoldersConvertConfig, "image folder plus label folders"),
}


def main(argv: list[str] | None = None) -> int:
    from argparse import RawDescriptionHelpFormatter

    from runtime import config as config_layer
    from schemas.version import version_line
    from training import cli

    def body() -> None:
        parser = config_layer.Parser(prog="python -m training.convert", description=__doc__,
                                     allow_abbrev=False, formatter_class=RawDescriptionHelpFormatter)  # fmt: skip
        parser.add_argument("--version", action="version", version=version_line())
        sub = parser.add_subparsers(dest="kind", required=True, metavar="{coco,folders}")
        for name, (cls, about) in CONVERTERS.items():
            p = sub.add_parser(name, help=about, description=about, allow_abbrev=False)
            p.add_argument("--config", metavar="FILE", help="YAML or JSON file of these settings")
            config_layer.add_flags(p, cls, "", "", None)
            cli.extend(p, cls)
        cfg = cli.config(parser.parse_args(argv))
        samples, tasks = check(cfg)
        first = next(samples, None)
        if first is None:  # webdataset would publish an empty shards/000000.tar
            raise cli.InputError(f"nothing to convert: no labelled image in --images {cfg.images}")
        count = write_dataset(cfg.output, itertools.chain([first], samples), tasks,
                              cfg.max_shard_samples)  # fmt: skip
        print(f"wrote {count} samples to {cfg.output}")

    return cli.run_main(body)


def check(cfg: CocoConvertConfig | FoldersConvertConfig) -> tuple[Iterator[Sample], list[str]]:
    """The samples to write and their tasks, once every input file is known to be there
    (InputError, LabelError) and ``--output`` holds no dataset yet."""
    from runtime import storage
    from training import cli

    cli.require(cfg.images, "--images", "folder")
    out = storage.locate(cfg.output)
    if storage.exists(out.join(DATASET_FILE)) or storage.list_files(out.join(SHARDS_DIR)):
        raise cli.InputError(f"--output {cfg.output} already holds a dataset; give a new folder")
    cli.refuse_file(cfg.output, "--output")
    if isinstance(cfg, CocoConvertConfig):
        cli.require(cfg.json, "--json", "file")
        body = read_coco(cfg.json)
        labelled = set()
        for ann in body.get("annotations", []):  # malformed points fail now, not mid-write
            if _coco_person(ann):
                labelled.add(ann["image_id"])
        root, keys = Path(cfg.images).resolve(), {}
        for info in body["images"]:
            if info["id"] not in labelled:
                continue
            name = str(info["file_name"])
            path = (root / name).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                raise cli.InputError(f"--json names {name!r}, not a file in --images {cfg.images}")
            if keys.setdefault(_key(name), name) != name:  # keys must be unique in a dataset
                raise cli.InputError(
                    f"--json: {keys[_key(name)]!r} and {name!r} share key {_key(name)!r}"
                )
        return coco_samples(body, cfg.images), ["pose"]
    folders = {"--seg": cfg.seg, "--depth": cfg.depth, "--normal": cfg.normal, "--mask": cfg.mask}
    for flag, folder in folders.items():
        if folder:
            cli.require(folder, flag, "folder")
    keys: dict[str, Path] = {}
    for path in image_files(cfg.images):  # every label there before anything is written
        if keys.setdefault(_key(path.name), path) != path:  # keys must be unique in a dataset
            raise cli.InputError(
                f"--images: {keys[_key(path.name)].name} and {path.name} share a key"
            )
        for folder, suffixes in ((cfg.seg, (".png",)), (cfg.depth, (".npy", ".png")),
                                 (cfg.normal, (".npy", ".png")), (cfg.mask, (".png",))):  # fmt: skip
            _find(folder, path.stem, suffixes)
    samples = folder_samples(cfg.images, cfg.seg, cfg.depth, cfg.normal, cfg.mask)
    return samples, cfg.tasks


if __name__ == "__main__":
    raise SystemExit(main())
