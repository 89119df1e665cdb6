import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation import manifest
from tests.support.datasets import build_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(str(tmp_path_factory.mktemp("ds") / "humans"), num_samples=45)


def test_frame_reads_only_selected_columns_and_rows(built):
    df = manifest.samples_frame(
        built.uri, columns=["key", "num_persons"], filter=pc.field("num_persons") >= 2
    )
    expected = built.samples[built.samples.num_persons >= 2]
    assert list(df.columns) == ["key", "num_persons"]
    assert sorted(df.key) == sorted(expected.key)


def test_filter_tuples_like_pandas(built):
    df = manifest.samples_frame(
        built.uri, filter=[("license", "==", "cc0-1.0"), ("width", ">", 700)]
    )
    expected = built.samples[(built.samples.license == "cc0-1.0") & (built.samples.width > 700)]
    assert sorted(df.key) == sorted(expected.key) and len(df) > 0


def test_rejections_frame(built):
    df = manifest.rejections_frame(built.uri, filter=pc.field("stage") == "dedup")
    dups = built.rejections[built.rejections.stage == "dedup"]
    assert sorted(df.source_uri) == sorted(dups.source_uri)
    assert set(df.duplicate_of) <= set(built.samples.key)


def test_persons_frame_explodes_boxes(built):
    boxes = manifest.persons_frame(built.uri)
    assert len(boxes) == sum(len(p) for p in built.samples.persons)
    assert boxes.passes.sum() == built.samples.num_persons.sum()
    assert (boxes.box_height > 0).all() and (boxes.person >= 0).all()


def test_persons_table_on_a_sliced_table(built):
    table = manifest.samples_table(
        built.uri, columns=["key", "shard", "width", "height", "persons"]
    )
    part = table.slice(7, 5)
    boxes = manifest.persons_table(part).to_pandas()
    expected = built.samples.iloc[7:12]
    assert len(boxes) == sum(len(p) for p in expected.persons)
    for key, persons in zip(expected.key, expected.persons, strict=True):
        mine = boxes[boxes.key == key].sort_values("person")
        assert mine.x0.tolist() == pytest.approx([p["x0"] for p in persons])


def test_dask_matches_pandas(built):
    ddf = manifest.samples_dask(built.uri, columns=["license", "num_persons"],
                                filter=pc.field("num_persons") >= 1)  # fmt: skip
    assert ddf.npartitions == 3  # 45 samples, 20 per shard
    got = ddf.groupby("license").num_persons.sum().compute().to_dict()
    kept = built.samples[built.samples.num_persons >= 1]
    assert got == kept.groupby("license").num_persons.sum().to_dict()


def test_summary_and_missing_dataset(built, tmp_path):
    assert manifest.read_summary(built.uri)["counts"]["kept"] == len(built.samples)
    with pytest.raises(manifest.DatasetError, match="no such dataset"):
        manifest.samples_frame(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(manifest.DatasetError, match="not a dataset"):
        manifest.check_dataset(str(tmp_path / "empty"))


def test_original_datasets_keep_the_schema(built):
    ds = manifest.samples_dataset(built.uri)
    assert ds.count_rows() == len(built.samples)
    first = pq.read_schema(ds.files[0])
    assert first.names == ds.schema.names
