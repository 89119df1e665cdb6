import gzip
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.sources import SourceConfig, iter_inputs, url_problem
from schemas import Reason


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
    assert [m.where.rsplit(":", 1)[1] for m in malformed] == ["5", "6"]
    assert [m.raw for m in malformed] == ["not a url", "ftp://x/y"]
    assert "scheme" in malformed[1].detail


def test_csv_gz_with_passthrough_and_extra_columns(tmp_path):
    text = 'url,caption,license,width_hint\nhttp://a.example/1.jpg,a dog,cc-by,640\nhttp://b.example/2.jpg,"x, y",,\nbroken,row\n'
    path = tmp_path / "urls.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    rows, malformed = _all(str(path))
    assert rows[0]["caption"] == "a dog" and rows[0]["license"] == "cc-by"
    assert json.loads(rows[0]["extra"]) == {"width_hint": "640"}
    assert rows[1]["caption"] == "x, y"
    assert len(malformed) == 1 and "fields" in malformed[0].detail
    assert malformed[0].raw == "broken,row" and malformed[0].where.endswith(":4")


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
    assert [m.raw for m in malformed] == ["{oops", "[1]", '{"caption": "no url"}']
    assert [m.detail.split(":")[0] for m in malformed] == [
        "invalid JSON",
        "expected a JSON object, got list",
        "missing URL",
    ]


def test_parquet_and_missing_url_column(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"URL": ["http://a.example/1.jpg", None], "caption": ["c", "d"]}), path)
    rows, malformed = _all(str(path), url_column="URL")
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg"]
    assert malformed and malformed[0].detail == "missing URL"
    assert malformed[0].where.endswith(":2")  # its row number in the file
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


def test_list_entries_may_name_only_http_by_default(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"local bytes")
    path = tmp_path / "urls.txt"
    path.write_text(
        f"file://{secret}\nFILE://{secret}\ns3://someone-elses-bucket/k.jpg\n"
        "s3://b/k.jpg?X-Amz-Signature=abc\nHTTPS://a.example/ok.jpg\n"
    )
    rows, refused = _all(str(path))
    assert [r["source_uri"] for r in rows] == ["HTTPS://a.example/ok.jpg"]
    assert [u.reason for u in refused] == [Reason.REFUSED_SCHEME] * 4
    assert (
        refused[0].raw == f"file://{secret}" and "--allow-file-and-s3-in-lists" in refused[0].detail
    )
    assert refused[3].rejection()["source_uri"] == "s3://b/k.jpg?X-Amz-Signature=REDACTED"
    rows, refused = _all(str(path), allow_file_and_s3_in_lists=True)
    assert len(rows) == 5 and refused == []


