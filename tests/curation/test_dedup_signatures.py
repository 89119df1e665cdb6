"""Signatures on planted duplicates and distinct look-alikes: recall and false merges."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from curation.dedup import signatures
from curation.dedup.signatures import content_box, hamming, phash64, pixel_hash
from curation.synthetic import photo_like

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
        "blur": image.filter(ImageFilter.GaussianBlur(1.5)),
        "grey": image.convert("L").convert("RGB"),
        "jpeg_q10": encode(image, "JPEG", quality=10),
        "padded": ImageOps.expand(image, border=w // 20, fill=(0, 0, 0)),
    }


def bordered(image: Image.Image) -> dict[str, Image.Image]:
    """Copies in padding and bars, as reposts on the web come."""
    w, h = image.size
    return {
        "black_pad": ImageOps.expand(image, border=w // 20, fill=(0, 0, 0)),
        "white_frame": ImageOps.expand(image, border=(w // 30, h // 12), fill=(255, 255, 255)),
        "letterbox": encode(ImageOps.pad(image, (w, h * 4 // 3), color=(0, 0, 0)), "JPEG"),
        "pillarbox": ImageOps.pad(image, (w * 3 // 2, h), color=(16, 16, 16)),
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


def test_uniform_borders_are_trimmed_before_the_perceptual_hash(monkeypatch) -> None:
    originals = [scene(s) for s in range(20)] + [photo_like(480, 360, s) for s in range(20)]
    distances: dict[str, list[int]] = {}
    for image in originals:
        assert content_box(image) is None  # nothing to trim on a picture without borders
        for kind, copy in bordered(image).items():
            distances.setdefault(kind, []).append(hamming(phash64(image), phash64(copy)))
    for kind, ds in distances.items():
        print(
            f"  {kind:12s} max {max(ds):2d} bits, within radius {np.mean(np.array(ds) <= RADIUS):.2f}"
        )
        assert np.mean(np.array(ds) <= RADIUS) >= 0.95, kind
    # Untrimmed, the same copies are mostly out of reach: the trimming is what finds them.
    monkeypatch.setattr(signatures, "content_box", lambda image: None)
    untrimmed = [
        hamming(phash64(image), phash64(copy))
        for image in originals
        for copy in bordered(image).values()
    ]
    assert np.mean(np.array(untrimmed) <= RADIUS) < 0.5


def test_content_that_looks_like_a_border_is_kept() -> None:
    """A flat wall, a plain backdrop or a smooth sky along an edge is content, not padding."""
    wall = photo_like(640, 480, 28).crop((32, 24, 608, 456))  # a flat lime block on the right
    y = np.linspace(90, 130, 240)[:, None, None] * np.ones((1, 320, 3))
    sky = Image.fromarray(y.astype(np.uint8))
    ImageDraw.Draw(sky).rectangle([100, 150, 220, 239], fill=(40, 40, 40))
    backdrop = Image.new("RGB", (320, 240), (200, 200, 200))
    ImageDraw.Draw(backdrop).ellipse([20, 60, 120, 200], fill=(30, 60, 90))  # near the left edge
    almost_blank = Image.new("RGB", (320, 240), (0, 0, 0))
    ImageDraw.Draw(almost_blank).rectangle([150, 110, 170, 130], fill=(255, 255, 255))
    for image in (wall, sky, backdrop, almost_blank):
        assert content_box(image) is None
    assert content_box(ImageOps.expand(backdrop, border=12, fill=(0, 0, 0))) == (12, 12, 332, 252)
