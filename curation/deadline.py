"""A hard deadline for one HTTP exchange: connect, TLS handshake, headers and body.

Socket timeouts bound each read, not a response: a server that sends its status line and
headers one byte a second never trips a 5 s read timeout and holds the fetch (and its batch)
for as long as it likes. Here a watchdog thread shuts the socket down when the exchange's
deadline passes; the blocked read then returns at once with an error and the fetcher reports a
timeout. The watchdog holds a duplicate of the socket's descriptor, so it never shuts down a
descriptor number that was closed and reused by another connection meanwhile.

Use ``WATCHDOG.watch(deadline)`` around a request made through a pool from ``watched_pools``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

_CURRENT = threading.local()  # the Watch of the request running in this thread, if any


class Watch:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._sock: socket.socket | None = None  # our duplicate of the connection's socket

    def attach(self, sock: socket.socket | None) -> None:
        """Watch ``sock`` (the first one attached wins: one connection per exchange)."""
        if sock is None or self._sock is not None:
            return
        try:
            self._sock = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        if self.expired:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        self._thread: threading.Thread | None = None
        # when the watchdog thread wakes next (monotonic; None: when notified)
        self._wakes_at: float | None = None

    @contextlib.contextmanager
    def watch(self, deadline: float) -> Iterator[Watch]:
        """Shut down the connection used inside this block once ``deadline`` (monotonic) passes."""
        watch = Watch(deadline)
        with self._cond:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fetch-deadline", daemon=True
                )
                self._thread.start()
            # Woken only when this deadline comes before its next wake-up: a fetch's deadlines
            # are all about total_timeout ahead, and waking it for every request made it look
            # at every open watch once per request.
            if self._wakes_at is None or deadline < self._wakes_at:
                self._cond.notify()
        _CURRENT.watch = watch
        try:
            yield watch
        finally:
            _CURRENT.watch = None
            with self._cond:
                self._watches.discard(watch)
                watch._close()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                pending = []
                for watch in self._watches:
                    if watch.expired:
                        continue
                    if watch.deadline <= now:
                        watch.expired = True
                        watch._shutdown()
                    else:
                        pending.append(watch.deadline)
                self._wakes_at = min(pending) if pending else None
                self._cond.wait(timeout=self._wakes_at - now if pending else None)


WATCHDOG = Watchdog()


def _watched(base: type) -> type:
    """``base`` (a urllib3 connection class) handing its socket to the current Watch."""

    class Watched(base):
        def _new_conn(self):  # a fresh TCP connection, before any TLS handshake
            sock = super()._new_conn()
            _attach(sock)
            return sock

        def request(self, *args, **kwargs):  # a kept-alive connection reused from the pool
            _attach(self.sock)
            return super().request(*args, **kwargs)

    Watched.__name__ = f"Watched{base.__name__}"
    return Watched


def _attach(sock: socket.socket | None) -> None:
    watch = getattr(_CURRENT, "watch", None)
    if watch is not None:
        with WATCHDOG._cond:
            watch.attach(sock)


def watched_pools() -> dict[str, type]:
    """urllib3 pool classes by scheme whose connections obey ``WATCHDOG.watch``."""
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Pool(HTTPConnectionPool):
        ConnectionCls = _watched(HTTPConnectionPool.ConnectionCls)

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = _watched(HTTPSConnectionPool.ConnectionCls)

    return {"http": Pool, "https": TLSPool}
