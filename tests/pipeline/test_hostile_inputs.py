"""The curation job fed a hostile URL list: local files, foreign buckets, secrets, a tarpit.

One job (and its rerun) on the local Ray against two loopback hosts; then every file the job
wrote and everything it logged is searched for the secrets the list carried and for the job's
own AWS credentials.
"""

import logging
import os
from urllib.parse import quote

import pytest

from pipeline.build_humans300m import config_from_args, parser, run
from tests.pipeline.test_build import check_dataset, job_args
from tests.support.httpserver import CrawlServer

pytestmark = pytest.mark.usefixtures("ray_cluster")

SECRETS = ["Pa55-w0rd-1", "sig-2-abcdef", "tok-3-abcdef", "amz-4-abcdef", "cred-5-abcdef"]


def _hostile_list(tmp_path, tarpit: CrawlServer, good: CrawlServer, bucket: str):
    from curation.synthetic import photo_jpeg

    local = tmp_path / "local-secret.jpg"
    local.write_bytes(photo_jpeg(200, 150, seed=99))  # would be kept if it were read
    good.images.update({f"g{i}.jpg": photo_jpeg(200, 150, seed=i) for i in range(6)})
    tarpit.images["t.jpg"] = photo_jpeg(200, 150, seed=50)
    # (its path quotes the target percent-encoded: redacted there too, see curation.redact)
    to_file = quote("file:///etc/passwd?sig=redirect-secret", safe="")
    lines = [
        *(good.url("img", f"g{i}.jpg") for i in range(4)),
        good.url("img", "g4.jpg").replace("://", f"://bob:{SECRETS[0]}@") + f"?sig={SECRETS[1]}",
        good.url("img", "g5.jpg") + f"?X-Amz-Credential={SECRETS[4]}&X-Amz-Signature={SECRETS[3]}",
        *(tarpit.url("slowloris", "t.jpg") + f"?n={i}" for i in range(3)),  # one byte a second
        good.url("echo", "page.jpg") + f"?token={SECRETS[2]}",  # a body that quotes the URL
        good.url("to", to_file),  # a redirect to file:// with a signature
        f"file://{local}", f"FILE://{local}", f"s3://{bucket}/raw/0.jpg",
        "not a url", "ftp://x/y.jpg", f"http://bob:{SECRETS[0]}@a b.example/x.jpg",
    ]  # fmt: skip
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, local


@pytest.mark.slow  # two job runs with a 3 s tarpit: about 40 s on a quiet machine
def test_a_hostile_list_publishes_no_secret_and_no_local_file(tmp_path, s3_bucket, caplog, capfd):
    import boto3

    from curation.synthetic import photo_jpeg

    boto3.client("s3").put_object(
        Bucket=s3_bucket, Key="raw/0.jpg", Body=photo_jpeg(200, 150, seed=7)
    )
    caplog.set_level(logging.INFO)
    output = tmp_path / "out"
    with (
        CrawlServer() as tarpit,
        CrawlServer(host="127.0.0.2") as good,
    ):
        url_list, local = _hostile_list(tmp_path, tarpit, good, s3_bucket)
        # the operator's own s3:// prefix: read with the job's credentials, as before
        args = [*job_args(url_list, output, "--input", f"s3://{s3_bucket}/raw/"),
                "--fetch-total-timeout", "3", "--no-dedup"]  # fmt: skip
        summary = run(config_from_args(parser().parse_args(args)))
        rows, rejections = check_dataset(output)
        hits = sum(tarpit.hits.values()) + sum(good.hits.values())
        rerun = run(config_from_args(parser().parse_args(args)))
        assert sum(tarpit.hits.values()) + sum(good.hits.values()) == hits
    assert rerun["processed_this_run"] == 0 and check_dataset(output)[0] == rows

    by_reason = {}
    for r in rejections:
        by_reason.setdefault(r["reason"], []).append(r)
    kept = sorted(r["source_uri"] for r in rows)
    assert len(kept) == 7  # 6 good images (two behind secrets) + the operator's s3 object
    assert f"s3://{s3_bucket}/raw/0.jpg" in kept  # the operator input, not the list entry
    assert good.url("img", "g4.jpg") + "?sig=REDACTED" in kept
    assert sorted(r["source_uri"] for r in by_reason["timeout"]) == [
        tarpit.url("slowloris", "t.jpg") + f"?n={i}" for i in range(3)
    ]
    assert sorted(r["source_uri"] for r in by_reason["refused_scheme"]) == sorted(
        [f"file://{local}", f"FILE://{local}", f"s3://{s3_bucket}/raw/0.jpg"]
    )
    assert sorted(r["source_uri"] for r in by_reason["malformed_input"]) == [
        "ftp://x/y.jpg", "http://a b.example/x.jpg", "not a url"
    ]  # fmt: skip
    assert (
        by_reason["unsupported_scheme"][0]["detail"]
        == "redirect to file:///etc/passwd?sig=REDACTED"
    )
    assert len(by_reason["not_an_image"]) == 1
    assert summary["counts"]["inputs"] == 18 == len(rows) + len(rejections)
    # the plan held secrets: deleted once every input was accounted for (after the rerun too)
    assert not list((output / "_work").glob("plan-*/*"))

    needles = [*SECRETS, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]]
    assert all(needles)
    logged = caplog.text + "".join(capfd.readouterr())
    for needle in needles:
        assert needle not in logged, needle
    for path in output.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, (needle, path)
    assert local.read_bytes() not in b"".join(p.read_bytes() for p in output.rglob("*.tar"))


def _broken_inputs(tmp_path) -> dict[str, str]:
    import gzip

    lists = "".join(f"http://a.example/{i}.jpg\n" for i in range(3000))
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(lists.encode())[:-100])
    (tmp_path / "not.tar").write_bytes(b"definitely not a tar archive\n" * 40)
    with (tmp_path / "cut.tar").open("wb") as out:  # a member cut in its data
        import io
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tf:
            info = tarfile.TarInfo("k.jpg")
            info.size = 5000
            tf.addfile(info, io.BytesIO(b"\xff" * 5000))
        out.write(buffer.getvalue()[:3000])
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "no-url-column.csv").write_text("image,caption\nhttp://a.example/1.jpg,x\n")
    pq.write_table(pa.table({"url": [1, 2]}), tmp_path / "int-urls.parquet")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 but nothing else")
    return {
        "cut.txt.gz": "truncated or corrupt gzip",
        "not.tar": "not a readable tar",
        "cut.tar": "not a readable tar",
        "no-url-column.csv": "no column 'url'",
        "int-urls.parquet": "holds int64, not strings",
        "fake.parquet": "not a readable Parquet file",
    }


def test_unreadable_inputs_end_in_one_line_and_exit_2(tmp_path, capsys):
    from pipeline.build_humans300m import main

    for name, message in _broken_inputs(tmp_path).items():
        output = tmp_path / "out"  # the same output each time: the lock is released on error
        code = main(job_args(tmp_path / name, output))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, err
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not list(output.glob("manifests/*")) and not list(output.glob("rejections/*"))
