"""Semantic dedup without Ray: a tiny TorchScript encoder and a tiny MAE encoder (exported by
``python -m training.checkpoint``) on planted families and look-alikes, the model file checks,
and the partitioned cosine search against brute force."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.dedup.cluster import greedy_canonical, priority_order
from curation.dedup.config import DedupConfig
from curation.dedup.embed import ShardEmbedder
from curation.dedup.encoder import EncoderError, describe_encoder
from curation.dedup.semantic import (
    key_hashes,
    kmeans_centroids,
    kmeans_partitions,
    nearest_centroid,
    partitions_for,
    resolve_partition,
    resolve_partitions,
    sample_limit,
    semantic_pairs,
)
from tests.curation.test_dedup_signatures import encode, scene

THRESHOLD = 0.995  # for the tiny encoder below at IMAGE_SIZE; measured margins are printed
IMAGE_SIZE = 64
# For the random vit_test MAE encoder below at its own 32 px: planted copies measured >= 0.9991,
# look-alikes <= 0.9907 (printed by test_mae_encoder_separates_copies_from_lookalikes).
MAE_THRESHOLD = 0.995
MAE_IMAGE_SIZE = 32


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


def mae_encoder(folder: Path) -> str:
    """A random vit_test MAE (32 px) saved as a pretraining checkpoint, then exported the way
    users do: ``python -m training.checkpoint RUN encoder.pt``. Returns the encoder file."""
    import torch

    from models.mae import MAE, MAEConfig
    from models.vit import vit_test
    from training import checkpoint

    out = folder / "encoder.pt"
    if out.exists():
        return str(out)
    torch.manual_seed(0)
    mae = MAE(MAEConfig(encoder=vit_test(image_size=MAE_IMAGE_SIZE), decoder_dim=32,
                        decoder_depth=1, decoder_heads=4, decoder_mlp_dim=64))  # fmt: skip
    optimizer = torch.optim.AdamW(mae.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    run = str(folder / "run")
    # the old name, as pretraining checkpoints written before the glossary hold it
    config = {"preset": "vit_test", "img_size": MAE_IMAGE_SIZE}
    checkpoint.save(run, step=1, model=mae, optimizer=optimizer, scheduler=scheduler,
                    data_position={}, extra={"config": config})  # fmt: skip
    assert checkpoint.main([run, str(out)]) == 0
    return str(out)


def _bytes(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _margins(embedder: ShardEmbedder, dim: int) -> tuple[float, float]:
    """(lowest cosine within planted families, highest to a look-alike or another scene)."""
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
        assert x.shape == (len(family) + len(others), dim)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
        worst_copy = min(worst_copy, float((x[:5] @ x[:5].T).min()))
        closest_other = max(closest_other, float((x[:5] @ x[5:].T).max()))
    print(f"\ncosine: planted copies >= {worst_copy:.4f}, look-alikes <= {closest_other:.4f}")
    return worst_copy, closest_other


def _embedder(model: str, image_size: int) -> ShardEmbedder:
    return ShardEmbedder(
        dataset_uri="unused", model=model, image_size=image_size, chunk=8, threads=1, device="cpu"
    )


def test_encoder_separates_copies_from_lookalikes(tmp_path: Path) -> None:
    embedder = _embedder(tiny_encoder(tmp_path / "enc.pt"), IMAGE_SIZE)
    worst_copy, closest_other = _margins(embedder, 512)
    assert worst_copy >= THRESHOLD > closest_other


def test_mae_encoder_separates_copies_from_lookalikes(tmp_path: Path) -> None:
    """Mean patch token of the exported encoder at its own size; byte copies embed identically
    whatever else is in their batch."""
    embedder = _embedder(mae_encoder(tmp_path), MAE_IMAGE_SIZE)
    worst_copy, closest_other = _margins(embedder, 64)
    print(f"MAE threshold {MAE_THRESHOLD}")
    assert worst_copy >= MAE_THRESHOLD > closest_other
    one = _bytes(scene(3), quality=90)
    alone = embedder.embed([one])
    among = embedder.embed([_bytes(scene(s)) for s in range(5)] + [one, one])
    np.testing.assert_array_equal(among[5], among[6])
    np.testing.assert_allclose(among[5], alone[0], atol=1e-6)


def test_models_are_described_from_their_files(tmp_path: Path) -> None:
    import torch

    mae = describe_encoder(mae_encoder(tmp_path))
    assert (mae.kind, mae.preset, mae.image_size, mae.patch_size) == ("mae", "vit_test", 32, 16)
    assert mae.input_size(None) == 32 and mae.input_size(64) == 64  # configured wins
    card = json.loads(mae.card(64))  # model.json beside the cache: the job's names
    assert (card["image_size"], card["encoder_image_size"]) == (64, 32) and "input_size" not in card
    with pytest.raises(EncoderError, match="multiple of the encoder's patch size 16"):
        mae.input_size(40)
    # the preset comes from the file's config: a bare state dict (here the pretraining
    # checkpoint itself) records none, and is refused rather than matched by tensor shapes
    (full,) = (tmp_path / "run" / "checkpoints").glob("step_*/model.pt")
    with pytest.raises(EncoderError, match="not an exported encoder.*training.checkpoint"):
        describe_encoder(str(full))
    script = describe_encoder(tiny_encoder(tmp_path / "enc.torchscript"))  # no .pt: by content
    assert (script.kind, script.input_size(None)) == ("torchscript", 224)
    # the cache key follows the bytes and the input size
    assert mae.fingerprint(32) != mae.fingerprint(64) != script.fingerprint(64)
    assert describe_encoder(mae.uri).fingerprint(32) == mae.fingerprint(32)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(EncoderError, match="not an exported encoder"):
        describe_encoder(str(tmp_path / "other.pt"))


def test_bad_model_files_fail_clearly(tmp_path: Path) -> None:
    good = Path(mae_encoder(tmp_path)).read_bytes()
    with pytest.raises(EncoderError, match="file not found"):
        describe_encoder(str(tmp_path / "missing.pt"))
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(EncoderError, match="corrupt or truncated"):
        describe_encoder(str(tmp_path / "truncated.pt"))
    flipped = bytearray(good)
    middle = len(flipped) // 2
    flipped[middle : middle + 64] = bytes(64)  # inside a tensor's bytes: its CRC fails
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(EncoderError, match="member .* is corrupt"):
        describe_encoder(str(tmp_path / "flipped.pt"))
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(EncoderError, match="neither a TorchScript module nor an encoder"):
        describe_encoder(str(tmp_path / "text.pt"))


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


def _planted(n: int = 400, d: int = 32) -> np.ndarray:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(n, d)).astype(np.float32)
    x = np.concatenate([base, base[: n // 4] + rng.normal(scale=0.02, size=(n // 4, d))])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_centroids_assign_as_kmeans_partitions() -> None:
    """The Ray path trains centroids once and assigns rows block by block: the partitions of
    the driver path's kmeans_partitions, whatever the blocks."""
    x = _planted()
    centroids = kmeans_centroids(x, 10, seed=0)
    blocks = np.concatenate([nearest_centroid(x[i : i + 7], centroids) for i in range(0, 500, 7)])
    np.testing.assert_array_equal(blocks, kmeans_partitions(x, 10, seed=0))


