import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import query
from curation.writer import table_to_parquet_bytes
from runtime.storage import locate
from schemas.layout import manifest_file
from tests.conftest import ROOT
from tests.support.datasets import build_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(str(tmp_path_factory.mktemp("ds") / "humans"), num_samples=60)


def _people_counts(samples: pd.DataFrame) -> dict[int, int]:
    return {int(k): int(v) for k, v in samples["num_persons"].value_counts().items()}


def test_group_by_matches_pandas(built):
    got = query.query(built.uri, "SELECT num_persons, count(*) AS n FROM samples GROUP BY 1")
    assert dict(zip(*got.to_pydict().values(), strict=True)) == _people_counts(built.samples)
    # the Figure 2 question in one line: share of images with four or more people
    share = query.query(built.uri, "SELECT avg((num_persons >= 4)::INT) FROM samples")
    assert share.column(0)[0].as_py() == pytest.approx((built.samples.num_persons >= 4).mean())


def test_rejections_view_matches_pandas(built):
    got = query.query(built.uri, "SELECT stage, reason, count(*) AS n FROM rejections GROUP BY ALL")
    expected = built.rejections.groupby(["stage", "reason"]).size().to_dict()
    assert {(r["stage"], r["reason"]): r["n"] for r in got.to_pylist()} == expected
    assert sum(expected.values()) == len(built.rejections)


def test_persons_view_has_one_row_per_box(built):
    boxes = built.samples[["key", "width", "persons"]].explode("persons").dropna()
    got = query.query(built.uri, "SELECT * FROM persons ORDER BY key, person").to_pandas()
    assert len(got) == len(boxes) > 0
    assert got.box_width.sum() == pytest.approx(
        sum(p["x1"] - p["x0"] for p in boxes.persons), rel=1e-5
    )
    # a sample's passing boxes are exactly its num_persons
    passing = got[got.passes].groupby("key").size()
    expected = built.samples.set_index("key").num_persons
    assert passing.to_dict() == expected[expected > 0].to_dict()
    first = built.samples.dropna(subset=["num_persons"]).iloc[0]
    rows = got[got.key == first.key]
    assert rows.person.tolist() == list(range(len(first.persons)))
    assert (rows.image_width == first.width).all()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_file_formats(built, tmp_path, fmt):
    out = tmp_path / f"licenses.{fmt}"
    sql = "SELECT coalesce(license, '(none)') AS license, count(*) AS n FROM samples GROUP BY 1"
    assert query.main([sql, "--dataset", built.uri, "--format", fmt, "--output", str(out)]) == 0
    if fmt == "csv":
        got = pd.read_csv(out)
    elif fmt == "parquet":
        got = pq.read_table(out).to_pandas()
    else:
        got = pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])
    expected = built.samples.license.fillna("(none)").value_counts().to_dict()
    assert dict(zip(got.license, got.n, strict=True)) == expected


def test_terminal_table(built, capfd):
    sql = "SELECT key, num_persons FROM samples ORDER BY key"
    assert query.main([sql, "--dataset", built.uri, "--max-rows", "4"]) == 0
    out = capfd.readouterr().out
    keys = sorted(built.samples.key)
    assert keys[0] in out and keys[-1] in out and keys[len(keys) // 2] not in out
    assert f"{len(keys)} rows (4 shown)" in out


def test_s3_dataset_offline(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/humans"
    remote = build_dataset(uri, num_samples=30, samples_per_shard=10, num_rejections=20)
    got = query.query(uri, "SELECT num_persons, count(*) AS n FROM samples GROUP BY 1")
    assert dict(zip(*got.to_pydict().values(), strict=True)) == _people_counts(remote.samples)
    n = query.query(uri, "SELECT count(*) FROM persons WHERE passes").column(0)[0].as_py()
    assert n == remote.samples.num_persons.sum()
    # and the result can go back to S3
    out = f"s3://{s3_bucket}/results/rej.parquet"
    assert query.main(["SELECT * FROM rejections", "--dataset", uri,
                       "--format", "parquet", "--output", out]) == 0  # fmt: skip
    loc = locate(out)
    with loc.fs.open_input_file(loc.path) as f:
        assert pq.read_table(f).num_rows == len(remote.rejections)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curation.query", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _other_version(tmp_path, built) -> str:
    import shutil

    copy = tmp_path / "v2"
    shutil.copytree(built.uri, copy)
    table = pq.read_table(copy / manifest_file(0))
    meta = {**table.schema.metadata, b"humans300m.schema_version": b"2.0"}
    bad = table.replace_schema_metadata(meta)
    (copy / manifest_file(0)).write_bytes(
        table_to_parquet_bytes(pa.Table.from_batches(bad.to_batches(), bad.schema))
    )
    return str(copy)


@pytest.mark.parametrize(
    "case, sql, needle",
    [
        ("bad sql", "SELEC key FROM samples", "syntax error"),
        ("unknown column", "SELECT no_such_column FROM samples", "no_such_column"),
        ("unknown view", "SELECT * FROM sample", "sample"),
        ("missing dataset", "SELECT 1", "no such dataset"),
        ("other version", "SELECT 1", "schema version 2.0"),
    ],
)
def test_errors_are_one_line_without_traceback(built, tmp_path, case, sql, needle):
    dataset = {"missing dataset": str(tmp_path / "nothing"),
               "other version": _other_version(tmp_path, built) if case == "other version" else ""
               }.get(case, built.uri)  # fmt: skip
    result = _cli(sql, "--dataset", dataset)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and needle in lines[0]
    assert result.stdout == ""


def test_missing_s3_dataset(s3_bucket, capsys):
    assert query.main(["SELECT 1", "--dataset", f"s3://{s3_bucket}/nothing-here"]) == 2
    assert "no such dataset" in capsys.readouterr().err


def test_empty_dataset_has_the_same_views(built, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "summary.json").write_text(json.dumps(built.summary))
    for view in ("samples", "rejections", "persons"):
        full = query.query(built.uri, f"DESCRIBE {view}").select(["column_name", "column_type"])
        empty = query.query(str(tmp_path / "empty"), f"DESCRIBE {view}")
        assert empty.select(["column_name", "column_type"]).equals(full)
        assert query.query(str(tmp_path / "empty"), f"SELECT * FROM {view}").num_rows == 0
