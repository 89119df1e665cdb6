"""Synthetic figures and the labelled shard format, locally and on S3."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import labelled as L
from training.tasks import keypoints as kp
from training.tasks.shards import read_dataset, shard_uris, write_dataset
from training.tasks.synthetic import Primitive, front_surface, render_figure, synthetic_samples


def test_keypoint_layout():
    assert len(kp.KEYPOINT_NAMES) == L.NUM_KEYPOINTS == 308
    assert [len(g) for g in kp.GROUPS.values()] == [17, 6, 20, 20, 7, 238]
    perm = kp.FLIP_PERM
    np.testing.assert_array_equal(perm[perm], np.arange(308))  # an involution
    assert kp.SIGMAS.shape == (308,) and (kp.SIGMAS > 0).all()
    assert kp.SIGMAS[kp.KEYPOINT_INDEX["left_hip"]] == 0.107
    # Mirror points share sigmas, except the feet: COCO-WholeBody's published foot sigmas
    # differ between left and right and are kept as published.
    not_feet = np.array([n not in kp.FEET for n in kp.KEYPOINT_NAMES])
    np.testing.assert_array_equal(kp.SIGMAS[not_feet], kp.SIGMAS[perm][not_feet])


def test_front_surface_is_analytic():
    sphere = Primitive(np.array([10.0, 10.0]), np.array([10.0, 10.0]), 50.0, 5.0, "Face_Neck")
    depth, normal = front_surface(sphere, np.array([[13.0, 10.0], [10.0, 10.0], [20.0, 0.0]]))
    assert depth[0] == pytest.approx(50 - 4) and depth[1] == pytest.approx(45)
    np.testing.assert_allclose(normal[0], [0.6, 0.0, -0.8])
    assert np.isinf(depth[2])


def test_render_labels_agree():
    r = render_figure(np.random.default_rng(3), 96, 72)
    fg = r.mask > 0
    assert ((r.seg > 0) == fg).all()  # every figure pixel has a part, background none
    np.testing.assert_allclose(np.linalg.norm(r.normal[fg], axis=-1), 1.0, atol=1e-5)
    assert (r.normal[fg][:, 2] < 0).all()  # visible surfaces face the camera
    vis = r.keypoints[r.keypoints[:, 2] == 2]
    rows, cols = np.round(vis[:, 1]).astype(int), np.round(vis[:, 0]).astype(int)
    assert fg[rows, cols].mean() > 0.95  # visible points lie on the figure
    x, y, w, h = r.bbox
    assert fg[int(y) : int(y + h), int(x) : int(x + w)].sum() == fg.sum()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_shards_round_trip(tmp_path, where, request):
    uri = str(tmp_path / "ds")
    if where == "s3":
        uri = f"s3://{request.getfixturevalue('s3_bucket')}/labelled"
    samples = list(synthetic_samples(5, seed=1, height=48, width=40))
    assert write_dataset(uri, iter(samples), list(L.TASKS), per_shard=2) == 5
    assert len(shard_uris(uri)) == 3
    back = list(read_dataset(uri))
    assert [s.meta.key for s in back] == [s.meta.key for s in samples]
    for a, b in zip(samples, back, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.seg, b.seg)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.normal, b.normal)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert b.meta.persons[0].keypoints == a.meta.persons[0].keypoints
        assert b.meta.persons[0].area == a.meta.persons[0].area == np.count_nonzero(a.mask)


def test_bad_samples_are_refused():
    with pytest.raises(L.LabelError, match="308"):
        L.Person(bbox=[0, 0, 5, 5], keypoints=[0.0] * 30)
    with pytest.raises(L.LabelError, match="no persons"):
        L.SampleMeta(key="a", width=4, height=4, tasks=["pose"])
    sample = next(synthetic_samples(1, seed=0, height=32, width=24))
    sample.seg = None
    with pytest.raises(L.LabelError, match="seg.png"):
        write_dataset("/nonexistent-never-written", iter([sample]), list(L.TASKS))


def test_person_area_and_format_versions():
    with pytest.raises(L.LabelError, match="area"):
        L.Person(bbox=[0, 0, 5, 5], keypoints=[0.0] * 924, area=0.0)
    meta = L.SampleMeta(key="a", width=9, height=9, tasks=["pose"],
                        persons=[{"bbox": [0, 0, 5, 5], "keypoints": [0.0] * 924}])  # fmt: skip
    assert L.SampleMeta.from_json(meta.to_json()).persons[0].area is None
    body = L.dataset_description(["pose", "seg"])
    assert body["keypoints"] == list(kp.KEYPOINT_NAMES)
    L.check_description(body)
    # Version 1 wrote pose keypoints in an older order: refused; its dense labels still read.
    with pytest.raises(L.LabelError, match="convert the source again"):
        L.check_description({**body, "version": 1})
    L.check_description({**body, "version": 1, "tasks": ["seg"]})
    with pytest.raises(L.LabelError, match="version 3"):
        L.check_description({**body, "version": 3})


def test_every_labelled_task_has_its_task_object():
    from training.tasks.registry import TASKS_BY_NAME

    assert tuple(TASKS_BY_NAME) == L.TASKS
    assert all(task.name == name for name, task in TASKS_BY_NAME.items())
