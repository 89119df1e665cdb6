"""Procedurally rendered figures with exactly known labels, for tests and demos.

A figure is a set of capsules (limbs, torso, feet) and spheres (head, hands) whose axes lie
in planes parallel to the image, viewed by an orthographic camera looking along +z. For such
a primitive the front surface is analytic: a pixel at 2-D distance d < r from the axis point
(or centre) c at depth z_c sees the surface at depth ``z_c - sqrt(r^2 - d^2)`` with unit
normal ``((x - c_x) / r, (y - c_y) / r, -sqrt(r^2 - d^2) / r)``. A z-buffer keeps the nearest
primitive per pixel, which gives the part map, depth, normals and the foreground mask; each
keypoint's visibility is a depth test against that buffer. Depth is stored as z / 100
(pixel units scaled to look like metres). Left and right are the figure's own: it faces the
camera, so its left side appears on the right of the image.

The 238 face points and the finger joints are laid out on fixed patterns on the head and
hand spheres, not at anatomical places: the task is to learn exact, consistent positions,
not faces. On the head, mirror partners of Sapiens' swap table (``keypoints.FLIP_PERM``)
sit at mirrored positions, so a mirrored head's labels are the swap table applied to the
original's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from schemas.labelled import SEG_CLASSES, TASKS, SampleMeta
from training.tasks import keypoints as kp
from training.tasks.shards import Sample, write_dataset

C = {name: i for i, name in enumerate(SEG_CLASSES)}
# Base colour per class; the figure's left side is a little redder so both sides are seen.
PALETTE = {
    "Face_Neck": (224, 172, 140), "Hair": (60, 40, 30), "Torso": (40, 90, 200),
    "Upper_Arm": (60, 170, 80), "Lower_Arm": (220, 200, 60), "Hand": (200, 120, 170),
    "Upper_Leg": (120, 60, 160), "Lower_Leg": (60, 200, 200), "Foot": (240, 120, 40),
}  # fmt: skip


@dataclass
class Primitive:
    a: np.ndarray  # [2] axis start (image x, y); a == b for a sphere
    b: np.ndarray  # [2] axis end
    z: float  # depth of the axis
    r: float  # radius in pixels
    part: str  # class name in SEG_CLASSES


def _closest_on_axis(p: Primitive, xy: np.ndarray) -> np.ndarray:
    """Closest axis point to each of [..., 2] points."""
    ab = p.b - p.a
    denom = float(ab @ ab)
    t = np.zeros(xy.shape[:-1]) if denom == 0 else np.clip((xy - p.a) @ ab / denom, 0, 1)
    return p.a + t[..., None] * ab


def front_surface(p: Primitive, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth [...] (inf where missed) and unit normal [..., 3] of ``p`` at points [..., 2]."""
    rel = xy - _closest_on_axis(p, xy)
    d2 = np.sum(rel**2, -1)
    h = np.sqrt(np.maximum(p.r**2 - d2, 0.0))
    depth = np.where(d2 < p.r**2, p.z - h, np.inf)
    normal = np.concatenate([rel / p.r, -h[..., None] / p.r], -1)
    return depth, normal


def _limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
    return start + length * np.array([np.sin(angle), np.cos(angle)])  # angle 0 points down


