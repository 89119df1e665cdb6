import json
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from curation import report
from schemas.layout import REJECTIONS_DIR
from tests.support.datasets import build_dataset

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FIGURES_WITH_DETECTOR = {"people", "boxes", "resolution", "funnel", "sources", "duplicates"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(str(tmp_path_factory.mktemp("ds") / "humans"), num_samples=80,
                         num_rejections=60)  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """Real headless Chromium; the test fails (never skips) when it is not installed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), f"{binary} missing: install the chromium packages"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _loaded_images(browser, page: Path) -> dict[str, int]:
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth]);"
    )
    assert all(complete for _, complete, _ in images)
    return {name: width for name, _, width in images}


def test_report_renders_and_numbers_match_the_manifests(built, tmp_path, browser):
    assert report.main(["--dataset", built.uri, "--out", str(tmp_path)]) == 0
    widths = _loaded_images(browser, tmp_path / "index.html")
    assert set(widths) == {f"fig-{n}" for n in FIGURES_WITH_DETECTOR}
    assert all(width > 0 for width in widths.values()), widths
    assert "Known limitations" in browser.find_element("tag name", "body").text

    stats = json.loads((tmp_path / "stats.json").read_text())
    samples, rejections = built.samples, built.rejections
    assert stats["samples"] == len(samples) and stats["rejected"] == len(rejections)
    assert stats["bytes"] == samples.num_bytes.sum()
    assert stats["people"]["counts"] == {
        str(k): int(v) for k, v in samples.num_persons.value_counts().sort_index().items()
    }
    with_people = samples[samples.num_persons > 0]
    four_plus = (with_people.num_persons >= 4).mean()
    assert stats["people"]["shares"]["4+"] == pytest.approx(four_plus)
    assert stats["person_boxes"]["boxes"] == sum(len(p) for p in samples.persons)
    assert stats["person_boxes"]["passing"] == samples.num_persons.sum()
    passing_hist = stats["person_boxes"]["passing_height_hist"]["counts"]
    assert sum(passing_hist) == samples.num_persons.sum()
    assert sum(stats["resolution"]["short_side_hist"]["counts"]) == len(samples)
    assert stats["resolution"]["width"]["max"] == samples.width.max()

    steps = {s["step"]: s["count"] for s in stats["funnel"]["steps"]}
    by_stage = rejections.stage.value_counts()
    assert steps["inputs"] == len(samples) + len(rejections) == built.summary["counts"]["inputs"]
    assert steps["fetched"] == steps["inputs"] - by_stage["source"] - by_stage["fetch"]
    assert steps["person"] == steps["valid"] - by_stage["detect"]
    assert steps["unique"] == steps["kept"] == len(samples)
    reasons = {(r["stage"], r["reason"]): r["count"] for r in stats["funnel"]["reasons"]}
    assert reasons == rejections.groupby(["stage", "reason"]).size().to_dict()

    domains = samples.source_uri.map(
        lambda u: ("s3://" if u.startswith("s3") else "") + urlparse(u).netloc
    )
    assert {d["domain"]: d["samples"] for d in stats["domains"]} == domains.value_counts().to_dict()
    licenses = samples.license.fillna("(none)").value_counts().to_dict()
    assert {d["license"]: d["samples"] for d in stats["licenses"]} == licenses
    sizes = samples.dup_cluster_size.value_counts()
    assert stats["duplicates"]["cluster_sizes"] == {str(k): int(v) for k, v in sizes.items()}
    assert stats["duplicates"]["rejected_duplicates"] == by_stage["dedup"]

    card = (tmp_path / "datacard.md").read_text()
    assert "detector.min_box_side | 300" in card and built.summary["code_version"] in card
    assert f"| kept samples | {len(samples)} |" in card


def test_report_without_detector_says_so(tmp_path, browser):
    built = build_dataset(str(tmp_path / "nodet"), num_samples=20, detector=False)
    shutil.rmtree(Path(built.uri) / REJECTIONS_DIR)  # and a dataset that rejected nothing
    out = tmp_path / "report"
    assert report.main(["--dataset", built.uri, "--out", str(out)]) == 0
    widths = _loaded_images(browser, out / "index.html")
    assert set(widths) == {"fig-resolution", "fig-funnel", "fig-sources", "fig-duplicates"}
    assert all(width > 0 for width in widths.values())
    assert "--detector none" in browser.find_element("tag name", "body").text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["detector_ran"] is False and stats["people"] is None
    assert stats["inputs"] == 20 and stats["rejected"] == 0
    assert "No person detector ran" in (out / "datacard.md").read_text()


def test_report_errors_are_clear(tmp_path, capsys):
    assert report.main(["--dataset", str(tmp_path / "absent"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such dataset" in err
    assert not (tmp_path / "r").exists()


def test_stats_on_s3(s3_bucket):
    built = build_dataset(f"s3://{s3_bucket}/humans", num_samples=15, num_rejections=10)
    stats = report.compute_stats(built.uri)
    assert stats["samples"] == 15 and stats["rejected"] == len(built.rejections)
    counts = built.samples.num_persons.value_counts().sort_index()
    assert stats["people"]["counts"] == {str(k): int(v) for k, v in counts.items()}
