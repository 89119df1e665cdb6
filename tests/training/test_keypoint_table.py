"""The 308-point table is Sapiens' own, and flips, synthetic figures and COCO data use it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from schemas import keypoints as table
from training.tasks import keypoints as kp
from training.tasks.synthetic import _FACE_PATTERN
from training.tasks.transforms import affine_to_crop, box_to_region, warp_keypoints

ROOT = Path(__file__).resolve().parents[2]
# Sapiens' table as gathered from facebookresearch/sapiens (goliath.py), kept outside the
# product; HUMANS300M_SAPIENS_KEYPOINTS points elsewhere.
REFERENCE = [
    Path(os.environ.get("HUMANS300M_SAPIENS_KEYPOINTS", "/nonexistent")),
    *(p / "shared/reference/sapiens_goliath_keypoints.json" for p in ROOT.parents),
]

# Pairs the issue names: Goliath numbers these contours differently on each side.
KNOWN_PAIRS = [
    ("l_border_of_iris_3", "r_border_of_iris_9"),
    ("lower_midpoint_2_of_l_eyebrow", "lower_midpoint_3_of_r_eyebrow"),
    ("midpoint_1_of_upper_outer_lip", "midpoint_2_of_upper_outer_lip"),
    ("l_midpoint_2_of_upper_lash_line", "r_midpoint_1_of_upper_lash_line"),
    ("l_point_2_of_inner_helix", "r_point_8_of_inner_helix"),
    ("left_wrist", "right_wrist"),
]


def test_table_equals_sapiens_reference_by_name():
    path = next((p for p in REFERENCE if p.is_file()), None)
    if path is None:
        pytest.skip("Sapiens reference table not found (set HUMANS300M_SAPIENS_KEYPOINTS)")
    ref = json.loads(path.read_text())
    assert len(ref["names"]) == table.NUM_KEYPOINTS == 308
    for i, (name, sigma, partner) in enumerate(
        zip(ref["names"], ref["sigmas"], ref["swap"], strict=True)
    ):
        assert table.KEYPOINT_INDEX[name] == i, name
        assert table.KEYPOINT_SIGMAS[i] == sigma, name
        assert table.KEYPOINT_SWAP[i] == partner, name
        assert kp.KEYPOINT_NAMES[kp.FLIP_PERM[i]] == partner, name


def test_known_mirror_pairs_and_layout():
    for a, b in KNOWN_PAIRS:
        ia, ib = kp.KEYPOINT_INDEX[a], kp.KEYPOINT_INDEX[b]
        assert kp.FLIP_PERM[ia] == ib and kp.FLIP_PERM[ib] == ia, (a, b)
    for name in ("nose", "neck", "tip_of_chin", "center_of_cupid_bow"):
        assert kp.FLIP_PERM[kp.KEYPOINT_INDEX[name]] == kp.KEYPOINT_INDEX[name]
    np.testing.assert_array_equal(kp.FLIP_PERM[kp.FLIP_PERM], np.arange(308))
    # Sapiens' order: the first 15 are COCO's body points without the wrists, which come
    # after each hand; a checkpoint's heatmap channels line up index for index.
    assert kp.KEYPOINT_NAMES[:3] == ("nose", "left_eye", "right_eye")
    assert kp.KEYPOINT_INDEX["left_hip"] == 9 and kp.KEYPOINT_INDEX["right_wrist"] == 41
    assert kp.KEYPOINT_INDEX["left_wrist"] == 62 and kp.KEYPOINT_INDEX["neck"] == 69
    assert (
        [kp.KEYPOINT_NAMES[i] for i in kp.BODY_INDEX] == kp.BODY == list(table.COCO_KEYPOINT_NAMES)
    )
    assert [len(g) for g in kp.GROUPS.values()] == [17, 6, 20, 20, 7, 238]
    assert sorted(n for g in kp.GROUPS.values() for n in g) == sorted(kp.KEYPOINT_NAMES)
    np.testing.assert_array_equal(  # COCO's published body sigmas, in COCO's order
        kp.COCO_SIGMAS,
        [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
         0.107, 0.107, 0.087, 0.087, 0.089, 0.089],
    )  # fmt: skip


def test_a_flipped_crop_relabels_points_with_their_partners():
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.uniform(0, 100, (308, 2)), np.full((308, 1), 2.0)], 1)
    center, size = box_to_region([0, 0, 75, 100], aspect=0.75, padding=1.0)
    plain = warp_keypoints(points, affine_to_crop(center, size, (100, 75)), None)
    flipped = warp_keypoints(
        points, affine_to_crop(center, size, (100, 75), flip=True), kp.FLIP_PERM
    )
    for a, b in KNOWN_PAIRS:
        ia, ib = kp.KEYPOINT_INDEX[a], kp.KEYPOINT_INDEX[b]
        # In the mirrored crop, point a is where its partner b was, mirrored.
        assert flipped[ia, 0] == pytest.approx(74 - plain[ib, 0])
        assert flipped[ia, 1] == pytest.approx(plain[ib, 1])


def test_synthetic_figures_place_partners_at_mirrored_positions():
    for name, offset in _FACE_PATTERN.items():
        partner = kp.KEYPOINT_NAMES[kp.FLIP_PERM[kp.KEYPOINT_INDEX[name]]]
        np.testing.assert_allclose(_FACE_PATTERN[partner], offset * [-1, 1], err_msg=name)
    assert set(_FACE_PATTERN) == set(kp.FACE)  # every face point placed, by the table
