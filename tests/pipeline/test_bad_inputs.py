"""Bad inputs to ``python -m pipeline.build_humans300m``: one ``error:`` line, exit code 2, no
traceback, and nothing started (no Ray, no output folder) for what can be checked up front."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port


def job(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.build_humans300m", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "YOLO_OFFLINE": "1"},
    )  # fmt: skip


def check_refused(done: subprocess.CompletedProcess, message: str) -> None:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert "Started a local Ray" not in done.stderr, "refused only after Ray started"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    paths = {
        "urls": root / "urls.txt",
        "a_file": root / "not-a-folder",
        "yaml": root / "broken.yaml",
        "script": root / "broken.torchscript",
        "labels": root / "labels.txt",
        "binary_labels": root / "labels.bin",
        "no_index": root / "old-release",
        "string_bool": root / "string-bool.yaml",
        "list_config": root / "list.yaml",
        "unknown_section": root / "sections.json",
    }
    paths["urls"].write_text("http://127.0.0.1:9/a.jpg\n")
    paths["a_file"].write_text("x")
    paths["yaml"].write_text("fetch:\n  concurrency: [1,\n")
    paths["script"].write_bytes(b"not a zip")
    paths["labels"].write_text("a\nb\n")
    paths["binary_labels"].write_bytes(b"\xff\xfe\x00\x81")
    paths["no_index"].mkdir()
    paths["string_bool"].write_text("fetch:\n  allow_private_addresses: 'false'\n")
    paths["list_config"].write_text("- fetch\n- run\n")
    paths["unknown_section"].write_text('{"crawl": {"concurrency": 4}}')
    return paths


CASES = {
    "missing --config value": (["--config"], "argument --config: expected one argument"),
    "missing config file": (["--config", "{root}/none.yaml"], "config file not found"),
    "YAML syntax error": (["--config", "{yaml}"], "not valid YAML: "),
    "flag of the wrong type": (["--fetch-concurrency", "ten"], "expected an integer"),
    "classifier JSON with an unknown key": (
        ["--classifier", '{"name": "w", "weights": "w.pt", "colour": "red"}'],
        "unknown keys ['colour']",
    ),
    "classifier that is not JSON": (["--classifier", "{oops"], "not valid JSON"),
    "missing input": (["--input", "{root}/no-such-list.txt"], "input not found: "),
    "input of no known kind": (["--input", "{a_file}"], "not a folder, .tar or URL list"),
    "output that is a file": (["--output", "{a_file}"], "is a file, not a dataset folder"),
    "empty output": (["--output", ""], "an empty path"),
    "empty input": (["--input", ""], "an empty path"),
    "corrupt TorchScript classifier": (
        [
            "--classifier",
            '{"name": "w", "weights": "{script}", "format": "torchscript", "labels": "{labels}"}',
        ],
        "classifier w: ",
    ),  # fmt: skip
    "classifier labels that are not text": (
        [
            "--classifier",
            '{"name": "w", "weights": "{script}", "format": "torchscript", '
            '"labels": "{binary_labels}"}',
        ],
        "classifier w: ",
    ),  # fmt: skip
    "earlier release without an index": (["--dedup-against", "{no_index}"], "no dedup_index/"),
    "'false' for a boolean in the config file": (
        ["--config", "{string_bool}"],
        "config fetch.allow_private_addresses: expected true/false, got 'false' (a string)",
    ),
    "a string for a boolean flag": (["--dedup", "false"], "unrecognized arguments: false"),
    "a config file that is a list": (["--config", "{list_config}"], "expected a mapping, got"),
    "an unknown config section": (["--config", "{unknown_section}"], "unknown sections ['crawl']"),
    "a detector size off the grid": (["--detector-image-size", "650"], "multiple of 32, got 650"),
    "a Ray address that is not one": (["--ray-address", "nowhere"], "expected host:port"),
    "a Ray address where nobody listens": (
        ["--ray-address", "127.0.0.1:{closed_port}"],
        "--ray-address 127.0.0.1:",  # ...: no Ray cluster answers there (Connection refused)
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_before_anything_starts(files, tmp_path, case):
    argv, message = CASES[case]
    names = {k: str(v) for k, v in files.items()} | {"root": str(files["urls"].parent)}
    names["closed_port"] = str(free_port())  # bound once, closed: nothing listens there
    argv = [_fill(arg, names) for arg in argv]
    base = ["--input", str(files["urls"]), "--output", str(tmp_path / "out"), "--detector", "none"]
    done = job(*base, *argv)
    check_refused(done, message)
    assert not (tmp_path / "out").exists()


def _fill(arg: str, names: dict[str, str]) -> str:
    """``{name}`` placeholders filled in (not str.format: the JSON arguments have braces)."""
    for name, value in names.items():
        arg = arg.replace("{" + name + "}", value)
    return arg


def test_no_inputs_is_one_line(tmp_path):
    done = job("--output", str(tmp_path / "out"), "--detector", "none")
    check_refused(done, "no inputs: pass --inputs")
    assert not (tmp_path / "out").exists()


def test_old_detector_size_names_still_work_with_a_warning(files, tmp_path, capsys):
    from pipeline.build_humans300m import config_from_args, parser

    config = tmp_path / "job.yaml"
    config.write_text("classifiers:\n  - {name: w, weights: w.pt, imgsz: 96}\n")
    args = parser().parse_args(["--detector-imgsz", "1024", "--config", str(config)])
    built = config_from_args(args)
    assert built.detector.image_size == 1024 and built.classifiers[0].image_size == 96
    assert capsys.readouterr().err.splitlines() == [
        "warning: --detector-imgsz is deprecated, use --detector-image-size",
        "warning: config key classifiers[0].imgsz is deprecated, use classifiers[0].image_size",
    ]


def test_a_ray_address_that_answers_without_ray_is_one_line_in_seconds(files, tmp_path):
    """ray.init waits forever on a port that accepts connections but never speaks (seen: over
    300 s); the job's check gives up after 5 s."""
    import socket
    import time

    with socket.socket() as server:  # accepts connections (the kernel does), never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        done = job("--input", str(files["urls"]), "--output", str(tmp_path / "out"),
                   "--detector", "none", "--ray-address", address)  # fmt: skip
    check_refused(done, f"--ray-address {address}: no Ray cluster answers there (timed out)")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()
