"""The 308-keypoint layout of Sapiens pose: names, groups, flip pairs and OKS sigmas.

Groups and names follow the Goliath layout published with Sapiens
(facebookresearch/sapiens, ``pose/configs/_base_/datasets/goliath.py``): 17 COCO body points
(5 of them on the face), 6 feet, 20 per hand, 7 extra body points and 238 face points.
The index ORDER here is this project's: body, feet, left hand, right hand, extra, face, each
group in the order of that file's group lists. Checkpoints trained elsewhere may order the
points differently; remap by name (``KEYPOINT_INDEX``).

OKS sigmas, as in that file: COCO's 17 body sigmas; COCO-WholeBody's for the feet and for the
finger joints that share a name with it (thumb2..4 and so on); the file's own values for the
finger "third joints" (0.022 thumb, 0.026 forefinger, 0.018 middle, 0.017 ring, 0.020 pinky)
and the extra points (neck and acromions as the shoulder, 0.079; olecranons and cubital fossae
as the elbow, 0.072); 0.010 for every face point. These are assumptions of the Sapiens
authors, not measured annotator spreads for this layout.
"""

from __future__ import annotations

import numpy as np

BODY = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
FEET = [
    "left_big_toe",
    "left_small_toe",
    "left_heel",
    "right_big_toe",
    "right_small_toe",
    "right_heel",
]
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
HAND_SUFFIXES = [f"{f}{j}" for f in _FINGERS for j in ("4", "3", "2", "_third_joint")]
LEFT_HAND = [f"left_{s}" for s in HAND_SUFFIXES]
RIGHT_HAND = [f"right_{s}" for s in HAND_SUFFIXES]
EXTRA = [
    "neck",
    "left_olecranon",
    "right_olecranon",
    "left_cubital_fossa",
    "right_cubital_fossa",
    "left_acromion",
    "right_acromion",
]

_LINES = ("lash_line", "eyelid_line", "crease_line")


def _eye(side: str, which: str) -> list[str]:
    """Eye contour points in the Goliath order for one side and upper/lower."""
    s = side
    # The Goliath file lists the midpoints of each contour in a side-specific order.
    lash = ("2", "1", "6", "5", "4", "3") if s == "l" else ("1", "2", "3", "4", "5", "6")
    lid = ("6", "2", "5", "c", "4", "1", "3") if s == "l" else ("3", "1", "4", "c", "5", "2", "6")
    out = [f"{s}_inner_end_of_{which}_lash_line", f"{s}_outer_end_of_{which}_lash_line"]
    out.append(f"{s}_centerpoint_of_{which}_lash_line")
    out += [f"{s}_midpoint_{m}_of_{which}_lash_line" for m in lash]
    out.append(f"{s}_outer_end_of_{which}_eyelid_line")
    for m in lid:
        out.append(
            f"{s}_centerpoint_of_{which}_eyelid_line"
            if m == "c"
            else f"{s}_midpoint_{m}_of_{which}_eyelid_line"
        )
    if which == "upper":
        for m in lid:
            out.append(
                f"{s}_centerpoint_of_upper_crease_line"
                if m == "c"
                else f"{s}_midpoint_{m}_of_upper_crease_line"
            )
    return out


def _brow(side: str) -> list[str]:
    return [
        f"upper_startpoint_of_{side}_eyebrow", f"lower_startpoint_of_{side}_eyebrow",
        f"end_of_{side}_eyebrow", f"upper_midpoint_1_of_{side}_eyebrow",
        f"lower_midpoint_1_of_{side}_eyebrow", f"upper_midpoint_2_of_{side}_eyebrow",
        f"upper_midpoint_3_of_{side}_eyebrow", f"lower_midpoint_2_of_{side}_eyebrow",
        f"lower_midpoint_3_of_{side}_eyebrow",
    ]  # fmt: skip


def _ear(side: str) -> list[str]:
    helix = (1, 2, 3, 4, 5, 6, 7) if side == "l" else (1, 8, 3, 4, 5, 6, 7)
    last = 8 if side == "l" else 2
    return (
        [f"{side}_{n}" for n in (
            "top_end_of_inferior_crus", "top_end_of_superior_crus", "start_of_antihelix",
            "end_of_antihelix", "midpoint_1_of_antihelix", "midpoint_1_of_inferior_crus",
            "midpoint_2_of_antihelix", "midpoint_3_of_antihelix")]
        + [f"{side}_point_{i}_of_inner_helix" for i in helix]
        + [f"{side}_{n}" for n in (
            "highest_point_of_antitragus", "bottom_point_of_tragus",
            "protruding_point_of_tragus", "top_point_of_tragus", "start_point_of_crus_of_helix",
            "deepest_point_of_concha", "tip_of_ear_lobe", "midpoint_between_22_15",
            "bottom_connecting_point_of_ear_lobe", "top_connecting_point_of_helix")]
        + [f"{side}_point_{last}_of_inner_helix"]
    )  # fmt: skip


