"""The keep rule at its boundaries, the detector input, weights resolution, and the detector
stage on plain batches with a real (randomly initialised) YOLO model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from curation.detect import (
    DetectorConfig,
    PersonDetector,
    apply_rule,
    crop_box,
    detector_input,
    load_detector,
)
from curation.record import object_column
from curation.weights import WeightsError, file_sha256, resolve_weights
from schemas import Reason, Stage
from schemas.summary import KeepRule
from tests.support.models import build_yolo

SAPIENS = KeepRule()


def judge(boxes: list, scores: list, rule: KeepRule = SAPIENS):
    return apply_rule(np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores), rule)


def box(w: float, h: float, x: float = 10.0, y: float = 20.0) -> list[float]:
    return [x, y, x + w, y + h]


# --- the rule -------------------------------------------------------------------------------


def test_no_detection_is_no_person():
    result = judge([], [])
    assert result.reason == Reason.NO_PERSON and result.num_passing == 0


@pytest.mark.parametrize(
    ("score", "reason"),
    [
        (0.9, Reason.PERSON_LOW_SCORE),
        (0.89, Reason.PERSON_LOW_SCORE),
        (0.9000001, None),
        (1.0, None),
    ],
)
def test_score_must_exceed_threshold(score, reason):
    assert judge([box(400, 500)], [score]).reason == reason


@pytest.mark.parametrize(
    ("w", "h", "reason"),
    [
        (300, 500, Reason.PERSON_TOO_SMALL),  # exactly 300 is not > 300
        (500, 300, Reason.PERSON_TOO_SMALL),
        (300.01, 300.01, None),
        (301, 299, Reason.PERSON_TOO_SMALL),  # both sides must exceed
        (1000, 1000, None),
    ],
)
def test_both_sides_must_exceed_min_side(w, h, reason):
    assert judge([box(w, h)], [0.95]).reason == reason
    short = KeepRule(box_rule="short_side")  # the same test, phrased by the short side
    assert judge([box(w, h)], [0.95], short).reason == reason


def test_long_side_and_area_rules():
    long_side = KeepRule(box_rule="long_side")
    assert judge([box(301, 10)], [0.95], long_side).reason is None
    assert judge([box(300, 300)], [0.95], long_side).reason == Reason.PERSON_TOO_SMALL
    area = KeepRule(box_rule="area", min_area=300 * 300)
    assert judge([box(300, 300)], [0.95], area).reason == Reason.PERSON_TOO_SMALL
    assert judge([box(900, 101)], [0.95], area).reason is None  # 90900 > 90000
    assert judge([box(100, 900)], [0.95], area).reason == Reason.PERSON_TOO_SMALL


def test_several_persons_count_only_those_passing():
    boxes = [box(400, 600), box(100, 100), box(500, 500), box(350, 350)]
    scores = [0.95, 0.99, 0.5, 0.91]
    result = judge(boxes, scores)
    assert result.passes.tolist() == [True, False, False, True]
    assert result.num_passing == 2 and result.reason is None


def test_confident_but_small_beats_large_but_unconfident():
    # one person is confident (too small), another large (not confident): size is the failure
    result = judge([box(100, 100), box(500, 500)], [0.95, 0.5])
    assert result.reason == Reason.PERSON_TOO_SMALL and result.num_passing == 0


def test_min_and_max_persons():
    two = [box(400, 400), box(400, 400, x=500)]
    assert judge(two[:1], [0.95], KeepRule(min_persons=2)).reason == Reason.TOO_FEW_PERSONS
    assert judge(two, [0.95, 0.95], KeepRule(min_persons=2)).reason is None
    assert judge(two, [0.95, 0.95], KeepRule(max_persons=2)).reason is None
    assert judge(two, [0.95, 0.95], KeepRule(max_persons=1)).reason == Reason.TOO_MANY_PERSONS
    # small or unconfident extra persons do not count towards the maximum
    three = [*two, box(50, 50)]
    assert judge(three, [0.95, 0.95, 0.99], KeepRule(max_persons=2)).reason is None
    # none passing: the reason says why, not "too few"
    assert judge(two, [0.5, 0.5], KeepRule(min_persons=2)).reason == Reason.PERSON_LOW_SCORE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_score": 1.0},
        {"min_score": -0.1},
        {"box_rule": "diagonal"},
        {"min_persons": 0},
        {"min_persons": 3, "max_persons": 2},
        {"min_side": -1},
    ],
)
def test_rule_validation(kwargs):
    with pytest.raises(ValueError):
        KeepRule(**kwargs)


def test_crop_box_is_four_by_three_and_covers_the_padded_box():
    for w, h in [(100, 400), (400, 100), (300, 400)]:
        x0, y0, x1, y1 = crop_box(np.array(box(w, h)), padding=1.25)
        assert (y1 - y0) / (x1 - x0) == pytest.approx(4 / 3)
        assert x1 - x0 >= 1.25 * w - 1e-6 and y1 - y0 >= 1.25 * h - 1e-6
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((10 + w / 2, 20 + h / 2))


# --- configuration and input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": 650},
        {"conf": 0.0},
        {"gpu_fraction": 0.0},
        {"min_score": 1.5},
        {"box_rule": "x"},
        {"device": "tpu"},
        {"crop_padding": 0.5},
        {"actors": 0},
    ],
)
def test_detector_config_validation(kwargs):
    with pytest.raises(ValueError):
        DetectorConfig(**kwargs)


def test_detector_can_be_disabled():
    assert not DetectorConfig(weights="none").enabled
    assert not DetectorConfig(weights="None").enabled
    assert DetectorConfig().enabled


@pytest.mark.parametrize(
    ("size", "mode", "expected"),
    [
        ((1280, 960), "RGB", (480, 640)),
        ((960, 1280), "L", (640, 480)),
        ((1001, 667), "RGBA", (426, 640)),
        ((200, 150), "P", (150, 200)),
        ((640, 10), "RGB", (10, 640)),
    ],
)
def test_detector_input_keeps_aspect_and_does_not_upscale(size, mode, expected):
    array = detector_input(Image.new(mode, size), 640)
    assert array.shape == (*expected, 3) and array.dtype == np.uint8


# --- weights --------------------------------------------------------------------------------


def test_weights_local_missing_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANS300M_WEIGHTS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "w.pt"
    path.write_bytes(b"x")
    assert resolve_weights(str(path)) == str(path)
    assert resolve_weights(f"file://{path}") == str(path)
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(str(tmp_path / "missing.pt"))
    with pytest.raises(WeightsError, match="random weights"):
        resolve_weights("yolo11n.yaml")
    with pytest.raises(WeightsError, match="not an Ultralytics model name"):
        resolve_weights("my-detector.pt")


def test_ultralytics_name_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANS300M_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline"):
        resolve_weights("yolo11n.pt")
    cached = tmp_path / "cache" / "ultralytics" / "yolo11n.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert resolve_weights("yolo11n.pt") == str(cached)


def test_weights_from_s3_are_cached(tmp_path, monkeypatch, s3_bucket):
    import boto3

    monkeypatch.setenv("HUMANS300M_WEIGHTS_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="models/det.pt", Body=b"abc" * 1000)
    local = resolve_weights(f"s3://{s3_bucket}/models/det.pt")
    assert Path(local).read_bytes() == b"abc" * 1000 and local.startswith(str(tmp_path / "cache"))
    s3.delete_object(Bucket=s3_bucket, Key="models/det.pt")
    with pytest.raises(WeightsError, match="no such S3 object"):
        resolve_weights(f"s3://{s3_bucket}/models/det.pt")
    with pytest.raises(WeightsError, match="no such S3 object"):
        resolve_weights(f"s3://{s3_bucket}/models/other.pt")


# --- the detector on plain batches ----------------------------------------------------------


@pytest.fixture(scope="session")
def yolo_weights(tmp_path_factory):
    return build_yolo(tmp_path_factory.getbasetemp() / "models" / "yolo11n-random.pt")


def noise(width: int, height: int, seed: int, block: int = 4) -> Image.Image:
    """Blocky noise: it survives the downscale to the detector input, so boxes come out."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // block), max(1, width // block), 3), np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)


