"""Pre-filter classifiers on plain batches: a TorchScript model made here, and an Ultralytics one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curation.classify import ClassifierConfig, ImageClassifier, load_classifier
from curation.record import object_column
from schemas import Reason, Stage
from tests.support.models import build_torchscript_classifier


@pytest.fixture(scope="session")
def red_vs_blue(tmp_path_factory):
    return build_torchscript_classifier(
        tmp_path_factory.getbasetemp() / "models" / "red_vs_blue", ["reddish", "bluish"]
    )


def config_for(red_vs_blue, **kwargs) -> ClassifierConfig:
    module, labels = red_vs_blue
    defaults = {
        "name": "tint",
        "weights": str(module),
        "format": "torchscript",
        "labels": str(labels),
        "drop_labels": ("reddish",),
        "image_size": 32,
        "batch_size": 2,
    }
    return ClassifierConfig(**{**defaults, **kwargs})


def tinted(red: int, blue: int, size=(48, 64)) -> np.ndarray:
    image = np.full((*size, 3), 128, np.uint8)
    image[..., 0], image[..., 2] = red, blue
    return image


def make_batch(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(arrays)
    return {
        "status": object_column(["ok"] * n),
        "stage": object_column([None] * n),
        "reason": object_column([None] * n),
        "detail": object_column([None] * n),
        "det_input": object_column(arrays),
    }


def expected_score(red: int, blue: int) -> float:
    """Softmax of the test module's logits on ImageNet-normalised pixels."""
    mean, std = np.array([0.485, 0.406]), np.array([0.229, 0.225])
    r, b = (np.array([red, blue]) / 255 - mean) / std
    logit = (r - b) * 10
    return float(1 / (1 + np.exp(-2 * abs(logit))))


def test_drops_by_label_and_records_every_row(red_vs_blue):
    stage = ImageClassifier(config_for(red_vs_blue))
    arrays = [tinted(200, 50), tinted(50, 200), tinted(180, 60, size=(100, 30))]
    out = stage(make_batch(arrays))
    assert [out["status"][i] for i in range(3)] == ["rejected", "ok", "rejected"]
    assert out["reason"][0] == Reason.PREFILTER_LABEL and out["stage"][0] == Stage.PREFILTER
    assert "reddish" in out["detail"][0]
    labels = [out["prefilter"][i][0]["label"] for i in range(3)]
    assert labels == ["reddish", "bluish", "reddish"]
    assert out["prefilter"][0][0]["classifier"] == "tint"
    assert out["prefilter"][1][0]["score"] == pytest.approx(expected_score(50, 200), abs=1e-4)
    assert out["det_input"][0].shape == (48, 64, 3), "only the last reader clears the input"


def test_min_score_boundary(red_vs_blue):
    score = expected_score(150, 120)
    assert 0.5 < score < 0.999
    at = ImageClassifier(config_for(red_vs_blue, min_score=score - 1e-4))(
        make_batch([tinted(150, 120)])
    )
    above = ImageClassifier(config_for(red_vs_blue, min_score=score + 1e-4))(
        make_batch([tinted(150, 120)])
    )
    assert at["status"][0] == "rejected" and above["status"][0] == "ok"
    assert above["prefilter"][0][0]["label"] == "reddish", "kept rows still record the label"


def test_several_classifiers_append_and_the_last_clears_input(red_vs_blue):
    first = ImageClassifier(config_for(red_vs_blue, name="a", drop_labels=()))
    second = ImageClassifier(
        config_for(red_vs_blue, name="b", drop_labels=("bluish",)), clear_input=True
    )
    batch = make_batch([tinted(200, 50), tinted(50, 200)])
    batch["status"][0] = "rejected"  # judged earlier: left alone
    out = second(first(batch))
    assert out["prefilter"][0] is None
    assert [p["classifier"] for p in out["prefilter"][1]] == ["a", "b"]
    assert out["status"][1] == "rejected" and out["detail"][1].startswith("b: bluish")
    assert all(a.shape == (0, 0, 3) for a in out["det_input"])


def test_config_and_label_checks(red_vs_blue, tmp_path):
    module, labels = red_vs_blue
    with pytest.raises(ValueError, match="label file"):
        ClassifierConfig(name="x", weights=str(module), format="torchscript")
    with pytest.raises(ValueError, match="name and weights"):
        ClassifierConfig(weights=str(module))
    with pytest.raises(ValueError, match="format"):
        ClassifierConfig(name="x", weights=str(module), format="onnx")
    with pytest.raises(ValueError, match="not in its labels"):
        load_classifier(config_for(red_vs_blue, drop_labels=("watermark",)))
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    stage = ImageClassifier(config_for(red_vs_blue, labels=str(three), drop_labels=()))
    with pytest.raises(ValueError, match="3 labels"):
        stage(make_batch([tinted(1, 2)]))


def test_ultralytics_classification_model(tmp_path_factory):
    from ultralytics import YOLO

    path = tmp_path_factory.getbasetemp() / "models" / "yolo11n-cls-random.pt"
    if not path.exists():
        model = YOLO("yolo11n-cls.yaml")
        model.model.names = {0: "photo", 1: "watermark"} | {i: f"c{i}" for i in range(2, 1000)}
        model.save(str(path))
    config = ClassifierConfig(
        name="wm", weights=str(path), drop_labels=("watermark",), image_size=64
    )
    stage = ImageClassifier(config)
    out = stage(make_batch([tinted(200, 50), tinted(50, 200)]))
    model = YOLO(str(path))
    for i, array in enumerate([tinted(200, 50), tinted(50, 200)]):
        squashed = np.asarray(Image.fromarray(array).resize((64, 64), Image.Resampling.BILINEAR))
        direct = model.predict(np.ascontiguousarray(squashed[..., ::-1]), imgsz=64, verbose=False)[
            0
        ]
        entry = out["prefilter"][i][0]
        assert entry["label"] == model.names[direct.probs.top1]
        assert entry["score"] == pytest.approx(float(direct.probs.top1conf), abs=1e-5)
