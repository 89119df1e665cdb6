"""An endless stream of augmented pretraining batches for one Ray Train worker (rank).

Splitting: every epoch the shard list is shuffled with a seed all ranks share, then dealt
out to ``world_size x num_workers`` slots (one per loader process of each rank), so within
an epoch every sample is read by exactly one process. With fewer shards than slots each
process reads every shard and keeps every ``slots``-th sample instead.

Position: each loader process tags its samples with (epoch, shards of its own list fully
yielded). The rank keeps the tags of the last batch it consumed, so a checkpoint knows where
to restart each process at shard granularity; a shard half-consumed at a kill is read again.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from training.data.augment import SapiensAugment
from training.data.buffers import BufferReturns, LocalBuffers, SharedRing
from training.data.shards import ShardSource, iter_samples, list_shards, selected_keys

log = logging.getLogger(__name__)

ERROR_KINDS = ("decode", "bad_shard", "no_image", "filtered")


@dataclass(kw_only=True)
class PretrainDataConfig:
    dataset: str  # dataset folder (local path or s3://bucket/prefix) holding shards/ and manifests/
    image_size: tuple[int, int] = (1024, 1024)  # output (height, width) of the crop
    batch_size: int = 32  # images per step per Ray Train worker (before gradient accumulation)
    num_workers: int = 4  # DataLoader processes per Ray Train worker; 0 reads in-process
    shuffle_buffer: int = 1000  # encoded samples held for shuffling in each loader process
    min_scale: float = 0.2  # smallest crop area fraction of RandomResizedCrop
    where: str | None = None  # DuckDB predicate on manifest rows, e.g. "num_persons >= 2"
    seed: int = 0  # shard order and augmentation seed
    prefetch_factor: int = 2  # batches prefetched per loader process

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if min(self.image_size) <= 0 or self.batch_size <= 0:
            raise ValueError("image_size and batch_size must be positive")
        if self.num_workers < 0 or self.shuffle_buffer < 1 or self.prefetch_factor < 1:
            raise ValueError("num_workers >= 0, shuffle_buffer >= 1 and prefetch_factor >= 1")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")


@dataclass
class DataPosition:
    """Where each loader process of one rank stands; valid only for the same split."""

    world_size: int
    num_workers: int  # loader processes (at least 1: the in-process reader counts as one)
    epochs: list[int] = field(default_factory=list)  # per loader process
    done: list[int] = field(default_factory=list)  # shards of its list fully yielded

    def to_dict(self) -> dict:
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "epochs": list(self.epochs),
            "done": list(self.done),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DataPosition:
        return cls(
            data["world_size"], data["num_workers"], list(data["epochs"]), list(data["done"])
        )

    def start_of(self, worker: int) -> tuple[int, int]:
        return self.epochs[worker], self.done[worker]


def shards_for(
    shards: list[ShardSource], *, epoch: int, seed: int, slot: int, slots: int
) -> tuple[list[ShardSource], bool]:
    """A slot's shards for an epoch and whether it must keep only every slots-th sample."""
    order = list(shards)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if len(order) >= slots:
        return order[slot::slots], False
    return order, True