def _skeleton(rng: np.random.Generator, height: int, width: int) -> dict[str, np.ndarray]:
    """2-D joint positions of a randomly posed figure standing roughly upright."""
    s = rng.uniform(0.6, 0.85) * height / 7.0  # one "head unit" in pixels
    hip_c = np.array([rng.uniform(0.4, 0.6) * width, height * rng.uniform(0.5, 0.58)])
    lean = rng.uniform(-0.2, 0.2)
    neck = _limb(hip_c, np.pi + lean, 2.6 * s)
    j = {"neck": neck, "head": _limb(neck, np.pi + lean + rng.uniform(-0.2, 0.2), 1.0 * s)}
    across = np.array([np.cos(lean), -np.sin(lean)])  # towards the figure's left
    for side, sign in (("left", 1.0), ("right", -1.0)):
        sh = neck + sign * 0.9 * s * across
        el = _limb(sh, sign * rng.uniform(0.1, 1.6), 1.4 * s)
        wr = _limb(el, sign * rng.uniform(-0.3, 2.2), 1.2 * s)
        hip = hip_c + sign * 0.5 * s * across
        kn = _limb(hip, sign * rng.uniform(-0.1, 0.5), 1.8 * s)
        an = _limb(kn, sign * rng.uniform(-0.3, 0.3), 1.7 * s)
        toe = an + np.array([sign * 0.6 * s, 0.15 * s])
        j.update({f"{side}_shoulder": sh, f"{side}_elbow": el, f"{side}_wrist": wr,
                  f"{side}_hip": hip, f"{side}_knee": kn, f"{side}_ankle": an,
                  f"{side}_toe": toe})  # fmt: skip
    j["scale"] = np.array([s, s])
    return j


def _primitives(j: dict[str, np.ndarray], rng: np.random.Generator) -> list[Primitive]:
    s = float(j["scale"][0])
    z0 = rng.uniform(250.0, 350.0)
    prims = [
        Primitive(j["neck"], 0.5 * (j["left_hip"] + j["right_hip"]), z0, 0.85 * s, "Torso"),
        Primitive(j["head"], j["head"], z0 - 0.2 * s, 0.6 * s, "Face_Neck"),
    ]
    for side, sign in (("left", 1), ("right", -1)):
        Side = side.capitalize()
        dz = rng.uniform(-1.2, -0.3) * s * sign * rng.choice([-1, 1])  # arm before or behind
        prims += [
            Primitive(j[f"{side}_shoulder"], j[f"{side}_elbow"], z0 + dz, 0.32 * s, f"{Side}_Upper_Arm"),
            Primitive(j[f"{side}_elbow"], j[f"{side}_wrist"], z0 + dz, 0.27 * s, f"{Side}_Lower_Arm"),
            Primitive(j[f"{side}_wrist"], j[f"{side}_wrist"], z0 + dz, 0.33 * s, f"{Side}_Hand"),
            Primitive(j[f"{side}_hip"], j[f"{side}_knee"], z0, 0.42 * s, f"{Side}_Upper_Leg"),
            Primitive(j[f"{side}_knee"], j[f"{side}_ankle"], z0, 0.34 * s, f"{Side}_Lower_Leg"),
            Primitive(j[f"{side}_ankle"], j[f"{side}_toe"], z0 - 0.1 * s, 0.22 * s, f"{Side}_Foot"),
        ]  # fmt: skip
    return prims