def test_unusable_rows_keep_their_raw_value_redacted_and_cut(tmp_path):
    path = tmp_path / "urls.jsonl"
    long_url = "http://a.example/" + "x" * 5000
    lines = [
        {"url": ""}, {"url": "not a url"}, {"url": "ftp://x/y.jpg"},
        {"url": "http://u:hunter2@a.example/a b.jpg?token=t0k"}, {"url": 42},
        {"url": long_url + " y"},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, malformed = _all(str(path))
    stored = [m.rejection() for m in malformed]
    assert [r["source_uri"] for r in stored[:5]] == [
        "", "not a url", "ftp://x/y.jpg", "http://a.example/a b.jpg?token=REDACTED", "42"
    ]  # fmt: skip
    assert len(stored[5]["source_uri"]) == 1000 and stored[5]["source_uri"].endswith("...")
    assert all(r["key"] is None and r["reason"] == "malformed_input" for r in stored)
    assert all("hunter2" not in str(r) and "t0k" not in str(r) for r in stored)


def test_csv_field_over_the_limit_is_one_malformed_row(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text(f"url,caption\nhttp://a.example/1.jpg,ok\nhttp://a.example/2.jpg,{'x' * 200_000}\n"
                    "http://a.example/3.jpg,fine\n")  # fmt: skip
    rows, malformed = _all(str(path))
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg", "http://a.example/3.jpg"]
    assert len(malformed) == 1 and "field limit" in malformed[0].detail
    assert malformed[0].where.endswith(":3")


@pytest.mark.parametrize("name", ["urls.txt.gz", "urls.csv.gz", "urls.jsonl.gz"])
def test_truncated_gzip_list_is_a_one_line_error(tmp_path, name):
    lines = "".join(f'{{"url": "http://a.example/{i}.jpg"}}\n' for i in range(5000))
    if name.startswith("urls.csv"):
        lines = "url\n" + "".join(f"http://a.example/{i}.jpg\n" for i in range(5000))
    path = tmp_path / name
    path.write_bytes(gzip.compress(lines.encode())[:-200])
    with pytest.raises(ValueError, match="truncated or corrupt gzip") as caught:
        _all(str(path))
    assert "\n" not in str(caught.value)
    (tmp_path / "plain.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt gzip"):
        _all(str(tmp_path / "plain.txt.gz"))


def test_parquet_errors_report_their_real_row_numbers(tmp_path):
    path = tmp_path / "urls.parquet"
    urls = [None, "not a url", "file:///etc/passwd", "http://a.example/4.jpg", ""]
    pq.write_table(pa.table({"url": urls}), path)
    rows, malformed = _all(str(path))
    assert [m.where.rsplit(":", 1)[1] for m in malformed] == ["1", "2", "3", "5"]
    assert [m.raw for m in malformed] == ['{"url": null}', "not a url", "file:///etc/passwd", ""]


def _tar(path, members) -> bytes:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path.read_bytes()


def _member(name: str, data: bytes = b"", kind=tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    return info, data if kind == tarfile.REGTYPE else None


def test_tar_links_and_devices_become_rejections(tmp_path):
    path = tmp_path / "shard.tar"
    _tar(path, [
        _member("k1.jpg", b"img1"), _member("k2.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        _member("k3.jpg", kind=tarfile.LNKTYPE, link="k1.jpg"), _member("k4.jpg", kind=tarfile.CHRTYPE),
        _member("k5.jpg", kind=tarfile.FIFOTYPE), _member("sub", kind=tarfile.DIRTYPE),
    ])  # fmt: skip
    rows, unusable = _all(str(path))
    assert [r["source_uri"].split("#")[1] for r in rows] == ["k1.jpg"]
    assert [u.raw.split("#")[1] for u in unusable] == ["k2.jpg", "k3.jpg", "k4.jpg", "k5.jpg"]
    assert "symbolic link to '/etc/passwd'" in unusable[0].detail
    assert "hard link" in unusable[1].detail and "device" in unusable[2].detail


def test_broken_tars_are_one_line_errors(tmp_path):
    good = _tar(tmp_path / "good.tar", [_member(f"k{i}.jpg", b"\xff" * 3000) for i in range(3)])
    lying = bytearray(good)
    small = tarfile.TarInfo("k0.jpg")
    small.size = 1000  # the header says 1000 bytes, 3000 follow
    lying[:512] = small.tobuf()[:512]
    cases = {
        "not.tar": b"hello, not a tar" * 100,
        "empty.tar": b"",
        "cut-in-data.tar": good[:2000],
        "cut-in-header.tar": good[: 512 + 3072 + 100],
        "cut-after-member.tar": good[:4000],
        "size-lie.tar": bytes(lying),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="tar") as caught:
            _all(str(tmp_path / name))
        assert name in str(caught.value) and "\n" not in str(caught.value), name
    rows, _ = _all(str(tmp_path / "good.tar"))
    assert len(rows) == 3


def test_caption_column_names_the_caption_of_a_laion_style_list(tmp_path):
    path = tmp_path / "laion.parquet"
    table = pa.table(
        {
            "URL": ["http://a.example/1.jpg", "http://b.example/2.jpg"],
            "TEXT": ["a person running", None],
            "caption": ["an older caption", "kept too"],
            "similarity": [0.31, 0.28],
        }
    )
    pq.write_table(table, path)
    rows, malformed = _all(str(path), url_column="URL", caption_column="TEXT")
    assert not malformed and [r["source_uri"] for r in rows] == table["URL"].to_pylist()
    assert [r["caption"] for r in rows] == ["a person running", None]
    # a column named caption beside the chosen one is kept, not lost
    assert json.loads(rows[0]["extra"]) == {"caption": "an older caption", "similarity": "0.31"}
    with pytest.raises(ValueError, match="caption_column"):
        SourceConfig(caption_column="")


# -- hostile lists: encodings, control characters, huge lines, wrong shapes, secrets ------------


@pytest.mark.parametrize(
    ("name", "text"),
    [("urls.txt", "http://a.example/1.jpg\r\nhttp://a.example/2.jpg\r\n"),
     ("urls.csv", "url,caption\r\nhttp://a.example/1.jpg,x\r\nhttp://a.example/2.jpg,y\r\n"),
     ("urls.jsonl", '{"url": "http://a.example/1.jpg"}\r\n{"url": "http://a.example/2.jpg"}\r\n')],
)  # fmt: skip
@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_byte_order_mark_and_crlf_lines(tmp_path, name, text, bom):
    path = tmp_path / name
    path.write_bytes((bom + text).encode())
    rows, malformed = _all(str(path))
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg", "http://a.example/2.jpg"]
    assert not malformed


def test_control_characters_and_invalid_utf8(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_bytes(
        b"url,caption\n"
        b"http://a.example/1\x00.jpg,a\n"  # NUL inside the URL
        b"http://a.example/2.jpg,nul\x00inside\n"  # NUL in a caption: harmless, kept
        b"http://a.example/3\x1b[2J.jpg,esc\n"
        b"http://a.example/\xff\xfe.jpg,\xc3\n"  # invalid UTF-8: replaced, never a crash
    )
    rows, malformed = _all(str(path))
    assert [(m.where.rsplit(":", 1)[1], m.detail) for m in malformed] == [
        ("2", "control character inside URL"), ("4", "control character inside URL")
    ]  # fmt: skip
    assert malformed[0].raw == "http://a.example/1\x00.jpg"  # the URL, as listed
    assert rows[0]["caption"] == "nul\x00inside"
    assert rows[1]["source_uri"] == "http://a.example/\ufffd\ufffd.jpg"


@pytest.mark.parametrize("name", ["urls.txt", "urls.csv", "urls.jsonl", "urls.txt.gz"])
def test_a_huge_line_is_one_unusable_row_read_in_bounded_memory(tmp_path, name):
    """A 64 MiB line between two good ones: rejected with its line number and a cut raw value,
    the lines around it read, and never more than a few MiB held at once."""
    import tracemalloc

    from curation.sources import MAX_LINE_BYTES

    path = tmp_path / name
    good = {
        "urls.txt": ("http://a.example/1.jpg", "http://a.example/2.jpg"),
        "urls.txt.gz": ("http://a.example/1.jpg", "http://a.example/2.jpg"),
        "urls.csv": ("url\nhttp://a.example/1.jpg", "http://a.example/2.jpg"),
        "urls.jsonl": ('{"url": "http://a.example/1.jpg"}', '{"url": "http://a.example/2.jpg"}'),
    }[name]
    huge = "http://a.example/" + "x" * (64 << 20)
    data = f"{good[0]}\n{huge}\n{good[1]}\n".encode()
    path.write_bytes(gzip.compress(data, compresslevel=1) if name.endswith(".gz") else data)
    del data, huge
    tracemalloc.start()
    try:
        rows, malformed = _all(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg", "http://a.example/2.jpg"]
    assert len(malformed) == 1 and "longer than" in malformed[0].detail
    assert malformed[0].where.endswith(":3" if name == "urls.csv" else ":2")
    assert malformed[0].raw.startswith("http://a.example/xxx") and len(malformed[0].raw) <= 1000
    assert peak < 8 * MAX_LINE_BYTES, peak


def test_jsonl_lines_that_are_not_objects_and_urls_that_are_not_strings(tmp_path):
    path = tmp_path / "urls.jsonl"
    path.write_text(
        '1\n"http://a.example/1.jpg"\nnull\ntrue\n{"url": 5}\n{"url": {"href": "http://a/"}}\n'
    )
    rows, malformed = _all(str(path))
    assert not rows
    assert [m.detail for m in malformed] == [
        "expected a JSON object, got int", "expected a JSON object, got str",
        "expected a JSON object, got NoneType", "expected a JSON object, got bool",
        "URL is not a string (int)", "URL is not a string (dict)",
    ]  # fmt: skip
    assert [m.raw for m in malformed][-2:] == ["5", '{"href": "http://a/"}']


@pytest.mark.parametrize("name", ["urls.csv", "urls.tsv", "urls.csv.gz"])
def test_csv_without_the_url_column_is_a_one_line_error(tmp_path, name):
    path = tmp_path / name
    text = "image,caption\nhttp://a.example/1.jpg,x\n".replace(",", "\t" if "tsv" in name else ",")
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    with pytest.raises(ValueError, match="no column 'url'.*url-column") as caught:
        _all(str(path))
    assert name in str(caught.value) and "\n" not in str(caught.value)
    rows, _ = _all(str(path), url_column="image")
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg"]


@pytest.mark.parametrize(
    "name", ["e.txt", "e.csv", "e.tsv", "e.jsonl", "e.txt.gz", "e.csv.gz", "h.csv", "e.parquet"]
)
def test_empty_lists_give_no_rows_and_no_error(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"url": pa.array([], pa.string())}), path)
    elif name.endswith(".gz"):
        path.write_bytes(gzip.compress(b""))
    else:
        path.write_bytes(b"url\n" if name == "h.csv" else b"")
    assert _all(str(path)) == ([], [])


@pytest.mark.parametrize(
    ("column", "kind"),
    [(pa.array([1, 2], pa.int64()), "int64"), (pa.array([b"http://a/"] * 2, pa.binary()), "binary"),
     (pa.array([["http://a/"]] * 2), "list"), (pa.array([None, None], pa.null()), "null")],
)  # fmt: skip
def test_parquet_url_column_that_is_not_strings_is_a_one_line_error(tmp_path, column, kind):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": column}), path)
    with pytest.raises(ValueError, match=f"holds {kind}.*not strings"):
        _all(str(path))
    # a dictionary-encoded string column is strings
    pq.write_table(
        pa.table({"url": pa.array(["http://a.example/1.jpg"]).dictionary_encode()}), path
    )
    assert [r["source_uri"] for r in _all(str(path))[0]] == ["http://a.example/1.jpg"]


def test_a_file_named_parquet_that_is_not_one_is_a_one_line_error(tmp_path):
    path = tmp_path / "urls.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="urls.parquet: not a readable Parquet file"):
        _all(str(path))


_SECRET_ROW = {
    "url": "http://a.example/1.jpg",
    "page_url": "https://bob:hunter2@a.example/page?access_token=AT-secret&id=7",
    "caption": "mirror: https://cdn.example/x.jpg?X-Amz-Signature=AMZ-secret",
    "license": "cc-by",
    "mirror": "https://cdn.example/y.jpg?sig=SIG-secret&w=640",
}


def _write_list(path, row: dict) -> None:
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist([row]), path)
        return
    if name.endswith(".jsonl"):
        text = json.dumps({**row, "nested": {"u": row["mirror"]}}) + "\n"
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        text = sep.join(row) + "\n" + sep.join(row.values()) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())


@pytest.mark.parametrize(
    "name", ["urls.csv", "urls.tsv", "urls.jsonl", "urls.parquet", "urls.csv.gz", "urls.jsonl.gz"]
)
def test_secrets_in_page_url_caption_and_extra_columns_are_redacted(tmp_path, name):
    path = tmp_path / name
    _write_list(path, _SECRET_ROW)
    rows, malformed = _all(str(path))
    assert not malformed and len(rows) == 1
    stored = json.dumps(rows[0])
    for secret in ("hunter2", "AT-secret", "AMZ-secret", "SIG-secret"):
        assert secret not in stored, (secret, stored)
    assert rows[0]["page_url"] == "https://a.example/page?access_token=REDACTED&id=7"
    assert rows[0]["caption"] == "mirror: https://cdn.example/x.jpg?X-Amz-Signature=REDACTED"
    assert rows[0]["license"] == "cc-by"
    assert json.loads(rows[0]["extra"])["mirror"] == "https://cdn.example/y.jpg?sig=REDACTED&w=640"


def test_secrets_in_a_tar_members_metadata_are_redacted(tmp_path):
    meta = json.dumps({"page_url": _SECRET_ROW["page_url"], "src": _SECRET_ROW["mirror"]})
    path = tmp_path / "shard.tar"
    _tar(path, [_member("k1.jpg", b"img"), _member("k1.json", meta.encode())])
    rows, _ = _all(str(path))
    assert rows[0]["page_url"] == "https://a.example/page?access_token=REDACTED&id=7"
    assert json.loads(rows[0]["extra"]) == {"src": "https://cdn.example/y.jpg?sig=REDACTED&w=640"}


def test_json_nested_too_deeply_is_a_malformed_row_not_a_crash(tmp_path):
    deep = "[" * 200_000
    path = tmp_path / "urls.jsonl"
    path.write_text(f'{deep}\n{{"url": "http://a.example/1.jpg", "x": {deep}{"]" * 200_000}}}\n')
    rows, malformed = _all(str(path))
    assert not rows
    assert [m.detail for m in malformed] == ["invalid JSON: nested too deeply"] * 2
    tar = tmp_path / "shard.tar"
    _tar(tar, [_member("k1.jpg", b"img"), _member("k1.json", deep.encode())])
    rows, _ = _all(str(tar))
    assert len(rows) == 1 and rows[0]["extra"] is None  # its metadata is ignored, as invalid


@pytest.mark.slow  # reads 1 GiB: about 17 s on the loaded 2-core machine
def test_a_one_gigabyte_line_is_read_in_bounded_memory(tmp_path):
    """The real size: a sparse file whose second line is 1 GiB of NUL bytes."""
    import tracemalloc

    from curation.sources import MAX_LINE_BYTES

    path = tmp_path / "urls.txt"
    with path.open("wb") as out:
        out.write(b"http://a.example/1.jpg\n")
        out.seek(1 << 30, 1)  # a hole: 1 GiB of zeros, no newline
        out.write(b"\nhttp://a.example/2.jpg\n")
    tracemalloc.start()
    try:
        rows, malformed = _all(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["source_uri"] for r in rows] == ["http://a.example/1.jpg", "http://a.example/2.jpg"]
    assert [(m.where.rsplit(":", 1)[1], m.detail.split(" (")[0]) for m in malformed] == [
        ("2", f"line longer than {MAX_LINE_BYTES} bytes")
    ]
    assert peak < 8 * MAX_LINE_BYTES, peak


@pytest.mark.parametrize("name", ["urls.txt", "urls.jsonl", "urls.parquet"])
def test_parts_read_what_the_whole_input_reads(tmp_path, name):
    from curation.sources import count_lines, iter_part, number_parts, split_input

    urls = [f"http://a.example/{i}.jpg" if i % 37 else f"bad {i}" for i in range(2000)]
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text(
            "".join(f"{u}\n" if i % 50 else f"\n# c\n{u}\n" for i, u in enumerate(urls))
        )
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps({"url": u}) + "\n" for u in urls))
    else:
        pq.write_table(pa.table({"url": urls}), path, row_group_size=128)
    config = SourceConfig()
    parts = split_input(str(path), config, part_bytes=2048)
    assert len(parts) > 5
    parts = number_parts(parts, [count_lines(p) if not p.first_number else 0 for p in parts])
    rows, malformed = [], []
    for part in reversed(parts):  # any order: each part knows its first row number
        for batch in iter_part(part, config):
            rows += batch.rows
            malformed += [(m.where, m.detail, m.raw) for m in batch.malformed]
    whole_rows, whole_malformed = _all(str(path))
    assert sorted(r["source_uri"] for r in rows) == sorted(r["source_uri"] for r in whole_rows)
    assert sorted(malformed) == sorted((m.where, m.detail, m.raw) for m in whole_malformed)
    assert len(malformed) == 55


