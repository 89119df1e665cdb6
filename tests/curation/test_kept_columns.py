"""--keep-columns in the sources: types read from the inputs, values checked, refusals named."""

import gzip
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import kept, sources
from curation.sources import SourceConfig, iter_inputs, kept_schema
from schemas import Reason

KEEP = ("similarity", "NSFW", "original_width")


def _read(config: SourceConfig):
    rows, malformed = [], []
    for spec in config.inputs:
        for batch in iter_inputs(spec, config):
            rows += batch.rows
            malformed += batch.malformed
    return rows, malformed


def _laion_parquet(path, urls=("http://a.example/1.jpg", "http://a.example/2.jpg")):
    pq.write_table(
        pa.table(
            {
                "url": list(urls),
                "TEXT": ["a dog", "a cat"],
                "similarity": pa.array([0.31, None], pa.float64()),
                "NSFW": ["UNLIKELY", "NSFW"],
                "original_width": pa.array([640, 1024], pa.int64()),
                "tags": pa.array([[1, 2], None], pa.list_(pa.int32())),
                "hash": pa.array([7, 8], pa.int64()),
            }
        ),
        path,
    )
    return str(path)


def test_parquet_columns_keep_their_arrow_types_and_the_others_go_to_extra(tmp_path):
    config = SourceConfig(
        inputs=(_laion_parquet(tmp_path / "laion.parquet"),),
        caption_column="TEXT",
        keep_columns=("similarity,NSFW", "original_width", "tags"),  # commas and repeats
    )
    assert config.keep_columns == (*KEEP, "tags")
    schema = kept_schema(config)
    assert [(f.name, f.type) for f in schema] == [
        ("similarity", pa.float64()),
        ("NSFW", pa.string()),
        ("original_width", pa.int64()),
        ("tags", pa.list_(pa.int32())),
    ]
    rows, malformed = _read(config)
    assert malformed == []
    assert [kept.decode(r[kept.KEPT], schema) for r in rows] == [
        {"similarity": 0.31, "NSFW": "UNLIKELY", "original_width": 640, "tags": [1, 2]},
        {"similarity": None, "NSFW": "NSFW", "original_width": 1024, "tags": None},
    ]
    assert [json.loads(r["extra"]) for r in rows] == [{"hash": "7"}, {"hash": "8"}]
    assert rows[0]["caption"] == "a dog"


def test_jsonl_types_come_from_the_values_and_a_value_of_another_type_is_a_rejection(tmp_path):
    lines = [
        {"url": "http://b.example/1.jpg", "similarity": 1, "NSFW": "x", "original_width": 5},
        {"url": "http://b.example/2.jpg", "similarity": 0.5, "original_width": None},
        # a signed URL inside a kept string: stored redacted, as extra values are
        {"url": "http://b.example/3.jpg", "NSFW": "see https://h.example/a?X-Amz-Signature=s3cr3t"},
        {"url": "http://b.example/4.jpg", "original_width": 1.5},  # past the rows read for types
        {"url": "http://b.example/5.jpg", "similarity": "high"},
        {"url": "http://b.example/6.jpg", "original_width": True},
        {"url": "http://b.example/7.jpg", "NSFW": 3},  # a string column takes it as JSON text
    ]
    path = tmp_path / "list.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(x) for x in lines).encode()))
    config = SourceConfig(inputs=(str(path),), keep_columns=KEEP)
    sources.INFER_ROWS, before = 3, sources.INFER_ROWS
    try:
        schema = kept_schema(config)
        rows, malformed = _read(config)
    finally:
        sources.INFER_ROWS = before
    # 1 and 0.5: a float column, as pyarrow reads them; the ints of original_width: int64
    assert [(f.name, f.type) for f in schema] == [
        ("similarity", pa.float64()),
        ("NSFW", pa.string()),
        ("original_width", pa.int64()),
    ]
    values = {r["source_uri"][-5:]: kept.decode(r[kept.KEPT], schema) for r in rows}
    assert values["1.jpg"] == {"similarity": 1.0, "NSFW": "x", "original_width": 5}
    assert values["2.jpg"] == {"similarity": 0.5, "NSFW": None, "original_width": None}
    assert values["3.jpg"]["NSFW"] == "see https://h.example/a?X-Amz-Signature=REDACTED"
    assert values["7.jpg"]["NSFW"] == "3"
    assert {m.where.rsplit(":", 1)[1]: m.detail for m in malformed} == {
        "4": "kept column 'original_width': '1.5' is not int64",
        "5": "kept column 'similarity': 'high' is not double",
        "6": "kept column 'original_width': 'true' is not int64",
    }
    assert {m.reason for m in malformed} == {Reason.MALFORMED_INPUT}


