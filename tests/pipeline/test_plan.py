"""The plan, in the driver and on Ray, against a plain reading of the inputs (``iter_inputs``)."""

import datetime as dt
import gzip
import hashlib
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.manifest import rejections_dataset
from curation.sources import SourceConfig, iter_inputs, split_input
from pipeline.plan import load_or_build_plan, partition_of, plan_id
from pipeline.resume import finished_by_partition, unfinished_inputs
from runtime.storage import locate
from schemas import sample_key
from schemas.layout import WORK_DIR

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _inputs(folder) -> list[str]:
    """Every kind of input, with repeats within a list, across lists and across range cuts."""
    lines = []
    for i in range(3000):
        lines.append(f"http://a.example/{i % 2500}.jpg")  # 500 repeats inside the list
        if i % 700 == 0:
            lines += ["", "# a comment", "not a url", "ftp://x.example/y"]
    (folder / "big.txt").write_text("\n".join(lines) + "\n")
    jsonl = [
        json.dumps({"url": f"http://b.example/{i}.jpg", "caption": f"c{i}"}) for i in range(900)
    ]
    jsonl[17] = "{oops"
    jsonl.append(json.dumps({"url": "http://a.example/3.jpg"}))  # repeats big.txt
    (folder / "more.jsonl").write_text("\n".join(jsonl) + "\n")
    rows = [f"http://c.example/{i}.jpg" if i % 50 else None for i in range(1200)]
    rows[5] = "http://b.example/4.jpg"  # repeats more.jsonl
    pq.write_table(pa.table({"url": rows, "license": ["cc"] * 1200}), folder / "list.parquet",
                   row_group_size=100)  # fmt: skip
    csv = "url,caption\nhttp://d.example/1.jpg,x\nbroken,row,extra\nhttp://a.example/9.jpg,y\n"
    (folder / "list.csv.gz").write_bytes(gzip.compress(csv.encode()))
    images = folder / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(5):
        (images / "sub" / f"{i}.jpg").write_bytes(b"x")
    with tarfile.open(images / "shard.tar", "w") as tf:
        for name in ("k1.jpg", "k2.png"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"img"))
    specs = ["big.txt", "more.jsonl", "list.parquet", "list.csv.gz", "images", "big.txt"]
    return [str(folder / s) for s in specs]


def _expected(config: SourceConfig):
    """(first listing of each key in input order, malformed (where, detail), repeats)."""
    first, malformed, repeats = {}, [], 0
    for spec in config.inputs:
        for batch in iter_inputs(spec, config):
            malformed += [item.rejection()["detail"] for item in batch.malformed]
            for row in batch.rows:
                key = sample_key(row["source_uri"])
                if key in first:
                    repeats += 1
                else:
                    first[key] = row
    return first, malformed, repeats


@pytest.mark.parametrize("on_ray", [False, True])
def test_plan_matches_a_plain_reading_of_the_inputs(tmp_path, on_ray, monkeypatch):
    config = SourceConfig(inputs=tuple(_inputs(tmp_path)))
    first, malformed, repeats = _expected(config)
    # the folder's 5 files listed in 3 parts, handed to their tasks in listing files
    monkeypatch.setattr("curation.sources.FILES_PER_PART", 2)
    assert sorted(len(p.files) for p in split_input(config.inputs[4], config)) == [0, 1, 2, 2]
    # small parts: the txt list is cut into line-aligned ranges, the Parquet list by row groups
    parts = [p for s in config.inputs for p in split_input(s, config, part_bytes=16384)]
    assert sum(p.uri.endswith("big.txt") for p in parts) > 4
    assert sum(p.uri.endswith(".parquet") for p in parts) >= 2
    dataset = locate(str(tmp_path / "out"))
    plan = load_or_build_plan(
        dataset, config, partitions=3, ray_above=0 if on_ray else 1 << 40, part_bytes=16384
    )

    table = pa.concat_tables(pq.read_table(f.path) for f in plan.files)
    assert table.num_rows == plan.rows == len(first)
    assert sorted(table["key"].to_pylist()) == sorted(first)
    for row in table.to_pylist():  # the first listing's columns, and only there
        assert {k: row[k] for k in first[row["key"]]} == first[row["key"]]
    rejected = rejections_dataset(str(tmp_path / "out")).to_table().to_pylist()
    # malformed rows keep their row number in their file, whatever range read them
    unusable = [r["detail"] for r in rejected if r["reason"] != "duplicate_input"]
    assert sorted(unusable) == sorted(malformed)
    duplicates = [r for r in rejected if r["reason"] == "duplicate_input"]
    assert len(duplicates) == plan.duplicates == repeats
    assert all(r["key"] in first and r["detail"].startswith("input #") for r in duplicates)
    assert plan.malformed == len(malformed)
    assert not (tmp_path / "out" / WORK_DIR / f"plan-{plan.plan_id}" / "stage").exists()


def test_partition_files_hold_their_partition_only(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"http://a.example/{i}.jpg\n" for i in range(5000)))
    config = SourceConfig(inputs=(str(urls),))
    plan = load_or_build_plan(locate(str(tmp_path / "out")), config, partitions=4, ray_above=0)
    assert plan.partitions == 4 and len(plan.files) == 4
    for file in plan.files:
        number = int(file.path.rsplit("-", 1)[1].split(".")[0])
        keys = pq.read_table(file.path)["key"]
        assert set(partition_of(keys, 4).tolist()) == {number}


