"""Weights files are untrusted input: a crafted pickle neither runs code nor installs packages."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from curation.detect import DetectorConfig, load_detector
from curation.weights import WeightsError, load_ultralytics
from tests.conftest import ROOT
from tests.support.models import build_yolo


class _WritesMarker:
    """Unpickled, it would create ``path`` (the crafted payload: any code could run here)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class Placeholder:
    """Saved, then renamed in the pickle to a module that is not installed."""


def needs_module(path: Path) -> None:
    """A checkpoint naming a module that is not installed: Ultralytics' default loader would
    pip-install it (AutoUpdate) and load again."""
    import torch

    torch.save({"model": Placeholder()}, path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in members if n.endswith("data.pkl"))
    ours = f"{__name__}\nPlaceholder".encode()
    assert ours in members[name]
    members[name] = members[name].replace(ours, b"humans300m_no_such_package\nThing")
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def crafted_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["code"] = folder / "evil.pt"
    torch.save({"model": _WritesMarker(str(marker)), "train_args": {}}, files["code"])
    files["module"] = folder / "needs-module.pt"
    needs_module(files["module"])
    files["plain_pickle"] = folder / "plain.pt"  # the legacy (non-zip) torch format
    files["plain_pickle"].write_bytes(pickle.dumps(_WritesMarker(str(marker))))
    files["truncated"] = folder / "truncated.pt"
    good = build_yolo(folder.parent / "models" / "yolo11n-random.pt")
    files["truncated"].write_bytes(good.read_bytes()[:50_000])
    files["not_a_model"] = folder / "image.pt"
    files["not_a_model"].write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    files["empty_zip"] = folder / "empty.pt"
    with zipfile.ZipFile(files["empty_zip"], "w"):
        pass
    return files


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("weights")
    marker = root / "MARKER"
    return crafted_checkpoints(root / "crafted", marker), marker


@pytest.mark.parametrize(
    "kind", ["code", "module", "plain_pickle", "truncated", "not_a_model", "empty_zip"]
)
def test_crafted_or_corrupt_weights_are_refused_without_running_them(crafted, kind, monkeypatch):
    import ultralytics.nn.tasks

    files, marker = crafted
    installs = []
    monkeypatch.setattr(ultralytics.nn.tasks, "check_requirements", installs.append)
    with pytest.raises(WeightsError) as caught:
        load_detector(DetectorConfig(weights=str(files[kind])))
    assert str(files[kind]) in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists() and installs == []


def test_only_pt_checkpoints_reach_ultralytics(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(WeightsError, match="only Ultralytics .pt checkpoints"):
        load_ultralytics(str(onnx), "detect", "detector weights")


def test_real_weights_load_in_safe_mode(tmp_path_factory):
    import ultralytics.nn.tasks

    path = build_yolo(tmp_path_factory.getbasetemp() / "models" / "yolo11n-random.pt")
    model, person, _ = load_detector(DetectorConfig(weights=str(path)))
    assert person == 0 and model.task == "detect"
    assert ultralytics.nn.tasks.SAFE_LOAD is True


def test_job_refuses_a_crafted_detector_with_one_line_before_ray(crafted, tmp_path):
    """The whole command, in a fresh process (Ultralytics imported by the job itself)."""
    files, marker = crafted
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\n")
    for kind in ("code", "module", "truncated"):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.build_humans300m", "--input", str(urls),
             "--output", str(tmp_path / "out"), "--detector", str(files[kind])],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, "YOLO_OFFLINE": "1"},
        )  # fmt: skip
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr
        assert "Traceback" not in done.stderr and "Started a local Ray" not in done.stderr
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_the_crafted_files_do_what_they_say_when_loaded_unsafely(tmp_path, monkeypatch):
    """Guards the tests above: unpickled without the safe mode, the payloads are live."""
    import torch
    import ultralytics.nn.tasks

    marker = tmp_path / "RAN"
    files = crafted_checkpoints(tmp_path / "crafted", marker)
    torch.load(files["code"], weights_only=False)
    assert marker.exists()
    installs = []
    monkeypatch.setattr(ultralytics.nn.tasks, "check_requirements", installs.append)
    with pytest.raises(ModuleNotFoundError):
        ultralytics.nn.tasks.torch_safe_load(str(files["module"]), safe_only=False)
    assert installs == ["humans300m_no_such_package"]
