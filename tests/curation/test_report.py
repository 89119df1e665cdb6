import base64
import io
import json
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from curation import report, report_gallery
from schemas.layout import REJECTIONS_DIR
from tests.support.datasets import build_dataset

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FIGURES_WITH_DETECTOR = {"people", "boxes", "resolution", "funnel", "sources", "duplicates"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(str(tmp_path_factory.mktemp("ds") / "humans"), num_samples=80,
                         num_rejections=60, kept_duplicates=2)  # fmt: skip


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
    """Figure id -> rendered width of every figure on the page (thumbnails aside)."""
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).filter(i => i.id)"
        ".map(i => [i.id, i.complete, i.naturalWidth]);"
    )
    assert all(complete for _, complete, _ in images)
    return {name: width for name, _, width in images}


def _thumbnails(browser) -> dict[str, Image.Image]:
    """Sample key -> decoded thumbnail of every sample picture the browser loaded."""
    tiles = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.thumb'))"
        ".map(i => [i.alt, i.complete, i.naturalWidth, i.src]);"
    )
    assert tiles and all(complete and width == report_gallery.THUMB_SIDE or complete
                         for _, complete, width, _ in tiles)  # fmt: skip
    return {
        alt.removeprefix("sample "): Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        for alt, _, _, src in tiles
    }


def _near(pixel, colour, tolerance=60) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def test_report_renders_and_numbers_match_the_manifests(built, tmp_path, browser):
    assert report.main(["--dataset", built.uri, "--output", str(tmp_path)]) == 0
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
    assert "detector.min_side | 300.0" in card and built.summary["code_version"] in card
    assert f"| kept samples | {len(samples)} |" in card
    rule = ("Keep rule: an image is kept when at least 1 person(s) have a score over 0.9 and a "
            "box over 300 px on both sides (detector yolo11x.pt).")  # fmt: skip
    assert rule in card and rule in browser.find_element("id", "keep-rule").text


def test_gallery_shows_strata_with_person_boxes_drawn(built, tmp_path, browser):
    assert report.main(["--dataset", built.uri, "--output", str(tmp_path)]) == 0
    browser.get((tmp_path / "index.html").as_uri())
    thumbs = _thumbnails(browser)
    stats = json.loads((tmp_path / "stats.json").read_text())
    gallery = {s["key"]: s for s in stats["gallery"]}
    samples = built.samples.set_index("key")
    # every stratum of the shards drawn from, up to PER_STRATUM samples each
    drawn = samples[samples.shard.isin({s["shard"] for s in gallery.values()})]
    people = drawn.num_persons.map(lambda n: "4+" if n >= 4 else str(n))
    short = drawn[["width", "height"]].min(axis=1)
    resolution = short.map(lambda s: "short side < 512 px" if s < 512
                           else "512-1023 px" if s < 1024 else ">= 1024 px")  # fmt: skip
    sizes = drawn.groupby([people, resolution]).size()
    assert len(gallery) == sum(min(n, report_gallery.PER_STRATUM) for n in sizes)
    assert {(s["people"], s["resolution"]) for s in gallery.values()} == set(sizes.index)
    assert set(gallery) <= set(thumbs)
    # a table: a row per people bucket, a column per short-side bucket, the samples in its cells
    table = browser.execute_script(
        "const t = document.querySelector('table.gallery');"
        "return Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.tagName == 'TH' ? "
        "c.textContent : c.querySelectorAll('img.thumb').length));"
    )
    columns = [c for _, c in report_gallery.SHORT_SIDES if c in set(resolution)]
    assert table[0] == ["people \\ short side", *columns]
    expected = [[p] + [min(sizes.get((p, c), 0), report_gallery.PER_STRATUM) for c in columns]
                for p in sorted(set(people))]  # fmt: skip
    assert table[1:] == expected
    assert "green persons passing the keep rule" in browser.find_element("tag name", "body").text
    for key in gallery:
        thumb = thumbs[key].convert("RGB")
        row = samples.loc[key]
        assert max(thumb.size) == report_gallery.THUMB_SIDE
        assert thumb.size[0] / thumb.size[1] == pytest.approx(row.width / row.height, rel=0.02)
        scale = report_gallery.THUMB_SIDE / max(row.width, row.height)
        for person in row.persons:  # the left edge of each box, half way down, is drawn
            x, y = int(person["x0"] * scale), int((person["y0"] + person["y1"]) / 2 * scale)
            near_edge = [thumb.getpixel((min(max(x + dx, 0), thumb.width - 1), y))
                         for dx in range(-1, 3)]  # fmt: skip
            if person["passes"]:
                assert any(_near(p, report_gallery.PASSING_COLOUR) for p in near_edge), key
            elif not any(p["passes"] for p in row.persons):  # (else it may lie under a green one)
                assert any(_near(p, report_gallery.OTHER_COLOUR) for p in near_edge), key


