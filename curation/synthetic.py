"""Photo-like images for the demo corpus, the tests and the benchmarks (no downloads needed).

Smooth low-frequency colour fields, a few soft shapes and sensor-like noise: JPEG sizes and
decode costs land close to those of real photos of the same resolution, unlike flat test
patterns that compress to almost nothing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        # upright ellipses and boxes: figure-like blobs of plausible sizes
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        w = rng.uniform(0.05, 0.3) * width
        h = w * rng.uniform(1.5, 3.0)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 800)))
    noise = rng.normal(0, 6, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        params.setdefault("quality", 90)
    image.save(out, format=fmt, **params)
    return out.getvalue()


def photo_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    return encode(photo_like(width, height, seed), "JPEG", quality=quality)