def test_csv_types_are_what_pyarrow_infers_and_dates_stay_text(tmp_path):
    path = tmp_path / "list.tsv"
    path.write_text(
        "url\tsimilarity\tNSFW\toriginal_width\tsafe\twhen\tblank\n"
        "http://c.example/1.jpg\t0.3\tNSFW\t640\ttrue\t2020-01-01\t\n"
        "http://c.example/2.jpg\t\tx\tn/a\tFalse\t2020-01-02\t\n"
    )
    # appended past the block the types are read from: a width that is no integer
    with path.open("a") as out:
        out.write("http://c.example/3.jpg\t0.1\ty\t12.5\ttrue\t2021-05-05\t\n")
    config = SourceConfig(inputs=(str(path),), keep_columns=(*KEEP, "safe", "when", "blank"))
    sources.CSV_INFER_BYTES, before = 200, sources.CSV_INFER_BYTES
    try:
        schema = kept_schema(config)
        rows, malformed = _read(config)
    finally:
        sources.CSV_INFER_BYTES = before
    assert [str(f.type) for f in schema] == [
        "double",
        "string",
        "int64",
        "bool",
        "string",
        "string",
    ]
    assert [kept.decode(r[kept.KEPT], schema) for r in rows] == [
        {"similarity": 0.3, "NSFW": "NSFW", "original_width": 640, "safe": True,
         "when": "2020-01-01", "blank": ""},
        {"similarity": None, "NSFW": "x", "original_width": None, "safe": False,
         "when": "2020-01-02", "blank": ""},
    ]  # fmt: skip
    assert [m.detail for m in malformed] == ["kept column 'original_width': '12.5' is not int64"]


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (("width",), "keep_columns: 'width' is a manifest column already; keep other input"),
        (("key",), "keep_columns: 'key' is a manifest column already"),
        (("TEXT",), "keep_columns: 'TEXT' is the URL or caption already"),
        (("url",), "keep_columns: 'url' is the URL or caption already"),
        (("NSFW", "NSFW"), "keep_columns: a column is named twice"),
    ],
)
def test_a_kept_column_the_manifest_has_is_refused(keep, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SourceConfig(inputs=("x.parquet",), caption_column="TEXT", keep_columns=keep)


def test_refusals_name_the_column_and_the_input(tmp_path):
    parquet = _laion_parquet(tmp_path / "a.parquet")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"url": "http://b.example/1.jpg", "similarity": "0.3"}) + "\n")
    mixed = tmp_path / "c.jsonl"
    mixed.write_text('{"url": "http://b.example/1.jpg", "similarity": 0.3}\n'
                     '{"url": "http://b.example/2.jpg", "similarity": "high"}\n')  # fmt: skip
    stamped = tmp_path / "d.parquet"
    pq.write_table(pa.table({"url": ["http://d.example/1.jpg"], "seen": pa.array([1], pa.timestamp("ms"))}), stamped)  # fmt: skip
    txt = tmp_path / "e.txt"
    txt.write_text("http://e.example/1.jpg\n")

    def refusal(inputs, keep):
        with pytest.raises(ValueError) as caught:
            kept_schema(SourceConfig(inputs=tuple(map(str, inputs)), keep_columns=keep))
        return str(caught.value)

    assert refusal([parquet], ("nope",)).startswith(
        f"--keep-columns: no column 'nope' in {parquet} (columns: url, TEXT, similarity, "
    )
    assert refusal([parquet, jsonl], ("similarity",)) == (
        f"--keep-columns: column 'similarity' is double in {parquet} but string in {jsonl}; "
        "the inputs must agree"
    )
    assert refusal([mixed], ("similarity",)) == (
        f"--keep-columns: column 'similarity' of {mixed} holds values of several types in its "
        "first 1000 rows (float, str)"
    )
    assert refusal([stamped], ("seen",)) == (
        f"--keep-columns: column 'seen' of {stamped} is timestamp[ms]; columns of booleans, "
        "integers, floats, strings and lists or structs of them can be kept"
    )
    assert refusal([txt], ("similarity",)) == (
        f"--keep-columns: {txt} is a txt list, which has no columns; keep columns of "
        "csv/tsv/jsonl/parquet lists only"
    )
    assert "is a folder, which has no columns" in refusal([tmp_path], ("similarity",))


