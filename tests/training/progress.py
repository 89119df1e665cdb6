"""Parsing the training loop's progress lines (training.loop) out of captured stdout."""

from __future__ import annotations

import re

STEP = re.compile(
    r"step (\d+)/(\d+)  loss (\d+\.\d{4})  lr (\d\.\de[-+]\d\d)  (\d+\.\d|-) img/s  "
    r"eta (\d+h\d\dm|\d+m\d\ds|\d+s|-)"
)
DONE = re.compile(
    r"done (\d+)/(\d+) steps in (\S+)  loss (\d+\.\d{4})  (\d+\.\d) img/s "
    r"(excluding start-up \(the first step, \d+\.\d s\)|\(start-up included: one step this run\))"
)


def progress_lines(stdout: str) -> tuple[list[dict], dict]:
    """The step lines and the final line; every line of the loop's shape, nothing else."""
    steps, done = [], None
    for line in stdout.splitlines():
        if line.startswith("step "):
            m = STEP.fullmatch(line)
            assert m, f"malformed progress line {line!r}"
            steps.append({"step": int(m[1]), "total": int(m[2]), "loss": float(m[3]),
                          "lr": float(m[4]), "rate": None if m[5] == "-" else float(m[5]),
                          "eta": m[6]})  # fmt: skip
        elif line.startswith("done "):
            m = DONE.fullmatch(line)
            assert m, f"malformed final line {line!r}"
            done = {"step": int(m[1]), "total": int(m[2]), "loss": float(m[4]),
                    "rate": float(m[5]), "excludes_startup": m[6].startswith("excluding")}  # fmt: skip
    assert done is not None, "no final progress line"
    return steps, done
