"""Semantic dedup without Ray: a tiny TorchScript encoder on planted families and look-alikes,
and the partitioned cosine search against brute force."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.dedup.config import DedupConfig
from curation.dedup.semantic import (
    ShardEmbedder,
    kmeans_partitions,
    partitions_for,
    semantic_pairs,
)
from tests.curation.test_dedup_signatures import encode, scene

THRESHOLD = 0.995  # for the tiny encoder below at IMAGE_SIZE; measured margins are printed
IMAGE_SIZE = 64


def tiny_encoder(path: Path) -> str:
    """A fixed random conv (8x8, stride 8) + 4x4 average pooling, saved as TorchScript: [N, 512].
    Pooling to a grid keeps layout, so re-encodes and resizes land close and shifted scenes not."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 32, 8, stride=8)
            self.pool = torch.nn.AdaptiveAvgPool2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(self.conv(x)).flatten(1)  # [N, 32 * 4 * 4]

    torch.manual_seed(0)
    torch.jit.script(Encoder().eval()).save(str(path))
    return str(path)


def _bytes(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_encoder_separates_copies_from_lookalikes(tmp_path: Path) -> None:
    embedder = ShardEmbedder(
        dataset_uri=str(tmp_path),
        model=tiny_encoder(tmp_path / "enc.pt"),
        image_size=IMAGE_SIZE,
        chunk=8,
        threads=1,
        device="cpu",
    )
    worst_copy, closest_other = 1.0, -1.0
    for seed in range(6):
        image = scene(seed)
        family = [
            _bytes(image, quality=90),
            _bytes(encode(image, "JPEG", quality=90), "PNG"),
            _bytes(image, "WEBP", quality=60),
            _bytes(image, quality=30),
            _bytes(image.resize((480, 360)), quality=85),
        ]
        others = [_bytes(scene(seed, shift=0.15))] + [_bytes(scene(s)) for s in range(50, 60)]
        x = embedder.embed(family + others)
        assert x.shape == (len(family) + len(others), 512)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
        worst_copy = min(worst_copy, float((x[:5] @ x[:5].T).min()))
        closest_other = max(closest_other, float((x[:5] @ x[5:].T).max()))
    print(f"\ncosine: planted copies >= {worst_copy:.4f}, look-alikes <= {closest_other:.4f}")
    assert worst_copy >= THRESHOLD > closest_other


def test_partitioned_search_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 32)).astype(np.float32)
    copies = base[:100] + rng.normal(scale=0.02, size=(100, 32)).astype(np.float32)
    x = np.concatenate([base, copies])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    i, j = np.nonzero(np.triu(sims >= 0.99, k=1))
    reference = set(zip(i.tolist(), j.tolist(), strict=True))
    one = semantic_pairs(x, 0.99, np.zeros(len(x), dtype=np.int64))
    assert set(map(tuple, one.tolist())) == reference  # one partition: exact
    k = partitions_for(len(x), 50)
    parts = kmeans_partitions(x, k, seed=0)
    assert k == 10 and len(np.unique(parts)) > 1
    found = set(map(tuple, semantic_pairs(x, 0.99, parts).tolist()))
    planted = {(a, a + 400) for a in range(100)}
    print(f"\npartitioned: {len(found)} pairs, brute force {len(reference)}")
    assert found <= reference and planted <= found
    np.testing.assert_array_equal(parts, kmeans_partitions(x, k, seed=0))  # fixed seed


def test_threshold_is_inclusive() -> None:
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    cosine = float(np.float32(0.6))
    pairs = semantic_pairs(x, cosine, np.zeros(3, dtype=np.int64))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 2)]


def test_semantic_needs_a_model() -> None:
    with pytest.raises(ValueError, match="semantic_model"):
        DedupConfig(semantic=True)
    assert DedupConfig(semantic=True, semantic_model="enc.pt").semantic