def exif_rotated(width: int, height: int, seed: int) -> Image.Image:
    """A JPEG stored as width x height with EXIF orientation 6 (shown rotated 90 degrees)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    noise(width, height, seed).save(out, "JPEG", exif=exif)
    return ImageOps.exif_transpose(Image.open(io.BytesIO(out.getvalue())))


def make_batch(images: list[Image.Image], image_size: int = 640) -> dict[str, np.ndarray]:
    n = len(images)
    return {
        "key": object_column([f"k{i}" for i in range(n)]),
        "status": object_column(["ok"] * n),
        "stage": object_column([None] * n),
        "reason": object_column([None] * n),
        "detail": object_column([None] * n),
        "width": np.array([im.width for im in images], dtype=np.int32),
        "height": np.array([im.height for im in images], dtype=np.int32),
        "det_input": object_column([detector_input(im, image_size) for im in images]),
    }


def direct_boxes(model, arrays: list[np.ndarray], sizes: list[tuple[int, int]], config):
    """What a direct model.predict finds on the same inputs, scaled to original pixels.

    Called on the same group of images as the stage's inference batch: Ultralytics pads a
    batch of unequal shapes to a square, so a batch's boxes differ slightly from single runs.
    """
    bgr = [np.ascontiguousarray(a[..., ::-1]) for a in arrays]
    results = model.predict(
        bgr, imgsz=config.image_size, conf=config.conf, iou=config.iou, classes=[0], verbose=False
    )
    found = []
    for array, (width, height), result in zip(arrays, sizes, results, strict=True):
        scale = np.array([width / array.shape[1], height / array.shape[0]] * 2)
        found.append((result.boxes.xyxy.numpy() * scale, result.boxes.conf.numpy()))
    return found


def check_against_direct(out, images, expected, config) -> int:
    """Assert the stage's persons match ``expected``; returns how many persons there were."""
    total = 0
    for i, (im, (boxes, scores)) in enumerate(zip(images, expected, strict=True)):
        persons = out["persons"][i]
        got = np.array([[p["x0"], p["y0"], p["x1"], p["y1"]] for p in persons]).reshape(-1, 4)
        np.testing.assert_allclose(got, boxes, atol=1e-2)
        np.testing.assert_allclose([p["score"] for p in persons], scores, atol=1e-5)
        assert (got[:, [0, 2]] <= im.width).all() and (got[:, [1, 3]] <= im.height).all()
        rule = apply_rule(boxes, scores, config.rule())
        assert [p["passes"] for p in persons] == rule.passes.tolist()
        assert out["num_persons"][i] == rule.num_passing
        assert out["reason"][i] == (str(rule.reason) if rule.reason else None)
        total += len(persons)
    return total


