"""One job at a time per output: a lease file that a second job refuses to override.

Two jobs writing one dataset would lose data, not just waste work: each numbers its shards from
the same manifests, so they overwrite each other's shards, and each one's clean-up of a killed
run deletes the other's in-flight temporary files. So a job holds ``<dataset>/_work/lock.json``
(run id, host, pid, heartbeat) for its whole life and a second job stops with a clear error.

A lease left by a killed job must not block the rerun that resumes it, so it is taken over
when its holder is provably gone (same host, process no longer running) or its heartbeat is
older than ``stale_after_s`` (a holder on another machine: a cluster driver). Storage offers no
compare-and-swap that works on both local disks and S3, so two jobs starting within the same
second could both write the file; the later write wins and the earlier job sees, on reading it
back, that it lost, and stops before touching anything.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from runtime.storage import Location, delete, exists, read_bytes, write_bytes_atomic
from schemas.layout import LOCK_FILE

log = logging.getLogger("humans300m")

HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0  # six missed heartbeats
# How long a new holder waits before reading back that its write won. A rival loses the race
# only if it read "no lock" before our write and wrote after our read-back; its read-to-write
# gap is milliseconds, so half a second covers S3 latency too.
SETTLE_S = 0.5


class OutputBusy(RuntimeError):
    """Another live job holds the output."""


@dataclass(frozen=True)
class Holder:
    run_id: str
    host: str
    pid: int
    heartbeat: float  # unix seconds of the last renewal

    def alive_here(self) -> bool | None:
        """Whether the holding process still runs, when it is on this host; None elsewhere."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True


def _read(lock: Location) -> Holder | None:
    if not exists(lock):
        return None
    try:
        return Holder(**json.loads(read_bytes(lock)))
    except (ValueError, TypeError) as exc:
        log.warning("ignoring an unreadable lock file %s: %s", lock.uri, exc)
        return None


class OutputLock:
    """Held from ``acquire`` to ``release``; a daemon thread renews the heartbeat."""

    def __init__(
        self,
        dataset: Location,
        run_id: str,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.lock = dataset.join(LOCK_FILE)
        self.run_id = run_id
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claimed_at = 0.0

    def _me(self) -> Holder:
        return Holder(self.run_id, socket.gethostname(), os.getpid(), time.time())

    def acquire(self) -> None:
        """Take the lease or raise ``OutputBusy`` naming the job that holds it."""
        self.claim()
        self.confirm()

    def claim(self) -> None:
        """The first half of ``acquire``: refuse a live holder, write our lease. Do nothing to
        the output before ``confirm``; what needs no output (starting Ray) may run between
        them, so that the read-back's settle time is not waited for on its own."""
        current = _read(self.lock)
        if current is not None and current.run_id != self.run_id:
            self._check_takeover(current)
        write_bytes_atomic(self.lock, json.dumps(asdict(self._me())).encode())
        self._claimed_at = time.monotonic()

    def confirm(self) -> None:
        """The second half of ``acquire``: once ``SETTLE_S`` has passed since ``claim``, read
        the lease back (a rival that wrote in the same moment wins or loses here) and start
        renewing it."""
        time.sleep(max(0.0, self._claimed_at + SETTLE_S - time.monotonic()))
        winner = _read(self.lock)
        if winner is None or winner.run_id != self.run_id:
            raise OutputBusy(
                f"{self.lock.uri}: another job ({winner.run_id if winner else 'unknown'}) "
                "started on this output at the same moment; run one job per output"
            )
        self._thread = threading.Thread(target=self._renew, name="output-lock", daemon=True)
        self._thread.start()

    def _check_takeover(self, current: Holder) -> None:
        age = time.time() - current.heartbeat
        alive = current.alive_here()
        # a live holder renews every heartbeat_s, so a stale heartbeat means it is gone even
        # when its pid now belongs to some other process
        if alive is not False and age <= self.stale_after_s:
            wait = "" if alive else f", or wait until {self.stale_after_s:.0f} s after its last one"
            raise OutputBusy(
                f"{self.lock.uri}: run {current.run_id} (host {current.host}, pid "
                f"{current.pid}, last heartbeat {age:.0f} s ago) is writing this output. Stop "
                f"it first{wait}; two jobs on one output would overwrite each other's shards"
            )
        log.warning(
            "taking over the output from run %s on %s (%s)",
            current.run_id,
            current.host,
            "its process has exited" if alive is False else f"no heartbeat for {age:.0f} s",
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = _read(self.lock)
            if holder is not None and holder.run_id != self.run_id:
                # taken over (we were presumed dead): stop renewing; the other job owns it now
                log.error("run %s took this output over; this job's output is at risk", holder)
                return
            try:
                write_bytes_atomic(self.lock, json.dumps(asdict(self._me())).encode())
            except OSError as exc:  # a storage hiccup must not kill the job; retry next beat
                log.warning("could not renew the output lock: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = _read(self.lock)
        if holder is not None and holder.run_id == self.run_id:
            delete(self.lock)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
