"""The cluster-wide per-host limits of a job: ``curation.politeness`` with Ray actors as owners.

Hosts are spread over a few limiter actors by a stable hash of their name, so that a large
cluster's requests are not all answered by one process. The actors need no CPU reservation:
they only move tokens (an asyncio loop each).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import zlib

import ray

from curation.fetch import FetchConfig
from curation.politeness import HostSlots, SlotTable, Token
from runtime.ray_env import beside_driver, embedded

CPUS_PER_LIMITER = 64  # one limiter actor per this many CPUs of the cluster


@ray.remote(num_cpus=0, max_concurrency=100_000)
class HostLimiter:
    def __init__(self, concurrency: int) -> None:
        self._table = SlotTable(concurrency)

    async def acquire(self, host: str) -> Token:
        waiter = asyncio.get_running_loop().create_future()
        token = self._table.acquire(host, waiter)
        return token if token is not None else await waiter

    async def release(self, host: str, token: Token) -> None:
        self._table.release(host, token)

    async def busy(self, host: str) -> int:
        return self._table.busy(host)


def job_limits(config: FetchConfig) -> tuple[FetchConfig, tuple]:
    """The fetch settings the job's workers use, and its limiter actors (kill them when the
    stream ends; not waited for: their processes start while the fetch workers do).

    No actors when the limits are per process, nor on an embedded Ray with no more CPUs than
    ``per_host_concurrency``: its CPUs are fixed, so at most that many fetch tasks run at once
    (one CPU each), and each gets an equal share of every host's connections and rate (keys
    spread a host's URLs over all tasks alike). That costs no actor process and no actor call.
    Otherwise (a cluster, which may grow, or more CPUs than the limit) limiter actors hand out
    each host's slots.
    """
    if not config.cluster_wide_limits:
        return config, ()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if embedded() and cpus <= config.per_host_concurrency:
        share = dataclasses.replace(
            config,
            per_host_concurrency=config.per_host_concurrency // cpus,
            per_host_rate=config.per_host_rate / cpus,
        )
        return share, ()
    count = 1 + cpus // CPUS_PER_LIMITER
    limiter = HostLimiter.options(**beside_driver())
    return config, tuple(limiter.remote(config.per_host_concurrency) for _ in range(count))


def _owner(limiters: tuple, host: str):
    return limiters[zlib.crc32(host.encode()) % len(limiters)]


def host_slots(limiters: tuple, concurrency: int, rate: float) -> HostSlots:
    """This worker process's side of the job's limits, once the limiters answer.

    A fetch's deadline counts its wait for a slot, not the limiters' start: a stream that
    asked them while their processes were still starting, on a busy node, ran fetches with a
    short total_timeout out "waiting for a connection slot". So this waits for them first.
    """
    ray.get([limiter.busy.remote("") for limiter in limiters])

    def acquire(host: str, timeout: float | None) -> Token | None:
        owner = _owner(limiters, host)
        ref = owner.acquire.remote(host)
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref)  # its waiter is skipped by the table
        # unless a token was handed over before the cancel arrived: give it back
        with contextlib.suppress(ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            owner.release.remote(host, ray.get(ref, timeout=5))
        return None

    return HostSlots(
        acquire,
        lambda host, token: _owner(limiters, host).release.remote(host, token),
        concurrency,
        rate,
    )
