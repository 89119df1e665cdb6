"""The converter (COCO JSON, label folders), checkpoint loading and the overlay writer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from schemas.keypoints import COCO_INDEX
from schemas.labelled import NUM_KEYPOINTS, LabelError
from training import convert, predict
from training.config import FinetuneConfig
from training.tasks.model import build_model, load_checkpoint
from training.tasks.shards import read_dataset
from training.tasks.synthetic import render_figure


def _figure_files(tmp_path, n: int = 3):
    images, seg, depth, normal = (tmp_path / d for d in ("img", "seg", "depth", "normal"))
    for d in (images, seg, depth, normal):
        d.mkdir()
    figures = []
    for i in range(n):
        r = render_figure(np.random.default_rng(i), 48, 40)
        Image.fromarray(r.image).save(images / f"p{i}.png")
        Image.fromarray(r.seg).save(seg / f"p{i}.png")
        np.save(depth / f"p{i}.npy", r.depth)
        Image.fromarray(((r.normal + 1) * 127.5).round().astype(np.uint8)).save(
            normal / f"p{i}.png"
        )
        figures.append(r)
    return figures


def test_convert_folders(tmp_path):
    figures = _figure_files(tmp_path)
    out = tmp_path / "ds"
    convert.main(["folders", "--images", str(tmp_path / "img"), "--seg", str(tmp_path / "seg"),
                  "--depth", str(tmp_path / "depth"), "--normal", str(tmp_path / "normal"),
                  "--output", str(out)])  # fmt: skip
    samples = list(read_dataset(str(out)))
    assert [s.meta.key for s in samples] == ["p0", "p1", "p2"]
    for r, s in zip(figures, samples, strict=True):
        assert s.meta.tasks == ["seg", "depth", "normal"]
        np.testing.assert_array_equal(s.seg, r.seg)
        np.testing.assert_array_equal(s.mask, r.mask > 0)  # from depth > 0
        fg = r.mask > 0
        angle = np.degrees(np.arccos(np.clip(np.sum(s.normal[fg] * r.normal[fg], -1), -1, 1)))
        assert angle.max() < 1.0  # 8-bit PNG quantisation only


def test_convert_coco(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img" / "a.jpg")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img" / "b.jpg")
    coco = np.stack([np.arange(17) + 1.0, np.arange(17) + 20.0, np.full(17, 2.0)], 1)
    kps = coco.ravel().tolist()
    body = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1, 2, 10, 20], "keypoints": kps, "iscrowd": 0,
             "area": 123.5},
            {"id": 2, "image_id": 1, "bbox": [1, 2, 10, 20], "keypoints": kps, "iscrowd": 1},
            {"id": 4, "image_id": 1, "bbox": [3, 2, 10, 20], "keypoints": kps},
            {"id": 3, "image_id": 2, "bbox": [1, 2, 10, 20], "keypoints": [0] * 51},
        ],
    }  # fmt: skip
    (tmp_path / "kp.json").write_text(json.dumps(body))
    convert.main(["coco", "--json", str(tmp_path / "kp.json"), "--images", str(tmp_path / "img"),
                  "--output", str(tmp_path / "ds")])  # fmt: skip
    (sample,) = list(read_dataset(str(tmp_path / "ds")))  # b.jpg has nobody labelled
    assert sample.meta.key == "a" and len(sample.meta.persons) == 2  # the crowd is skipped
    first, second = sample.meta.persons
    assert first.area == 123.5 and second.area is None  # COCO's area kept; unknown stays so
    points = np.asarray(first.keypoints).reshape(NUM_KEYPOINTS, 3)
    # COCO's 17 land on the same body points of Sapiens' table, by name (the wrists at 62, 41).
    np.testing.assert_array_equal(points[list(COCO_INDEX)], coco)
    assert points[62, 0] == 10.0 and points[41, 0] == 11.0  # COCO's left, right wrist
    assert (np.delete(points, list(COCO_INDEX), axis=0)[:, 2] == 0).all()
    body["annotations"][0]["keypoints"] = kps[:30]
    (tmp_path / "kp.json").write_text(json.dumps(body))
    with pytest.raises(LabelError, match="expected 17 or 308"):
        list(convert.coco_samples(str(tmp_path / "kp.json"), str(tmp_path / "img")))
    assert convert.main(["coco", "--json", str(tmp_path / "kp.json"), "--images",
                         str(tmp_path / "img"), "--output", str(tmp_path / "ds2")]) == 2  # fmt: skip
    assert not (tmp_path / "ds2").exists()  # refused before anything was written


@pytest.mark.parametrize("task", ["pose", "seg", "depth", "normal"])
def test_predict_writes_overlays(tmp_path, task):
    cfg = FinetuneConfig(task=task, dataset="unused", output="unused", preset="vit_test",
                         image_size=(64, 48), head_channels=16)  # fmt: skip
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg)},
               tmp_path / "checkpoint.pt")  # fmt: skip
    loaded, config = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert config["task"] == task and not loaded.training
    with pytest.raises(ValueError, match="no fine-tuning checkpoint"):
        load_checkpoint(str(tmp_path / "nowhere"))
    figures = _figure_files(tmp_path, n=1)
    predict.main(["--task", task, "--checkpoint", str(tmp_path / "checkpoint.pt"), "--images",
                  str(tmp_path / "img" / "p0.png"), "--output", str(tmp_path / "out")])  # fmt: skip
    overlay = np.asarray(Image.open(tmp_path / "out" / f"p0.{task}.png"))
    h, w = figures[0].image.shape[:2]
    assert overlay.shape[0] == h and overlay.shape[1] in (w, 2 * w)
    assert not np.array_equal(overlay[:, :w], figures[0].image) or overlay.shape[1] == 2 * w
    other = "seg" if task != "seg" else "depth"
    image = str(tmp_path / "img" / "p0.png")
    argv = ["--task", other, "--checkpoint", str(tmp_path / "checkpoint.pt"), "--images", image]
    assert predict.main(argv) == 2