@pytest.mark.parametrize("batch_size", [1, 2])
def test_detector_matches_direct_predict_in_original_pixels(yolo_weights, batch_size):
    config = DetectorConfig(
        weights=str(yolo_weights), batch_size=batch_size, crops=True, min_side=150, min_score=0.8
    )
    detector = PersonDetector(config)
    images = [
        noise(1280, 960, 1),
        exif_rotated(1280, 960, 2),
        noise(1001, 667, 3),
        noise(200, 150, 4),
    ]
    batch = make_batch(images)
    assert batch["det_input"][1].shape == (640, 480, 3)  # the oriented (portrait) image
    inputs, sizes = list(batch["det_input"]), [im.size for im in images]
    expected = []
    for start in range(0, len(images), batch_size):
        group = slice(start, start + batch_size)
        expected += direct_boxes(detector.model, inputs[group], sizes[group], config)
    out = detector(batch)
    assert check_against_direct(out, images, expected, config) > 0, "the model should find boxes"
    assert {out["reason"][i] for i in range(4)} & {None}, "some image should pass the rule"
    for persons in out["persons"]:
        assert all((p["crop_x0"] is not None) == p["passes"] for p in persons)
    assert all(a.shape == (0, 0, 3) for a in out["det_input"])
    identity = json.loads(out["detector"][0])
    assert identity["weights_sha256"] == file_sha256(str(yolo_weights))
    assert identity["imgsz"] == 640 and identity["rule"]["min_side"] == 150


def test_detector_leaves_rejected_rows_and_flags_missing_input(yolo_weights):
    detector = PersonDetector(DetectorConfig(weights=str(yolo_weights)))
    batch = make_batch([noise(640, 480, 5), noise(640, 480, 6), noise(640, 480, 7)])
    batch["status"][0], batch["reason"][0], batch["stage"][0] = "rejected", "too_small", "validate"
    batch["det_input"][2] = np.zeros((0, 0, 3), np.uint8)
    out = detector(batch)
    assert out["reason"][0] == "too_small" and out["persons"][0] is None
    assert out["detector"][0] is None and out["num_persons"][0] == 0
    assert out["reason"][2] == Reason.DETECT_ERROR and out["stage"][2] == Stage.DETECT
    assert out["persons"][1] is not None and out["detector"][1] is not None


def test_a_failing_image_fails_alone(yolo_weights, monkeypatch):
    detector = PersonDetector(DetectorConfig(weights=str(yolo_weights)))
    batch = make_batch([noise(640, 480, 8), noise(640, 480, 9)])
    real = detector._predict
    bad = np.ascontiguousarray(batch["det_input"][1][..., ::-1])  # as the stage hands it over

    def predict(images):
        if any(np.array_equal(im, bad) for im in images):
            raise RuntimeError("bad image")
        return real(images)

    monkeypatch.setattr(detector, "_predict", predict)
    out = detector(batch)
    assert out["reason"][1] == Reason.DETECT_ERROR and "bad image" in out["detail"][1]
    assert out["persons"][0] is not None and out["stage"][0] in (None, Stage.DETECT)


def test_weights_without_a_person_class_are_refused(tmp_path_factory):
    names = {i: f"thing{i}" for i in range(80)}
    path = build_yolo(tmp_path_factory.getbasetemp() / "models" / "no-person.pt", names=names)
    with pytest.raises(ValueError, match="no class 'person'"):
        load_detector(DetectorConfig(weights=str(path)))