def test_kmeans_sample_is_chosen_by_key_alone() -> None:
    """The sample (hash at most the limit, then the smallest hashes) is the same whatever the
    split of the keys into shards; it is every key when it may hold them all."""
    keys = [f"{i:024x}" for i in range(5000)]
    assert sample_limit(5000, 5000) == np.iinfo(np.uint64).max

    def sample(parts: list[list[str]], size: int) -> list[str]:
        limit = sample_limit(len(keys), size)
        found = [(h, k) for p in parts for h, k in zip(key_hashes(p), p, strict=True) if h <= limit]
        return [k for _, k in sorted(found)[:size]]

    one, three = sample([keys], 512), sample([keys[0::3], keys[1::3], keys[2::3]], 512)
    assert one == three and len(one) == 512
    assert one == [keys[i] for i in np.argsort(key_hashes(keys), kind="stable")[:512]]


def test_partition_resolved_alone_as_in_the_whole() -> None:
    """resolve_partition on one partition's rows, in any order, drops what the driver path's
    best-first over every row (pairs within partitions) drops there, naming the same rows."""
    x = _planted()
    rng = np.random.default_rng(2)
    keys = np.array([f"k{i:04d}" for i in range(len(x))], dtype=object)
    areas = rng.integers(1, 4, size=len(x)) * 100
    parts = kmeans_partitions(x, 5, seed=0)
    order = priority_order(keys, areas)
    canonical = greedy_canonical(len(x), semantic_pairs(x[order], 0.99, parts[order]))
    whole = {keys[order[r]]: keys[order[c]] for r, c in enumerate(canonical) if r != c}
    alone = {}
    for part in range(5):
        rows = rng.permutation(np.flatnonzero(parts == part))
        dropped, kept, cosine = resolve_partition(list(keys[rows]), areas[rows], x[rows], 0.99)
        assert (cosine >= 0.99).all()
        alone.update(zip(keys[rows[dropped]], keys[rows[kept]], strict=True))
    assert alone == whole and len(whole) >= 90
    # the rule over an Arrow table keyed by partition (every partition at once, rows shuffled)
    rows = rng.permutation(len(x))
    flat = pa.array(x[rows].ravel())
    table = pa.table(
        {
            "key": pa.array(keys[rows].tolist(), pa.string()),
            "shard": pa.array(np.zeros(len(x), dtype=np.int64)),
            "source_uri": pa.array([f"u/{k}" for k in keys[rows]], pa.string()),
            "area": pa.array(areas[rows]),
            "partition": pa.array(parts[rows]),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1]),
        }
    )
    drops = resolve_partitions(table, 0.99).to_pylist()
    assert {d["key"]: d["duplicate_of"] for d in drops} == whole
    assert {d["reason"] for d in drops} == {"duplicate_semantic"}
    row = {k: i for i, k in enumerate(keys)}
    for d in drops:
        cosine = float(x[row[d["key"]]] @ x[row[d["duplicate_of"]]])
        assert d["detail"] == f"embedding cosine {cosine:.4f}" and cosine >= 0.99


def test_threshold_is_inclusive() -> None:
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    cosine = float(np.float32(0.6))
    pairs = semantic_pairs(x, cosine, np.zeros(3, dtype=np.int64))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 2)]


def test_semantic_needs_a_model() -> None:
    with pytest.raises(ValueError, match="semantic_model"):
        DedupConfig(semantic=True)
    assert DedupConfig(semantic=True, semantic_model="enc.pt").semantic
