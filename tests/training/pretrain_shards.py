"""Writes small curated-style datasets (tar shards + manifests) for the pretraining tests."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import random

import numpy as np
from PIL import Image

from runtime.storage import locate
from schemas import sample_key


def smooth_image(rng: random.Random, width: int, height: int) -> Image.Image:
    """A learnable picture: a colour gradient with a bright rectangle."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c = [rng.uniform(0, 255) for _ in range(6)]
    img = np.stack([c[i] * x / width + c[i + 3] * y / height for i in range(3)], axis=-1)
    x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
    img[y0 : y0 + height // 3, x0 : x0 + width // 3] = 255
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_dataset(
    root: str,
    *,
    shards: int,
    per_shard: int,
    size: tuple[int, int] = (48, 40),
    seed: int = 0,
    corrupt: set[tuple[int, int]] = frozenset(),
) -> list[list[str]]:
    """Write ``shards`` shards of ``per_shard`` images under ``root`` (local or s3://).

    ``corrupt`` holds (shard, index) pairs whose image bytes are garbage. Returns the keys
    per shard. Sample i of shard s has ``num_persons = i % 4``.
    """
    from curation.writer import write_shard  # the curation job's own writer

    rng = random.Random(seed)
    base = locate(root)
    keys: list[list[str]] = []
    for shard in range(shards):
        rows, images = [], []
        for i in range(per_shard):
            fmt = "PNG" if i % 5 == 4 else "JPEG"
            data = encode(smooth_image(rng, *size), fmt)
            if (shard, i) in corrupt:
                data = b"not an image" + data[:20]
            uri = f"test://{seed}/{shard}/{i}"
            rows.append({
                "key": sample_key(uri), "source_uri": uri,
                "sha256": hashlib.sha256(data).hexdigest(), "num_bytes": len(data),
                "format": fmt, "width": size[0], "height": size[1], "mode": "RGB",
                "fetched_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "num_persons": i % 4,
            })  # fmt: skip
            images.append(data)
        write_shard(base, shard, rows, images)
        keys.append([row["key"] for row in rows])
    return keys
