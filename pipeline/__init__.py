"""Ray jobs and their wiring: the curation job, its stages, sink, plan, resume and dedup pass."""

import os

if "RAY_ADDRESS" not in os.environ:
    # Embedded local Ray: the workers share this interpreter and environment. Without this,
    # a driver started by `uv run` makes Ray wrap every worker in `uv run` and package the
    # checkout, costing seconds per worker. Ray reads the flag when it is first imported.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