def test_a_column_without_values_in_one_input_takes_the_others_type(tmp_path):
    parquet = _laion_parquet(tmp_path / "a.parquet")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"url": "http://b.example/1.jpg", "similarity": null}\n')
    only_nulls = SourceConfig(inputs=(str(jsonl),), keep_columns=("similarity",))
    both = SourceConfig(inputs=(str(jsonl), parquet), keep_columns=("similarity",))
    assert kept_schema(only_nulls).field("similarity").type == pa.string()  # nothing to go by
    assert kept_schema(both).field("similarity").type == pa.float64()


def test_keep_columns_from_flags_and_config_files(tmp_path):
    from pipeline.build_humans300m import config_from_args, parser

    file = tmp_path / "job.yaml"
    file.write_text("source:\n  keep_columns: [similarity, NSFW]\n")
    from_file = config_from_args(parser().parse_args(["--config", str(file)]))
    from_flag = config_from_args(parser().parse_args(["--keep-columns", "similarity,NSFW"]))
    repeated = config_from_args(
        parser().parse_args(["--keep-columns", "similarity", "--keep-columns", "NSFW"])
    )
    assert from_file.source.keep_columns == from_flag.source.keep_columns == ("similarity", "NSFW")
    assert repeated.source.keep_columns == ("similarity", "NSFW")


def test_the_plan_id_changes_with_kept_columns_and_not_without_them():
    from pipeline.plan import plan_id

    plain = SourceConfig(inputs=("urls.parquet",))
    assert plan_id(plain) == plan_id(SourceConfig(inputs=("urls.parquet",), keep_columns=()))
    assert plan_id(plain) != plan_id(SourceConfig(inputs=("urls.parquet",), keep_columns=("a",)))


def test_the_job_refuses_bad_kept_columns_with_one_line_before_ray(tmp_path, monkeypatch, capsys):
    from pipeline import build_humans300m

    def no_ray(config):
        raise AssertionError("Ray started")

    monkeypatch.setattr(build_humans300m, "init_ray", no_ray)
    parquet = _laion_parquet(tmp_path / "a.parquet")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"url": "http://b.example/1.jpg", "similarity": "0.3"}) + "\n")
    base = ["--output", str(tmp_path / "out"), "--detector", "none"]
    cases = {
        ("--input", parquet, "--keep-columns", "width"): "'width' is a manifest column already",
        ("--input", parquet, "--keep-columns", "nope"): f"no column 'nope' in {parquet}",
        ("--input", parquet, "--input", str(jsonl), "--keep-columns", "similarity"): (
            f"column 'similarity' is double in {parquet} but string in {jsonl}"
        ),
    }
    for argv, message in cases.items():
        assert build_humans300m.main([*argv, *base]) == 2
        errors = capsys.readouterr().err.splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0]
    assert not (tmp_path / "out").exists()
