"""Labelled shards for fine-tuning: what a sample holds for each of the four Sapiens tasks.

A labelled dataset is a folder (local or ``s3://``) laid out like a curated one::

    <dataset>/labelled.json                  LABELLED_FORMAT, version, tasks, classes, keypoints
    <dataset>/shards/{shard:06d}.tar         WebDataset tars written with webdataset.ShardWriter

Each sample is a group of tar members ``{key}.{ext}`` sharing one key (keys contain no dot):

    {key}.jpg | {key}.png   the RGB image (always)
    {key}.json              SampleMeta (always): size, tasks present, persons for pose
    {key}.seg.png           seg: 8-bit single-channel PNG, pixel = class id in SEG_CLASSES
                            (IGNORE_INDEX = 255 marks pixels without a label)
    {key}.depth.npy         depth: float32 [H, W] ``numpy.save`` bytes, larger = farther;
                            values are only meaningful where the mask is set
    {key}.normal.npy        normal: float32 [H, W, 3] unit vectors in camera space
                            (x right, y down, z away from the camera: a surface facing the
                            camera has z < 0)
    {key}.mask.png          depth / normal: 8-bit foreground (human) mask, 0 or 255

Pose annotations live in the JSON: ``persons`` is a list of ``{"bbox": [x, y, w, h],
"keypoints": [x0, y0, v0, x1, y1, v1, ...], "area": a}`` with NUM_KEYPOINTS triplets in the
order of ``schemas.keypoints.KEYPOINT_NAMES`` (Sapiens' order); pixel coordinates with (0, 0)
at the top-left pixel's centre (COCO convention); v = 0 not labelled, 1 labelled but
occluded, 2 visible. Boxes are in pixels of the original image. ``area`` is the person's
annotated area in square pixels (COCO's ``area``: the segmentation's, not the box's), the
scale of OKS; null when the source has none, and evaluation then falls back to the box area
``w * h`` and counts how often it did (the box reads larger, so OKS reads high).
Version 1 datasets held keypoints in an earlier order of this project: their dense labels
are still read, their pose labels are refused (convert the source again).

Everything here is plain Python (no numpy, torch or Ray) so analysts can read it anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from schemas.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS

LABELLED_FORMAT = "humans300m-labelled"
LABELLED_VERSION = 2  # 2: Sapiens' keypoint order and Person.area
DATASET_FILE = "labelled.json"

TASKS = ("pose", "seg", "depth", "normal")
IGNORE_INDEX = 255

# The 28 body-part classes of Sapiens segmentation, in id order (Background = 0).
SEG_CLASSES = (
    "Background", "Apparel", "Face_Neck", "Hair", "Left_Foot", "Left_Hand",
    "Left_Lower_Arm", "Left_Lower_Leg", "Left_Shoe", "Left_Sock", "Left_Upper_Arm",
    "Left_Upper_Leg", "Lower_Clothing", "Right_Foot", "Right_Hand", "Right_Lower_Arm",
    "Right_Lower_Leg", "Right_Shoe", "Right_Sock", "Right_Upper_Arm", "Right_Upper_Leg",
    "Torso", "Upper_Clothing", "Lower_Lip", "Upper_Lip", "Lower_Teeth", "Upper_Teeth",
    "Tongue",
)  # fmt: skip
NUM_CLASSES = len(SEG_CLASSES)

# Member extensions (after "{key}.").
IMAGE_EXTS = ("jpg", "png")
META_EXT = "json"
SEG_EXT = "seg.png"
DEPTH_EXT = "depth.npy"
NORMAL_EXT = "normal.npy"
MASK_EXT = "mask.png"
TASK_MEMBERS = {
    "pose": (),
    "seg": (SEG_EXT,),
    "depth": (DEPTH_EXT, MASK_EXT),
    "normal": (NORMAL_EXT, MASK_EXT),
}


class LabelError(ValueError):
    """A labelled sample or dataset description that does not follow this format."""


def seg_flip_permutation() -> list[int]:
    """Class id -> class id after a horizontal flip (Left_* and Right_* swap)."""
    index = {name: i for i, name in enumerate(SEG_CLASSES)}
    perm = []
    for name in SEG_CLASSES:
        if name.startswith("Left_"):
            name = "Right_" + name[5:]
        elif name.startswith("Right_"):
            name = "Left_" + name[6:]
        perm.append(index[name])
    return perm


@dataclass(kw_only=True)
class Person:
    bbox: list[float]  # [x, y, w, h] in image pixels
    keypoints: list[float]  # NUM_KEYPOINTS * 3 values: x, y, v (v in 0, 1, 2)
    area: float | None = None  # annotated area in pixels^2 (OKS scale); None: unknown

    def __post_init__(self) -> None:
        if self.area is not None and not self.area > 0:
            raise LabelError(f"area must be positive (square pixels) or null, got {self.area}")
        if len(self.bbox) != 4 or self.bbox[2] <= 0 or self.bbox[3] <= 0:
            raise LabelError(f"bbox must be [x, y, w, h] with w, h > 0, got {self.bbox}")
        if len(self.keypoints) != 3 * NUM_KEYPOINTS:
            raise LabelError(
                f"keypoints must hold {3 * NUM_KEYPOINTS} values ({NUM_KEYPOINTS} x, y, v "
                f"triplets), got {len(self.keypoints)}"
            )
        if any(v not in (0, 1, 2) for v in self.keypoints[2::3]):
            raise LabelError("keypoint visibility must be 0, 1 or 2")


@dataclass(kw_only=True)
class SampleMeta:
    key: str  # the sample key (no dots, no slashes)
    width: int  # image width in pixels
    height: int  # image height in pixels
    tasks: list[str]  # tasks labelled in this sample, a subset of TASKS
    persons: list[Person] = field(default_factory=list)  # pose labels (may be empty)
    source: str = ""  # where the sample came from (file name, synthetic seed)

    def __post_init__(self) -> None:
        if not self.key or "." in self.key or "/" in self.key:
            raise LabelError(f"sample key must be non-empty without '.' or '/': {self.key!r}")
        if self.width <= 0 or self.height <= 0:
            raise LabelError(f"image size must be positive, got {self.width}x{self.height}")
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise LabelError(f"unknown tasks {sorted(unknown)}; known: {TASKS}")
        self.persons = [p if isinstance(p, Person) else Person(**p) for p in self.persons]
        if "pose" in self.tasks and not self.persons:
            raise LabelError(f"sample {self.key} is labelled for pose but has no persons")

    def to_json(self) -> bytes:
        persons = [{"bbox": p.bbox, "keypoints": p.keypoints, "area": p.area}
                   for p in self.persons]  # fmt: skip
        body = {**self.__dict__, "persons": persons}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SampleMeta:
        try:
            body = json.loads(data)
            return cls(**body)
        except (json.JSONDecodeError, TypeError) as err:
            raise LabelError(f"unreadable sample metadata: {err}") from err


def dataset_description(tasks: list[str]) -> dict[str, Any]:
    """The body of ``labelled.json`` for a dataset holding ``tasks``."""
    return {
        "format": LABELLED_FORMAT,
        "version": LABELLED_VERSION,
        "tasks": list(tasks),
        "num_keypoints": NUM_KEYPOINTS,
        "keypoints": list(KEYPOINT_NAMES),
        "classes": list(SEG_CLASSES),
        "ignore_index": IGNORE_INDEX,
    }


def check_description(body: dict[str, Any]) -> None:
    if not isinstance(body, dict):
        raise LabelError(f"not a labelled dataset (its description is a {type(body).__name__})")
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not all(t in TASKS for t in tasks):
        raise LabelError(f"not a labelled dataset (tasks {tasks!r}, expected a list of {TASKS})")
    if body.get("format") != LABELLED_FORMAT:
        raise LabelError(f"not a labelled dataset (format {body.get('format')!r})")
    version = body.get("version")
    if version == 1 and "pose" in body.get("tasks", []):
        raise LabelError(
            "labelled format version 1 stores pose keypoints in a pre-Sapiens order; "
            "convert the source again (python -m training.convert)"
        )
    if version not in (1, LABELLED_VERSION):
        raise LabelError(f"labelled format version {version} is not {LABELLED_VERSION}")
