"""Per-host politeness across every worker of a job: at most N connections and R requests/s.

A host's budget is N slot tokens, kept by one owner (``SlotTable``; in a Ray job, an actor, see
``pipeline.politeness``). A request holds a token from before it connects until its body is read,
so no more than N requests to one host are in flight, whichever processes make them. Each token
also carries the earliest time its next request may start, pushed ``N / R`` seconds on by each
use: N tokens at one request per ``N / R`` s each make at most R requests/s.

Asking the owner for every request would cost an actor call each (about a millisecond of CPU
in the caller, the actor and the raylet): ``HostSlots``, one per worker process, keeps a token it
got for up to ``hold_s`` (1 s) and hands it to the next request of the same process to that
host, then gives it back, so a busy host costs two calls per token per second (with 0.1 s, the
3000-URL benchmark's stream took twice as long as with per-process limits), and other processes
waiting for the host get tokens within ``hold_s`` plus one request's time (the owner serves
waiters first come, first served).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol

Token = tuple[int, float]  # (slot number, earliest start of its next request, time.time())


class HostLimits(Protocol):
    """What a fetcher needs: ``with limits.slot(host):`` around each request."""

    def slot(
        self, host: str, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[bool]:
        """Context holding one of ``host``'s slots; yields False when none came in ``timeout``."""
        ...

    def release_idle(self) -> None: ...


class SlotTable:
    """Owner of every host's tokens; hosts are created on first use, dropped when idle.

    ``acquire`` returns a token, or None after queueing ``waiter`` (an asyncio or a
    concurrent.futures Future), which a later ``release`` completes with a token, first come,
    first served. Not thread-safe: one event loop (the actor) or a lock (``LocalSlots``).
    """

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("per-host concurrency must be at least 1")
        self.concurrency = concurrency
        self._free: dict[str, deque[Token]] = {}
        self._waiters: dict[str, deque] = defaultdict(deque)

    def acquire(self, host: str, waiter) -> Token | None:
        free = self._free.setdefault(host, deque((i, 0.0) for i in range(self.concurrency)))
        if free:
            return free.popleft()
        self._waiters[host].append(waiter)
        return None

    def release(self, host: str, token: Token) -> None:
        waiters = self._waiters.get(host)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter (its caller went away) is skipped
                waiter.set_result(token)
                return
        free = self._free.setdefault(host, deque())
        free.append(token)
        if len(free) == self.concurrency and max(nb for _, nb in free) <= time.time():
            # an idle host whose rate spacing has run out keeps no memory: a crawl meets
            # millions of hosts
            del self._free[host]
            self._waiters.pop(host, None)

    def busy(self, host: str) -> int:
        """Tokens of ``host`` out of the table (held by processes or in flight)."""
        free = self._free.get(host)
        return 0 if free is None else self.concurrency - len(free)


@dataclass
class _Held:
    slot: int
    not_before: float
    since: float  # monotonic time the process got it from the owner


class HostSlots:
    """One worker process's side: tokens from ``acquire(host, timeout)``, given back by
    ``release``.

    ``acquire`` blocks (it is called from fetch threads) and returns None when no token came
    within ``timeout`` seconds (None: no limit), leaving none behind; ``release`` must not block
    (a Ray actor call without waiting for its result).
    """

    def __init__(
        self,
        acquire: Callable[[str, float | None], Token | None],
        release: Callable[[str, Token], None],
        concurrency: int,
        rate: float,
        hold_s: float = 1.0,
    ) -> None:
        self._acquire, self._release = acquire, release
        self._interval = concurrency / rate if rate > 0 else 0.0
        self._hold_s = hold_s
        self._idle: dict[str, list[_Held]] = defaultdict(list)
        self._asking: set[str] = set()  # hosts one of this process's threads asks the owner for
        self._waiting: dict[str, int] = defaultdict(int)  # threads waiting here, per host
        self._swept = time.monotonic()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    @contextlib.contextmanager
    def slot(self, host: str, timeout: float | None = None) -> Iterator[bool]:
        """Hold one of ``host``'s tokens for the ``with`` body, waiting for its start time;
        yields False (holding nothing) when that is more than ``timeout`` seconds away."""
        started = time.time()
        held = self._take(host, timeout)
        if held is None:
            yield False
            return
        try:
            if self._interval:
                now = time.time()
                if timeout is not None and held.not_before > started + timeout:
                    yield False
                    return
                if held.not_before > now:
                    time.sleep(held.not_before - now)
                held.not_before = max(now, held.not_before) + self._interval
            yield True
        finally:
            self._give(host, held)

    def _take(self, host: str, timeout: float | None) -> _Held | None:
        """A kept token, else one from the owner. One thread per host asks the owner at a time;
        the others wait here for a token the process's requests give back (without this they
        queued at the owner while their own process kept tokens idle)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                idle = self._idle.get(host)
                if idle:
                    return idle.pop()
                if host not in self._asking:
                    self._asking.add(host)
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._waiting[host] += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting[host] -= 1
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            token = self._acquire(host, left)
        finally:
            with self._cond:
                self._asking.discard(host)
                self._cond.notify_all()  # the next waiter asks, or takes a token given back
        return None if token is None else _Held(token[0], token[1], time.monotonic())

    def _give(self, host: str, held: _Held) -> None:
        now = time.monotonic()
        back: list[tuple[str, _Held]] = []
        with self._cond:
            # kept for this process's next request, unless its asking thread is the only one
            # left waiting: the token must reach the owner then, which hands it to that thread
            # or to another process's (kept, it would sit idle while its own thread waits)
            wanted_here = host not in self._asking or self._waiting[host] > 0
            if now - held.since < self._hold_s and wanted_here:
                self._idle[host].append(held)
                self._cond.notify_all()
            else:
                back.append((host, held))
            if now - self._swept >= self._hold_s:
                back += self._expired(now)
                self._swept = now
        for name, token in back:
            self._release(name, (token.slot, token.not_before))

    def _expired(self, now: float) -> list[tuple[str, _Held]]:
        """Idle tokens kept past ``hold_s``, removed from this process (call with the lock)."""
        out = []
        for host in list(self._idle):
            keep = [h for h in self._idle[host] if now - h.since < self._hold_s]
            out += [(host, h) for h in self._idle[host] if now - h.since >= self._hold_s]
            if keep:
                self._idle[host] = keep
            else:
                del self._idle[host]
        return out

    def release_idle(self) -> None:
        """Give back every token this process keeps idle (at the end of a batch)."""
        with self._lock:
            back = [(host, h) for host, held in self._idle.items() for h in held]
            self._idle.clear()
        for host, held in back:
            self._release(host, (held.slot, held.not_before))


class LocalSlots:
    """The same limits within one process, for a fetcher used outside a job (tests, tools)."""

    def __init__(self, concurrency: int, rate: float) -> None:
        self._table = SlotTable(concurrency)
        self._lock = threading.Lock()
        self._slots = HostSlots(self._acquire, self._release, concurrency, rate, hold_s=0.0)

    def _acquire(self, host: str, timeout: float | None) -> Token | None:
        waiter: Future[Token] = Future()
        with self._lock:
            token = self._table.acquire(host, waiter)
        if token is not None:
            return token
        try:
            return waiter.result(timeout)
        except FutureTimeout:
            if not waiter.cancel():  # a release handed it a token meanwhile: give it back
                self._release(host, waiter.result())
            return None

    def _release(self, host: str, token: Token) -> None:
        with self._lock:
            self._table.release(host, token)

    def slot(
        self, host: str, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[bool]:
        return self._slots.slot(host, timeout)

    def release_idle(self) -> None:
        self._slots.release_idle()