def test_a_folder_is_listed_a_part_at_a_time(tmp_path, monkeypatch):
    """Parts come while the folder is still being listed, each of FILES_PER_PART files at most;
    every file once, tars their own parts, a link back up the tree followed once."""
    import curation.sources as sources

    monkeypatch.setattr(sources, "FILES_PER_PART", 3)
    names = [f"d{i % 3}/s{i % 2}/{i}.jpg" for i in range(20)]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    with tarfile.open(tmp_path / "d1" / "shard.tar", "w") as tf:
        info = tarfile.TarInfo("k.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"k"))
    (tmp_path / "d2" / "up").symlink_to(tmp_path)  # a loop
    listed = []
    walk = sources._walk

    def counting(root):
        for item in walk(root):
            listed.append(item[0])
            yield item

    monkeypatch.setattr(sources, "_walk", counting)
    parts = sources.split_input(str(tmp_path), SourceConfig())
    first = next(parts)
    assert len(listed) <= 4  # three files (or a tar) listed, not the whole folder
    parts = [first, *parts]
    files = [f for p in parts if p.kind == "files" for f in p.files]
    assert all(len(p.files) <= 3 for p in parts)
    assert sorted(files) == sorted(str(tmp_path / n) for n in names)
    assert [p.uri for p in parts if p.kind == "tar"] == [str(tmp_path / "d1" / "shard.tar")]


def test_an_s3_prefix_is_listed_in_pages_and_parts_go_through_listing_files(
    s3_bucket, tmp_path, monkeypatch
):
    import boto3

    import curation.sources as sources
    from runtime.storage import locate

    monkeypatch.setattr(sources, "S3_PAGE_KEYS", 2)
    monkeypatch.setattr(sources, "FILES_PER_PART", 3)
    s3 = boto3.client("s3")
    keys = [f"raw/{i % 2}/{i}.jpg" for i in range(7)]
    for key in [*keys, "raw/folder/", "other/9.jpg"]:
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    parts = list(sources.split_input(f"s3://{s3_bucket}/raw", SourceConfig()))
    assert [len(p.files) for p in parts] == [3, 3, 1]
    # a part handed over in a file reads the same rows as the part itself
    moved = [
        sources.write_listing(p, locate(str(tmp_path / f"{i}.parquet")))
        for i, p in enumerate(parts)
    ]
    assert all(not p.files and p.listing for p in moved)
    rows = [r for p in moved for b in sources.iter_part(p, SourceConfig()) for r in b.rows]
    assert sorted(r["source_uri"] for r in rows) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)
