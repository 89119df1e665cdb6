"""The 308-keypoint layout of Sapiens pose as arrays: names, groups, flip pairs, OKS sigmas.

Everything here is derived from the table in ``schemas.keypoints`` (Sapiens' own names,
order, sigmas and swap partners): heatmap channel i is ``KEYPOINT_NAMES[i]`` in a Sapiens
pose checkpoint and here. Groups (17 COCO body points, 5 of them on the face; 6 feet; 20 per
hand; 7 extra body points; 238 face points) are picked out of the table by name for
drawing, synthetic figures and per-group scores; they do not define the order.

The sigmas are Sapiens' assumptions (COCO's for the body, COCO-WholeBody's for feet and
fingers, its own for the extra points, 0.01 for every face point), not measured annotator
spreads for this layout.
"""

from __future__ import annotations

import numpy as np

from schemas.keypoints import (
    COCO_INDEX,
    COCO_KEYPOINT_NAMES,
    FLIP_INDEX,
    KEYPOINT_INDEX,
    KEYPOINT_NAMES,
    KEYPOINT_SIGMAS,
    NUM_KEYPOINTS,
)

__all__ = ["KEYPOINT_INDEX", "KEYPOINT_NAMES", "NUM_KEYPOINTS"]


def _hand(side: str) -> list[str]:
    return [
        n for n in KEYPOINT_NAMES if n.startswith(f"{side}_") and ("thumb" in n or "finger" in n)
    ]


BODY = list(COCO_KEYPOINT_NAMES)  # COCO's order, not the table's
FEET = [n for n in KEYPOINT_NAMES if n.endswith(("_toe", "_heel"))]
LEFT_HAND, RIGHT_HAND = _hand("left"), _hand("right")
_EXTRA_ENDS = ("_olecranon", "_cubital_fossa", "_acromion")
EXTRA = [n for n in KEYPOINT_NAMES if n == "neck" or n.endswith(_EXTRA_ENDS)]
_NOT_FACE = {*BODY, *FEET, *LEFT_HAND, *RIGHT_HAND, *EXTRA}
FACE = [n for n in KEYPOINT_NAMES if n not in _NOT_FACE]
GROUPS: dict[str, list[str]] = {
    "body": BODY,
    "feet": FEET,
    "left_hand": LEFT_HAND,
    "right_hand": RIGHT_HAND,
    "extra": EXTRA,
    "face": FACE,
}  # fmt: skip
# Finger joints of one hand in the table's order (tip first per finger), without the side.
HAND_SUFFIXES = [n.removeprefix("left_") for n in LEFT_HAND]

SIGMAS = np.array(KEYPOINT_SIGMAS, dtype=np.float64)
BODY_INDEX = np.array(COCO_INDEX, dtype=np.int64)  # table index of each COCO point
COCO_SIGMAS = SIGMAS[BODY_INDEX]
# Index i -> index of its mirror partner (itself on the midline), from Sapiens' swap table.
FLIP_PERM = np.array(FLIP_INDEX, dtype=np.int64)

# Skeleton edges for drawing (COCO body, feet, neck), as table indices.
_EDGES = [
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("left_eye", "right_eye"),
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"),
    ("right_eye", "right_ear"), ("left_ankle", "left_big_toe"), ("right_ankle", "right_big_toe"),
    ("left_big_toe", "left_small_toe"), ("right_big_toe", "right_small_toe"),
    ("left_ankle", "left_heel"), ("right_ankle", "right_heel"), ("neck", "left_shoulder"),
    ("neck", "right_shoulder"),
]  # fmt: skip
SKELETON = [(KEYPOINT_INDEX[a], KEYPOINT_INDEX[b]) for a, b in _EDGES]
