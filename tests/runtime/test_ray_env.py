"""Joining a Ray cluster: an address where no Ray answers is refused in seconds, one line."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from runtime.ray_env import check_address
from tests.conftest import free_port


def test_a_real_cluster_passes(ray_cluster):
    import ray

    gcs = ray.get_runtime_context().gcs_address  # what `ray job submit` puts in RAY_ADDRESS
    started = time.monotonic()
    check_address(gcs)
    check_address(None)  # RAY_ADDRESS unset: the embedded Ray, nothing to check
    assert time.monotonic() - started < 2


def _serve(reply: bytes | None) -> socket.socket:
    """A listener on loopback that answers each connection with ``reply`` (None: never)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        with server.accept()[0] as conn:
            if reply is not None:
                conn.sendall(reply)
            else:
                time.sleep(3)

    threading.Thread(target=answer, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (None, r"no Ray cluster answers there \(timed out\)"),
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            r"what answers there is not a Ray cluster \(no gRPC\)",
        ),
        # closed at once: an end of stream or a reset, by timing
        (b"", r"what answers there is not a Ray cluster \(no gRPC\)|no Ray cluster answers there"),
    ],
)
def test_something_else_at_the_address_is_refused(reply, message):
    with _serve(reply) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ValueError, match=f"^--ray-address {address}: ") as caught:
            check_address(address, timeout=1.0)
    assert re.search(message, str(caught.value)) and time.monotonic() - started < 3


def test_nothing_listening_or_no_address(monkeypatch):
    port = free_port()
    with pytest.raises(ValueError, match=f"127.0.0.1:{port}: no Ray cluster answers there"):
        check_address(f"ray://127.0.0.1:{port}")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match=f"^RAY_ADDRESS 127.0.0.1:{port}: no Ray cluster"):
        check_address(None)
    for bad in ("nowhere", "host:port", ":6379"):
        with pytest.raises(ValueError, match="expected host:port, ray://host:port or auto"):
            check_address(bad)
    check_address("auto")  # Ray's own lookup, which fails fast