def test_duplicates_are_shown_side_by_side_or_named_when_removed(built, tmp_path, browser):
    assert report.main(["--dataset", built.uri, "--output", str(tmp_path)]) == 0
    browser.get((tmp_path / "index.html").as_uri())
    thumbs = _thumbnails(browser)
    groups = json.loads((tmp_path / "stats.json").read_text())["duplicate_groups"]
    samples = built.samples
    copies = samples[samples.sha256 == samples.sha256.iloc[0]]
    assert len(copies) == 3  # the first sample and its two copies still in the dataset
    kept_groups = [g for g in groups if len(g["kept"]) > 1]
    assert [sorted(m["key"] for m in g["kept"]) for g in kept_groups] == [sorted(copies.key)]
    assert set(copies.key) <= set(thumbs)
    removed = [g for g in groups if g["removed"]]
    dedup = built.rejections[built.rejections.stage == "dedup"]
    assert removed and all(len(g["kept"]) == 1 for g in removed)
    for group in removed:
        expected = dedup[dedup.duplicate_of == group["kept"][0]["key"]]
        assert sorted(c["source_uri"] for c in group["removed"]) == sorted(expected.source_uri)
        assert group["kept"][0]["key"] in thumbs
    text = browser.find_element("tag name", "body").text
    assert f"removed (duplicate_exact): {expected.source_uri.iloc[0]}" in text or (
        f"removed (duplicate_near): {expected.source_uri.iloc[0]}" in text
    )


def test_report_without_detector_says_so(tmp_path, browser):
    built = build_dataset(str(tmp_path / "nodet"), num_samples=20, detector=False)
    shutil.rmtree(Path(built.uri) / REJECTIONS_DIR)  # and a dataset that rejected nothing
    out = tmp_path / "report"
    assert report.main(["--dataset", built.uri, "--output", str(out)]) == 0
    widths = _loaded_images(browser, out / "index.html")
    assert set(widths) == {"fig-resolution", "fig-funnel", "fig-sources", "fig-duplicates"}
    assert all(width > 0 for width in widths.values())
    assert "--detector none" in browser.find_element("tag name", "body").text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["detector_ran"] is False and stats["people"] is None
    assert stats["inputs"] == 20 and stats["rejected"] == 0
    # no "person" step in the funnel of a job without a detector, and no keep rule
    assert [s["step"] for s in stats["funnel"]["steps"]] == [
        "inputs", "fetched", "valid", "unique", "kept"
    ]  # fmt: skip
    assert stats["keep_rule"] is None and built.summary["config"]["detector"] is None
    assert len(stats["gallery"]) == len(_thumbnails(browser)) > 0
    assert "green persons passing" not in browser.find_element("tag name", "body").text
    assert "No person detector ran" in (out / "datacard.md").read_text()


def test_funnel_steps_follow_the_jobs_configuration(tmp_path):
    built = build_dataset(str(tmp_path / "nodedup"), num_samples=10, num_rejections=0)
    steps = [s["step"] for s in report.compute_stats(built.uri)["funnel"]["steps"]]
    assert steps == ["inputs", "fetched", "valid", "person", "unique", "kept"]
    built = build_dataset(str(tmp_path / "off"), num_samples=10, num_rejections=0, dedup=False)
    stats = report.compute_stats(built.uri)  # as after --no-dedup
    assert [s["step"] for s in stats["funnel"]["steps"]] == [
        "inputs", "fetched", "valid", "person", "kept"
    ]  # fmt: skip
    assert stats["dedup_ran"] is False and stats["detector_ran"] is True


def test_keep_rule_is_read_from_the_typed_config_the_job_writes(tmp_path):
    rule = dict(min_score=0.8, min_side=400.0, box_rule="long_side", min_persons=2, max_persons=3)
    built = build_dataset(str(tmp_path / "rule"), num_samples=10, num_rejections=0, keep_rule=rule)
    assert built.summary["config"]["keep_rule"] == dict(rule, min_area=90000.0)
    stats = report.compute_stats(built.uri)
    assert stats["keep_rule"]["text"] == (
        "an image is kept when at least 2 and at most 3 person(s) have a score over 0.8 and a "
        "box over 400 px on its long side (detector yolo11x.pt)"
    )
    assert stats["keep_rule"]["min_side"] == 400.0 and stats["detector_ran"] is True


def test_report_errors_are_clear(tmp_path, capsys):
    assert (
        report.main(["--dataset", str(tmp_path / "absent"), "--output", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such dataset" in err
    assert not (tmp_path / "r").exists()


def test_stats_on_s3(s3_bucket):
    built = build_dataset(f"s3://{s3_bucket}/humans", num_samples=15, num_rejections=10)
    stats = report.compute_stats(built.uri)
    assert stats["samples"] == 15 and stats["rejected"] == len(built.rejections)
    counts = built.samples.num_persons.value_counts().sort_index()
    assert stats["people"]["counts"] == {str(k): int(v) for k, v in counts.items()}
