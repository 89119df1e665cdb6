"""The img2dataset export, read back the way tools built for img2dataset read it: tars with the
webdataset library, the parquet files with pandas and DuckDB, the _stats.json files as JSON."""

import io
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from humans300m.cli import main as humans300m
from tests.support.datasets import build_dataset


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    built = build_dataset(str(root / "humans"), num_samples=23, samples_per_shard=10,
                          num_rejections=4)  # fmt: skip
    out = root / "i2d"
    assert humans300m(["export", "--dataset", built.uri, "--output", str(out)]) == 0
    return built, out


def test_layout_is_img2datasets(exported):
    built, out = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:05d}{suffix}" for i in range(3)
                     for suffix in (".parquet", ".tar", "_stats.json")]  # fmt: skip
    stats = [json.loads((out / f"{i:05d}_stats.json").read_text()) for i in range(3)]
    assert [s["count"] for s in stats] == [10, 10, 3] == [s["successes"] for s in stats]
    assert all(s["failed_to_download"] == 0 and s["status_dict"] == {"success": s["count"]}
               for s in stats)  # fmt: skip


def test_parquet_read_with_pandas_and_duckdb(exported):
    built, out = exported
    files = sorted(str(p) for p in out.glob("*.parquet"))
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    samples = built.samples.set_index("key")
    assert list(frame.humans300m_key) == list(built.samples.key)  # shard and row order kept
    assert list(frame.url) == list(samples.source_uri)
    assert list(frame.caption) == list(samples.caption)
    assert (frame.status == "success").all() and frame.error_message.isna().all()
    assert list(frame.key[:3]) == ["000000000", "000000001", "000000002"]
    assert frame.key.iloc[10] == "000010000" and frame.key.is_unique
    assert list(frame.width) == list(samples.width) == list(frame.original_width)
    assert list(frame.num_persons) == list(samples.num_persons)
    rows = duckdb.sql(
        f"SELECT key, url, caption FROM read_parquet('{out}/*.parquet') ORDER BY key"
    ).fetchall()
    assert rows == list(zip(frame.key, frame.url, frame.caption, strict=True))


def test_tars_read_with_webdataset(exported):
    built, out = exported
    urls = sorted(str(p) for p in Path(out).glob("*.tar"))
    frame = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))])
    by_key = frame.set_index("key")
    seen = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        row = by_key.loc[sample["__key__"]]
        assert meta["key"] == sample["__key__"] and meta["url"] == row.url
        ext = "jpg" if "jpg" in sample else "png"
        assert ext == {"JPEG": "jpg", "PNG": "png"}[row.format]
        assert sample[ext] == built.images[row.humans300m_key]  # original bytes, not re-encoded
        assert sample["txt"].decode() == row.caption
        seen += 1
    assert seen == len(built.samples)
    decoded = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("jpg;png", "txt")
    image, caption = next(iter(decoded))
    first = built.samples.iloc[0]
    assert caption == first.caption
    expected = np.asarray(Image.open(io.BytesIO(built.images[first.key])).convert("RGB"))
    assert np.array_equal(image, expected)


def test_export_errors_are_one_line(exported, tmp_path, capsys):
    built, out = exported
    assert humans300m(["export", "--dataset", built.uri, "--output", str(out)]) == 2
    assert humans300m(["export", "--dataset", str(tmp_path / "nope"), "--output", "x"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    assert "already holds tars or parquet files" in errors[0] and "no such dataset" in errors[1]


def test_export_to_s3(exported, s3_bucket):
    from runtime.storage import list_files, locate, read_bytes

    built, _ = exported
    target = f"s3://{s3_bucket}/i2d"
    assert humans300m(["export", "--dataset", built.uri, "--output", target]) == 0
    names = [f.uri.rsplit("/", 1)[1] for f in list_files(locate(target))]
    assert names == [f"{i:05d}{suffix}" for i in range(3)
                     for suffix in (".parquet", ".tar", "_stats.json")]  # fmt: skip
    stats = json.loads(read_bytes(locate(f"{target}/00002_stats.json")))
    assert stats["count"] == 3
