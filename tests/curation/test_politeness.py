"""Per-host limits: tokens are exclusive, spaced for the rate, kept briefly and given back."""

import threading
import time
from collections import defaultdict

from curation import politeness
from curation.politeness import HostSlots, LocalSlots, SlotTable


def _hammer(slots, hosts, per_host, seconds=0.02):
    """Run ``per_host`` threads per host through ``slots``; returns (max in flight, starts)."""
    lock = threading.Lock()
    now: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    starts: dict[str, list[float]] = defaultdict(list)

    def one(host):
        with slots.slot(host):
            with lock:
                now[host] += 1
                peak[host] = max(peak[host], now[host])
                starts[host].append(time.monotonic())
            time.sleep(seconds)
            with lock:
                now[host] -= 1

    threads = [threading.Thread(target=one, args=(h,)) for h in hosts for _ in range(per_host)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(peak), starts


def test_concurrency_per_host_is_capped_and_reached():
    peak, _ = _hammer(LocalSlots(concurrency=2, rate=0), ["a", "b", "c"], per_host=10)
    assert peak == {"a": 2, "b": 2, "c": 2}


def test_rate_per_host_spaces_requests(monkeypatch):
    # 2 tokens at 20 requests/s: each token starts a request at most every 0.1 s
    clock = {"t": 1000.0}

    class FakeTime:
        time = staticmethod(lambda: clock["t"])
        monotonic = staticmethod(lambda: clock["t"])

        @staticmethod
        def sleep(seconds):
            clock["t"] += seconds

    monkeypatch.setattr(politeness, "time", FakeTime)
    slots = LocalSlots(concurrency=2, rate=20)
    starts = []
    for _ in range(6):
        with slots.slot("a"):
            starts.append(round(clock["t"] - 1000.0, 6))
    assert starts == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2]
    # a token's spacing travels with it: another host has its own tokens
    with slots.slot("b"):
        assert round(clock["t"] - 1000.0, 6) == 0.2


def test_rate_holds_across_threads():
    _, starts = _hammer(LocalSlots(concurrency=2, rate=40), ["a"], per_host=10, seconds=0.0)
    times = sorted(starts["a"])
    assert times[-1] - times[0] >= (10 - 2) / 40 - 0.01  # delays only make it longer


def test_tokens_are_kept_for_the_next_request_then_given_back():
    table = SlotTable(4)
    calls = {"acquire": 0, "release": []}

    def acquire(host, timeout):
        calls["acquire"] += 1
        return table.acquire(host, None)

    def release(host, token):
        calls["release"].append(token)
        table.release(host, token)

    slots = HostSlots(acquire, release, concurrency=4, rate=0, hold_s=10.0)
    for _ in range(20):
        with slots.slot("h"):
            pass
    assert calls["acquire"] == 1 and calls["release"] == []  # one token, reused
    assert table.busy("h") == 1
    slots.release_idle()
    assert len(calls["release"]) == 1 and table.busy("h") == 0
    # without keeping, every request asks the owner
    slots = HostSlots(acquire, release, concurrency=4, rate=0, hold_s=0.0)
    for _ in range(5):
        with slots.slot("h"):
            pass
    assert calls["acquire"] == 6 and table.busy("h") == 0


def test_waiters_are_served_in_order_and_idle_hosts_forgotten():
    from concurrent.futures import Future

    table = SlotTable(1)
    token = table.acquire("h", None)
    first, second = Future(), Future()
    assert table.acquire("h", first) is None and table.acquire("h", second) is None
    first.cancel()  # its caller went away: skipped
    table.release("h", token)
    assert second.result(timeout=1) == token and not first.done() or first.cancelled()
    table.release("h", second.result())
    assert table.busy("h") == 0 and table._free == {}


def test_a_slot_not_had_in_time_is_refused_and_no_token_is_lost():
    slots = LocalSlots(concurrency=1, rate=0)
    table = slots._table
    with slots.slot("h") as got:
        assert got
        with slots.slot("h", timeout=0.05) as late:
            assert not late
    assert table.busy("h") == 0  # the waiter gave up cleanly: the one token is back
    # at 1 request/s the next start is a second away: a 0.05 s budget is refused
    slots = LocalSlots(concurrency=1, rate=1)
    with slots.slot("h", timeout=0.05) as first:
        assert first
    with slots.slot("h", timeout=0.05) as second:
        assert not second
    assert slots._table.busy("h") == 0


def test_threads_of_a_process_share_its_kept_tokens_instead_of_queueing_at_the_owner():
    # the owner has 2 tokens; this process's 8 requests must all run on the 2 it keeps, and the
    # thread left asking the owner at the end gets one back through it (no deadlock)
    from concurrent.futures import Future

    table = SlotTable(2)
    asked = []

    def acquire(host, timeout):
        asked.append(host)
        waiter = Future()
        token = table.acquire(host, waiter)
        return token if token is not None else waiter.result(timeout=5)

    slots = HostSlots(acquire, table.release, concurrency=2, rate=0, hold_s=10.0)
    started = time.monotonic()
    peak, _ = _hammer(slots, ["h"], per_host=8, seconds=0.05)
    assert peak == {"h": 2}
    assert time.monotonic() - started < 2.0
    assert len(asked) <= 3  # two tokens, then the last asker is served a token given back