def _circle(side: str, what: str) -> list[str]:
    ring = ("3", "midpoint_1", "12", "midpoint_4", "9", "midpoint_3", "6", "midpoint_2")
    return [f"{side}_center_of_{what}"] + [f"{side}_border_of_{what}_{r}" for r in ring]


def _mouth() -> list[str]:
    out = ["r_outer_corner_of_mouth", "l_outer_corner_of_mouth", "center_of_cupid_bow"]
    out.append("center_of_lower_outer_lip")
    for part in ("outer", "inner"):
        if part == "inner":
            out += ["r_inner_corner_of_mouth", "l_inner_corner_of_mouth"]
            out += ["center_of_upper_inner_lip", "center_of_lower_inner_lip"]
        out += [
            f"midpoint_{i}_of_{lip}_{part}_lip"
            for i, lip in ((1, "upper"), (2, "upper"), (1, "lower"), (2, "lower"))
        ]
        out += [f"midpoint_{i}_of_upper_{part}_lip" for i in (3, 4, 5, 6)]
        out += [f"midpoint_{i}_of_lower_{part}_lip" for i in (3, 4, 5, 6)]
    return out  # fmt: skip


FACE = (
    ["center_of_glabella", "center_of_nose_root", "tip_of_nose_bridge"]
    + [f"midpoint_{i}_of_nose_bridge" for i in (1, 2, 3)]
    + ["center_of_labiomental_groove", "tip_of_chin"]
    + _brow("r") + _brow("l")
    + _eye("l", "upper") + _eye("r", "upper") + _eye("l", "lower") + _eye("r", "lower")
    + ["tip_of_nose", "bottom_center_of_nose", "r_outer_corner_of_nose", "l_outer_corner_of_nose"]
    + [f"{c}_corner_of_{s}_nostril" for s in "rl" for c in ("inner", "outer", "upper")]
    + _mouth()
    + _ear("l") + _ear("r")
    + _circle("l", "iris") + _circle("r", "iris") + _circle("l", "pupil") + _circle("r", "pupil")
)  # fmt: skip

GROUPS: dict[str, list[str]] = {
    "body": BODY,
    "feet": FEET,
    "left_hand": LEFT_HAND,
    "right_hand": RIGHT_HAND,
    "extra": EXTRA,
    "face": FACE,
}
KEYPOINT_NAMES: list[str] = [name for names in GROUPS.values() for name in names]
KEYPOINT_INDEX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

COCO_SIGMAS = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
               0.107, 0.107, 0.087, 0.087, 0.089, 0.089]  # fmt: skip
# COCO-WholeBody's published foot sigmas; they differ between left and right (kept as is).
_FEET_SIGMAS = [0.068, 0.066, 0.066, 0.092, 0.094, 0.094]
# Per finger: joints 4, 3, 2 from COCO-WholeBody, then the Goliath "third joint" value.
_HAND_SIGMAS = [0.047, 0.037, 0.035, 0.022, 0.035, 0.024, 0.025, 0.026, 0.026, 0.022, 0.024,
                0.018, 0.032, 0.021, 0.021, 0.017, 0.031, 0.022, 0.019, 0.020]  # fmt: skip
_EXTRA_SIGMAS = [0.079, 0.072, 0.072, 0.072, 0.072, 0.079, 0.079]
FACE_SIGMA = 0.010
SIGMAS = np.array(
    COCO_SIGMAS + _FEET_SIGMAS + _HAND_SIGMAS * 2 + _EXTRA_SIGMAS + [FACE_SIGMA] * len(FACE),
    dtype=np.float64,
)


def _mirror(name: str) -> str:
    swap = {"left": "right", "right": "left", "l": "r", "r": "l"}
    return "_".join(swap.get(token, token) for token in name.split("_"))


def flip_permutation() -> np.ndarray:
    """Index i -> index of its mirror image (itself for points on the midline)."""
    return np.array([KEYPOINT_INDEX[_mirror(n)] for n in KEYPOINT_NAMES], dtype=np.int64)


FLIP_PERM = flip_permutation()

# Skeleton edges for drawing (COCO body, feet, neck).
SKELETON = [
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (15, 19), (16, 22),
    (19, 17), (22, 20),
]  # fmt: skip