def _pattern(names: list[str], radius: float, seed: int) -> dict[str, np.ndarray]:
    """Fixed offsets within a disc for a group of points; mirror pairs get mirrored x."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in out:
            continue
        mirror = kp.KEYPOINT_NAMES[kp.FLIP_PERM[kp.KEYPOINT_INDEX[name]]]
        rho, phi = radius * np.sqrt(rng.uniform(0.05, 1)), rng.uniform(0, np.pi)
        if mirror == name:
            out[name] = np.array([0.0, radius * rng.uniform(-0.9, 0.9)])
        else:  # the figure's left is the image's right (+x)
            left = np.array(
                [abs(rho * np.cos(phi)) + 0.05 * radius, rho * np.sin(phi) - radius / 2]
            )
            is_left = name.startswith(("left", "l_")) or "_l_" in name
            out[name] = left if is_left else left * [-1, 1]
            out[mirror] = left * [-1, 1] if is_left else left
    return out


_FACE_PATTERN = _pattern(kp.FACE, 0.8, seed=7)


def _hand_points(j: dict[str, np.ndarray], side: str, sign: float, r: float) -> dict:
    """Finger joints fanned out along the forearm direction inside the hand sphere."""
    wrist = j[f"{side}_wrist"]
    axis = wrist - j[f"{side}_elbow"]
    base = np.arctan2(axis[1], axis[0])
    out = {}
    for i, suffix in enumerate(kp.HAND_SUFFIXES):
        finger, joint = divmod(i, 4)  # joints listed tip first
        angle = base + sign * (finger - 2) * 0.4
        dist = r * (0.9 - 0.18 * joint)
        out[f"{side}_{suffix}"] = wrist + dist * np.array([np.cos(angle), np.sin(angle)])
    return out


def _keypoint_xy(j: dict[str, np.ndarray]) -> np.ndarray:
    """[K, 2] positions of all 308 points for a skeleton."""
    s = float(j["scale"][0])
    head, r_head = j["head"], 0.6 * s
    pts: dict[str, np.ndarray] = {n: head + r_head * o for n, o in _FACE_PATTERN.items()}
    pts["nose"] = head + [0, 0.1 * r_head]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        pts[f"{side}_eye"] = head + [sign * 0.35 * r_head, -0.2 * r_head]
        pts[f"{side}_ear"] = head + [sign * 0.85 * r_head, 0.0]
        for joint in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
            pts[f"{side}_{joint}"] = j[f"{side}_{joint}"]
        toe, ankle = j[f"{side}_toe"], j[f"{side}_ankle"]
        pts[f"{side}_big_toe"] = toe + [0, -0.1 * s]
        pts[f"{side}_small_toe"] = toe + [-sign * 0.15 * s, 0.1 * s]
        pts[f"{side}_heel"] = ankle + [-sign * 0.2 * s, 0.2 * s]
        arm = j[f"{side}_wrist"] - j[f"{side}_elbow"]
        perp = np.array([-arm[1], arm[0]]) / (np.linalg.norm(arm) + 1e-9) * 0.2 * s
        pts[f"{side}_olecranon"] = j[f"{side}_elbow"] + perp
        pts[f"{side}_cubital_fossa"] = j[f"{side}_elbow"] - perp
        pts[f"{side}_acromion"] = j[f"{side}_shoulder"] + [0, -0.25 * s]
        pts.update(_hand_points(j, side, sign, 0.33 * s))
    pts["neck"] = j["neck"]
    return np.stack([pts[name] for name in kp.KEYPOINT_NAMES])


def _owner(name: str) -> str:
    """The part a keypoint lies on (for its visibility depth test)."""
    side = "Left" if name.startswith(("left", "l_")) or "_l_" in name else "Right"
    if name in kp.FACE or name in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
        return "Face_Neck"
    if name in kp.LEFT_HAND or name in kp.RIGHT_HAND:
        return f"{side}_Hand"
    if name in kp.FEET:
        return f"{side}_Foot"
    for joint, part in (("ankle", "Lower_Leg"), ("knee", "Lower_Leg"), ("hip", "Upper_Leg"),
                        ("wrist", "Lower_Arm"), ("elbow", "Upper_Arm"), ("olecranon", "Upper_Arm"),
                        ("fossa", "Upper_Arm")):  # fmt: skip
        if joint in name:
            return f"{side}_{part}"
    return "Torso"  # shoulders, acromions, neck


_OWNERS = [_owner(n) for n in kp.KEYPOINT_NAMES]


@dataclass
class Rendered:
    image: np.ndarray  # uint8 [H, W, 3]
    seg: np.ndarray  # uint8 [H, W] class ids
    depth: np.ndarray  # float32 [H, W], 0 on background
    normal: np.ndarray  # float32 [H, W, 3], 0 on background
    mask: np.ndarray  # uint8 [H, W], 255 on the figure
    keypoints: np.ndarray  # float64 [308, 3] (x, y, v)
    bbox: list[float]  # [x, y, w, h] of the figure's pixels


def render_figure(rng: np.random.Generator, height: int, width: int) -> Rendered:
    """One randomly posed figure on a random background."""
    joints = _skeleton(rng, height, width)
    prims = _primitives(joints, rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xy = np.stack([xs, ys], -1)
    zbuf = np.full((height, width), np.inf)
    normal = np.zeros((height, width, 3))
    seg = np.zeros((height, width), dtype=np.uint8)
    for p in prims:
        depth, n = front_surface(p, xy)
        nearer = depth < zbuf
        zbuf[nearer], normal[nearer], seg[nearer] = depth[nearer], n[nearer], C[p.part]
    head = next(p for p in prims if p.part == "Face_Neck")
    seg[(seg == C["Face_Neck"]) & (ys < head.a[1] - 0.35 * head.r)] = C["Hair"]
    fg = np.isfinite(zbuf)
    image = _shade(rng, seg, normal, fg)
    keypoints = _visibility(_keypoint_xy(joints), prims, zbuf, height, width)
    rows, cols = np.nonzero(fg)
    bbox = [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
            float(rows.max() - rows.min() + 1)]  # fmt: skip
    return Rendered(
        image=image, seg=seg, depth=np.where(fg, zbuf / 100.0, 0).astype(np.float32),
        normal=normal.astype(np.float32), mask=(fg * 255).astype(np.uint8),
        keypoints=keypoints, bbox=bbox,
    )  # fmt: skip


def _visibility(xy: np.ndarray, prims: list[Primitive], zbuf: np.ndarray, h: int, w: int):
    """v = 2 where the point's own surface is the nearest one, 1 if hidden, 0 off-image."""
    by_part = {p.part: p for p in prims}
    out = np.zeros((len(xy), 3))
    out[:, :2] = xy
    for i, (x, y) in enumerate(xy):
        col, row = int(round(x)), int(round(y))
        if not (0 <= col < w and 0 <= row < h):
            continue
        own, _ = front_surface(by_part[_OWNERS[i]], np.array([[col, row]], dtype=np.float64))
        out[i, 2] = 2 if own[0] <= zbuf[row, col] + 1e-6 else 1
    return out


