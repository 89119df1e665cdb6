"""Crops, warps and flips on random boxes and keypoints."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.labelled import IGNORE_INDEX, SEG_CLASSES
from training.tasks import keypoints as kp
from training.tasks.transforms import (
    affine_to_crop,
    box_to_region,
    decode_heatmaps,
    flip_normals,
    flip_seg,
    heatmap_targets,
    invert_affine,
    warp_image,
    warp_keypoints,
    warp_points,
)


@pytest.mark.parametrize("seed", range(5))
def test_keypoints_to_crop_and_back(seed):
    rng = np.random.default_rng(seed)
    bbox = [*rng.uniform(0, 500, 2), *rng.uniform(5, 400, 2)]
    center, size = box_to_region(bbox, aspect=0.75)
    assert size[0] / size[1] == pytest.approx(0.75)
    assert size[0] >= bbox[2] and size[1] >= bbox[3]  # the whole box is inside the crop
    m = affine_to_crop(center, size, (64, 48), rotation_deg=rng.uniform(-40, 40),
                       flip=bool(seed % 2))  # fmt: skip
    pts = rng.uniform(-100, 900, (kp.NUM_KEYPOINTS, 2))
    back = warp_points(warp_points(pts, m), invert_affine(m))
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_box_corners_land_on_crop_edges():
    center, size = box_to_region([10, 20, 30, 40], aspect=0.75, padding=1.0)
    m = affine_to_crop(center, size, (40, 30))
    # Pixel-edge corners of the box (x - 0.5) map onto the crop's pixel-edge corners.
    corners = np.array([[9.5, 19.5], [39.5, 59.5]])
    np.testing.assert_allclose(warp_points(corners, m), [[-0.5, -0.5], [29.5, 39.5]])


def test_warped_image_moves_with_its_keypoint():
    rng = np.random.default_rng(1)
    image = np.zeros((120, 90), dtype=np.float32)
    x, y = 37, 81
    image[y - 1 : y + 2, x - 1 : x + 2] = 1.0
    center, size = box_to_region([20, 40, 50, 60], aspect=0.75)
    m = affine_to_crop(center, size, (128, 96), rotation_deg=float(rng.uniform(-30, 30)))
    crop = warp_image(image, m, (128, 96))
    cy, cx = np.unravel_index(crop.argmax(), crop.shape)
    expected = warp_points(np.array([x, y], float), m)
    assert abs(cx - expected[0]) <= 1.5 and abs(cy - expected[1]) <= 1.5


def test_flip_swaps_left_and_right_keypoints():
    rng = np.random.default_rng(2)
    keypoints = np.concatenate([rng.uniform(0, 100, (kp.NUM_KEYPOINTS, 2)),
                                np.full((kp.NUM_KEYPOINTS, 1), 2.0)], 1)  # fmt: skip
    center, size = box_to_region([0, 0, 75, 100], aspect=0.75, padding=1.0)
    plain = warp_keypoints(keypoints, affine_to_crop(center, size, (100, 75)), None)
    flipped = warp_keypoints(keypoints, affine_to_crop(center, size, (100, 75), flip=True),
                             kp.FLIP_PERM)  # fmt: skip
    left, right = kp.KEYPOINT_INDEX["left_wrist"], kp.KEYPOINT_INDEX["right_wrist"]
    # The mirrored image's left wrist is where the original right wrist was, mirrored.
    assert flipped[left, 0] == pytest.approx(74 - plain[right, 0])
    assert flipped[left, 1] == pytest.approx(plain[right, 1])
    nose = kp.KEYPOINT_INDEX["nose"]
    assert flipped[nose, 0] == pytest.approx(74 - plain[nose, 0])
    for name in ("l_center_of_pupil", "left_thumb4", "end_of_l_eyebrow", "left_heel"):
        mirror = kp.KEYPOINT_NAMES[kp.FLIP_PERM[kp.KEYPOINT_INDEX[name]]]
        assert mirror == name.replace("left", "right").replace("l_", "r_")


def test_flip_swaps_left_and_right_classes():
    label = np.zeros((4, 6), dtype=np.uint8)
    label[:, 0] = SEG_CLASSES.index("Left_Hand")
    label[:, 5] = SEG_CLASSES.index("Torso")
    label[0, 1] = IGNORE_INDEX
    flipped = flip_seg(label)
    assert (flipped[:, 5] == SEG_CLASSES.index("Right_Hand")).all()
    assert (flipped[:, 0] == SEG_CLASSES.index("Torso")).all()
    assert flipped[0, 4] == IGNORE_INDEX
    np.testing.assert_array_equal(flip_seg(flipped), label)


def test_flip_normals_mirrors_x():
    normals = np.random.default_rng(3).normal(size=(5, 7, 3))
    flipped = flip_normals(normals)
    np.testing.assert_allclose(flipped[:, 0, 0], -normals[:, 6, 0])
    np.testing.assert_allclose(flipped[:, 0, 1:], normals[:, 6, 1:])


def test_heatmap_round_trip():
    rng = np.random.default_rng(4)
    k = 20
    pts = np.concatenate([rng.uniform(4, 40, (k, 1)), rng.uniform(4, 60, (k, 1)),
                          np.full((k, 1), 2.0)], 1)  # fmt: skip
    pts[0, 2] = 0  # unlabelled
    pts[1, 0] = -30  # outside the crop
    heat, weight = heatmap_targets(pts, (16, 12), stride=4, sigma=1.5)
    assert weight[0] == 0 and weight[1] == 0 and weight[2:].all()
    decoded, _ = decode_heatmaps(heat[None], stride=4)
    np.testing.assert_allclose(decoded[0, 2:], pts[2:, :2], atol=2.1)  # quantised to 1 cell
