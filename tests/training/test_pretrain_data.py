"""The pretraining loader: splitting, shuffling, resuming, selection, bad input, S3."""

from __future__ import annotations

import io
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from curation.synthetic import photo_like
from runtime.storage import locate, read_bytes, write_bytes_atomic
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
    cfg = PretrainDataConfig(dataset=str(tmp_path), image_size=(16, 16), shuffle_buffer=4)
    found: list[str] = []
    for rank in range(2):
        data = PretrainData(cfg, list_shards(str(tmp_path)), rank=rank, world_size=2)
        found += epoch_keys(data, workers, limit=6 * shards * 8)
    counts = Counter(found)
    assert set(counts) == {k for shard in keys for k in shard}
    assert max(counts.values()) == 1


def test_shuffle_buffer_mixes_order(tmp_path) -> None:
    keys = write_dataset(str(tmp_path), shards=1, per_shard=20)
    cfg = PretrainDataConfig(dataset=str(tmp_path), image_size=(16, 16), shuffle_buffer=10)
    seen = epoch_keys(PretrainData(cfg, list_shards(str(tmp_path))), workers=0, limit=25)
    assert sorted(seen) == sorted(keys[0]) and seen != keys[0]


def test_resume_skips_finished_shards(tmp_path) -> None:
    keys = write_dataset(str(tmp_path), shards=4, per_shard=6)
    cfg = PretrainDataConfig(
        dataset=str(tmp_path), image_size=(16, 16), batch_size=3, num_workers=0, shuffle_buffer=2
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
        dataset=str(tmp_path), image_size=(16, 16), batch_size=1, num_workers=0, shuffle_buffer=1
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
    cfg = PretrainDataConfig(dataset=str(tmp_path), image_size=(16, 16), where="num_persons >= 2")
    seen = epoch_keys(PretrainData(cfg, list_shards(str(tmp_path))), workers=0, limit=20)
    expected = {k for shard in keys for i, k in enumerate(shard) if i % 4 >= 2}
    assert sorted(seen) == sorted(expected)
    bad = PretrainDataConfig(dataset=str(tmp_path), image_size=(16, 16), where="no_such_column > 1")
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
        dataset=root, image_size=(16, 16), batch_size=4, num_workers=1, where="num_persons > 0"
    )
    batches = make_loader(cfg)
    batch = next(iter(batches))
    assert batch.shape == (4, 3, 16, 16)
    assert batches.errors()["filtered"] >= 1


# --- the resize path: OpenCV decode and resize into the caller's buffer ---


def jpeg_bytes(img: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **params)
    return buf.getvalue()