def test_rerun_skips_a_done_plan_and_a_crashed_one_is_rebuilt(tmp_path, monkeypatch):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://a.example/1.jpg\nhttp://a.example/1.jpg\nnope\n")
    config = SourceConfig(inputs=(str(urls),))
    dataset = locate(str(tmp_path / "out"))
    first = load_or_build_plan(dataset, config)
    # what a build killed mid-way leaves: a stale partition, staged rows, its rejections
    plan_dir = tmp_path / "out" / WORK_DIR / f"plan-{first.plan_id}"
    (plan_dir / "DONE.json").unlink()
    (plan_dir / "inputs-0099.parquet").write_bytes(next(plan_dir.glob("inputs-*")).read_bytes())
    (plan_dir / "stage").mkdir()
    (plan_dir / "stage" / "000007.parquet").write_bytes(b"junk")
    rejections = tmp_path / "out" / "rejections"
    (rejections / f"source-{first.plan_id}-duplicates-0042.parquet").write_bytes(
        next(rejections.glob("*duplicates*")).read_bytes()
    )
    rebuilt = load_or_build_plan(dataset, config)
    assert (rebuilt.rows, rebuilt.malformed, rebuilt.duplicates) == (1, 1, 1)
    assert [f.path.rsplit("/", 1)[1] for f in rebuilt.files] == [
        f.path.rsplit("/", 1)[1] for f in first.files
    ]
    assert len(rejections_dataset(str(tmp_path / "out")).to_table()) == 2
    assert not (plan_dir / "stage").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("a done plan is read again")

    monkeypatch.setattr("pipeline.plan.split_input", refuse)
    again = load_or_build_plan(dataset, config)
    assert (again.rows, again.partitions, again.files) == (1, rebuilt.partitions, rebuilt.files)


@pytest.mark.parametrize("on_ray", [False, True])
def test_unfinished_inputs_drop_each_partitions_finished_keys(tmp_path, on_ray):
    from curation.writer import write_rejections

    urls = tmp_path / "urls.txt"
    listed = [f"http://a.example/{i}.jpg" for i in range(3000)]
    urls.write_text("\n".join(listed) + "\n")
    dataset = locate(str(tmp_path / "out"))
    plan = load_or_build_plan(dataset, SourceConfig(inputs=(str(urls),)), partitions=5)
    finished = [sample_key(u) for u in listed[::3]]
    now = dt.datetime.now(dt.UTC)
    rows = [{"key": k, "source_uri": "x", "stage": "fetch", "reason": "http_error",
             "detail": "", "rejected_at": now} for k in finished]  # fmt: skip
    write_rejections(dataset, "fetch-a", rows[:500])
    write_rejections(dataset, "fetch-b", rows[500:900])
    # kept samples: a manifest's key column is "not null", unlike a rejection's
    (tmp_path / "out" / "manifests").mkdir()
    kept = pa.schema([pa.field("key", pa.string(), nullable=False)])
    pq.write_table(
        pa.table({"key": finished[900:]}, schema=kept), tmp_path / "out/manifests/000000.parquet"
    )
    # a duplicate_input row names the first listing's key: it does not finish that sample
    other = {
        **rows[0],
        "key": sample_key(listed[1]),
        "reason": "duplicate_input",
        "stage": "source",
    }
    write_rejections(dataset, "source-x", [other])

    done = finished_by_partition(dataset, plan, ray_above=0 if on_ray else 1 << 40)
    assert done.keys == len(finished)
    for file in (tmp_path / "out" / WORK_DIR / f"plan-{plan.plan_id}" / "finished").iterdir():
        number = int(file.stem.rsplit("-", 1)[1])
        assert set(partition_of(pq.read_table(file)["key"], 5).tolist()) == {number}
    left = [row["key"] for row in unfinished_inputs(dataset, plan, done).take_all()]
    assert sorted(left) == sorted(set(map(sample_key, listed)) - set(finished))


def test_plan_id_changes_with_the_caption_column_and_not_for_its_default():
    config = SourceConfig(inputs=("urls.parquet",), url_column="URL")
    # the id plans had before --caption-column existed: their jobs still resume on them
    before = json.dumps({"inputs": ["urls.parquet"], "url_column": "URL"})
    assert plan_id(config) == hashlib.sha256(before.encode()).hexdigest()[:12]
    other = SourceConfig(inputs=("urls.parquet",), url_column="URL", caption_column="TEXT")
    assert plan_id(other) != plan_id(config)


def test_partitions_are_sized_before_the_reads_from_counted_lines_and_row_groups(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("pipeline.plan.ROWS_PER_PARTITION", 1000)
    urls = tmp_path / "urls.txt"  # cut into line-aligned ranges: their lines are counted
    urls.write_text("".join(f"http://a.example/{i}.jpg\n" for i in range(5000)))
    listed = pa.table({"url": [f"http://b.example/{i}.jpg" for i in range(3000)],
                       "caption": ["a long caption " * 20] * 3000})  # fmt: skip
    pq.write_table(listed, tmp_path / "list.parquet", row_group_size=500)
    config = SourceConfig(inputs=(str(urls), str(tmp_path / "list.parquet")))
    plan = load_or_build_plan(
        locate(str(tmp_path / "out")), config, partitions=2, ray_above=1 << 40, part_bytes=4096
    )
    # 8000 rows, not the ~8x more that the Parquet list's bytes would suggest
    assert (plan.rows, plan.partitions, len(plan.files)) == (8000, 8, 8)
    sizes = [pq.read_metadata(f.path).num_rows for f in plan.files]
    assert sum(sizes) == 8000 and max(sizes) < 1300
