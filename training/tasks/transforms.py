"""Geometry shared by the tasks: 4:3 person crops, affine warps, flips, heatmap targets.

Coordinates are pixel coordinates with integer values at pixel centres (as COCO and OpenCV
use). A crop of size (H, W) around a region of size (h, w) centred at (cx, cy) maps the
region's edges onto the crop's edges: ``u = (x - cx) * W / w + (W - 1) / 2``.
"""

from __future__ import annotations

import numpy as np

from schemas.labelled import seg_flip_permutation

SEG_FLIP = np.array(seg_flip_permutation(), dtype=np.uint8)
SEG_FLIP_LUT = np.arange(256, dtype=np.uint8)  # any uint8 value -> value after a flip
SEG_FLIP_LUT[: len(SEG_FLIP)] = SEG_FLIP
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def box_to_region(
    bbox: list[float] | np.ndarray, aspect: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (w, h) of a box [x, y, w, h] grown to ``aspect`` = w / h, then padded."""
    x, y, w, h = (float(v) for v in bbox)
    center = np.array([x + w / 2 - 0.5, y + h / 2 - 0.5])  # [x, y) box edges -> centre pixel
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h]) * padding


def image_region(width: int, height: int, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest region of ``aspect`` holding the whole image (for dense tasks)."""
    return box_to_region([0, 0, width, height], aspect, padding=1.0)


def affine_to_crop(
    center: np.ndarray,
    size: np.ndarray,
    out_hw: tuple[int, int],
    rotation_deg: float = 0.0,
    flip: bool = False,
) -> np.ndarray:
    """2x3 matrix mapping image pixels into an (H, W) crop of the region (optionally
    rotated about its centre, then mirrored left-right)."""
    out_h, out_w = out_hw
    sx, sy = out_w / size[0], out_h / size[1]
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    linear = np.diag([sx, sy]) @ rot
    if flip:
        linear = np.diag([-1.0, 1.0]) @ linear
    offset = np.array([(out_w - 1) / 2, (out_h - 1) / 2]) - linear @ np.asarray(center, float)
    return np.concatenate([linear, offset[:, None]], axis=1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    linear_inv = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear_inv, (-linear_inv @ matrix[:, 2])[:, None]], axis=1)


def warp_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to [..., 2] points."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_image(
    image: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int], nearest: bool = False,
    fill: float = 0,
) -> np.ndarray:  # fmt: skip
    """Warp an [H, W] or [H, W, C] array into the crop (bilinear, or nearest for labels)."""
    import cv2

    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = cv2.warpAffine(
        image, matrix.astype(np.float64), (out_hw[1], out_hw[0]), flags=flags,
        borderMode=cv2.BORDER_CONSTANT, borderValue=fill,
    )  # fmt: skip
    return out.reshape(*out_hw, *image.shape[2:])


def warp_keypoints(keypoints: np.ndarray, matrix: np.ndarray, flip_perm: np.ndarray | None):
    """[K, 3] keypoints (x, y, v) into the crop; with ``flip_perm`` (the crop is mirrored)
    left and right points swap places so that index i still means the same body part."""
    out = keypoints.astype(np.float64).copy()
    out[:, :2] = warp_points(out[:, :2], matrix)
    if flip_perm is not None:
        out = out[flip_perm]
    return out


def mirror_seg(label: np.ndarray) -> np.ndarray:
    """The class ids of a mirrored class map (the pixels already mirrored, as a flipped
    warp leaves them): Left_* and Right_* ids swap; IGNORE_INDEX is kept."""
    return SEG_FLIP_LUT[label]


def mirror_normals(normals: np.ndarray) -> np.ndarray:
    """The vectors of a mirrored [H, W, 3] normal map (the pixels already mirrored): x
    changes sign."""
    out = normals.copy()
    out[..., 0] *= -1
    return out


def udp_scale(heat_hw: tuple[int, int], stride: int) -> np.ndarray:
    """Crop pixels per heatmap pixel, (x, y), in UDP's unbiased transform: the first and
    last heatmap pixels sit on the first and last crop pixels, ``u = x * (W - 1) / (w - 1)``
    for a crop W = w * stride pixels wide (mmpose's UDPHeatmap, as Sapiens uses it)."""
    h, w = heat_hw
    return np.array([(w * stride - 1) / max(w - 1, 1), (h * stride - 1) / max(h - 1, 1)])


