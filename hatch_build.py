"""Build hook: record the git commit in the wheel and sdist (``schemas/_commit.txt``).

``schemas.version.code_version`` reads it in an installed copy, where there is no checkout to
ask. Building from an sdist (no ``.git``) keeps the commit the sdist recorded.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

TARGET = "schemas/_commit.txt"


class CommitHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if version == "editable":
            return  # an editable install runs from the checkout and asks git directly
        root = Path(self.root)
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            if (root / TARGET).is_file():
                return  # building from an sdist: it ships the commit it recorded
            commit = "unknown"
        out = Path(tempfile.mkdtemp()) / "_commit.txt"
        out.write_text(commit + "\n")
        build_data["force_include"][str(out)] = TARGET
