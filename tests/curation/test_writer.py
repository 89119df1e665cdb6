import datetime as dt
import json

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.writer import iter_shard, sample_image, write_rejections, write_shard
from runtime.storage import exists, locate
from schemas import SAMPLE_SCHEMA, SCHEMA_VERSION, SchemaError, sample_key
from schemas.layout import manifest_file, shard_file
from schemas.manifest import schema_version_of


def _rows(n: int) -> list[dict]:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        uri = f"http://example.com/{i}.jpg"
        rows.append(
            dict(
                key=sample_key(uri),
                source_uri=uri,
                sha256=f"{i:064x}",
                num_bytes=3,
                format="JPEG" if i % 2 else "PNG",
                width=10 + i,
                height=20,
                fetched_at=now,
                caption=f"légende {i}" if i != 3 else None,
            )
        )
    return rows


def test_shard_and_manifest_match_row_for_row(tmp_path):
    dataset = locate(str(tmp_path))
    rows = _rows(5)
    images = [bytes([i]) * (i + 1) for i in range(5)]
    write_shard(dataset, 7, rows, images)

    manifest = pq.read_table(tmp_path / manifest_file(7))
    assert manifest.schema.remove_metadata().equals(SAMPLE_SCHEMA.remove_metadata())
    assert schema_version_of(manifest.schema) == SCHEMA_VERSION
    samples = list(wds.WebDataset(str(tmp_path / shard_file(7)), shardshuffle=False))
    assert [s["__key__"] for s in samples] == manifest.column("key").to_pylist()
    for sample, row, image in zip(samples, manifest.to_pylist(), images, strict=True):
        ext = row["image_member"].rsplit(".", 1)[1]
        assert ext == ("jpg" if row["format"] == "JPEG" else "png")
        assert sample[ext] == image
        stored = json.loads(sample["json"])
        assert stored["key"] == row["key"] and stored["shard"] == 7
        assert stored["caption"] == row["caption"]
        # the caption as a .txt member (CLIP-style readers), none for a sample without one
        assert sample.get("txt") == (row["caption"].encode() if row["caption"] else None)
    read = list(iter_shard(dataset.join(shard_file(7))))
    assert [s["__key__"] for s in read] == [r["key"] for r in rows]
    assert [sample_image(s) for s in read] == images
    # nothing left behind but the published files
    leftovers = list((tmp_path / "_work" / "tmp").iterdir())
    assert leftovers == []


def test_bad_rows_are_refused_before_anything_is_published(tmp_path):
    dataset = locate(str(tmp_path))
    rows = _rows(2)
    del rows[1]["sha256"]
    with pytest.raises(SchemaError, match="sha256"):
        write_shard(dataset, 0, rows, [b"a", b"b"])
    assert not exists(dataset.join(shard_file(0)))
    assert not exists(dataset.join(manifest_file(0)))


def test_rejections_round_trip_on_s3(s3_bucket):
    dataset = locate(f"s3://{s3_bucket}/ds")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    write_rejections(
        dataset,
        "part-0",
        [dict(source_uri="http://x/a.jpg", stage="fetch", reason="timeout", rejected_at=now)],
    )
    with dataset.fs.open_input_file(f"{dataset.path}/rejections/part-0.parquet") as f:
        table = pq.read_table(f)
    assert table.column("reason").to_pylist() == ["timeout"]


def test_shard_on_s3(s3_bucket):
    dataset = locate(f"s3://{s3_bucket}/ds")
    write_shard(dataset, 0, _rows(3), [b"x", b"y", b"z"])
    got = [
        (s["__key__"], s.get("jpg", s.get("png"))) for s in iter_shard(dataset.join(shard_file(0)))
    ]
    assert [g[1] for g in got] == [b"x", b"y", b"z"]


def test_writing_and_reading_shards_does_not_import_torch(tmp_path):
    """Crawler workers write shards: torch would cost each one ~280 MB and seconds to import."""
    import subprocess
    import sys
    from pathlib import Path

    rows = [{**row, "fetched_at": row["fetched_at"].isoformat()} for row in _rows(3)]
    script = f"""
import datetime as dt, json, sys
from runtime.storage import locate
from curation.writer import iter_shard, write_shard
from schemas.layout import shard_file
rows = json.loads({json.dumps(rows)!r})
for row in rows:
    row["fetched_at"] = dt.datetime.fromisoformat(row["fetched_at"])
dataset = locate({str(tmp_path)!r})
write_shard(dataset, 0, rows, [b"a", b"bb", b"ccc"])
print(len(list(iter_shard(dataset.join(shard_file(0))))), "torch" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "False"]


def test_a_shard_whose_samples_are_all_dropped_stays_a_valid_empty_shard(tmp_path):
    """Dedup may drop every sample of a shard (which shard a duplicate lands in depends on
    fetch order): the shard is rewritten empty, its manifest has no rows, and readers of the
    dataset see nothing from it rather than an error."""
    from curation.dedup.apply import Drop, apply_shard

    dataset = locate(str(tmp_path))
    rows = _rows(2)
    write_shard(dataset, 0, _rows(3)[2:], [b"kept"])
    write_shard(dataset, 1, rows, [b"a", b"b"])
    drops = [
        Drop(key=r["key"], source_uri=r["source_uri"], reason="duplicate_exact",
             duplicate_of="elsewhere", detail="")
        for r in rows
    ]  # fmt: skip
    assert apply_shard(dataset, 1, drops, {})
    assert pq.read_table(tmp_path / manifest_file(1)).num_rows == 0
    assert list(iter_shard(dataset.join(shard_file(1)))) == []
    tars = [str(tmp_path / shard_file(s)) for s in (0, 1)]
    assert [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)] == [_rows(3)[2]["key"]]
