"""One job per output: the lease in <dataset>/_work/lock.json (pipeline.lock)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline.lock import OutputBusy, OutputLock
from runtime.storage import exists, locate, read_bytes, write_bytes_atomic
from schemas.layout import LOCK_FILE


def _plant(dataset, **holder) -> None:
    """A lock file as another job would have left it."""
    fields = {
        "run_id": "other-run",
        "host": socket.gethostname(),
        "pid": 1,
        "heartbeat": time.time(),
    }
    write_bytes_atomic(dataset.join(LOCK_FILE), json.dumps({**fields, **holder}).encode())


def _holder(dataset) -> dict:
    return json.loads(read_bytes(dataset.join(LOCK_FILE)))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_held_for_the_job_and_removed_after(tmp_path):
    dataset = locate(str(tmp_path / "out"))
    with OutputLock(dataset, "run-a"):
        assert _holder(dataset)["run_id"] == "run-a"
        with pytest.raises(OutputBusy, match="run run-a .* is writing this output"):
            OutputLock(dataset, "run-b").acquire()
    assert not exists(dataset.join(LOCK_FILE))


def test_live_holder_on_another_host_blocks_until_its_heartbeat_is_stale(tmp_path):
    dataset = locate(str(tmp_path / "out"))
    _plant(dataset, host="head-node-elsewhere", heartbeat=time.time() - 60)
    with pytest.raises(OutputBusy, match="wait until 180 s after its last one"):
        OutputLock(dataset, "run-b").acquire()
    _plant(dataset, host="head-node-elsewhere", heartbeat=time.time() - 600)
    with OutputLock(dataset, "run-b"):
        assert _holder(dataset)["run_id"] == "run-b"


def test_killed_holder_on_this_host_is_taken_over_at_once(tmp_path):
    """The rerun right after a kill -9 must not wait for the heartbeat to go stale."""
    dataset = locate(str(tmp_path / "out"))
    _plant(dataset, pid=_dead_pid())
    with OutputLock(dataset, "rerun"):
        assert _holder(dataset)["run_id"] == "rerun"


def test_reused_pid_with_a_stale_heartbeat_is_taken_over(tmp_path):
    dataset = locate(str(tmp_path / "out"))
    _plant(dataset, pid=os.getpid(), heartbeat=time.time() - 600)  # our pid: "alive"
    with OutputLock(dataset, "rerun"):
        assert _holder(dataset)["run_id"] == "rerun"


def test_heartbeat_is_renewed_while_held(tmp_path):
    dataset = locate(str(tmp_path / "out"))
    with OutputLock(dataset, "run-a", heartbeat_s=0.05):
        first = _holder(dataset)["heartbeat"]
        deadline = time.time() + 10
        while _holder(dataset)["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert _holder(dataset)["heartbeat"] > first


def test_unreadable_lock_file_is_replaced(tmp_path):
    dataset = locate(str(tmp_path / "out"))
    write_bytes_atomic(dataset.join(LOCK_FILE), b"{not json")
    with OutputLock(dataset, "run-a"):
        assert _holder(dataset)["run_id"] == "run-a"


def test_lock_on_s3(s3_bucket):
    dataset = locate(f"s3://{s3_bucket}/humans/v1")
    with OutputLock(dataset, "run-a"):
        assert _holder(dataset)["run_id"] == "run-a"
        with pytest.raises(OutputBusy):
            OutputLock(dataset, "run-b").acquire()
    assert not exists(dataset.join(LOCK_FILE))


def test_job_on_a_busy_output_stops_before_writing(tmp_path, capsys):
    from pipeline.build_humans300m import main

    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\n")
    out = tmp_path / "out"
    dataset = locate(str(out))
    _plant(dataset, pid=os.getpid())  # a live job: this very process
    code = main(["--input", str(urls), "--output", str(out), "--detector", "none"])
    assert code == 2
    assert "is writing this output" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["_work"]
    assert [p.name for p in (out / "_work").iterdir()] == ["lock.json"]
    assert _holder(dataset)["run_id"] == "other-run"  # untouched
