"""Batch buffers: recycled through loader processes, never while the training side holds one."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import pytest
import torch

from tests.training.pretrain_shards import write_dataset
from training.data import PretrainData, PretrainDataConfig, list_shards, make_loader
from training.data import loader as loader_module
from training.data.buffers import BufferReturns, SharedRing


def small_config(root: str, workers: int) -> PretrainDataConfig:
    return PretrainDataConfig(
        dataset=root, image_size=(16, 24), batch_size=3, num_workers=workers, shuffle_buffer=2
    )


def test_ring_writes_only_returned_buffers_and_replaces_kept_ones() -> None:
    returned = multiprocessing.SimpleQueue()
    ring = SharedRing((2, 3), size=2, returned=returned)
    (first, one), (second, _) = ring.take(), ring.take()
    third, three = ring.take()  # none back, ring full: the oldest out is left to its holder
    assert ring.allocated == 3 and third.data_ptr() != first.data_ptr()
    returned.put((ring.id, one))  # void: first is no longer the ring's
    returned.put((ring.id + 1, three))  # meant for another process's ring
    fourth, _ = ring.take()  # still none back: second is replaced in turn
    ptrs = {first.data_ptr(), second.data_ptr(), third.data_ptr()}
    assert fourth.data_ptr() not in ptrs and ring.allocated == 4
    returned.put((ring.id, three))
    assert ring.take()[0].data_ptr() == third.data_ptr() and ring.allocated == 4


def test_ticket_is_returned_once_no_tensor_refers_to_its_batch() -> None:
    returned = multiprocessing.SimpleQueue()
    returns = BufferReturns([returned])
    batch = torch.zeros((2, 3), dtype=torch.uint8)
    returns.hold(0, 7, 1, batch)
    returns.hand_back()
    assert returned.empty()  # the caller still holds the batch
    row = batch[1].numpy()
    del batch
    returns.hand_back()
    assert returned.empty()  # a numpy view of a row of it
    del row
    returns.hand_back()
    assert returned.get() == (7, 1) and returns.held == []


@pytest.mark.parametrize(("workers", "hold_loop_variable"), [(1, False), (1, True), (2, True)])
def test_loader_processes_recycle_their_buffers(
    tmp_path, workers: int, hold_loop_variable: bool
) -> None:
    write_dataset(str(tmp_path), shards=4, per_shard=6)
    cfg = small_config(str(tmp_path), workers)
    batches = make_loader(cfg)
    stream = iter(batches)
    for _ in range(40):
        # the training loop drops each batch before asking for the next; a for loop's
        # variable still holds the previous one while it asks
        batch = next(stream)
        if not hold_loop_variable:
            del batch
    # how many are in use at once depends on timing; never more than the ring
    assert max(batches.allocated) <= cfg.prefetch_factor + 2


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_held_batches_are_never_overwritten(tmp_path, workers: int) -> None:
    write_dataset(str(tmp_path), shards=4, per_shard=6)
    cfg = small_config(str(tmp_path), workers)
    batches = make_loader(cfg)
    stream = iter(batches)
    held, copies = [], []
    for n in range(45):
        batch = next(stream)
        assert batch.shape == (3, 3, 16, 24) and batch.dtype == torch.uint8
        assert batch.is_contiguous(memory_format=torch.channels_last)
        if n % 3 == 0:  # every third one is kept: whole, as a slice, as a numpy view
            kept = (batch, batch[1:], batch.numpy())[n // 3 % 3]
            held.append(kept)
            copies.append(torch.as_tensor(kept).clone())
        del batch
    assert all(torch.equal(torch.as_tensor(a), b) for a, b in zip(held, copies, strict=True))
    # buffers were recycled meanwhile (a fresh one only for each batch kept), so the check
    # above means something
    assert sum(batches.allocated) <= len(held) + (cfg.prefetch_factor + 2) * max(workers, 1)


def test_loader_processes_yield_what_each_would_in_process(tmp_path, monkeypatch) -> None:
    write_dataset(str(tmp_path), shards=4, per_shard=6)
    cfg = small_config(str(tmp_path), 2)
    stream = iter(make_loader(cfg))
    got = [next(stream).clone() for _ in range(16)]  # 2 epochs of each process, via the ring
    expected = []
    for worker in range(2):
        info = SimpleNamespace(id=worker, num_workers=2)
        monkeypatch.setattr(loader_module, "get_worker_info", lambda info=info: info)
        data = PretrainData(cfg, list_shards(str(tmp_path)), batch_size=cfg.batch_size)
        own = iter(data)
        expected.append([next(own)["image"].clone() for _ in range(8)])
    for n, batch in enumerate(got):  # the DataLoader takes the processes in turn
        assert torch.equal(batch, expected[n % 2][n // 2]), n
