"""Joining or starting Ray, one way for every job (curation, pretraining, fine-tuning).

Environment switches are set by ``start_ray`` itself, not as a side effect of importing a
package, so whichever entry point or test starts Ray gets the same cluster.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("humans300m")


def add_to_pythonpath(path: str) -> None:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])


def submitted_job_runtime_env() -> dict | None:
    """The runtime_env of the ``ray job submit`` job this driver runs in; None outside one."""
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray for a submitted job
    return json.loads(job).get("runtime_env", {}) if job else None


def check_submitted_job(paths: dict[str, str | None]) -> None:
    """Under ``ray job submit --working-dir``, refuse relative local ``paths`` (flag -> value),
    and warn when the workers would each run in a virtualenv synced for the job.

    The driver runs inside the job's unpacked copy of the working dir on the cluster
    (/tmp/ray/session_*/runtime_resources/working_dir_files/...), so ``./out`` would be
    written there and lost with the session, and a relative dataset would be looked for there.
    """
    from runtime.storage import is_s3

    runtime_env = submitted_job_runtime_env() or {}
    if str(runtime_env.get("py_executable", "")).split(" ")[0].endswith("uv"):
        # Ray wraps every worker in `uv run` when the head was started under `uv run`
        # without RAY_ENABLE_UV_RUN_RUNTIME_ENV=0: each job then syncs a whole virtualenv
        # (~6 GB with torch) inside its copy of the working dir before a worker starts
        log.warning(
            "this job's workers run under %r: start the cluster with "
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 (as ray_cluster.yaml does) to use the nodes' "
            "environment instead of a virtualenv synced per job",
            runtime_env["py_executable"],
        )
    if "working_dir" not in runtime_env:
        return
    for flag, value in paths.items():
        if value and not is_s3(value) and not os.path.isabs(value):
            raise ValueError(
                f"{flag} {value!r} is relative: in a job submitted with --working-dir it "
                f"would resolve inside the job's temporary copy of the working dir on the "
                f"cluster ({os.getcwd()}); give an absolute path or s3://"
            )


def use_this_environment_for_workers() -> None:
    """Make an embedded Ray's workers run in this interpreter's environment.

    A driver started by ``uv run`` otherwise makes Ray wrap every worker in ``uv run`` and
    package the checkout (seconds per worker). Ray reads the switch into a constant when it is
    first imported and checks the constant in ``ray.init``: set both, so the order of imports
    does not matter, and the environment variable reaches the processes Ray starts.
    """
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False


# A client's HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS,
# the Ray Client server) answers at once with a SETTINGS frame of its own.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4  # HTTP/2 frame type


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Refuse within about ``timeout`` seconds a Ray address (``host:port``,
    ``ray://host:port``; None: ``RAY_ADDRESS``) where no gRPC server answers: ``ray.init``
    retries for minutes where nothing listens, and forever where something listens but
    never speaks.

    'auto', 'local' and other schemes are left to Ray, as are TLS clusters (RAY_USE_TLS).
    """
    given = "--ray-address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local") or "://" in address.removeprefix("ray://"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{given} {address!r}: expected host:port, ray://host:port or auto")
    if os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
        return  # the server would wait for a TLS handshake, not HTTP/2
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(_HTTP2_HELLO)
            head = _read(sock, 9)  # the frame header: length (3), type (1), flags, stream
    except OSError as exc:  # refused, no route, unknown host, timed out
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ValueError(
            f"{given} {address}: no Ray cluster answers there ({reason}); start one "
            "(ray start --head) or leave the address out for an embedded local Ray"
        ) from None
    if len(head) < 9 or head[3] != _SETTINGS:
        raise ValueError(f"{given} {address}: what answers there is not a Ray cluster (no gRPC)")


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


_STARTED_HERE = False  # whether start_ray started the Ray instance this process uses


def beside_driver() -> dict:
    """Options placing an actor on the driver's node (``Actor.options(**beside_driver())``).

    For a job's coordination actors (progress and shard numbers, per-host limits): the
    driver's node lives as long as the job, while any other may be lost mid-run, and a rerun
    started at once could still be given a node that died moments before (its actors then
    "never ran", and every task asking them failed).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def embedded() -> bool:
    """Whether this process runs on a local Ray that ``start_ray`` started: its CPUs are fixed
    for the job's life (a cluster's may grow)."""
    import ray

    return _STARTED_HERE and ray.is_initialized()


def start_ray(address: str | None = None, **init_kwargs: object) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else start a local Ray.

    The local Ray's workers import this project from its checkout through the inherited
    environment rather than a runtime_env, so the workers Ray prestarts take tasks at once
    (a runtime_env makes Ray start fresh ones, seconds each, for the first tasks).
    Raises ValueError at once when nothing listens at the address (``check_address``), and
    when what answers there is not a Ray cluster Ray accepts.
    """
    check_address(address)
    import ray

    # Ray Data's V2 Parquet reader starts FooterReader actors (new processes) for every read:
    # 10-20 s before the first row on this 2-core machine even with warm workers, against
    # 0.3-0.4 s for the V1 reader. The jobs' Parquet inputs (plans, manifests) are few files
    # whose footers the V1 reader reads in its own tasks, so the actors buy nothing here.
    # Set through the environment before Ray Data is imported (and inherited by the workers
    # Ray starts): importing it here would cost a job that runs no Ray Data most of a second.
    os.environ["RAY_DATA_USE_DATASOURCE_V2"] = "0"
    if "ray.data" in sys.modules:
        ray.data.DataContext.get_current().use_datasource_v2 = False

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        pass  # a caller (a test, a notebook) started it
    elif address:
        try:
            ray.init(address=address)  # the code comes with `ray job submit --working-dir`
        except ConnectionError as exc:  # something answered, but no Ray (or 'auto', none)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"cannot join the Ray cluster at {address}: {first}") from None
    else:
        log.info("no Ray cluster given: starting an embedded local Ray")
        add_to_pythonpath(str(ROOT))
        use_this_environment_for_workers()
        # The dashboard of an instance that ends with the job is never opened, and it is the
        # costliest part of the start: its head process forks six more (metrics, state, data,
        # ...), each importing Ray, about half the CPU of a fresh local Ray's start here.
        init_kwargs.setdefault("include_dashboard", False)
        # "local": a new embedded instance even when a `ray start` cluster runs on this
        # machine (plain ray.init() would join it, and refuse resource arguments)
        ray.init(address="local", **init_kwargs)
        global _STARTED_HERE
        _STARTED_HERE = True
