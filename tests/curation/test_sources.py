import gzip
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.sources import SourceConfig, iter_inputs, url_problem


def _all(spec: str, **config):
    rows, malformed = [], []
    for batch in iter_inputs(spec, SourceConfig(**config)):
        rows += batch.rows
        malformed += batch.malformed
    return rows, malformed


def test_txt_with_comments_blank_lines_and_junk(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text(
        "# list\nhttp://a.example/1.jpg\n\n  https://b.example/2.png  \nnot a url\nftp://x/y\n"
    )
    rows, malformed = _all(str(path))
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg", "https://b.example/2.png"]
    assert [m[0].rsplit(":", 1)[1] for m in malformed] == ["5", "6"]
    assert "scheme" in malformed[1][1]


def test_csv_gz_with_passthrough_and_extra_columns(tmp_path):
    text = 'url,caption,license,width_hint\nhttp://a.example/1.jpg,a dog,cc-by,640\nhttp://b.example/2.jpg,"x, y",,\nbroken,row\n'
    path = tmp_path / "urls.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    rows, malformed = _all(str(path))
    assert rows[0]["caption"] == "a dog" and rows[0]["license"] == "cc-by"
    assert json.loads(rows[0]["extra"]) == {"width_hint": "640"}
    assert rows[1]["caption"] == "x, y"
    assert len(malformed) == 1 and "fields" in malformed[0][1]


def test_tsv_with_custom_url_column(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text("image\tpage_url\nhttp://a.example/1.jpg\thttp://a.example/\n")
    rows, _ = _all(str(path), url_column="image")
    assert rows == [
        {"source_uri": "http://a.example/1.jpg", "caption": None, "license": None,
         "attribution": None, "page_url": "http://a.example/", "extra": None}
    ]  # fmt: skip


def test_jsonl_with_bad_lines(tmp_path):
    path = tmp_path / "urls.jsonl"
    path.write_text(
        '{"url": "http://a.example/1.jpg", "attribution": "me"}\n{oops\n[1]\n{"caption": "no url"}\n'
    )
    rows, malformed = _all(str(path))
    assert len(rows) == 1 and rows[0]["attribution"] == "me"
    assert [m[1].split(":")[0] for m in malformed] == [
        "invalid JSON",
        "expected a JSON object, got list",
        "missing URL",
    ]


def test_parquet_and_missing_url_column(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"URL": ["http://a.example/1.jpg", None], "caption": ["c", "d"]}), path)
    rows, malformed = _all(str(path), url_column="URL")
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg"]
    assert malformed and malformed[0][1] == "missing URL"
    with pytest.raises(ValueError, match="url-column"):
        _all(str(path))


def test_folder_of_images_and_tars(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"a")
    (tmp_path / "sub" / "b.png").write_bytes(b"b")
    (tmp_path / ".hidden").write_bytes(b"h")
    with tarfile.open(tmp_path / "shard.tar", "w") as tf:
        for name, data in [
            ("k1.jpg", b"img1"),
            ("k1.json", b'{"caption": "one"}'),
            ("k2.png", b"img2"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    rows, _ = _all(str(tmp_path))
    uris = [r["source_uri"] for r in rows]
    assert f"file://{tmp_path}/a.jpg" in uris and f"file://{tmp_path}/sub/b.png" in uris
    assert not any(".hidden" in u for u in uris)
    members = {r["source_uri"].split("#")[1]: r for r in rows if "#" in r["source_uri"]}
    assert set(members) == {"k1.jpg", "k2.png"}
    assert members["k1.jpg"]["caption"] == "one"
    offset, size = map(int, members["k2.png"]["byte_range"].split(":"))
    assert (tmp_path / "shard.tar").read_bytes()[offset : offset + size] == b"img2"


def test_s3_prefix_and_list(s3_bucket):
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="raw/x/1.jpg", Body=b"1")
    s3.put_object(Bucket=s3_bucket, Key="raw/2.jpg", Body=b"2")
    s3.put_object(Bucket=s3_bucket, Key="lists/urls.txt", Body=b"http://a.example/1.jpg\n")
    rows, _ = _all(f"s3://{s3_bucket}/raw/")
    assert sorted(r["source_uri"] for r in rows) == [
        f"s3://{s3_bucket}/raw/2.jpg",
        f"s3://{s3_bucket}/raw/x/1.jpg",
    ]
    rows, _ = _all(f"s3://{s3_bucket}/lists/urls.txt")
    assert rows[0]["source_uri"] == "http://a.example/1.jpg"


def test_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        _all(str(tmp_path / "nope.txt"))
    (tmp_path / "what.xlsx").write_bytes(b"x")
    with pytest.raises(ValueError, match="URL list"):
        _all(str(tmp_path / "what.xlsx"))


@pytest.mark.parametrize(
    ("url", "ok"),
    [("http://a.example/x.jpg", True), ("s3://b/k.jpg", True), ("file:///tmp/x.jpg", True),
     ("", False), ("http://", False), ("javascript:alert(1)", False), ("http://a b/c", False)],
)  # fmt: skip
def test_url_problem(url, ok):
    assert (url_problem(url) == "") is ok
