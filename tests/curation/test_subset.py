import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation import subset
from curation.manifest import read_summary, samples_table
from curation.writer import iter_shard
from runtime.storage import list_files, locate
from schemas.layout import SHARDS_DIR
from schemas.summary import validate_summary
from tests.support.datasets import build_dataset

RENUMBERED = ["shard", "image_member", "json_member"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(str(tmp_path_factory.mktemp("ds") / "humans"), num_samples=50)


def _comparable(table):
    return table.drop_columns(RENUMBERED).sort_by("key").combine_chunks()


def test_round_trip(built, tmp_path):
    out = tmp_path / "multi"
    where = "num_persons >= 2 AND license IS NOT NULL"
    args = ["--dataset", built.uri, "--where", where, "--output", str(out)]
    assert subset.main([*args, "--max-shard-samples", "4"]) == 0
    parent = built.samples
    chosen = parent[(parent.num_persons >= 2) & parent.license.notna()]
    assert len(chosen) > 4  # several output shards

    got = samples_table(str(out))
    expected = samples_table(built.uri).filter(pc.is_in(pc.field("key"), pa.array(chosen.key)))
    assert _comparable(got).equals(_comparable(expected))
    got = got.to_pandas()
    tars = sorted((out / SHARDS_DIR).iterdir())
    assert len(tars) == -(-len(chosen) // 4)
    # every tar member is the parent's bytes; the JSON member is the new manifest row
    read_back = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert [s["__key__"] for s in read_back] == got.key.tolist()
    for sample, row in zip(read_back, got.to_dict("records"), strict=True):
        ext = row["image_member"].split(".", 1)[1]
        assert sample[ext] == built.images[row["key"]]
        stored = json.loads(sample["json"])
        assert stored["shard"] == row["shard"] and stored["num_persons"] == row["num_persons"]

    summary = read_summary(str(out))
    validate_summary(summary)
    assert summary["subset"] == {**summary["subset"], "parent": built.uri, "predicate": where,
                                 "parent_samples": len(parent), "selected": len(chosen)}  # fmt: skip
    assert summary["config"] == built.summary["config"]
    assert summary["bytes"] == sum(len(built.images[k]) for k in chosen.key)

    # a second run refuses to overwrite, then replaces with --overwrite (no stale shards)
    assert subset.main(args) == 2
    assert subset.main([*args[:3], "num_persons >= 5", *args[4:], "--overwrite"]) == 0
    again = pq.read_table(sorted((out / "manifests").iterdir())[0]).to_pandas()
    assert (again.num_persons >= 5).all()
    assert len(list((out / SHARDS_DIR).iterdir())) == 1


def test_subset_on_s3_with_persons_predicate(s3_bucket):
    parent = build_dataset(f"s3://{s3_bucket}/parent", num_samples=20, num_rejections=5)
    where = "len(list_filter(persons, p -> p.score > 0.95)) >= 1"
    config = subset.SubsetConfig(dataset=parent.uri, where=where, output=f"s3://{s3_bucket}/sub")
    summary = subset.write_subset(config)
    expected = sorted(k for k, ps in zip(parent.samples.key, parent.samples.persons, strict=True)
                      if any(p["score"] > 0.95 for p in ps))  # fmt: skip
    assert summary["subset"]["selected"] == len(expected) > 0
    tars = list_files(locate(config.output).join(SHARDS_DIR), ".tar")
    keys = [s["__key__"] for tar in tars for s in iter_shard(tar)]
    assert sorted(keys) == expected


def test_bad_predicate_writes_nothing(built, tmp_path, capsys):
    out = tmp_path / "bad"
    assert (
        subset.main(["--dataset", built.uri, "--where", "num_people > 1", "--output", str(out)])
        == 2
    )
    assert "num_people" in capsys.readouterr().err
    assert not out.exists()
