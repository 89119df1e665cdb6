"""The demo corpus: generated scenes without people plus real photographs of people from the
installed Ultralytics package, as shipped and enlarged past the keep rule's 300 px."""

import importlib.util
import io
from pathlib import Path

import pytest
from PIL import Image

from curation.synthetic import PEOPLE_ATTRIBUTION, PEOPLE_LICENSE
from pipeline import demo

ASSETS = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"


def test_corpus_serves_the_packaged_photos_of_people_as_shipped_and_enlarged(tmp_path):
    rows = demo.make_corpus(tmp_path, count=4)
    people = {name: (caption, lic, attribution) for name, caption, lic, attribution in rows
              if attribution}  # fmt: skip
    assert set(people) == {"bus.jpg", "zidane.jpg", "bus_x3.jpg", "zidane_x3.jpg"}
    assert all(lic == PEOPLE_LICENSE and a == PEOPLE_ATTRIBUTION for _, lic, a in people.values())
    assert people["bus_x3.jpg"][0] == people["bus.jpg"][0] != people["zidane.jpg"][0]
    for name in ("bus.jpg", "zidane.jpg"):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes()
        shipped = Image.open(ASSETS / name).size
        enlarged = Image.open(io.BytesIO((tmp_path / name.replace(".", "_x3.")).read_bytes()))
        assert enlarged.format == "JPEG"
        assert enlarged.size == (shipped[0] * 3, shipped[1] * 3)
    scenes = [name for name, *_ in rows if name.startswith("photo_")]
    assert len(scenes) == 4 and all((tmp_path / name).is_file() for name in scenes)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")  # the shared local Ray, as the job tests use
def test_demo_offline_keeps_the_people_photos_and_says_the_detector_is_off(
    tmp_path, monkeypatch, capsys
):
    from pipeline.build_humans300m import main

    monkeypatch.chdir(tmp_path)  # the demo writes ./demo_out
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    assert main(["--demo"]) == 0
    out = capsys.readouterr().out
    assert "No person-detector weights available" in out
    assert "runs WITHOUT the person filter" in out
    assert "detector: none: run without the person detector" in out
    lines = dict(
        line.split(None, 1) for line in out.split("photos of people:")[1].splitlines()[1:5]
    )
    # as shipped and enlarged they are near-duplicates: dedup keeps the larger copy
    assert lines == {
        "bus.jpg": "rejected at dedup: duplicate_near",
        "zidane.jpg": "rejected at dedup: duplicate_near",
        "bus_x3.jpg": "kept",
        "zidane_x3.jpg": "kept",
    }


def test_the_demo_does_not_import_the_job_back():
    """The job imports the demo (to prepare its arguments); the demo never imports the job."""
    import ast

    from tests.conftest import ROOT

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return names | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    assert "pipeline.build_humans300m" not in imported(ROOT / "pipeline" / "demo.py")


def test_the_demo_runs_the_nano_detector_unless_weights_are_given(tmp_path):
    from pipeline.build_humans300m import config_from_args, parser

    corpus = demo.Corpus(str(tmp_path / "urls.csv"), [])

    def weights(argv: list[str]) -> str:
        args = parser().parse_args(argv)
        demo.fill_arguments(args, corpus)
        return config_from_args(args).detector.weights

    assert weights(["--demo"]) == "yolo11n.pt"
    assert weights(["--demo", "--detector-weights", "mine.pt"]) == "mine.pt"
    config = tmp_path / "job.yaml"
    config.write_text("detector:\n  weights: from-file.pt\n")
    assert weights(["--demo", "--config", str(config)]) == "from-file.pt"
