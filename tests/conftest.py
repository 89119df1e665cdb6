"""Real local services shared by the tests: a Ray cluster and an S3 server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Ultralytics must never reach the network in tests and needs a writable config folder.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / ".pytest_cache" / "ultralytics"))
# Ray workers share this venv; Ray reads the flag at import (see runtime/ray_env.py).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on loopback; yields its endpoint URL and exports it to AWS clients."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        _wait_for_port(port)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket on the test S3 server; yields its name."""
    import boto3

    name = (
        "t-"
        + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
        + f"-{time.time_ns() % 10**6}"
    )
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[None]:
    """A real local Ray instance (2 CPUs, as on CI) shared by the tests that need one.

    Started after the S3 server so that its workers inherit the S3 endpoint and credentials,
    as workers on a real cluster get them from their node's environment.
    """
    import ray

    from runtime.ray_env import add_to_pythonpath

    add_to_pythonpath(str(ROOT))  # inherited by the workers Ray prestarts
    if not ray.is_initialized():
        ray.init(
            address="local",  # never join a `ray start` cluster left running on this machine
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield
    ray.shutdown()
