"""Signatures on planted duplicates and distinct look-alikes: recall and false merges."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from curation.dedup.signatures import hamming, phash64, pixel_hash

RADIUS = 8  # DedupConfig's default


def scene(seed: int, shift: float = 0.0, figures: int | None = None) -> Image.Image:
    """A generated photo-like scene: gradient background, a few 'people' (ellipse + body)."""
    rng = np.random.default_rng(seed)
    w, h = 320, 240
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.4, 0.4, (3, 2))
    bg = base[:, None, None] + slope[:, 0, None, None] * x + slope[:, 1, None, None] * y
    image = Image.fromarray(np.clip(bg.transpose(1, 2, 0), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(figures if figures is not None else rng.integers(2, 5)):
        cx = (rng.uniform(0.15, 0.85) + shift) * w
        cy, s = rng.uniform(0.3, 0.7) * h, rng.uniform(20, 45)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse([cx - s / 3, cy - s, cx + s / 3, cy - s / 3], fill=colour)
        draw.rectangle([cx - s / 2, cy - s / 3, cx + s / 2, cy + s], fill=colour[::-1])
    return image


def encode(image: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def variants(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    return {
        "jpeg_q30": encode(image, "JPEG", quality=30),
        "png": encode(image, "PNG"),
        "webp_q60": encode(image, "WEBP", quality=60),
        "resize_half": image.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "resize_up": image.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC),
        "crop_5pct": image.crop((w // 40, h // 40, w - w // 40, h - h // 40)),
        "brighter": ImageEnhance.Brightness(image).enhance(1.15),
        "saturated": ImageEnhance.Color(image).enhance(1.3),
        "contrast": ImageEnhance.Contrast(image).enhance(0.85),
    }


def test_pixel_hash_matches_same_pixels_in_other_encoding() -> None:
    image = scene(1)
    assert pixel_hash(encode(image, "PNG")) == pixel_hash(image)
    assert pixel_hash(encode(image, "WEBP", lossless=True)) == pixel_hash(image)
    assert pixel_hash(encode(image, "JPEG", quality=95)) != pixel_hash(image)
    assert pixel_hash(image.transpose(Image.Transpose.TRANSPOSE)) != pixel_hash(image)


def test_phash_is_64_bit_unsigned() -> None:
    values = [phash64(scene(s)) for s in range(20)]
    assert all(isinstance(v, int) and 0 <= v < 2**64 for v in values)
    assert len(set(values)) == 20


def test_recall_of_planted_duplicates_and_false_merges_of_look_alikes() -> None:
    originals = {seed: scene(seed) for seed in range(40)}
    hashes = {seed: phash64(img) for seed, img in originals.items()}
    per_kind: dict[str, list[int]] = {}
    for seed, image in originals.items():
        for kind, variant in variants(image).items():
            per_kind.setdefault(kind, []).append(hamming(hashes[seed], phash64(variant)))
    found = sum(d <= RADIUS for ds in per_kind.values() for d in ds)
    total = sum(len(ds) for ds in per_kind.values())
    print(f"\nplanted near-duplicates within {RADIUS} bits: {found}/{total} = {found / total:.3f}")
    for kind, ds in per_kind.items():
        print(
            f"  {kind:12s} max {max(ds):2d} bits, within radius {np.mean(np.array(ds) <= RADIUS):.2f}"
        )
    # distinct look-alikes: same generator seed shifted by 15% of the width, or other figures
    look_alikes = [(phash64(scene(s)), phash64(scene(s, shift=0.15))) for s in range(40)]
    look_alikes += [
        (phash64(scene(s, figures=2)), phash64(scene(s + 1000, figures=2))) for s in range(40)
    ]
    all_hashes = list(hashes.values())
    unrelated = [hamming(a, b) for i, a in enumerate(all_hashes) for b in all_hashes[i + 1 :]]
    merged = sum(hamming(a, b) <= RADIUS for a, b in look_alikes) + sum(
        d <= RADIUS for d in unrelated
    )
    pairs = len(look_alikes) + len(unrelated)
    print(
        f"false merges of distinct images: {merged}/{pairs} (look-alike min distance "
        f"{min(hamming(a, b) for a, b in look_alikes)} bits)"
    )
    assert found / total >= 0.97
    assert merged / pairs <= 0.005
