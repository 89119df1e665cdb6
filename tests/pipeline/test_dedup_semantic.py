"""The semantic pass with this project's own MAE encoder (exported by ``python -m
training.checkpoint``) on a real local Ray: planted families found, look-alikes kept, the
embedding cache reused by a rerun and by a run resumed after a crash, a bad model refused."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.dedup.config import DedupConfig
from curation.dedup.embed import embedding_matrix
from curation.dedup.encoder import EncoderError, describe_encoder
from curation.manifest import samples_dataset
from pipeline.dedup import run_dedup
from pipeline.dedup_semantic import semantic_drops
from runtime.storage import locate
from schemas import sample_key
from schemas.layout import EMBEDDINGS_DIR
from tests.curation.test_dedup_semantic import MAE_IMAGE_SIZE, MAE_THRESHOLD, mae_encoder
from tests.pipeline.test_dedup import build, check_shards_match_manifests, snapshot

LOGGER = "pipeline.dedup_semantic"


def config(model: str) -> DedupConfig:
    return DedupConfig(
        exact=False,
        near=False,
        pixels=False,
        semantic=True,
        semantic_model=model,
        semantic_threshold=MAE_THRESHOLD,
        # the checkpoint's own size (DedupConfig's default, 224, would interpolate the 2x2
        # position table of this 32 px encoder)
        semantic_image_size=MAE_IMAGE_SIZE,
        semantic_partition_size=8,  # 24 samples: 3 k-means partitions
    )


def embedded(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(from the cache, embedded) of the last semantic pass, from its log line."""
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    cached, fresh = re.search(r"(\d+) from the cache, (\d+) embedded", lines[-1]).groups()
    caplog.clear()
    return int(cached), int(fresh)


def test_semantic_dedup_with_mae_encoder_and_cache(
    ray_cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    model = mae_encoder(tmp_path / "model")
    expect = build(tmp_path / "ds", range(4))
    shutil.copytree(tmp_path / "ds", tmp_path / "resumed")
    print(f"\nthreshold {MAE_THRESHOLD} at {MAE_IMAGE_SIZE} px")

    counts = run_dedup(str(tmp_path / "ds"), config(model))
    print(f"semantic counts: {counts}")
    assert embedded(caplog) == (0, 24)
    snap = snapshot(tmp_path / "ds")
    rejected = {k: (r, d) for k, r, d in snap["rejected"]}
    assert rejected == {
        sample_key(n): ("duplicate_semantic", sample_key(c)) for n, c in expect.items()
    }
    kept = {k: (c, s) for k, c, s in snap["kept"]}
    for seed in range(4):
        assert kept[sample_key(f"src/{seed}/big")] == (sample_key(f"src/{seed}/big"), 5)
        assert sample_key(f"src/{seed}/shifted") in kept  # the look-alike survives
    check_shards_match_manifests(tmp_path / "ds")

    # the cache: one file per shard, rows by key; byte copies (in other shards) embed alike
    fingerprint = describe_encoder(model).fingerprint(MAE_IMAGE_SIZE)
    cache = tmp_path / "ds" / EMBEDDINGS_DIR / fingerprint
    assert sorted(p.name for p in cache.iterdir()) == [
        "000000.parquet", "000001.parquet", "000002.parquet", "model.json",
    ]  # fmt: skip
    table = pq.read_table(sorted(cache.glob("*.parquet")))
    assert table.num_rows == 24
    x = dict(zip(table["key"].to_pylist(), embedding_matrix(table["embedding"]), strict=True))
    for seed in range(4):
        a, b = x[sample_key(f"src/{seed}/orig.jpg")], x[sample_key(f"src/{seed}/copy.jpg")]
        np.testing.assert_allclose(a, b, atol=1e-6)

    # a crash after shard 1's embeddings were lost: the resumed run embeds only shard 1's
    # samples and decides exactly what the uninterrupted run decided
    shutil.copytree(cache, tmp_path / "resumed" / EMBEDDINGS_DIR / fingerprint)
    (tmp_path / "resumed" / EMBEDDINGS_DIR / fingerprint / "000001.parquet").unlink()
    assert run_dedup(str(tmp_path / "resumed"), config(model)) == counts
    assert embedded(caplog) == (16, 8)
    assert snapshot(tmp_path / "resumed") == snap

    # a rerun on the deduplicated dataset embeds nothing and keeps the same set
    assert run_dedup(str(tmp_path / "ds"), config(model)) == {}
    assert embedded(caplog) == (8, 0)  # the 16 dropped rows are no longer asked for
    assert snapshot(tmp_path / "ds") == snap
    # a caller without the sha256 column (pipeline.dedup_ray's) matches the cache by key
    columns = ["key", "shard", "source_uri", "width", "height"]
    survivors = samples_dataset(str(tmp_path / "ds")).to_table(columns=columns)
    assert semantic_drops(locate(str(tmp_path / "ds")), survivors, config(model)).num_rows == 0
    assert embedded(caplog) == (8, 0)


def test_corrupt_model_is_refused_before_any_work(ray_cluster, tmp_path: Path) -> None:
    build(tmp_path / "ds", range(2))
    before = snapshot(tmp_path / "ds")
    good = Path(mae_encoder(tmp_path / "model")).read_bytes()
    (tmp_path / "bad.pt").write_bytes(good[: len(good) - 100])
    with pytest.raises(EncoderError, match="corrupt or truncated"):
        run_dedup(str(tmp_path / "ds"), config(str(tmp_path / "bad.pt")))
    assert not (tmp_path / "ds" / EMBEDDINGS_DIR).exists()
    assert snapshot(tmp_path / "ds") == before
