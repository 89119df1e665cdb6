"""The project installs as a package: a wheel built from this checkout, installed into a fresh
virtualenv, runs its ``humans300m`` command and the ``python -m`` entry points outside the
checkout and reports the commit it was built from."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from schemas.version import code_version

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("humans300m", "schemas", "curation", "pipeline", "training")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        ["uv", "build", "--wheel", "--out-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("humans300m-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the wheel; the dependencies come from this test's
    environment through a .pth line (so no download), the checkout itself is not on its path."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(["uv", "venv", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # a plain path line: the outer site-packages' own .pth files (the editable install of
    # this checkout among them) are not processed, so only the wheel provides our packages
    Path(site, "outer_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        ["uv", "pip", "install", "--no-deps", "--python", str(python), str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv


def test_wheel_holds_every_package_the_commit_and_the_console_script(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tops = {name.split("/")[0] for name in names if "/" in name}
        commit = archive.read("schemas/_commit.txt").decode().strip()
        (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert set(PACKAGES) <= tops
    assert not {"tests", "bench"} & tops
    assert "models/mae.py" in names and "curation/dedup/near.py" in names
    assert commit == code_version() != "unknown"
    assert "humans300m = humans300m.cli:main" in scripts


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, env={"PATH": f"{venv}/bin"}
    )


def test_installed_command_runs_outside_the_checkout(venv: Path, tmp_path: Path):
    where = _run(venv, "python", "-c", "import pipeline; print(pipeline.__file__)", cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where
    version = _run(venv, "humans300m", "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"humans300m 0.1.0 (code version {code_version()})"
    assert _run(venv, "humans300m", "query", "--version", cwd=tmp_path).stdout == version.stdout
    job = _run(venv, "python", "-m", "pipeline.build_humans300m", "--version", cwd=tmp_path)
    assert job.stdout == version.stdout
    listing = _run(venv, "humans300m", "--help", cwd=tmp_path)
    assert listing.returncode == 0 and "pretrain" in listing.stdout and "export" in listing.stdout
    build_help = _run(venv, "humans300m", "build", "--help", cwd=tmp_path)
    assert build_help.returncode == 0 and "--detector-weights" in build_help.stdout
    pretrain_help = _run(venv, "python", "-m", "training.pretrain", "--help", cwd=tmp_path)
    assert pretrain_help.returncode == 0 and "--preset" in pretrain_help.stdout
    unknown = _run(venv, "humans300m", "crawl", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown subcommand 'crawl'" in unknown.stderr