def _shade(rng: np.random.Generator, seg: np.ndarray, normal: np.ndarray, fg: np.ndarray):
    """Lambertian shading of the part colours over a noisy gradient background."""
    h, w = seg.shape
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.8, -0.2), -1.0])
    light /= np.linalg.norm(light)
    lum = 0.35 + 0.65 * np.clip(normal @ light, 0, 1)  # both point towards -z (the camera)
    colours = np.zeros((256, 3))
    for name, idx in C.items():
        base = next((v for k, v in PALETTE.items() if name.endswith(k)), (128, 128, 128))
        colours[idx] = np.array(base) + (30 if name.startswith("Left") else 0) * np.array([1, 0, 0])
    colours += rng.uniform(-15, 15, 3)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    background = (1 - t) * top + t * bottom + rng.normal(0, 12, (h, w, 3))
    figure = colours[seg] * lum[..., None]
    return np.clip(np.where(fg[..., None], figure, background), 0, 255).astype(np.uint8)


def synthetic_samples(
    num: int, seed: int, height: int = 128, width: int = 96, tasks: tuple[str, ...] = TASKS
) -> Iterator[Sample]:
    """``num`` rendered figures as labelled samples, all tasks labelled, keys ``syn{seed}_{i}``."""
    for i in range(num):
        r = render_figure(np.random.default_rng([seed, i]), height, width)
        meta = SampleMeta(
            key=f"syn{seed}_{i:06d}", width=width, height=height, tasks=list(tasks),
            persons=[{"bbox": r.bbox, "keypoints": r.keypoints.ravel().tolist(),
                      "area": float(np.count_nonzero(r.mask))}],  # the figure's pixels
            source=f"synthetic seed={seed} index={i}",
        )  # fmt: skip
        yield Sample(meta=meta, image=r.image, seg=r.seg, depth=r.depth, normal=r.normal,
                     mask=r.mask > 0)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from training import cli
    from training.config import SyntheticConfig

    def body() -> None:
        parser = cli.parser(SyntheticConfig, "python -m training.tasks.synthetic",
                            "Write synthetic labelled shards.", positional=("output",))  # fmt: skip
        cfg = cli.config(parser.parse_args(argv))
        cli.refuse_file(cfg.output, "--output")
        n = write_dataset(cfg.output, synthetic_samples(cfg.num, cfg.seed, *cfg.image_size),
                          list(TASKS), cfg.max_shard_samples)  # fmt: skip
        print(f"wrote {n} synthetic samples to {cfg.output}")

    return cli.run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
