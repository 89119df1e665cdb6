"""Batch buffers the loader resizes into, reused rather than taken fresh for every batch.

Fresh memory costs the kernel a page fault and a zeroing per 4 kB page on first write, ~1.3
ms per 1024x1024 image on the reference machine, as much as the bicubic resize itself (and
~1.7 ms more for fresh shared memory, see BENCHMARKS.md, pretraining).

In-process (no loader processes) a buffer is reused once no tensor other than ours refers to
it (``LocalBuffers``).

A loader process hands its batches to the training process through shared memory and cannot
see who holds them there. So each loader process keeps a ring of shared buffers
(``SharedRing``), each batch goes out with a ticket, and the training process sends the ticket
back (``BufferReturns``, over one pipe per loader process) once nothing but the returns
themselves refers to that batch's memory: the same storage use count as in-process, read
where the holders are. A loader process writes only into a buffer whose ticket came back.
The count is read at each request for a batch, so a process needs ``prefetch_factor + 1``
buffers when the caller drops each batch before asking for the next, and one more for a
``for`` loop (its variable holds the previous batch during the request); the ring holds
``prefetch_factor + 2``, allocated as needed. When none has come back and the ring is full
(the caller keeps batches), the oldest one out is left to the caller and replaced by a fresh
buffer: slower, never overwritten while anything refers to it.

What the count cannot see: a batch passed on to another process, a storage object or a raw
pointer kept without a tensor (an asynchronous copy out of pageable memory copies it before
returning). Copy a batch that must outlive those (``clone``). With pinned memory (CUDA) the
DataLoader's pin thread copies each batch, and its ticket goes back once that copy is dropped.
"""

from __future__ import annotations

import math
import os
from multiprocessing.queues import SimpleQueue

import torch


def storage_users(tensor: torch.Tensor) -> int:
    """Tensors (views included) holding this tensor's memory, plus one for the query itself."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


ALONE = storage_users(torch.empty(1))  # the count of a tensor nobody else uses


def new_shared(shape: tuple[int, ...]) -> torch.Tensor:
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class LocalBuffers:
    """Batch buffers of one process, reused once their consumer has let go of them."""

    KEEP = 2  # buffers kept for reuse: the consumer's current batch and ours

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.kept: list[torch.Tensor] = []
        self.allocated = 0

    def take(self) -> tuple[torch.Tensor, int]:
        """A free buffer and its ticket (always -1: nothing to return)."""
        for buffer in self.kept:
            if storage_users(buffer) == ALONE:
                return buffer, -1
        buffer = torch.empty(self.shape, dtype=torch.uint8)
        self.kept = [*self.kept[1 - self.KEEP :], buffer]
        self.allocated += 1
        return buffer, -1


class SharedRing:
    """A loader process's shared batch buffers, written only once their ticket is back.

    ``returned`` carries (ring, ticket) pairs from the training process; without it (a caller
    that returns nothing) every batch gets a fresh shared buffer.
    """

    def __init__(self, shape: tuple[int, ...], size: int, returned: SimpleQueue | None) -> None:
        self.shape = shape
        self.size = size if returned is not None else 0
        self.returned = returned
        self.id = os.getpid()  # tickets of an earlier loader process are ignored
        self.buffers: list[torch.Tensor] = []
        self.free: list[int] = []  # indices into buffers
        self.out: dict[int, int] = {}  # ticket -> buffer index, oldest first
        self.tickets = 0
        self.allocated = 0

    def take(self) -> tuple[torch.Tensor, int]:
        """A buffer nothing else refers to, and its ticket (-1: not to be returned)."""
        while self.returned is not None and not self.returned.empty():
            ring, ticket = self.returned.get()
            if ring == self.id and ticket in self.out:
                self.free.append(self.out.pop(ticket))
        if not self.free:
            self.allocated += 1
            if not self.size:
                return new_shared(self.shape), -1
            if len(self.buffers) < self.size:
                self.buffers.append(new_shared(self.shape))
                self.free.append(len(self.buffers) - 1)
            else:  # the oldest one out is left to whoever keeps it; its ticket is void
                index = self.out.pop(next(iter(self.out)))
                self.buffers[index] = new_shared(self.shape)
                self.free.append(index)
        index = self.free.pop()
        self.tickets += 1
        self.out[self.tickets] = index
        return self.buffers[index], self.tickets


class BufferReturns:
    """The training process's side: sends a batch's ticket back once it is let go of."""

    def __init__(self, queues: list[SimpleQueue]) -> None:
        self.queues = queues
        self.held: list[tuple[int, int, int, torch.Tensor]] = []  # worker, ring, ticket, batch

    def hold(self, worker: int, ring: int, ticket: int, batch: torch.Tensor) -> None:
        if ticket >= 0:  # an alias of our own: the caller's tensor then counts as a user
            self.held.append((worker, ring, ticket, batch.detach()))

    def hand_back(self) -> None:
        """Return the ticket of every batch only ``held`` still refers to."""
        kept = []
        for worker, ring, ticket, batch in self.held:
            if storage_users(batch) == ALONE:
                self.queues[worker].put((ring, ticket))
            else:
                kept.append((worker, ring, ticket, batch))
        self.held = kept
