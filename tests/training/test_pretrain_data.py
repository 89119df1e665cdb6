"""The pretraining loader: splitting, shuffling, resuming, selection, bad input, S3."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from curation.storage import locate, read_bytes, write_bytes_atomic
from schemas import layout
from tests.training.pretrain_shards import write_dataset
from training.data import (
    DataPosition,
    PretrainData,
    PretrainDataConfig,
    SapiensAugment,
    list_shards,
    make_loader,
    normalize,
)
from training.data.loader import shards_for


def epoch_keys(dataset: PretrainData, workers: int, epoch: int = 0, limit: int = 400) -> list[str]:
    """Keys the dataset yields in one epoch, through a real DataLoader."""
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    keys: list[str] = []
    for n, sample in enumerate(loader):
        if sample["pos"][1] == epoch:
            keys.append(sample["key"])
        if n >= limit:
            break
    return keys


@pytest.mark.parametrize(("shards", "workers"), [(5, 2), (2, 2)])
def test_each_sample_once_per_epoch_across_ranks_and_processes(
    tmp_path, shards: int, workers: int
) -> None:
    # 5 shards over 2 ranks x 2 processes: split by shard; 2 shards: split by sample
    keys = write_dataset(str(tmp_path), shards=shards, per_shard=8)
    cfg = PretrainDataConfig(dataset=str(tmp_path), img_size=(16, 16), shuffle_buffer=4)
    found: list[str] = []
    for rank in range(2):
        data = PretrainData(cfg, list_shards(str(tmp_path)), rank=rank, world_size=2)
        found += epoch_keys(data, workers, limit=6 * shards * 8)
    counts = Counter(found)
    assert set(counts) == {k for shard in keys for k in shard}
    assert max(counts.values()) == 1


def test_shuffle_buffer_mixes_order(tmp_path) -> None:
    keys = write_dataset(str(tmp_path), shards=1, per_shard=20)
    cfg = PretrainDataConfig(dataset=str(tmp_path), img_size=(16, 16), shuffle_buffer=10)
    seen = epoch_keys(PretrainData(cfg, list_shards(str(tmp_path))), workers=0, limit=25)
    assert sorted(seen) == sorted(keys[0]) and seen != keys[0]


def test_resume_skips_finished_shards(tmp_path) -> None:
    keys = write_dataset(str(tmp_path), shards=4, per_shard=6)
    cfg = PretrainDataConfig(
        dataset=str(tmp_path), img_size=(16, 16), batch_size=3, num_workers=0, shuffle_buffer=2
    )
    batches = make_loader(cfg)
    stream = iter(batches)
    for _ in range(5):
        next(stream)
    position = batches.position
    assert position.epochs == [0] and 1 <= position.done[0] <= 3
    order = [s.shard for s in PretrainData(cfg, list_shards(str(tmp_path))).shards]
    restored = DataPosition.from_dict(position.to_dict())
    data = PretrainData(cfg, list_shards(str(tmp_path)), start=restored)
    rest = set(epoch_keys(data, workers=0, limit=30))
    mine, _ = shards_for(data.shards, epoch=0, seed=0, slot=0, slots=1)
    expected = {k for s in mine[position.done[0] :] for k in keys[s.shard]}
    assert order == [0, 1, 2, 3] and rest == expected


def test_corrupt_samples_and_shards_are_counted_not_fatal(tmp_path) -> None:
    write_dataset(str(tmp_path), shards=3, per_shard=5)
    # the truncated shard is read first, so every error is counted before epoch 0 ends
    order, _ = shards_for(list_shards(str(tmp_path)), epoch=0, seed=0, slot=0, slots=1)
    first, second, third = (s.shard for s in order)
    write_dataset(str(tmp_path), shards=3, per_shard=5, corrupt={(second, 1), (third, 3)})
    root = locate(str(tmp_path))
    tar = root.join(layout.shard_file(first))
    write_bytes_atomic(tar, read_bytes(tar)[:1500])  # truncated mid-member
    cfg = PretrainDataConfig(
        dataset=str(tmp_path), img_size=(16, 16), batch_size=1, num_workers=0, shuffle_buffer=1
    )
    batches = make_loader(cfg)
    stream = iter(batches)
    epochs, errors = [], {}
    while not epochs or epochs[-1] == 0:
        next(stream)
        epochs.append(batches.position.epochs[0])
        if epochs[-1] == 0:
            errors = batches.errors()  # counts are cumulative; keep those of epoch 0
    assert errors["decode"] == 2 and errors["bad_shard"] == 1
    assert 8 <= len(epochs) - 1 <= 9  # the 8 good samples of shards 0 and 2, maybe 1 of shard 1


def test_manifest_predicate_selects_keys(tmp_path) -> None:
    keys = write_dataset(str(tmp_path), shards=2, per_shard=8)
    cfg = PretrainDataConfig(dataset=str(tmp_path), img_size=(16, 16), where="num_persons >= 2")
    seen = epoch_keys(PretrainData(cfg, list_shards(str(tmp_path))), workers=0, limit=20)
    expected = {k for shard in keys for i, k in enumerate(shard) if i % 4 >= 2}
    assert sorted(seen) == sorted(expected)
    bad = PretrainDataConfig(dataset=str(tmp_path), img_size=(16, 16), where="no_such_column > 1")
    with pytest.raises(ValueError, match="no_such_column"):
        next(iter(PretrainData(bad, list_shards(str(tmp_path)))))


def test_no_shards_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no shards"):
        list_shards(str(tmp_path))


def test_augment_output_and_reduced_decode() -> None:
    big = Image.new("RGB", (800, 600), (200, 10, 10))
    buf = io.BytesIO()
    big.save(buf, format="JPEG")
    aug = SapiensAugment((32, 48))
    out = aug(buf.getvalue())
    assert out.shape == (3, 32, 48) and out.dtype == torch.uint8
    assert abs(int(out[0].float().mean()) - 200) < 6  # colour survives the draft decode
    x0, y0, x1, y1 = aug.crop_box(800, 600)
    assert 0 <= x0 < x1 <= 800 and 0 <= y0 < y1 <= 600
    area = (x1 - x0) * (y1 - y0) / (800 * 600)
    assert 0.19 <= area <= 1.0
    normed = normalize(out[None])
    assert normed.dtype == torch.float32 and normed.shape == (1, 3, 32, 48)


def test_loads_from_s3(s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/humans"
    write_dataset(root, shards=2, per_shard=4)
    cfg = PretrainDataConfig(
        dataset=root, img_size=(16, 16), batch_size=4, num_workers=1, where="num_persons > 0"
    )
    batches = make_loader(cfg)
    batch = next(iter(batches))
    assert batch.shape == (4, 3, 16, 16)
    assert batches.errors()["filtered"] >= 1