def heatmap_targets(
    keypoints: np.ndarray, heat_hw: tuple[int, int], stride: int, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian heatmaps [K, h, w] centred at the exact sub-pixel UDP position of crop
    keypoints [K, 3], and weights [K] (1 where the point is labelled and falls inside the
    crop, else 0). Unlike mmpose's, the Gaussian is not cut off at 3 sigma."""
    h, w = heat_hw
    centre = keypoints[:, :2] / udp_scale(heat_hw, stride)  # [K, 2] in heatmap pixels
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    dx2 = (xs[None, :] - centre[:, :1]) ** 2  # [K, w]
    dy2 = (ys[None, :] - centre[:, 1:]) ** 2  # [K, h]
    heat = np.exp(-(dy2[:, :, None] + dx2[:, None, :]) / (2 * sigma**2)).astype(np.float32)
    u, v = keypoints[:, 0], keypoints[:, 1]
    inside = (u > -0.5) & (u < w * stride - 0.5) & (v > -0.5) & (v < h * stride - 0.5)
    weight = ((keypoints[:, 2] > 0) & inside).astype(np.float32)
    return heat * weight[:, None, None], weight


def flip_heatmaps(heat: np.ndarray, flip_perm: np.ndarray) -> np.ndarray:
    """Heatmaps [N, K, h, w] of a mirrored crop back in the unmirrored frame: columns reverse
    and channel i takes its mirror partner's map. Under UDP a crop column u mirrors to
    W - 1 - u and a heatmap column x to w - 1 - x exactly, so no shift is needed (Sapiens'
    flip test: flip_mode "heatmap", shift_heatmap False)."""
    return heat[:, flip_perm, :, ::-1]


DARK_KERNEL = 11  # Gaussian blur before the Taylor step (mmpose's UDPHeatmap default)


def decode_heatmaps(
    heat: np.ndarray, stride: int, blur_kernel: int = DARK_KERNEL
) -> tuple[np.ndarray, np.ndarray]:
    """Crop coordinates [N, K, 2] and scores [N, K] from heatmaps [N, K, h, w] (UDP).

    The argmax is refined as mmpose's ``refine_keypoints_dark_udp`` does (DARK): blur each
    map (its maximum kept), take logs, and move by one Newton step on the log-heatmap
    (-Hessian^-1 x gradient, central differences). The heatmap position then maps to crop
    pixels by the inverse of the encoding's transform (``udp_scale``); mmpose's decode
    multiplies by ``input / (w - 1)`` instead, which is not that inverse (up to a pixel off
    at the far edge).
    """
    n, k, h, w = heat.shape
    flat = heat.reshape(n * k, -1)
    y, x = np.divmod(flat.argmax(-1), w)
    xy = _dark_udp(heat.reshape(n * k, h, w), x, y, blur_kernel)
    scores = flat.max(-1).reshape(n, k)
    return xy.reshape(n, k, 2) * udp_scale((h, w), stride), scores


def _dark_udp(heat: np.ndarray, x: np.ndarray, y: np.ndarray, kernel: int) -> np.ndarray:
    """Refined [M, 2] positions of maxima (x, y) [M] in heatmaps [M, h, w]."""
    import cv2

    m, h, w = heat.shape
    border = (kernel - 1) // 2
    log = np.empty((m, h + 2, w + 2), dtype=np.float64)
    for i in range(m):  # blurred with a zero border, as mmpose's gaussian_blur
        padded = np.zeros((h + 2 * border, w + 2 * border), dtype=np.float32)
        padded[border : border + h, border : border + w] = heat[i]
        blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
        top = float(blurred.max())
        if top > 0:
            blurred = blurred * (float(heat[i].max()) / top)
        log[i] = np.pad(np.log(np.clip(blurred, 1e-3, 50.0)), 1, mode="edge")
    i, c, r = np.arange(m), x + 1, y + 1  # indices into the edge-padded maps

    def at(dc: int, dr: int) -> np.ndarray:
        return log[i, r + dr, c + dc]

    centre = at(0, 0)
    dx, dy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    dxx = at(1, 0) - 2 * centre + at(-1, 0)
    dyy = at(0, 1) - 2 * centre + at(0, -1)
    dxy = 0.5 * (at(1, 1) - at(1, 0) - at(0, 1) + 2 * centre - at(-1, 0) - at(0, -1) + at(-1, -1))
    eps = float(np.finfo(np.float32).eps)  # mmpose adds eps * I before inverting
    a, d = dxx + eps, dyy + eps
    det = a * d - dxy * dxy
    ok = np.abs(det) > 0
    safe = np.where(ok, det, 1.0)
    step_x = np.where(ok, (d * dx - dxy * dy) / safe, 0.0)
    step_y = np.where(ok, (a * dy - dxy * dx) / safe, 0.0)
    return np.stack([x - step_x, y - step_y], -1)


def normalise_image(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] with ImageNet mean and std."""
    return ((image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
