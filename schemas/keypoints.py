"""The 308-keypoint table of Sapiens pose (Goliath layout), the order of every labelled pose.

The facts live in ``sapiens_keypoints.json`` beside this file, taken from
facebookresearch/sapiens ``pose/configs/_base_/datasets/goliath.py``: the names in Sapiens'
index order (heatmap channel i of a Sapiens pose checkpoint is point i here), the OKS sigma
of each point, and the name of its mirror partner (itself on the midline). Mirror partners
come from that swap table, never from the names: Goliath does not number contour points
mirror-symmetrically (``l_border_of_iris_3`` mirrors ``r_border_of_iris_9``).

Plain Python (no numpy) so that analysts can read it anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("sapiens_keypoints.json")

# COCO's 17 body points in COCO's order: 17-point annotations are mapped by these names.
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip


def _load() -> tuple[tuple[str, ...], tuple[float, ...], tuple[str, ...]]:
    body = json.loads(TABLE_FILE.read_text())
    names, sigmas, swap = tuple(body["names"]), tuple(body["sigmas"]), tuple(body["swap"])
    # A table that is not a complete involution would mislabel every flipped crop: refuse it.
    if not len(names) == len(sigmas) == len(swap) or len(set(names)) != len(names):
        raise ValueError(f"{TABLE_FILE}: names, sigmas and swap must be equal-length, unique")
    index = {n: i for i, n in enumerate(names)}
    for name, partner in zip(names, swap, strict=True):
        if swap[index.get(partner, -1)] != name:
            raise ValueError(f"{TABLE_FILE}: {name} <-> {partner} is not a mirror pair")
    return names, sigmas, swap


KEYPOINT_NAMES, KEYPOINT_SIGMAS, KEYPOINT_SWAP = _load()
KEYPOINT_INDEX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# Index i -> index of its mirror partner: the channel permutation of a horizontal flip.
FLIP_INDEX = tuple(KEYPOINT_INDEX[partner] for partner in KEYPOINT_SWAP)
COCO_INDEX = tuple(KEYPOINT_INDEX[name] for name in COCO_KEYPOINT_NAMES)