class PretrainData(IterableDataset):
    """Augmented samples, or whole batches when ``batch_size`` is set.

    Samples: {"key", "image": uint8 [3, H, W], "pos": [worker, epoch, done], "errors": [4]}
    (lists of ints).
    Batches: {"key": [B keys], "image": uint8 [B, 3, H, W], "pos" and "errors" as of the last
    sample, "buffer": [ring, ticket, buffers allocated so far]}. A batch's images are written by
    the resize straight into one buffer, which saves torch.stack's copy of every image in the
    collate. The buffer is [B, H, W, 3] in memory, so ``image`` is a channels-last view; uint8
    throughout, normalised on the device (``normalize``). Buffers are reused (buffers.py): in
    a loader process, only with ``returned`` (one queue per loader process, on which the
    consumer returns tickets, see ``Batches``); without it each batch gets a fresh buffer.
    """

    def __init__(
        self,
        config: PretrainDataConfig,
        shards: list[ShardSource],
        *,
        rank: int = 0,
        world_size: int = 1,
        start: DataPosition | None = None,
        batch_size: int | None = None,
        returned: list[multiprocessing.SimpleQueue] | None = None,
    ) -> None:
        self.config = config
        self.shards = shards
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.batch_size = batch_size
        self.returned = returned
        self._ring: SharedRing | None = None  # a loader process's own, kept across iterations

    def __iter__(self) -> Iterator[dict]:
        if self.batch_size is None:
            for key, out, pos, errors in self._augmented(lambda: None):
                image = torch.from_numpy(out).permute(2, 0, 1)
                yield {"key": key, "image": image, "pos": _pos(pos), "errors": _counts(errors)}
            return
        buffers = self._buffers()
        (images, ticket), keys = buffers.take(), []
        # the next free row of the current batch (late binding intended: the buffer changes
        # every batch); a sample that fails to decode leaves its row to the next one
        next_row = lambda: images[len(keys)].numpy()  # noqa: B023, E731
        for key, out, pos, errors in self._augmented(next_row):
            del out  # a view of the buffer: it must not count as a user of it (buffers.py)
            keys.append(key)
            if len(keys) == self.batch_size:
                batch = {
                    "key": keys, "image": images.permute(0, 3, 1, 2), "pos": _pos(pos),
                    "errors": _counts(errors), "buffer": _buffer(buffers, ticket),
                }  # fmt: skip
                yield batch
                del batch
                (images, ticket), keys = buffers.take(), []

    def _buffers(self) -> LocalBuffers | SharedRing:
        shape = (self.batch_size, *self.config.image_size, 3)
        info = get_worker_info()
        if info is None:
            return LocalBuffers(shape)
        if self._ring is None:
            returned = self.returned[info.id] if self.returned else None
            self._ring = SharedRing(shape, self.config.prefetch_factor + 2, returned)
        return self._ring

    def _augmented(
        self, row_of_next: Callable[[], np.ndarray | None]
    ) -> Iterator[tuple[str, np.ndarray, tuple[int, int, int], Counter]]:
        """(key, pixels [H, W, 3], (worker, epoch, done), errors) per usable sample; the pixels
        are resized into the array ``row_of_next()`` returns (a new one when it returns None)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        epoch, done = self.start.start_of(worker) if self.start else (0, 0)
        rng = random.Random(hash((self.config.seed, self.rank, worker, epoch, done)))
        augment = SapiensAugment(
            self.config.image_size, scale=(self.config.min_scale, 1.0), rng=rng
        )
        errors: Counter = Counter()
        while True:
            mine, modulo = shards_for(
                self.shards, epoch=epoch, seed=self.config.seed, slot=slot, slots=slots
            )
            yielded = 0
            for sample in self._epoch(mine, done, (slot, slots) if modulo else None, rng, errors):
                (key, data), shard_done = sample
                out = row_of_next()
                if out is None:
                    out = np.empty((*self.config.image_size, 3), dtype=np.uint8)
                try:
                    augment(data, out=out)
                except Exception as exc:  # any decoder failure: count it, never stop training
                    errors["decode"] += 1
                    log.debug("undecodable sample %s: %s", key, exc)
                    continue
                yielded += 1
                yield key, out, (worker, epoch, shard_done), errors
                del out
            if yielded == 0 and done == 0:
                raise RuntimeError(
                    f"rank {self.rank} loader process {worker} found no usable sample in a whole "
                    f"epoch of {len(mine)} shards (errors: {dict(errors)}; where={self.config.where!r})"
                )
            epoch, done = epoch + 1, 0

    def _epoch(
        self,
        mine: list[ShardSource],
        done: int,
        modulo: tuple[int, int] | None,
        rng: random.Random,
        errors: Counter,
    ) -> Iterator[tuple[tuple[str, bytes], int]]:
        """Shuffle-buffered (key, bytes) of the shards after ``done``, with the done count."""
        buffer: list[tuple[str, bytes, int]] = []
        outstanding: Counter = Counter()
        finished: set[int] = set()
        prefix = done

        def pop() -> tuple[tuple[str, bytes], int]:
            nonlocal prefix
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            key, data, shard = buffer.pop()
            outstanding[shard] -= 1
            while prefix in finished and outstanding[prefix] == 0:
                prefix += 1
            return (key, data), prefix

        for index in range(done, len(mine)):
            for key, data in self._read(mine[index], modulo, errors):
                buffer.append((key, data, index))
                outstanding[index] += 1
                if len(buffer) >= self.config.shuffle_buffer:
                    yield pop()
            finished.add(index)
            while prefix in finished and outstanding[prefix] == 0:
                prefix += 1
        while buffer:
            yield pop()

    def _read(
        self, shard: ShardSource, modulo: tuple[int, int] | None, errors: Counter
    ) -> Iterator[tuple[str, bytes]]:
        keys = selected_keys(shard.manifest, self.config.where)
        for index, (key, data) in enumerate(iter_samples(shard.tar, errors)):
            if modulo is not None and index % modulo[1] != modulo[0]:
                continue
            if key not in keys:
                errors["filtered"] += 1
                continue
            yield key, data


# plain ints, not tensors: each tensor a loader process sends is a shared-memory file of its
# own and a file descriptor passed over a socket, ~0.3 ms of CPU for three ints


def _pos(pos: tuple[int, int, int]) -> list[int]:
    return list(pos)


def _counts(errors: Counter) -> list[int]:
    return [errors[k] for k in ERROR_KINDS]


def _buffer(buffers: LocalBuffers | SharedRing, ticket: int) -> list[int]:
    return [getattr(buffers, "id", 0), ticket, buffers.allocated]


class Batches:
    """Iterates uint8 image batches [B, 3, H, W] and remembers the consumed position.

    With loader processes a batch lives in its loader process's ring of shared buffers and
    goes back to it once nothing here refers to it, checked at each request for a batch
    (buffers.py). The ring covers a caller that holds the previous batch while asking for the
    next (a ``for`` loop); each batch kept longer costs its loader process a fresh buffer,
    never an overwritten batch. Not seen: a batch passed on to another process, or its memory
    kept without a tensor (a storage object, a pointer); ``clone`` such a batch.
    """

    def __init__(self, dataset: PretrainData, loader: DataLoader, workers: int) -> None:
        self.dataset = dataset
        self.loader = loader
        start = dataset.start
        self.position = DataPosition(
            dataset.world_size,
            workers,
            list(start.epochs) if start else [0] * workers,
            list(start.done) if start else [0] * workers,
        )
        self._errors = torch.zeros((workers, len(ERROR_KINDS)), dtype=torch.long)
        self._returns = BufferReturns(dataset.returned or [])
        self.allocated = [0] * workers  # batch buffers each loader process has taken so far

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.loader:
            worker, epoch, done = batch["pos"]  # as of the batch's last sample
            self.position.epochs[worker] = epoch
            self.position.done[worker] = done
            self._errors[worker] = torch.tensor(batch["errors"])
            ring, ticket, self.allocated[worker] = batch["buffer"]
            image = batch["image"]
            self._returns.hold(worker, ring, ticket, image)
            del batch  # neither it nor ``image`` may count as a user of the buffer
            yield image
            del image
            self._returns.hand_back()

    def errors(self) -> dict[str, int]:
        """Samples skipped so far by this rank's loader processes, by kind."""
        totals = self._errors.sum(dim=0).tolist()
        return dict(zip(ERROR_KINDS, totals, strict=True))


