"""From labelled samples to training tensors for one task (crops, targets, augmentation)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from schemas.labelled import IGNORE_INDEX
from training.tasks import keypoints as kp
from training.tasks import transforms as T
from training.tasks.shards import Sample, describe, read_shard, shard_uris


@dataclass(kw_only=True)
class PrepareConfig:
    task: str  # pose | seg | depth | normal
    input_hw: tuple[int, int]  # network input (height, width), e.g. (1024, 768)
    train: bool  # random flip, scale and rotation when True
    heatmap_sigma: float | None = None  # None: 6 px at 256x192, scaled, at least 1
    box_padding: float = 1.25  # pose: box grown by this after the 4:3 expansion

    @property
    def sigma(self) -> float:
        if self.heatmap_sigma is not None:
            return self.heatmap_sigma
        return max(1.0, 6.0 * self.input_hw[0] / 1024)


def prepare(sample: Sample, cfg: PrepareConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Training items of one sample: one per person for pose, one per image otherwise."""
    if cfg.task not in sample.meta.tasks:
        return []
    if cfg.task == "pose":
        return [_pose_item(sample, i, cfg, rng) for i in range(len(sample.meta.persons))]
    return [_dense_item(sample, cfg, rng)]


def _jitter(cfg: PrepareConfig, rng: random.Random) -> tuple[bool, float, float]:
    if not cfg.train:
        return False, 1.0, 0.0
    return rng.random() < 0.5, rng.uniform(0.85, 1.15), rng.uniform(-15, 15)


def _pose_item(sample: Sample, index: int, cfg: PrepareConfig, rng: random.Random) -> dict:
    person = sample.meta.persons[index]
    h, w = cfg.input_hw
    flip, scale, rot = _jitter(cfg, rng)
    center, size = T.box_to_region(person.bbox, aspect=w / h, padding=cfg.box_padding)
    matrix = T.affine_to_crop(center, size * scale, (h, w), rotation_deg=rot, flip=flip)
    points = np.asarray(person.keypoints, dtype=np.float64).reshape(-1, 3)
    box_area = float(person.bbox[2]) * float(person.bbox[3])
    crop_points = T.warp_keypoints(points, matrix, kp.FLIP_PERM if flip else None)
    heat, weight = T.heatmap_targets(crop_points, (h // 4, w // 4), stride=4, sigma=cfg.sigma)
    return {
        "image": torch.from_numpy(T.normalise_image(T.warp_image(sample.image, matrix, (h, w)))),
        "heatmap": torch.from_numpy(heat),  # [K, h/4, w/4]
        "weight": torch.from_numpy(weight),  # [K]
        "matrix": torch.from_numpy(matrix),  # image -> crop, to map predictions back
        "keypoints": torch.from_numpy(points),  # [K, 3] in the original image
        "bbox": torch.tensor(person.bbox, dtype=torch.float64),
        # OKS scale: the annotated area; the box area where the labels have none.
        "area": torch.tensor(box_area if person.area is None else person.area, dtype=torch.float64),
        "area_from_box": torch.tensor(person.area is None),
    }


def _dense_item(sample: Sample, cfg: PrepareConfig, rng: random.Random) -> dict:
    h, w = cfg.input_hw
    flip, scale, _ = _jitter(cfg, rng)  # no rotation: it would have to rotate normals too
    center, size = T.image_region(sample.meta.width, sample.meta.height, aspect=w / h)
    matrix = T.affine_to_crop(center, size * scale, (h, w), flip=flip)
    image = T.warp_image(sample.image, matrix, (h, w))
    item: dict[str, Any] = {"image": torch.from_numpy(T.normalise_image(image))}
    if cfg.task == "seg":
        seg = T.warp_image(sample.seg, matrix, (h, w), nearest=True, fill=IGNORE_INDEX)
        item["label"] = torch.from_numpy((T.SEG_FLIP_LUT[seg] if flip else seg).astype(np.int64))
        return item
    mask = T.warp_image(sample.mask.astype(np.uint8), matrix, (h, w), nearest=True) > 0
    item["mask"] = torch.from_numpy(mask)
    if cfg.task == "depth":
        depth = T.warp_image(sample.depth, matrix, (h, w), nearest=True)
        item["depth_raw"] = torch.from_numpy(depth)
        item["depth"] = torch.from_numpy(normalise_depth(depth, mask))
    else:
        normal = T.warp_image(sample.normal, matrix, (h, w), nearest=True)
        if flip:
            normal[..., 0] *= -1
        item["normal"] = torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1)))
    return item


def normalise_depth(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image [0, 1] over the foreground (0 elsewhere): relative, not metric, depth."""
    if not mask.any():
        return np.zeros_like(depth, dtype=np.float32)
    lo, hi = depth[mask].min(), depth[mask].max()
    return np.where(mask, (depth - lo) / max(hi - lo, 1e-6), 0).astype(np.float32)


class TaskStream(torch.utils.data.IterableDataset):
    """Items of one task from labelled shards, split by (rank, loader worker) over shards.

    Training repeats forever with a shuffle buffer; evaluation reads each shard once.
    """

    def __init__(
        self, uri: str, cfg: PrepareConfig, rank: int = 0, world: int = 1, seed: int = 0,
        buffer: int = 64,
    ) -> None:  # fmt: skip
        super().__init__()
        describe(uri)  # refuses what this code cannot read (e.g. pose in an older order)
        self.shards = shard_uris(uri)
        if not self.shards:
            raise FileNotFoundError(f"no labelled shards under {uri}/shards")
        self.cfg, self.rank, self.world, self.seed, self.buffer = cfg, rank, world, seed, buffer

    def _my_shards(self) -> list[str]:
        info = torch.utils.data.get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        slot, slots = self.rank * workers + wid, self.world * workers
        if len(self.shards) < slots:  # fewer shards than readers: every reader takes all
            return list(self.shards)
        return self.shards[slot::slots]

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(self.seed * 1000 + self.rank)
        shards, pool, epoch = self._my_shards(), [], 0
        while True:
            order = list(shards)
            if self.cfg.train:
                rng.shuffle(order)
            for shard in order:
                for sample in read_shard(shard):
                    for item in prepare(sample, self.cfg, rng):
                        if not self.cfg.train:
                            yield item
                            continue
                        pool.append(item)
                        if len(pool) >= self.buffer:
                            yield pool.pop(rng.randrange(len(pool)))
            epoch += 1
            if not self.cfg.train:
                return
            rng.shuffle(pool)
            while len(pool) > self.buffer // 2:
                yield pool.pop()
