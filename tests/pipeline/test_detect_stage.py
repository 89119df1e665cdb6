"""The filter stages on a real local Ray: a TorchScript pre-filter, then the YOLO detector."""

from __future__ import annotations

import io
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

from curation.classify import ClassifierConfig
from curation.detect import DetectorConfig, apply_rule, detector_input
from curation.weights import WeightsError
from pipeline.detect_stage import add_filter_stages, check_filters_ready, filter_input_size
from pipeline.progress import ProgressCounter
from schemas import Reason
from tests.support.models import build_torchscript_classifier, build_yolo


@pytest.fixture(scope="session")
def yolo_weights(tmp_path_factory):
    return build_yolo(tmp_path_factory.getbasetemp() / "models" / "yolo11n-random.pt")


@pytest.fixture(scope="session")
def tint_classifier(tmp_path_factory) -> ClassifierConfig:
    module, labels = build_torchscript_classifier(
        tmp_path_factory.getbasetemp() / "models" / "red_vs_blue", ["reddish", "bluish"]
    )
    return ClassifierConfig(
        name="tint",
        weights=str(module),
        format="torchscript",
        labels=str(labels),
        drop_labels=("reddish",),
        image_size=32,
        batch_size=4,
        cpus_per_actor=0.5,
    )


def blocky(width: int, height: int, seed: int, tint: tuple[float, float, float] = (1, 1, 1)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4, width // 4, 3)) * np.array(tint)
    image = Image.fromarray(small.astype(np.uint8))
    return image.resize((width, height), Image.Resampling.NEAREST)


def oriented(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` saved as JPEG with an EXIF orientation, decoded as the validate stage does."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return ImageOps.exif_transpose(Image.open(io.BytesIO(out.getvalue())))


def row(key: str, image: Image.Image, status: str = "ok") -> dict:
    return {
        "key": key,
        "status": status,
        "stage": None if status == "ok" else "validate",
        "reason": None if status == "ok" else "too_small",
        "detail": None,
        "width": image.width,
        "height": image.height,
        "det_input": detector_input(image, 640),
    }


def direct(model, array: np.ndarray, width: int, height: int, config: DetectorConfig):
    result = model.predict(
        np.ascontiguousarray(array[..., ::-1]),
        imgsz=config.image_size,
        conf=config.conf,
        iou=config.iou,
        classes=[0],
        verbose=False,
    )[0]
    scale = np.array([width / array.shape[1], height / array.shape[0]] * 2)
    return result.boxes.xyxy.numpy() * scale, result.boxes.conf.numpy()


def outcome_counts(rows) -> tuple[int, dict[str, int]]:
    rows = list(rows)
    rejected = Counter(r["reason"] for r in rows if r["status"] != "ok")
    return sum(r["status"] == "ok" for r in rows), dict(rejected)


def counted(counter, rows: int) -> tuple[int, dict[str, int]]:
    """The counter's totals, once the stage's fire-and-forget reports have all arrived."""
    import ray

    deadline = time.monotonic() + 30
    while True:
        kept, rejected = ray.get(counter.snapshot.remote())
        if kept + sum(rejected.values()) >= rows or time.monotonic() > deadline:
            return kept, rejected
        time.sleep(0.1)


def test_filters_on_ray_match_direct_predict(ray_cluster, yolo_weights, tint_classifier):
    import ray
    from ultralytics import YOLO

    images = {
        "plain": blocky(1280, 960, 1),
        "rotated": oriented(blocky(1280, 960, 2), 6),
        "odd": blocky(1001, 667, 3),
        "red": blocky(800, 600, 4, tint=(1.0, 0.3, 0.3)),
    }
    assert images["rotated"].size == (960, 1280)
    rows = [row(k, im) for k, im in images.items()] + [row("early", images["plain"], "rejected")]
    config = DetectorConfig(
        weights=str(yolo_weights),
        batch_size=1,
        min_score=0.8,
        min_side=150,
        crops=True,
        cpus_per_actor=0.5,
    )
    check_filters_ready(config, [tint_classifier])
    counter = ProgressCounter.remote()
    ds = add_filter_stages(ray.data.from_items(rows), config, [tint_classifier], counter)
    out = {r["key"]: r for r in ds.take_all()}
    assert counted(counter, len(rows)) == outcome_counts(out.values())  # the last stage reports

    assert out["red"]["reason"] == Reason.PREFILTER_LABEL and out["red"]["persons"] is None
    assert out["early"]["reason"] == "too_small" and out["early"]["persons"] is None
    assert all(np.asarray(r["det_input"]).size == 0 for r in out.values())
    model, total = YOLO(str(yolo_weights)), 0
    for key in ("plain", "rotated", "odd"):
        got_row, im = out[key], images[key]
        assert [p["label"] for p in got_row["prefilter"]] == ["bluish"]
        boxes, scores = direct(model, detector_input(im, 640), im.width, im.height, config)
        if got_row["persons"] is None:  # an empty list can come back from Arrow as null
            assert got_row["reason"] == Reason.NO_PERSON
        persons = list(got_row["persons"] if got_row["persons"] is not None else [])
        got = np.array([[p["x0"], p["y0"], p["x1"], p["y1"]] for p in persons]).reshape(-1, 4)
        np.testing.assert_allclose(got, boxes, atol=0.05)
        np.testing.assert_allclose([p["score"] for p in persons], scores, atol=1e-4)
        rule = apply_rule(boxes, scores, config.rule())
        assert got_row["num_persons"] == rule.num_passing
        assert got_row["reason"] == (str(rule.reason) if rule.reason else None)
        assert got_row["status"] == ("ok" if rule.reason is None else "rejected")
        total += len(persons)
    assert total > 0
    assert out["rotated"]["persons"] and max(p["x1"] for p in out["rotated"]["persons"]) <= 960


def test_missing_weights_offline_fail_before_any_work(tmp_path, monkeypatch, tint_classifier):
    monkeypatch.setenv("HUMANS300M_WEIGHTS_CACHE", str(tmp_path))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline"):
        check_filters_ready(DetectorConfig(weights="yolo11n.pt"), [])
    with pytest.raises(WeightsError, match="not found"):
        check_filters_ready(DetectorConfig(weights=str(tmp_path / "gone.pt")), [])
    bad = ClassifierConfig(
        name="wm",
        weights=str(tmp_path / "gone.torchscript"),
        format="torchscript",
        labels=str(tmp_path / "labels.txt"),
    )
    with pytest.raises(WeightsError, match="not found"):
        check_filters_ready(None, [bad])
    with pytest.raises(ValueError, match="unique"):
        check_filters_ready(None, [tint_classifier, tint_classifier])
    check_filters_ready(DetectorConfig(weights="none"), [])  # disabled: nothing to resolve


def test_no_filters_leave_the_dataset_alone(ray_cluster, tint_classifier):
    import ray

    ds = ray.data.from_items([{"status": "ok"}])
    assert add_filter_stages(ds, None, []) is ds
    assert add_filter_stages(ds, DetectorConfig(weights="none"), []) is ds
    assert filter_input_size(None, []) == 0
    assert filter_input_size(DetectorConfig(weights="none"), [tint_classifier]) == 32
    assert filter_input_size(DetectorConfig(image_size=1024), [tint_classifier]) == 1024


def test_classifiers_alone_clear_the_input(ray_cluster, tint_classifier):
    import ray

    rows = [row("a", blocky(320, 240, 5, tint=(1.0, 0.3, 0.3))), row("b", blocky(320, 240, 6))]
    counter = ProgressCounter.remote()
    ds = add_filter_stages(ray.data.from_items(rows), None, [tint_classifier], counter)
    out = ds.take_all()
    assert counted(counter, 2) == outcome_counts(out) == (1, {"prefilter_label": 1})
    assert all(np.asarray(r["det_input"]).size == 0 for r in out)
    assert {r["key"]: r["reason"] for r in out}["a"] == Reason.PREFILTER_LABEL
