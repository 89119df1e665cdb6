"""`ray job submit -- python -m training.pretrain` against a `ray start --head` cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.training.pretrain_shards import write_dataset
from training.config import PretrainConfig
from training.pretrain import check_job_paths

ROOT = Path(__file__).resolve().parents[2]


def job_env(monkeypatch, runtime_env: dict) -> None:
    config = {"runtime_env": runtime_env, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))


def test_relative_paths_are_refused_in_a_job_with_a_working_dir(monkeypatch, tmp_path) -> None:
    relative = PretrainConfig(dataset="./out", output=str(tmp_path / "run"))
    check_job_paths(relative)  # not a job: relative paths are the caller's own
    job_env(monkeypatch, {"working_dir": "gcs://_ray_pkg_x.zip"})
    with pytest.raises(ValueError, match="--dataset './out' is relative"):
        check_job_paths(relative)
    check_job_paths(PretrainConfig(dataset=str(tmp_path / "ds"), output="s3://bucket/run"))
    job_env(monkeypatch, {})  # a job without a working dir runs where it was started
    check_job_paths(relative)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_job_submit_runs_pretraining(tmp_path) -> None:
    write_dataset(str(tmp_path / "ds"), shards=2, per_shard=8, size=(64, 48))
    ray = str(Path(sys.executable).parent / "ray")
    gcs, dashboard, client, agent = free_ports(4)
    # the README's cluster: the nodes' own environment for the workers (no per-job `uv run`
    # virtualenv), Ray 2.60's token authentication on, for the CLI as well (it does not
    # turn it on by itself); ports of our own, as other Ray instances may run on this host
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    # a temp dir of its own: `ray start` records its address in <temp dir>/ray_current_cluster
    # and a later ray.init() without an address joins whatever that names, so in /tmp/ray an
    # address left behind would hijack the embedded Ray of the next test (short path: Ray's
    # sockets live under it)
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
         "--temp-dir", temp_dir, "--port", str(gcs), "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while subprocess.run(
            [ray, "job", "list", "--address", address], env=env, capture_output=True
        ).returncode:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the head's job server never answered"
            time.sleep(2)
        output = tmp_path / "run"
        submit = subprocess.run(
            [ray, "job", "submit", "--address", address, "--working-dir", ".", "--",
             "python", "-m", "training.pretrain", "--dataset", str(tmp_path / "ds"),
             "--output", str(output), "--preset", "vit_test", "--image-size", "32",
             "--batch-size", "4", "--total-steps", "2", "--warmup-steps", "1",
             "--num-workers", "1", "--loader-workers", "1", "--log-every", "1",
             "--picture-every", "0"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert submit.returncode == 0 and "succeeded" in submit.stdout + submit.stderr, (
            submit.stdout[-4000:] + submit.stderr[-4000:]
        )
        summary = json.loads((output / "summary.json").read_text())
        assert summary["final_step"] == 2 and (output / "encoder.pt").exists()
    finally:
        # `ray start --block` drains and stops its own processes on SIGTERM; then whatever
        # is left of the session the test started (and only that) is killed
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=90)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
