import time

import pytest

from curation.fetch import FetchConfig, Fetcher, is_forbidden_address, opt_out_directives
from curation.synthetic import photo_jpeg
from schemas import Reason
from tests.support.httpserver import CrawlServer

IMAGE = photo_jpeg(64, 48, seed=1)
BIG = photo_jpeg(320, 240, seed=2)  # trickled at 256 bytes / 0.2 s: far beyond the deadline


def _fetcher(**overrides) -> Fetcher:
    settings = dict(
        allow_private_addresses=True, backoff=0.01, total_timeout=1.5, read_timeout=1.0,
        connect_timeout=1.0, retries=2,
    )  # fmt: skip
    settings.update(overrides)
    return Fetcher(FetchConfig(**settings))


@pytest.fixture(scope="module")
def server():
    with CrawlServer({"a.jpg": IMAGE, "big.jpg": BIG}) as srv:
        yield srv


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ("img", None),
        ("redirect", None),
        ("flaky", None),  # 500 once, then served: retried
        ("optout", Reason.OPTED_OUT),
        ("truncated", Reason.TRUNCATED_BODY),
        ("text", Reason.BAD_CONTENT_TYPE),
        ("html", None),  # passes the fetch; validation calls it not_an_image
    ],
)
def test_routes(server, route, reason):
    result = _fetcher().fetch(server.url(route, "a.jpg"))
    assert result.reason == reason, result.detail
    if reason is None and route != "html":
        assert result.data == IMAGE and result.http_status == 200


def test_trickling_body_hits_the_total_deadline(server):
    start = time.monotonic()
    result = _fetcher(total_timeout=1.0).fetch(server.url("slow", "big.jpg"))
    assert result.reason == Reason.TIMEOUT and "no complete response" in result.detail
    assert time.monotonic() - start < 3


def test_retry_after_is_honoured(server):
    start = time.monotonic()
    result = _fetcher(backoff=0.0).fetch(server.url("ratelimit", "a.jpg"))
    assert result.data == IMAGE
    assert time.monotonic() - start >= 0.9  # waited the server's Retry-After: 1


def test_retry_after_beyond_patience_gives_up(server):
    server.images["late.jpg"] = IMAGE
    result = _fetcher(max_backoff=0.5).fetch(server.url("ratelimit", "late.jpg"))
    assert result.reason == Reason.RATE_LIMITED and "Retry-After" in result.detail


def test_errors_are_reasons_not_exceptions(server):
    assert _fetcher().fetch(server.url("status", "404")).reason == Reason.HTTP_ERROR
    assert _fetcher().fetch(server.url("status", "503")).reason == Reason.SERVER_ERROR
    assert _fetcher().fetch(server.url("loop")).reason == Reason.TOO_MANY_REDIRECTS
    assert _fetcher(max_bytes=100).fetch(server.url("img", "a.jpg")).reason == Reason.TOO_LARGE
    assert _fetcher().fetch("ftp://example.com/x.jpg").reason == Reason.UNSUPPORTED_SCHEME
    closed = "http://127.0.0.1:9/x.jpg"  # discard port: nothing listens
    assert _fetcher(retries=0).fetch(closed).reason == Reason.CONNECTION_ERROR


def test_server_errors_are_retried_with_backoff(server):
    before = server.hits["/status/500"]
    result = _fetcher(retries=2).fetch(server.url("status", "500"))
    assert result.reason == Reason.SERVER_ERROR and result.http_status == 500
    assert server.hits["/status/500"] - before == 3  # first try + 2 retries


def test_private_addresses_are_refused_by_default(server):
    result = _fetcher(allow_private_addresses=False).fetch(server.url("img", "a.jpg"))
    assert result.reason == Reason.FORBIDDEN_ADDRESS
    # also when a public-looking name resolves to loopback
    result = _fetcher(allow_private_addresses=False).fetch(
        server.url("img", "a.jpg").replace("127.0.0.1", "localhost")
    )
    assert result.reason == Reason.FORBIDDEN_ADDRESS


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [("10.1.2.3", True), ("192.168.0.1", True), ("169.254.169.254", True), ("::1", True),
     ("::ffff:127.0.0.1", True), ("fe80::1", True), ("8.8.8.8", False), ("2606:4700::1111", False)],
)  # fmt: skip
def test_forbidden_addresses(address, forbidden):
    assert is_forbidden_address(address) is forbidden


def test_opt_out_directives():
    assert opt_out_directives(["noai"]) == {"noai"}
    assert opt_out_directives(["index, NoImageIndex"]) == {"noimageindex"}
    assert opt_out_directives(["otherbot: noindex"]) == set()
    assert opt_out_directives(["*: noai"]) == {"noai"}
    assert opt_out_directives(["nofollow", "noarchive"]) == set()


def test_local_files_and_byte_ranges(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"0123456789")
    fetcher = _fetcher()
    assert fetcher.fetch(f"file://{path}").data == b"0123456789"
    assert fetcher.fetch(f"file://{path}#member", "3:4").data == b"3456"
    assert fetcher.fetch(f"file://{tmp_path}/missing").reason == Reason.READ_ERROR


def test_s3_objects(s3_bucket):
    import boto3

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="raw/a.jpg", Body=IMAGE)
    assert _fetcher().fetch(f"s3://{s3_bucket}/raw/a.jpg").data == IMAGE
    assert _fetcher().fetch(f"s3://{s3_bucket}/raw/nope.jpg").reason == Reason.READ_ERROR
