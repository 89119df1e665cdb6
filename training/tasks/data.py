"""Labelled shards as a stream of one task's items (the task prepares each sample)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch

from training.tasks.registry import TASKS_BY_NAME
from training.tasks.shards import Sample, describe, read_shard, shard_uris
from training.tasks.task import PrepareConfig


def prepare(sample: Sample, cfg: PrepareConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Items of one sample for ``cfg.task`` (none when the sample has no such labels)."""
    if cfg.task not in sample.meta.tasks:
        return []
    return TASKS_BY_NAME[cfg.task].items(sample, cfg, rng)


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
