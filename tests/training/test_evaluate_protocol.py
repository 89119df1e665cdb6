"""Pose evaluation protocol: flip test wiring, annotation area for OKS, named seg IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.labelled import SEG_CLASSES
from training.evaluate import batches, evaluate
from training.tasks import keypoints as kp
from training.tasks.shards import Sample, write_dataset
from training.tasks.synthetic import synthetic_samples
from training.tasks.transforms import flip_heatmaps

INPUT = (256, 192)


@pytest.fixture(scope="module")
def pose_data(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("pose") / "ds")
    write_dataset(
        uri,
        synthetic_samples(6, seed=3, height=96, width=72, tasks=("pose", "seg")),
        ["pose", "seg"],
        3,
    )
    return uri


def _oracle(uri: str, mirror_aware: bool):
    """A predictor that returns each crop's target heatmaps. Shown a mirrored crop, it
    returns what a perfect model would (the targets of the mirrored crop) or, if not
    ``mirror_aware``, the unmirrored targets (a model blind to left and right)."""
    known = {}
    for batch in batches(uri, "pose", INPUT, batch_size=4):
        for image, heat in zip(batch["image"], batch["heatmap"], strict=True):
            known[image.numpy().tobytes()] = heat.numpy()
            mirrored = flip_heatmaps(heat.numpy()[None], kp.FLIP_PERM)[0]
            flipped = torch.flip(image, dims=[-1]).numpy().tobytes()
            known[flipped] = mirrored if mirror_aware else heat.numpy()
    return lambda images: torch.from_numpy(np.stack([known[i.numpy().tobytes()] for i in images]))


def test_flip_test_averages_a_crop_with_its_mirror(pose_data):
    plain = evaluate(_oracle(pose_data, True), pose_data, "pose", INPUT, flip_test=False)
    flipped = evaluate(_oracle(pose_data, True), pose_data, "pose", INPUT, flip_test=True)
    assert plain["flip_test"] is False and flipped["flip_test"] is True
    assert plain["instances"] == 6 and plain["area_from_box"] == 0  # synthetic areas are set
    assert plain["body_AP"] > 0.9 and plain["NME"] < 0.01
    # A perfect model's mirrored heatmaps, flipped back, are its plain heatmaps.
    for name in ("AP", "body_AP", "NME"):
        assert flipped[name] == pytest.approx(plain[name], abs=1e-9)
    # A model blind to left and right is caught by the flip test: its averaged heatmaps
    # mix every point with its mirror partner.
    blind = evaluate(_oracle(pose_data, False), pose_data, "pose", INPUT, flip_test=True)
    assert blind["body_AP"] < plain["body_AP"] - 0.2 and blind["NME"] > 2 * plain["NME"]


def test_oks_uses_the_annotated_area(pose_data, tmp_path):
    """The same predictions score lower with a smaller annotated area (a stricter scale),
    and persons without an area fall back to the box, counted in area_from_box."""
    samples = list(synthetic_samples(6, seed=3, height=96, width=72, tasks=("pose", "seg")))

    def with_area(scale: float | None) -> str:
        out = []
        for s in samples:
            persons = [{**p.__dict__, "area": None if scale is None else p.area * scale}
                       for p in s.meta.persons]  # fmt: skip
            meta = s.meta.__class__(**{**s.meta.__dict__, "persons": persons})
            out.append(Sample(meta=meta, image=s.image, seg=s.seg))
        uri = str(tmp_path / f"area{scale}")
        write_dataset(uri, iter(out), ["pose", "seg"], 3)
        return uri

    def noisy(uri: str):  # the oracle's heatmaps, all shifted by two heatmap pixels
        oracle = _oracle(uri, True)
        return lambda images: torch.roll(oracle(images), shifts=2, dims=-1)

    full, small, unknown = (with_area(s) for s in (1.0, 0.25, None))
    ap_full = evaluate(noisy(full), full, "pose", INPUT, flip_test=False)
    ap_small = evaluate(noisy(small), small, "pose", INPUT, flip_test=False)
    ap_box = evaluate(noisy(unknown), unknown, "pose", INPUT, flip_test=False)
    assert ap_small["body_AP"] < ap_full["body_AP"]
    assert ap_full["area_from_box"] == 0 and ap_box["area_from_box"] == 6
    assert ap_box["body_AP"] >= ap_full["body_AP"]  # the box is larger than the figure


def test_seg_iou_is_named(pose_data):
    result = evaluate(lambda x: torch.zeros(len(x), len(SEG_CLASSES), 64, 48), pose_data,
                      "seg", INPUT)  # fmt: skip
    assert list(result["IoU"]) == list(SEG_CLASSES)
    assert result["IoU"]["Background"] > 0 and result["IoU"]["Torso"] == 0.0
