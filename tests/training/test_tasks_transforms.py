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
    flip_heatmaps,
    heatmap_targets,
    image_region,
    invert_affine,
    mirror_normals,
    mirror_seg,
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


def test_mirror_swaps_left_and_right_classes():
    label = np.zeros((4, 6), dtype=np.uint8)
    label[:, 0] = SEG_CLASSES.index("Left_Hand")
    label[:, 5] = SEG_CLASSES.index("Torso")
    label[0, 1] = IGNORE_INDEX
    mirrored = mirror_seg(label)
    assert (mirrored[:, 0] == SEG_CLASSES.index("Right_Hand")).all()
    assert (mirrored[:, 5] == SEG_CLASSES.index("Torso")).all()
    assert mirrored[0, 1] == IGNORE_INDEX
    np.testing.assert_array_equal(mirror_seg(mirrored), label)


def test_seg_flip_pairs_are_sapiens():
    # swap_seg_labels of RandomFlip in facebookresearch/sapiens seg/configs/sapiens_seg/goliath
    sapiens = [(4, 13), (5, 14), (6, 15), (7, 16), (8, 17), (9, 18), (10, 19), (11, 20)]
    expected = np.arange(len(SEG_CLASSES))
    for a, b in sapiens:
        expected[a], expected[b] = b, a
    np.testing.assert_array_equal(mirror_seg(np.arange(len(SEG_CLASSES), dtype=np.uint8)),
                                  expected)  # fmt: skip


def test_mirror_normals_negates_x_only():
    normals = np.random.default_rng(3).normal(size=(5, 7, 3))
    mirrored = mirror_normals(normals)
    np.testing.assert_allclose(mirrored[..., 0], -normals[..., 0])
    np.testing.assert_allclose(mirrored[..., 1:], normals[..., 1:])


@pytest.mark.parametrize("task", ["seg", "normal"])
def test_flipped_items_are_the_mirror_of_unflipped_ones(task):
    """The tasks' targets of a mirrored crop: the unmirrored targets reversed left to right,
    with Left_*/Right_* classes swapped and normals' x negated."""
    from training.tasks.registry import TASKS_BY_NAME
    from training.tasks.synthetic import synthetic_samples

    sample = next(iter(synthetic_samples(1, seed=5, height=48, width=36)))
    hw = (32, 24)
    center, size = image_region(sample.meta.width, sample.meta.height, aspect=hw[1] / hw[0])
    plain = TASKS_BY_NAME[task].targets(sample, affine_to_crop(center, size, hw), hw, False)
    flipped = TASKS_BY_NAME[task].targets(
        sample, affine_to_crop(center, size, hw, flip=True), hw, True
    )
    if task == "seg":
        label = plain["label"].numpy()
        assert (
            len(
                set(np.unique(label))
                & {SEG_CLASSES.index("Left_Hand"), SEG_CLASSES.index("Left_Upper_Arm")}
            )
            > 0
        )
        expected = mirror_seg(label[:, ::-1].astype(np.uint8)).astype(np.int64)
        np.testing.assert_array_equal(flipped["label"].numpy(), expected)
    else:
        np.testing.assert_array_equal(flipped["mask"].numpy(), plain["mask"].numpy()[:, ::-1])
        expected = mirror_normals(plain["normal"].numpy().transpose(1, 2, 0)[:, ::-1])
        np.testing.assert_allclose(flipped["normal"].numpy().transpose(1, 2, 0), expected)


def test_heatmap_round_trip_is_subpixel_exact():
    rng = np.random.default_rng(4)
    k, (h, w) = 60, (48, 40)  # heatmap size; the crop is 4x: 192 x 160
    pts = np.concatenate([rng.uniform(-10, 170, (k, 1)), rng.uniform(-10, 202, (k, 1)),
                          np.full((k, 1), 2.0)], 1)  # fmt: skip
    pts[0, 2] = 0  # unlabelled
    pts[1, 0] = -30  # outside the crop
    heat, weight = heatmap_targets(pts, (h, w), stride=4, sigma=2.0)
    inside = (pts[:, 0] > -0.5) & (pts[:, 0] < 159.5) & (pts[:, 1] > -0.5) & (pts[:, 1] < 191.5)
    np.testing.assert_array_equal(weight, (pts[:, 2] > 0) & inside)
    # UDP: heatmap pixel x sits on crop pixel x * 159 / 39, so the Gaussian's peak is there.
    scale = np.array([159 / 39, 191 / 47])
    for j in np.flatnonzero(weight):
        y, x = np.unravel_index(heat[j].argmax(), heat[j].shape)
        assert (np.abs(np.array([x, y]) * scale - pts[j, :2]) <= scale / 2 + 1e-9).all()
    decoded, scores = decode_heatmaps(heat[None], stride=4)
    # DARK refinement recovers a Gaussian's centre exactly away from the borders (the blur
    # before it pads with zeros, which pulls peaks near an edge inwards).
    heat_xy = pts[:, :2] / scale
    interior = (weight > 0) & (heat_xy.min(1) > 10) & (heat_xy[:, 0] < w - 11)
    interior &= heat_xy[:, 1] < h - 11
    assert interior.sum() >= 10
    np.testing.assert_allclose(decoded[0, interior], pts[interior, :2], atol=1e-3)
    assert (scores[0, weight == 0] == 0).all()


def test_flip_test_heatmaps_line_up_with_the_plain_crop():
    """Targets of a mirrored crop, flipped back, are the plain crop's targets: UDP needs no
    shift and channels take their partners' maps."""
    rng = np.random.default_rng(5)
    points = np.concatenate([rng.uniform(0, 80, (kp.NUM_KEYPOINTS, 2)),
                             np.full((kp.NUM_KEYPOINTS, 1), 2.0)], 1)  # fmt: skip
    center, size = box_to_region([5, 5, 60, 70], aspect=0.75)
    plain = warp_keypoints(points, affine_to_crop(center, size, (64, 48)), None)
    mirrored = warp_keypoints(points, affine_to_crop(center, size, (64, 48), flip=True),
                              kp.FLIP_PERM)  # fmt: skip
    heat, w = heatmap_targets(plain, (16, 12), stride=4, sigma=1.5)
    heat_m, w_m = heatmap_targets(mirrored, (16, 12), stride=4, sigma=1.5)
    np.testing.assert_allclose(flip_heatmaps(heat_m[None], kp.FLIP_PERM)[0], heat, atol=1e-6)
    np.testing.assert_array_equal(w_m[kp.FLIP_PERM], w)
