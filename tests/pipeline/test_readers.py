"""Users' readers on a dataset: this project's Ray Data loader, Ray's own read_webdataset and
the webdataset library, each as the README shows it, on shards that mix JPEG and PNG."""

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.datasets import build_dataset

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(str(tmp_path_factory.mktemp("ds") / "humans"), num_samples=14,
                         samples_per_shard=5, num_rejections=3)  # fmt: skip


def _pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


def test_read_samples_joins_each_manifest_row_with_its_decoded_image(built):
    from pipeline.readers import read_samples

    assert set(built.samples.format) == {"JPEG", "PNG"}
    rows = {row["key"]: row for row in read_samples(built.uri).take_all()}
    assert set(rows) == set(built.samples.key)
    for expected in built.samples.to_dict("records"):
        row = rows[expected["key"]]
        assert row["image"].shape == (expected["height"], expected["width"], 3)
        assert np.array_equal(row["image"], _pixels(built.images[expected["key"]]))
        # manifest columns keep their types
        assert isinstance(row["fetched_at"], dt.datetime)
        assert row["num_persons"] == expected["num_persons"]
        assert [p["score"] for p in row["persons"]] == pytest.approx(
            [p["score"] for p in expected["persons"]]
        )
    raw = read_samples(built.uri, decode=False).take_all()
    assert {r["key"]: r["image_bytes"] for r in raw} == built.images


def test_ray_read_webdataset_as_documented(built):
    """README, "Reading the dataset": Ray's own reader with decoder=None, then decoding."""
    import json

    import ray

    # --- as in the README
    def decode(row: dict) -> dict:
        # each row has bytes under its own image extension; the other extensions' are null
        members = {k: v for k, v in row.items() if isinstance(v, bytes)}
        image = next(
            members[k] for k in ("jpg", "png", "webp", "gif", "bmp", "tiff") if k in members
        )
        manifest_row = json.loads(members["json"])
        return {
            "key": row["__key__"],
            "image": np.asarray(Image.open(io.BytesIO(image)).convert("RGB")),
            "caption": members["txt"].decode() if "txt" in members else None,
            "num_persons": manifest_row["num_persons"],
        }

    shards = f"{built.uri}/shards"
    ds = ray.data.read_webdataset(shards, decoder=None).map(decode)
    # ---
    rows = {row["key"]: row for row in ds.take_all()}
    assert set(rows) == set(built.samples.key)
    for expected in built.samples.to_dict("records"):
        row = rows[expected["key"]]
        assert np.array_equal(row["image"], _pixels(built.images[expected["key"]]))
        assert row["caption"] == expected["caption"]
        assert row["num_persons"] == expected["num_persons"]


def test_webdataset_library_as_documented(built):
    """README, "Reading the dataset": the webdataset library, as a torch training loop reads."""
    import webdataset as wds

    # --- as in the README
    urls = sorted(str(p) for p in Path(built.uri, "shards").glob("*.tar"))
    pipeline = wds.WebDataset(urls, shardshuffle=False).decode("rgb8")
    pipeline = pipeline.to_tuple("jpg;png;webp", "json", "txt")
    # ---
    seen = {}
    for image, manifest_row, caption in pipeline:
        seen[manifest_row["key"]] = (image, caption)
    assert set(seen) == set(built.samples.key)
    for expected in built.samples.to_dict("records"):
        image, caption = seen[expected["key"]]
        assert np.array_equal(image, _pixels(built.images[expected["key"]]))
        assert caption == expected["caption"]