def make_loader(
    config: PretrainDataConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    position: DataPosition | None = None,
    shards: list[ShardSource] | None = None,
) -> Batches:
    """The batch stream of one rank, resumed from ``position`` when it matches this split."""
    shards = shards if shards is not None else list_shards(config.dataset)
    workers = max(config.num_workers, 1)
    if position is not None and (
        position.world_size != world_size or position.num_workers != workers
    ):
        log.warning(
            "data position was saved for %d ranks x %d loader processes, now %d x %d: "
            "restarting from the beginning of epoch %d",
            position.world_size,
            position.num_workers,
            world_size,
            workers,
            max(position.epochs),
        )
        epoch = max(position.epochs)
        position = DataPosition(world_size, workers, [epoch] * workers, [0] * workers)
    dataset = PretrainData(
        config,
        shards,
        rank=rank,
        world_size=world_size,
        start=position,
        batch_size=config.batch_size,
        returned=[multiprocessing.SimpleQueue() for _ in range(config.num_workers)],
    )
    extra = {}
    if config.num_workers > 0:
        extra = {"prefetch_factor": config.prefetch_factor, "persistent_workers": True}
    loader = DataLoader(
        dataset,
        batch_size=None,  # the dataset yields whole batches, assembled in place
        num_workers=config.num_workers,
        pin_memory=torch.cuda.is_available(),
        **extra,
    )
    return Batches(dataset, loader, workers)