def pillow_reference(data: bytes, box: tuple[int, int, int, int], size: tuple[int, int]):
    """The recipe as Pillow does it: full decode, antialiased bicubic of the box to size (h, w)."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = img.resize((size[1], size[0]), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize(
    ("size", "tolerance"),
    [((384, 384), 1.5), ((320, 256), 1.5), ((96, 96), 2.5), ((40, 56), 2.5)],
)  # upscales (mostly) and downscales (reduced JPEG decode, then area resampling)
def test_resize_matches_pillow_bicubic(size: tuple[int, int], tolerance: float) -> None:
    # mean absolute difference in grey levels against Pillow on the full decode of the same
    # box: OpenCV's bicubic kernel is a=-0.75 (Pillow's a=-0.5), area resampling is not
    # Pillow's antialiased bicubic, a reduced JPEG decode is not a full one
    diffs = []
    for seed in range(4):
        data = jpeg_bytes(photo_like(400 + 40 * seed, 300 + 10 * seed, seed))
        aug = SapiensAugment(size, rng=random.Random(seed), flip=0.0)
        state = aug.rng.getstate()
        out = aug(data).permute(1, 2, 0).numpy().astype(np.float32)
        aug.rng.setstate(state)  # the same crop box again
        _, box, factor = aug.decode_crop(data)
        width, height = Image.open(io.BytesIO(data)).size
        full = (
            box[0] * factor,
            box[1] * factor,
            min(box[2] * factor, width),
            min(box[3] * factor, height),
        )
        ref = pillow_reference(data, full, size)
        diffs.append(float(np.abs(out - ref).mean()))
    assert max(diffs) < tolerance, diffs


def test_augment_writes_into_the_given_buffer_and_returns_a_view() -> None:
    data = jpeg_bytes(photo_like(200, 150, 0))
    batch = torch.zeros((2, 64, 48, 3), dtype=torch.uint8)
    image = SapiensAugment((64, 48))(data, out=batch[1].numpy())
    assert image.shape == (3, 64, 48) and image.dtype == torch.uint8
    assert image.data_ptr() == batch[1].data_ptr()  # no copy
    assert batch[1].float().mean() > 10 and batch[0].sum() == 0
    assert torch.equal(image, batch[1].permute(2, 0, 1))
    with pytest.raises(ValueError, match="C-contiguous"):
        SapiensAugment((64, 48))(data, out=np.zeros((64, 48, 4), np.uint8)[..., :3])


def test_crop_boxes_stay_within_scale_and_ratio_bounds() -> None:
    aug = SapiensAugment((1024, 1024), scale=(0.2, 1.0), rng=random.Random(0))
    for width, height in [(1280, 960), (960, 1280), (4000, 3000), (500, 480)]:
        for _ in range(300):
            x0, y0, x1, y1 = aug.crop_box(width, height)
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            w, h = x1 - x0, y1 - y0
            # rounding the sides to pixels moves area and aspect by a pixel's worth
            assert 0.2 * 0.99 <= w * h / (width * height) <= 1.0
            assert 3 / 4 * 0.99 <= w / h <= 4 / 3 * 1.01


def test_flip_mirrors_the_same_crop() -> None:
    data = jpeg_bytes(photo_like(320, 240, 1))
    plain = SapiensAugment((128, 128), rng=random.Random(5), flip=0.0)(data)
    flipped = SapiensAugment((128, 128), rng=random.Random(5), flip=1.0)(data)
    assert torch.equal(flipped, plain.flip(-1)) and not torch.equal(flipped, plain)


def test_exif_orientation_and_other_formats_are_decoded_upright() -> None:
    img = photo_like(200, 120, 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees
    rotated = jpeg_bytes(img.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    pixels, _, factor = SapiensAugment((256, 256)).decode_crop(rotated)  # full scale
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(rotated))))
    assert factor == 1 and pixels.shape == upright.shape == (120, 200, 3)
    assert np.abs(pixels.astype(int) - upright).mean() < 1
    aug = SapiensAugment((32, 32), rng=random.Random(0))
    assert aug(rotated).shape == (3, 32, 32)
    for fmt, mode in [("PNG", "RGBA"), ("PNG", "L"), ("WEBP", "RGB")]:
        buf = io.BytesIO()
        img.convert(mode).save(buf, format=fmt)
        assert aug(buf.getvalue()).shape == (3, 32, 32)


def test_truncated_jpeg_raises() -> None:
    data = jpeg_bytes(photo_like(200, 150, 3))
    aug = SapiensAugment((32, 32))
    for cut in (len(data) // 2, len(data) * 9 // 10):  # scans cut short, as Pillow rejects
        with pytest.raises(OSError, match="truncated"):
            np.asarray(Image.open(io.BytesIO(data[:cut])))
        with pytest.raises(Exception):  # noqa: B017 (OpenCV or Pillow, any error is counted)
            aug(data[:cut])


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_are_assembled_in_place_and_never_overwritten_while_held(
    tmp_path, workers: int
) -> None:
    write_dataset(str(tmp_path), shards=2, per_shard=8)
    cfg = PretrainDataConfig(
        dataset=str(tmp_path), image_size=(16, 24), batch_size=3, num_workers=workers,
        shuffle_buffer=2,
    )  # fmt: skip
    stream = iter(make_loader(cfg))
    held = [next(stream) for _ in range(4)]
    copies = [b.clone() for b in held]
    for _ in range(6):  # more batches, while the first ones are still held
        batch = next(stream)
        assert batch.shape == (3, 3, 16, 24) and batch.dtype == torch.uint8
        assert batch.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(a, b) for a, b in zip(held, copies, strict=True))
    assert len({b.data_ptr() for b in held}) == 4
