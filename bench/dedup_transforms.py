"""What the near pass's pHash catches: Hamming distance from each picture to transformed copies.

    uv run python bench/dedup_transforms.py [--images 30] [--radius 8]

Two generated corpora (the tests' scenes, 320x240 gradients with figures; and
``curation.synthetic.photo_like`` 640x480 photo-like images), 21 transforms each. For every
transform: median and max distance, and the fraction within the radius, with this project's
pHash (borders trimmed, ``curation.dedup.signatures``) and the plain pHash (the same hash with
no trimming: what ``imagehash.phash`` computes). Distinct pictures of the same corpus are
printed as the false-merge side: their minimum distance must stay above the radius.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from curation.dedup import signatures  # noqa: E402
from curation.synthetic import photo_like  # noqa: E402
from tests.curation.test_dedup_signatures import encode as reencode  # noqa: E402
from tests.curation.test_dedup_signatures import scene  # noqa: E402


def transforms(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 8, (h, w, 3))
    noisy = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
    text = image.copy()
    ImageDraw.Draw(text).text((w * 0.6, h * 0.85), "(c) stock photo 2026", fill=(255, 255, 255))
    logo = image.copy()
    ImageDraw.Draw(logo).rectangle([w * 0.7, h * 0.85, w * 0.98, h * 0.97], fill=(255, 255, 255))
    return {
        "jpeg q10": reencode(image, "JPEG", quality=10),
        "webp q50": reencode(image, "WEBP", quality=50),
        "gaussian blur 2": image.filter(ImageFilter.GaussianBlur(2)),
        "sharpen": image.filter(ImageFilter.SHARPEN),
        "grey": image.convert("L").convert("RGB"),
        "sepia": ImageOps.colorize(image.convert("L"), "#402010", "#f0e0c0"),
        "gamma 0.8": image.point(lambda v: int(255 * (v / 255) ** 0.8)),
        "darker 0.8": ImageEnhance.Brightness(image).enhance(0.8),
        "noise sigma 8": Image.fromarray(noisy),
        "thumbnail 64 px": image.resize((64, 48), Image.Resampling.LANCZOS),
        "squash width 90%": image.resize((int(w * 0.9), h)),
        "text watermark": text,
        "black padding 5%": ImageOps.expand(image, border=w // 20, fill=(0, 0, 0)),
        "letterbox": ImageOps.pad(image, (w, int(h * 1.3)), color=(0, 0, 0)),
        "crop 10% centred": image.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
        "crop 20% off-centre": image.crop((w // 5, h // 10, w, h)),
        "rotate 2 deg": image.rotate(2, resample=Image.Resampling.BICUBIC),
        "rotate 5 deg": image.rotate(5, resample=Image.Resampling.BICUBIC),
        "logo box": logo,
        "channel swap": Image.fromarray(np.asarray(image)[:, :, [1, 2, 0]]),
        "mirror": ImageOps.mirror(image),
    }


def distances(images: list[Image.Image], trim: bool) -> tuple[dict[str, np.ndarray], int]:
    box = signatures.content_box
    if not trim:
        signatures.content_box = lambda image: None
    try:
        hashes = [signatures.phash64(image) for image in images]
        per_kind: dict[str, list[int]] = {}
        for image, value in zip(images, hashes, strict=True):
            for kind, copy in transforms(image).items():
                per_kind.setdefault(kind, []).append(
                    signatures.hamming(value, signatures.phash64(copy))
                )
        closest = min(
            signatures.hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]
        )
    finally:
        signatures.content_box = box
    return {k: np.array(v) for k, v in per_kind.items()}, closest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--radius", type=int, default=8)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"machine: {platform.machine()}; commit {commit}; radius {args.radius}")
    corpora = {
        "scenes 320x240": [scene(s) for s in range(args.images)],
        "photo-like 640x480": [photo_like(640, 480, s) for s in range(args.images)],
    }
    for name, images in corpora.items():
        trimmed, closest = distances(images, trim=True)
        plain, _ = distances(images, trim=False)
        print(f"\n{name}: {len(images)} images; distinct pictures at least {closest} bits apart")
        print(f"  {'transform':22s} {'trimmed: median max within':>28s}   {'plain pHash':>26s}")
        for kind, d in trimmed.items():
            p = plain[kind]
            print(
                f"  {kind:22s} {np.median(d):9.1f} {d.max():4d} {np.mean(d <= args.radius):8.2f}"
                f"   {np.median(p):12.1f} {p.max():4d} {np.mean(p <= args.radius):8.2f}"
            )


if __name__ == "__main__":
    main()
