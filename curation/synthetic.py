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


# Photographs of people that an installed package ships, for the demo: file name -> caption.
PACKAGED_PEOPLE = {
    "bus.jpg": "people boarding a bus in a street",
    "zidane.jpg": "two men in suits talking",
}
PEOPLE_ATTRIBUTION = "sample image shipped in the ultralytics package (ultralytics/assets)"
PEOPLE_LICENSE = "AGPL-3.0"  # the license of the package that ships them


def packaged_people_photos(scale: float = 1.0) -> list[tuple[str, bytes, str]]:
    """Ultralytics' bundled photos of people as (file name, JPEG bytes, caption); [] without it.

    ``scale`` 1 gives the shipped bytes untouched; other scales resize (Lanczos) and re-encode,
    named ``{stem}_x{scale:g}.jpg``. The package is located, not imported: importing Ultralytics
    costs seconds and looks up DNS names.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return []
    assets = Path(spec.submodule_search_locations[0]) / "assets"
    photos = []
    for name, caption in PACKAGED_PEOPLE.items():
        path = assets / name
        if not path.is_file():
            continue
        if scale == 1.0:
            photos.append((name, path.read_bytes(), caption))
            continue
        with Image.open(path) as image:
            size = (round(image.width * scale), round(image.height * scale))
            resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        photos.append((f"{path.stem}_x{scale:g}.jpg", encode(resized, "JPEG"), caption))
    return photos
