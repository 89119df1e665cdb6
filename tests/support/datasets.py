"""Small, realistic curated datasets for tests: shards, manifests, rejections and a summary.

``build_dataset`` writes through ``curation.writer`` (so the files are exactly what the job
writes) and returns what it wrote, so tests can check readers against the ground truth::

    built = build_dataset(str(tmp_path), num_samples=60)
    built.samples          # pandas DataFrame of every manifest row, in shard order
    built.rejections       # pandas DataFrame of every rejection row
    built.images[key]      # the image bytes stored in the tars

Samples vary in people per image (0 to 9 boxes, some failing the keep rule), source domains,
licenses, formats, resolutions and duplicate clusters; rejections cover every stage with
several reasons. With ``detector=False`` the detector columns stay null, as after a job run
with ``--detector none``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from curation.writer import write_rejections, write_shard
from runtime.storage import Location, locate
from schemas import sample_key

DOMAINS = (  # (source prefix, weight): a skewed mix like a web crawl
    ("https://images.example.com/p/", 8),
    ("https://cdn.photos.test/img/", 5),
    ("http://blog.people.test/uploads/", 3),
    ("https://www.street.example.org/", 2),
    ("s3://archive-bucket/raw/", 1),
)
LICENSES = (("cc-by-4.0", 6), ("cc0-1.0", 3), ("cc-by-sa-4.0", 2), (None, 2))
REJECTIONS = (  # (stage, reason, weight)
    ("source", "malformed_input", 1),
    ("source", "duplicate_input", 1),
    ("fetch", "timeout", 2),
    ("fetch", "http_error", 3),
    ("fetch", "opted_out", 1),
    ("validate", "too_small", 3),
    ("validate", "corrupt_image", 1),
    ("detect", "no_person", 5),
    ("detect", "person_too_small", 2),
    ("detect", "person_low_score", 1),
)
DETECTOR_WEIGHTS = "yolo11x.pt"
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@dataclass(kw_only=True)
class BuiltDataset:
    uri: str
    samples: pd.DataFrame
    rejections: pd.DataFrame
    images: dict[str, bytes] = field(repr=False)
    summary: dict[str, Any]


def _pick(rng: random.Random, weighted: tuple) -> Any:
    return rng.choices([w[:-1] for w in weighted], weights=[w[-1] for w in weighted])[0]


def _image(width: int, height: int, fmt: str, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format=fmt, quality=70)
    return out.getvalue()


def _persons(rng: random.Random, width: int, height: int) -> list[dict]:
    boxes = []
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4, 5, 6, 9])):
        bw, bh = rng.uniform(40, width * 0.5), rng.uniform(80, height * 0.95)
        x0, y0 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
        score = rng.choice([rng.uniform(0.5, 0.9), rng.uniform(0.9, 1.0), rng.uniform(0.9, 1.0)])
        passes = score > 0.9 and max(bw, bh) > 300
        boxes.append(dict(x0=x0, y0=y0, x1=x0 + bw, y1=y0 + bh, score=score, passes=passes))
    return boxes


def _sample_row(rng: random.Random, i: int, detector: bool) -> tuple[dict, bytes]:
    (prefix,) = _pick(rng, DOMAINS)
    (license_,) = _pick(rng, LICENSES)
    uri = f"{prefix}{i:05d}.jpg"
    width, height = rng.choice([(640, 480), (800, 1200), (1024, 768), (1280, 720), (1600, 1200)])
    fmt = "JPEG" if i % 5 else "PNG"
    image = _image(width, height, fmt, (i * 37 % 256, i * 91 % 256, i * 13 % 256))
    row = dict(
        key=sample_key(uri), source_uri=uri, license=license_, caption=f"people {i}",
        page_url=f"https://pages.test/{i}", extra={"list": "urls-000"},
        sha256=f"{i:064x}", num_bytes=len(image), format=fmt, width=width, height=height,
        mode="RGB", fetched_at=NOW + dt.timedelta(seconds=i),
        http_status=None if prefix.startswith("s3") else 200,
        pixel_hash=f"{i:032x}", phash=rng.getrandbits(64), dup_cluster_size=1,
    )  # fmt: skip
    if detector:
        persons = _persons(rng, width, height)
        row.update(
            persons=persons,
            num_persons=sum(p["passes"] for p in persons),
            detector=json.dumps({"model": "yolo11x", "version": "8.4.190"}),
        )
    return row, image


def _rejection_rows(rng: random.Random, n: int, kept: list[dict]) -> list[dict]:
    rows = []
    for i in range(n):
        stage, reason = _pick(rng, REJECTIONS)
        uri = f"https://images.example.com/rejected/{i:05d}.jpg"
        key = None if reason == "malformed_input" else sample_key(uri)
        rows.append(dict(key=key, source_uri=uri if key else None, stage=stage, reason=reason,
                         detail=f"{reason} #{i}", rejected_at=NOW,
                         http_status=404 if reason == "http_error" else None))  # fmt: skip
    # duplicates: a few kept samples are canonical of a cluster; the copies are rejected
    for canon in kept[:: max(1, len(kept) // 6)]:
        size = rng.choice([2, 2, 3, 5])
        canon["dup_cluster_size"] = size
        for j in range(size - 1):
            uri = f"{canon['source_uri']}?copy={j}"
            reason = "duplicate_exact" if j % 2 == 0 else "duplicate_near"
            rows.append(dict(key=sample_key(uri), source_uri=uri, stage="dedup", reason=reason,
                             duplicate_of=canon["key"], rejected_at=NOW))  # fmt: skip
    return rows


def build_dataset(
    uri: str,
    *,
    num_samples: int = 60,
    samples_per_shard: int = 20,
    num_rejections: int = 40,
    detector: bool = True,
    kept_duplicates: int = 0,
    seed: int = 0,
    dedup: bool = True,
    keep_rule: dict | None = None,
) -> BuiltDataset:
    """Write a complete dataset at ``uri`` (local path or ``s3://``); see the module doc.

    ``kept_duplicates``: that many of the last samples are byte copies of the first one still
    in the dataset, as a job run with ``--no-dedup`` leaves them. ``dedup`` and ``keep_rule``
    (DetectorConfig's rule fields) are the job configuration its summary records.
    """
    rng = random.Random(seed)
    loc = locate(uri)
    pairs = [_sample_row(rng, i, detector) for i in range(num_samples)]
    first, first_image = pairs[0]
    copied = ("sha256", "pixel_hash", "phash", "num_bytes", "format", "width", "height",
              "persons", "num_persons")  # fmt: skip
    for i in range(num_samples - kept_duplicates, num_samples):
        pairs[i][0].update({name: first[name] for name in copied if name in first})
        pairs[i] = (pairs[i][0], first_image)
    rows = [row for row, _ in pairs]
    for row in rows:
        row["dup_cluster"] = row["key"]
    rejections = _rejection_rows(rng, num_rejections, rows)
    tables = []
    for shard, start in enumerate(range(0, num_samples, samples_per_shard)):
        chunk = pairs[start : start + samples_per_shard]
        tables.append(write_shard(loc, shard, [r for r, _ in chunk], [b for _, b in chunk]))
    half = len(rejections) // 2  # two files, as several workers would write
    rej_tables = [write_rejections(loc, "part-000", rejections[:half]),
                  write_rejections(loc, "part-001", rejections[half:])]  # fmt: skip
    summary = _summary(loc, detector, len(rows) + len(rejections), dedup, keep_rule or {})
    return BuiltDataset(
        uri=loc.uri,
        samples=pd.concat([t.to_pandas() for t in tables], ignore_index=True),
        rejections=pd.concat([t.to_pandas() for t in rej_tables], ignore_index=True),
        images={row["key"]: image for row, image in pairs},
        summary=summary,
    )


def _summary(
    loc: Location, detector: bool, processed: int, dedup: bool, keep_rule: dict
) -> dict[str, Any]:
    """The summary the job writes, through the job's own ``write_summary`` and configuration."""
    from curation.dedup.config import DedupConfig
    from curation.detect import DetectorConfig
    from curation.fetch import FetchConfig
    from curation.sources import SourceConfig
    from curation.validate import ValidateConfig
    from pipeline.build_humans300m import detector_note
    from pipeline.job import JobConfig, OutputConfig, RunConfig, write_summary

    config = JobConfig(
        source=SourceConfig(inputs=("s3://lists/urls-000.parquet",)),
        fetch=FetchConfig(),
        validate=ValidateConfig(min_side=256, max_aspect_ratio=3.0),
        detector=DetectorConfig(weights=DETECTOR_WEIGHTS if detector else "none", **keep_rule),
        classifiers=[],
        dedup=DedupConfig(radius=4),
        output=OutputConfig(output=loc.uri),
        run=RunConfig(dedup=dedup),
    )
    phases = {"start Ray": 5.0, "plan": 1.0, "stream": 290.0}  # a five-minute run
    extra = {"detector": detector_note(config), "dedup": {}, "phases_s": phases}
    started = time.time() - 300
    return write_summary(loc, config, started, processed, extra, phases["stream"])
