"""The code version a dataset's summary records, and that ``humans300m --version`` prints.

In a git checkout it is the checkout's commit. An installed copy (a wheel, ``pip install .``)
reads the commit that ``hatch_build.py`` recorded in ``schemas/_commit.txt`` when it was built,
so a job run outside the checkout still names the code that wrote the dataset.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

COMMIT_FILE = Path(__file__).with_name("_commit.txt")  # written into wheels by hatch_build.py
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """The full git commit of this code, or "unknown" when neither git nor a build recorded it."""
    if COMMIT_FILE.is_file():
        # first: an installed copy may sit inside some other git checkout (a venv in a clone),
        # whose HEAD is not the code that was installed
        return COMMIT_FILE.read_text().strip() or "unknown"
    if not (_SOURCE_ROOT / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_SOURCE_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def package_version() -> str:
    """The distribution's version (pyproject.toml), or "unknown" when run from a bare copy."""
    try:
        return metadata.version("humans300m")
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line() -> str:
    return f"humans300m {package_version()} (code version {code_version()})"
