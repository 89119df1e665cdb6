"""Joining or starting Ray, one way for every job (curation, pretraining, fine-tuning).

Importing this module imports ``pipeline``, whose ``__init__`` turns off Ray's ``uv run``
worker wrapper for embedded clusters before Ray is first imported.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("humans300m")


def add_to_pythonpath(path: str) -> None:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])


def start_ray(address: str | None = None, **init_kwargs: object) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else start a local Ray.

    The local Ray's workers import this project from its checkout through the inherited
    environment rather than a runtime_env, so the workers Ray prestarts take tasks at once
    (a runtime_env makes Ray start fresh ones, seconds each, for the first tasks).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        pass  # a caller (a test, a notebook) started it
    elif address:
        ray.init(address=address)  # the code comes with `ray job submit --working-dir`
    else:
        log.info("no Ray cluster given: starting an embedded local Ray")
        add_to_pythonpath(str(ROOT))
        # "local": a new embedded instance even when a `ray start` cluster runs on this
        # machine (plain ray.init() would join it, and refuse resource arguments)
        ray.init(address="local", **init_kwargs)
    # Ray Data's V2 Parquet reader starts FooterReader actors (new processes) for every read:
    # 10-20 s before the first row on this 2-core machine even with warm workers, against
    # 0.3-0.4 s for the V1 reader. The jobs' Parquet inputs (plans, manifests) are few files
    # whose footers the V1 reader reads in its own tasks, so the actors buy nothing here.
    ray.data.DataContext.get_current().use_datasource_v2 = False
