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

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)  # the code comes with `ray job submit --working-dir`
        return
    log.info("no Ray cluster given: starting an embedded local Ray")
    add_to_pythonpath(str(ROOT))
    ray.init(**init_kwargs)
