"""Progress of the curation stream: inputs done of the total, kept, rejected by reason, rate, ETA.

The last stage of the stream reports the outcome counts of each batch it returns (numpy, in the
worker) to one counter actor: one small fire-and-forget call per batch, nothing per row and
nothing on the driver's data path. A driver thread reads the counter and shows it: a tqdm bar
when stdout is a terminal, else a plain line every ``interval`` seconds, which is what
``ray job submit`` captures into the job's log.

The display is for people: a task that Ray retries reports its batch again, so it may count
a few inputs twice. The summary counts what the sink wrote.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any, TextIO

import numpy as np
import ray

from curation.record import OK, Batch
from runtime.progress import duration

TOP_REASONS = 3  # rejection reasons named in a line; the rest are summed as "other"
BAR_REFRESH_S = 0.5  # how often a terminal bar is redrawn


@ray.remote(num_cpus=0)
class ProgressCounter:
    """The job's counters: outcomes of the inputs the stream has finished (kept, and rejected
    by reason), and the numbers of the shards its writers publish.

    One actor for both: an actor is a worker process of its own, which Ray starts (importing
    Ray, seconds of CPU on a busy node) in a queue of a few at a time, ahead of the stream's
    first task when the actors are made first; a small job felt each one.
    """

    def __init__(self, first_shard: int = 0) -> None:
        self._kept = 0
        self._rejected: Counter[str] = Counter()
        self._next_shard = first_shard

    def next_shard(self) -> int:
        """A shard number no writer of this dataset has used: counted up from ``first_shard``,
        which the job sets above the highest number already published."""
        number = self._next_shard
        self._next_shard += 1
        return number

    def add(self, kept: int, rejected: dict[str, int]) -> None:
        self._kept += kept
        self._rejected.update(rejected)

    def snapshot(self) -> tuple[int, dict[str, int]]:
        return self._kept, dict(self._rejected)


def outcomes(batch: Batch) -> tuple[int, dict[str, int]]:
    """(kept, {reason: rejected}) of a batch whose rows are all decided."""
    ok = batch["status"] == OK
    reasons, counts = np.unique(batch["reason"][~ok].astype(str), return_counts=True)
    return int(ok.sum()), dict(zip(reasons.tolist(), counts.tolist(), strict=True))


def report(counter: Any, batch: Batch) -> None:
    """Add a finished batch's outcomes to the job's ``counter`` (None: nothing to report to)."""
    if counter is not None and len(batch["status"]):
        counter.add.remote(*outcomes(batch))


class Reports:
    """Mixin for the stream's last batch stage class: reports each output batch to ``counter``.

    A mixin rather than a wrapper around the stage, so Ray Data's progress bars and stats keep
    naming the stage (``MapBatches(ReportedPersonDetector)``).
    """

    def __init__(self, *, counter: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counter = counter

    def __call__(self, batch: Batch) -> Batch:
        out = super().__call__(batch)  # type: ignore[misc]
        report(self._counter, out)
        return out


def rejected_text(rejected: dict[str, int]) -> str:
    """``rejected 350 (http_error 200, too_small 100, other 50)``: the top reasons first."""
    total = sum(rejected.values())
    if not total:
        return "rejected 0"
    ranked = sorted(rejected.items(), key=lambda item: (-item[1], item[0]))
    named = [f"{reason} {n:,}" for reason, n in ranked[:TOP_REASONS]]
    rest = sum(n for _, n in ranked[TOP_REASONS:])
    if rest:
        named.append(f"other {rest:,}")
    return f"rejected {total:,} ({', '.join(named)})"


def outcome_text(kept: int, rejected: dict[str, int], total: int, elapsed: float) -> str:
    """``kept 800, rejected 350 (...), 45.1 images/s, ETA 3m12s``: the rate since the start of
    the stream, and the time left at that rate."""
    done = kept + sum(rejected.values())
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = duration(max(total - done, 0) / rate) if rate > 0 else "?"
    return f"kept {kept:,}, {rejected_text(rejected)}, {rate:.1f} images/s, ETA {eta}"


def status_line(kept: int, rejected: dict[str, int], total: int, elapsed: float) -> str:
    """One line of progress: done/total, kept, rejected by top reasons, images/s and ETA."""
    done = kept + sum(rejected.values())
    share = f" ({done / total:.0%})" if total else ""
    return (
        f"progress: {done:,}/{total:,} inputs{share}, "
        f"{outcome_text(kept, rejected, total, elapsed)}, elapsed {duration(elapsed)}"
    )


class ProgressDisplay:
    """Shows ``counter`` while the stream runs (a context manager around the stream).

    ``interval``: seconds between plain lines when ``out`` is not a terminal; 0 prints none.
    """

    def __init__(
        self, counter: Any, total: int, interval: float, out: TextIO | None = None
    ) -> None:
        self.counter = counter
        self.total = total
        self.interval = interval
        self.out = out or sys.stdout
        self.terminal = self.out.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def __enter__(self) -> ProgressDisplay:
        self._started = time.monotonic()
        if self.terminal or self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _snapshot(self) -> tuple[int, dict[str, int]] | None:
        try:
            return ray.get(self.counter.snapshot.remote(), timeout=30)
        except Exception:  # a display must never fail the job it shows
            return None

    def _run(self) -> None:
        if self.terminal:
            self._run_bar()
            return
        while not self._stop.wait(self.interval):
            snapshot = self._snapshot()
            if snapshot is not None:
                elapsed = time.monotonic() - self._started
                print(status_line(*snapshot, self.total, elapsed), file=self.out, flush=True)

    def _run_bar(self) -> None:
        from tqdm import tqdm

        bar = None
        try:
            while True:
                stopping = self._stop.wait(BAR_REFRESH_S)
                snapshot = self._snapshot()
                if snapshot is not None and (bar is not None or any(snapshot)):
                    kept, rejected = snapshot
                    # the rate and ETA of the plain lines: tqdm's own would start at this
                    # bar's creation and read the first batches as a burst
                    text = outcome_text(
                        kept, rejected, self.total, time.monotonic() - self._started
                    )
                    # Made once the first batch is done, when Ray Data's own bars (one per
                    # operator, tqdm positions from 0) exist: tqdm then puts this one below
                    # them instead of drawing over their first line.
                    bar = bar or tqdm(
                        desc="inputs",
                        total=self.total,
                        file=self.out,
                        dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}",
                    )
                    bar.set_postfix_str(text, refresh=False)
                    bar.update(kept + sum(rejected.values()) - bar.n)
                if stopping:
                    return
        finally:
            if bar is not None:
                bar.close()
