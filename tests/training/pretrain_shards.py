"""Writes small curated-style datasets (tar shards + manifests) for the pretraining tests."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import random

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from curation.storage import locate, write_bytes_atomic
from schemas import SAMPLE_SCHEMA, layout, member_names, row_to_json, rows_to_table, sample_key


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
    import webdataset as wds

    rng = random.Random(seed)
    base = locate(root)
    keys: list[list[str]] = []
    for shard in range(shards):
        buf, rows = io.BytesIO(), []
        with wds.TarWriter(buf, encoder=False) as tar:
            for i in range(per_shard):
                fmt, ext = ("PNG", "png") if i % 5 == 4 else ("JPEG", "jpg")
                data = encode(smooth_image(rng, *size), fmt)
                if (shard, i) in corrupt:
                    data = b"not an image" + data[:20]
                key = sample_key(f"test://{seed}/{shard}/{i}")
                image_member, json_member = member_names(key, ext)
                row = {
                    "key": key, "shard": shard, "image_member": image_member,
                    "json_member": json_member, "source_uri": f"test://{seed}/{shard}/{i}",
                    "sha256": hashlib.sha256(data).hexdigest(), "num_bytes": len(data),
                    "format": fmt, "width": size[0], "height": size[1], "mode": "RGB",
                    "fetched_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "num_persons": i % 4,
                }  # fmt: skip
                rows.append(row)
                tar.write({"__key__": key, ext: data, "json": row_to_json(row)})
        write_bytes_atomic(base.join(layout.shard_file(shard)), buf.getvalue())
        table = rows_to_table(rows, SAMPLE_SCHEMA)
        out = io.BytesIO()
        pq.write_table(table, out)
        write_bytes_atomic(base.join(layout.manifest_file(shard)), out.getvalue())
        keys.append([row["key"] for row in rows])
    return keys
