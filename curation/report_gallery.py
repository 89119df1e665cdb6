"""Pictures for the dataset report: kept samples with their person boxes drawn, and duplicates.

The gallery is stratified by people per image (passing the keep rule) and by resolution (the
short side), a few samples per stratum, so a reader sees the whole range rather than the most
common case. Samples come from a few shards spread over the dataset: the images are read by
streaming those tars, so a report over terabytes reads a few shards' bytes, not the dataset.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import duckdb

from curation.writer import iter_shard, sample_image
from runtime.storage import locate
from schemas.layout import shard_file

PER_STRATUM = 2
GALLERY_SHARDS = 4  # shards the gallery draws from (each is read once, streamed)
THUMB_SIDE = 320  # long side of a thumbnail, px
DUPLICATE_GROUPS = 6
PEOPLE_SQL = "CASE WHEN num_persons IS NULL THEN 'not detected' WHEN num_persons >= 4 THEN '4+' ELSE num_persons::VARCHAR END"
SHORT_SIDES = ((0, "short side < 512 px"), (512, "512-1023 px"), (1024, ">= 1024 px"))
RESOLUTION_SQL = (
    "CASE "
    + " ".join(f"WHEN least(width, height) < {hi} THEN '{label}'"
               for (_, label), (hi, _) in zip(SHORT_SIDES, SHORT_SIDES[1:], strict=False))
    + f" ELSE '{SHORT_SIDES[-1][1]}' END"
)  # fmt: skip
PASSING_COLOUR, OTHER_COLOUR = (40, 200, 70), (255, 170, 0)


def _spread(values: list[int], count: int) -> list[int]:
    """Up to ``count`` of ``values`` evenly spaced, first and last included."""
    if len(values) <= count:
        return values
    step = (len(values) - 1) / (count - 1)
    return sorted({values[round(i * step)] for i in range(count)})


def _gallery_shards(con: duckdb.DuckDBPyConnection) -> str:
    """The shards the pictures come from, as an SQL list ("" for a dataset without samples)."""
    shards = [s for (s,) in con.sql("SELECT DISTINCT shard FROM samples ORDER BY 1").fetchall()]
    return ", ".join(str(s) for s in _spread(shards, GALLERY_SHARDS))


def select_gallery(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Up to PER_STRATUM samples per (people, resolution) stratum, with their person boxes.

    Within a stratum samples are picked by a hash of their key: stable across runs of the
    report, and unrelated to crawl order.
    """
    listing = _gallery_shards(con)
    if not listing:
        return []
    rows = con.sql(
        f"SELECT key, shard, image_member, source_uri, width, height, num_persons, persons, "
        f"{PEOPLE_SQL} AS people, {RESOLUTION_SQL} AS resolution FROM ("
        f"  SELECT *, row_number() OVER (PARTITION BY {PEOPLE_SQL}, {RESOLUTION_SQL} "
        f"    ORDER BY hash(key)) AS rank FROM samples WHERE shard IN ({listing})"
        f") WHERE rank <= {PER_STRATUM} ORDER BY people, least(width, height), hash(key)"
    ).to_arrow_table()
    return rows.to_pylist()


def duplicate_groups(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Clusters of duplicates, each as its kept members and the copies dedup removed.

    Kept members: samples still in the dataset (in the gallery's shards) with identical
    decoded pixels, whatever their encoding (e.g. in a dataset built with ``--no-dedup``); their images are shown side by side. Removed copies:
    dedup rejections naming a kept sample as ``duplicate_of``; their bytes are no longer in the
    dataset, so the report names them instead.
    """
    clusters: dict[str, dict[str, Any]] = {}
    listing = _gallery_shards(con)
    if not listing:
        return []
    # looked for within the gallery's shards: grouping every sample of a large dataset by a
    # near-unique hash would cost more memory than the rest of the report together
    in_shards = f"(SELECT * FROM samples WHERE shard IN ({listing}))"
    kept = con.sql(
        "SELECT s.pixel_hash AS cluster, s.key, s.shard, s.image_member, s.source_uri, "
        f"s.width, s.height, s.num_persons, s.persons FROM {in_shards} s JOIN ("
        f"  SELECT pixel_hash FROM {in_shards} WHERE pixel_hash IS NOT NULL GROUP BY 1 "
        f"  HAVING count(*) > 1 ORDER BY min(hash(key)) LIMIT {DUPLICATE_GROUPS}"
        ") d USING (pixel_hash) ORDER BY 1, s.key"
    ).to_arrow_table()
    for row in kept.to_pylist():
        group = clusters.setdefault(row.pop("cluster"), {"kept": [], "removed": []})
        group["kept"].append(row)
    removed = con.sql(
        "SELECT s.key, s.shard, s.image_member, s.source_uri, s.width, s.height, s.num_persons, "
        "s.persons, r.copies FROM samples s JOIN ("
        "  SELECT duplicate_of AS key, count(*) AS n, list({'source_uri': source_uri, "
        "  'reason': reason, 'detail': detail} ORDER BY source_uri) AS copies "
        "  FROM rejections WHERE stage = 'dedup' AND duplicate_of IS NOT NULL GROUP BY 1"
        f") r USING (key) ORDER BY r.n DESC, hash(s.key) LIMIT {DUPLICATE_GROUPS}"
    ).to_arrow_table()
    for row in removed.to_pylist():
        copies = row.pop("copies")
        clusters[row["key"]] = {"kept": [row], "removed": copies}
    return list(clusters.values())[:DUPLICATE_GROUPS]


def read_images(dataset_uri: str, samples: list[dict[str, Any]]) -> dict[str, bytes]:
    """Image bytes of ``samples`` by key, streaming each shard they live in once."""
    wanted: dict[int, set[str]] = defaultdict(set)
    for sample in samples:
        wanted[sample["shard"]].add(sample["key"])
    dataset = locate(dataset_uri)
    images: dict[str, bytes] = {}
    for shard, keys in sorted(wanted.items()):
        for item in iter_shard(dataset.join(shard_file(shard))):
            if item["__key__"] in keys:
                images[item["__key__"]] = sample_image(item)
                keys.discard(item["__key__"])
                if not keys:
                    break  # the rest of the shard is not needed
    return images


def thumbnail(image: bytes, persons: list[dict[str, Any]] | None) -> bytes:
    """A JPEG thumbnail with the person boxes drawn: passing ones thick green, others amber.

    Boxes are in the pixels of the EXIF-oriented image, as the detector saw it.
    """
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(io.BytesIO(image)) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    scale = THUMB_SIDE / max(picture.size)
    picture = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    )
    draw = ImageDraw.Draw(picture)
    # failing boxes first, so a passing box on top of one stays visible
    for person in sorted(persons or [], key=lambda p: bool(p["passes"])):
        box = [person[k] * scale for k in ("x0", "y0", "x1", "y1")]
        colour, width = (PASSING_COLOUR, 3) if person["passes"] else (OTHER_COLOUR, 2)
        draw.rectangle(box, outline=colour, width=width)
    out = io.BytesIO()
    # 4:4:4 chroma: thin coloured box lines keep their colour (4:2:0 smears them into the image)
    picture.save(out, format="JPEG", quality=85, subsampling=0)
    return out.getvalue()
