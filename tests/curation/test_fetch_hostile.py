"""The fetcher against a hostile web: SSRF spellings, tarpits, bombs and lying servers.

Every server here is the loopback crawl server; a test that needs it to look public patches
the address check so that exactly 127.0.0.1 passes and every other address keeps the real rule.
"""

import socket
import threading
import time
from collections import Counter
from urllib.parse import quote

import pytest

import curation.fetch as fetch_module
from curation.fetch import FetchConfig, Fetcher, is_forbidden_address
from curation.synthetic import photo_jpeg
from schemas import Reason
from tests.support.httpserver import CrawlServer, SilentServer

IMAGE = photo_jpeg(64, 48, seed=1)


def _fetcher(**overrides) -> Fetcher:
    settings = dict(
        allow_private_addresses=True, backoff=0.01, total_timeout=2.0, read_timeout=1.5,
        connect_timeout=1.0, retries=2,
    )  # fmt: skip
    settings.update(overrides)
    return Fetcher(FetchConfig(**settings))


@pytest.fixture(scope="module")
def server():
    with CrawlServer({"a.jpg": IMAGE, "b.jpg": IMAGE}) as srv:
        yield srv


@pytest.fixture
def loopback_is_public(monkeypatch):
    """127.0.0.1 (the crawl server) counts as public; every other address keeps the rule."""
    real = fetch_module.is_forbidden_address
    monkeypatch.setattr(
        fetch_module, "is_forbidden_address", lambda a: a != "127.0.0.1" and real(a)
    )


@pytest.mark.parametrize(
    "address",
    ["100.100.100.200", "100.64.0.1", "0.0.0.0", "127.0.0.1", "10.0.0.1", "172.16.0.1",
     "192.168.1.1", "169.254.169.254", "192.0.0.8", "198.18.0.1", "224.0.0.1",
     "255.255.255.255", "240.0.0.1", "::", "::1", "fd00::1", "fe80::1%eth0", "ff02::1",
     "::ffff:127.0.0.1", "::ffff:100.100.100.200", "::127.0.0.1",  # mapped, IPv4-compatible
     "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1",  # NAT64 of private ones
     "2002:7f00:1::", "2002:a9fe:a9fe::1",  # 6to4 around loopback and metadata
     "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
     "not an address"],
)  # fmt: skip
def test_every_address_that_is_not_global_is_forbidden(address):
    assert is_forbidden_address(address)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_global_addresses_pass(address):
    assert not is_forbidden_address(address)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0177.0.0.1", "0x7f.1", "127.1", "[::ffff:127.0.0.1]",
     "[::ffff:7f00:1]", "[::]", "0.0.0.0", "0", "localhost", "LOCALHOST"],
)  # fmt: skip
def test_loopback_spellings_are_refused_before_connecting(server, host):
    port = server.base.rsplit(":", 1)[1]
    before = sum(server.hits.values())
    result = _fetcher(allow_private_addresses=False).fetch(f"http://{host}:{port}/img/a.jpg")
    assert result.reason == Reason.FORBIDDEN_ADDRESS, result
    assert sum(server.hits.values()) == before


def test_metadata_address_is_refused_without_a_connection():
    start = time.monotonic()
    result = _fetcher(allow_private_addresses=False).fetch(
        "http://100.100.100.200/latest/meta-data/"
    )
    assert result.reason == Reason.FORBIDDEN_ADDRESS
    assert time.monotonic() - start < 0.5  # refused, not timed out


@pytest.mark.parametrize(
    ("target", "reason"),
    [("http://100.100.100.200/latest/meta-data/", Reason.FORBIDDEN_ADDRESS),
     ("http://169.254.169.254/", Reason.FORBIDDEN_ADDRESS),
     ("http://[::ffff:169.254.169.254]/", Reason.FORBIDDEN_ADDRESS),
     ("http://[::]/", Reason.FORBIDDEN_ADDRESS), ("http://0/", Reason.FORBIDDEN_ADDRESS),
     ("http://127.0.0.2:9/", Reason.FORBIDDEN_ADDRESS),
     ("http://2130706434:9/", Reason.FORBIDDEN_ADDRESS),  # 127.0.0.2 in decimal
     ("http://0x7f.2:9/", Reason.FORBIDDEN_ADDRESS),
     ("file:///etc/passwd", Reason.UNSUPPORTED_SCHEME), ("s3://bucket/key", Reason.UNSUPPORTED_SCHEME),
     ("gopher://127.0.0.1:9/", Reason.UNSUPPORTED_SCHEME)],
)  # fmt: skip
def test_redirects_into_forbidden_places_are_refused(server, loopback_is_public, target, reason):
    result = _fetcher(allow_private_addresses=False).fetch(server.url("to", quote(target, safe="")))
    assert result.reason == reason, result
    assert server.hits[f"/to/{quote(target, safe='')}"] == 1  # the first hop was fetched


def test_redirect_with_credentials_is_followed_without_them_and_never_echoed(server):
    port = server.base.rsplit(":", 1)[1]
    target = f"http://admin:hunter2@127.0.0.1:{port}/to/{quote('file:///etc/shadow?sig=s3cr3t')}"
    result = _fetcher().fetch(server.url("to", quote(target, safe="")))
    assert result.reason == Reason.UNSUPPORTED_SCHEME
    assert "hunter2" not in result.detail and "s3cr3t" not in result.detail
    assert "admin" not in result.detail and "file:///etc/shadow" in result.detail


def test_slowloris_headers_end_at_the_total_deadline(server):
    server.drip = 1.0  # one byte of the status line and headers per second
    before = server.hits["/slowloris/a.jpg"]
    start = time.monotonic()
    result = _fetcher(total_timeout=2.0, read_timeout=1.5).fetch(server.url("slowloris", "a.jpg"))
    took = time.monotonic() - start
    assert result.reason == Reason.TIMEOUT and "within 2s" in result.detail, result
    assert 1.9 <= took < 3.0, took  # the deadline, not 5 retries of it nor the server's pace
    assert server.hits["/slowloris/a.jpg"] - before == 1  # no retry after the deadline


def test_a_slow_host_does_not_hold_back_the_others(server):
    """Slow-loris URLs and another host's fetched together, as a batch does: all end by the
    deadline, the other host's images arrive."""
    fetcher = _fetcher(total_timeout=2.0, per_host_concurrency=2)
    with CrawlServer({"a.jpg": IMAGE}, host="127.0.0.2") as other:
        urls = [server.url("slowloris", "a.jpg")] * 6 + [other.url("img", "a.jpg")] * 4
        results = _fetch_all(fetcher, urls)
    assert [r.reason for r in results[:6]] == [Reason.TIMEOUT] * 6
    assert all(r.data == IMAGE for r in results[6:])


def _fetch_all(fetcher: Fetcher, urls: list[str]) -> list:
    results: list = [None] * len(urls)

    def one(i: int) -> None:
        results[i] = fetcher.fetch(urls[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # 6 tarpits on 2 slots still end at one deadline (2 s), not 3
    assert time.monotonic() - start < 3.0
    return results


def test_endless_interim_responses_end_at_the_deadline(server):
    start = time.monotonic()
    result = _fetcher(total_timeout=1.0).fetch(server.url("continue"))
    assert result.reason == Reason.TIMEOUT and time.monotonic() - start < 2.0


def test_gzip_bomb_is_refused_without_decompressing(server):
    result = _fetcher().fetch(server.url("bomb"))
    assert result.reason == Reason.BAD_CONTENT_TYPE and "gzip" in result.detail


def test_endless_chunked_body_stops_at_max_bytes(server):
    result = _fetcher(max_bytes=1 << 20).fetch(server.url("endless"))
    assert result.reason == Reason.TOO_LARGE


def test_endless_body_under_the_size_cap_stops_at_the_deadline(server):
    start = time.monotonic()
    result = _fetcher(max_bytes=1 << 40, total_timeout=1.0).fetch(server.url("endless"))
    assert result.reason == Reason.TIMEOUT and time.monotonic() - start < 2.5


def test_huge_header_is_a_connection_error(server):
    result = _fetcher(retries=0).fetch(server.url("bigheader"))
    assert result.reason == Reason.CONNECTION_ERROR, result


def test_content_length_shorter_than_the_body_does_not_poison_the_next_request(server):
    fetcher = _fetcher(per_host_concurrency=1)
    assert fetcher.fetch(server.url("truncated", "a.jpg")).reason == Reason.TRUNCATED_BODY
    assert fetcher.fetch(server.url("status", "404")).reason == Reason.HTTP_ERROR
    assert fetcher.fetch(server.url("img", "a.jpg")).data == IMAGE


def test_secrets_in_the_url_never_reach_a_detail(server):
    url = server.url("status", "500").replace("://", "://bob:pa55word@") + "?X-Amz-Signature=abc123"
    result = _fetcher(retries=0).fetch(url)
    assert result.reason == Reason.SERVER_ERROR
    assert "pa55word" not in result.detail and "abc123" not in result.detail


def test_retry_after_is_waited_from_the_429_to_the_retry(server):
    """Server-side timestamps: the retry comes at least Retry-After after the 429 was sent."""
    server.images["timed.jpg"] = IMAGE
    result = _fetcher(backoff=0.0, total_timeout=5.0).fetch(server.url("ratelimit", "timed.jpg"))
    assert result.data == IMAGE
    first, retry = server.times["/ratelimit/timed.jpg"]
    assert retry - first >= 1.0, retry - first


def test_retry_after_holds_back_the_whole_host_without_holding_a_slot(server):
    """After a 429 with Retry-After: 1, no request of this worker reaches that host for 1 s,
    while the waiting fetch holds no per-host slot (a host with one slot still serves others
    once the wait is over)."""
    server.images["held.jpg"] = IMAGE
    fetcher = _fetcher(backoff=0.0, total_timeout=5.0, per_host_concurrency=1)
    first = threading.Thread(target=fetcher.fetch, args=(server.url("ratelimit", "held.jpg"),))
    first.start()
    while not server.times["/ratelimit/held.jpg"]:
        time.sleep(0.01)
    time.sleep(0.1)  # the 429 has arrived
    assert fetcher.fetch(server.url("img", "b.jpg")).data == IMAGE
    first.join()
    refused_at = server.times["/ratelimit/held.jpg"][0]
    assert server.times["/img/b.jpg"][-1] - refused_at >= 1.0
    assert server.times["/ratelimit/held.jpg"][1] - refused_at >= 1.0


def test_retry_after_beyond_the_deadline_gives_up_at_once(server):
    server.images["soon.jpg"] = IMAGE
    start = time.monotonic()
    result = _fetcher(total_timeout=0.8).fetch(server.url("ratelimit", "soon.jpg"))
    assert result.reason == Reason.RATE_LIMITED and "no time left" in result.detail
    assert time.monotonic() - start < 0.5  # no early retry, no pointless sleep
    assert server.hits["/ratelimit/soon.jpg"] == 1


# -- name resolution: what is checked is what is connected to, within the deadline -------------


@pytest.fixture
def dns(monkeypatch):
    """A stub resolver: ``dns[name]`` is a list of addresses, or a callable returning one per
    lookup; other names resolve as usual. ``dns.lookups`` counts lookups per name."""
    real = socket.getaddrinfo

    class Stub(dict):
        lookups: Counter = Counter()

    stub = Stub()

    def getaddrinfo(host, port, *args, **kwargs):
        stub.lookups[host] += 1
        if host not in stub:
            return real(host, port, *args, **kwargs)
        answer = stub[host]
        addresses = answer() if callable(answer) else answer
        family = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET  # noqa: E731
        return [(family(a), socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return stub


def test_a_name_resolving_to_a_public_and_a_private_address_is_refused(
    server, loopback_is_public, dns
):
    dns["mixed.example"] = ["127.0.0.1", "10.0.0.7"]  # the first one "public"
    port = server.base.rsplit(":", 1)[1]
    before = sum(server.hits.values())
    result = _fetcher(allow_private_addresses=False).fetch(f"http://mixed.example:{port}/img/a.jpg")
    assert result.reason == Reason.FORBIDDEN_ADDRESS and "10.0.0.7" in result.detail, result
    assert sum(server.hits.values()) == before


def test_rebinding_connects_to_the_address_that_was_checked(server, loopback_is_public, dns):
    """The name answers the crawl server once, then the metadata address: the fetch connects to
    the first answer without looking the name up again; the next fetch is refused."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"], ["169.254.169.254"]])
    dns["rebind.example"] = lambda: next(answers)
    port = server.base.rsplit(":", 1)[1]
    fetcher = _fetcher(allow_private_addresses=False)
    assert fetcher.fetch(f"http://rebind.example:{port}/img/a.jpg").data == IMAGE
    assert dns.lookups["rebind.example"] == 1
    second = fetcher.fetch(f"http://rebind.example:{port}/img/b.jpg")
    assert second.reason == Reason.FORBIDDEN_ADDRESS and "169.254.169.254" in second.detail


@pytest.mark.parametrize(
    "name",
    ["127.0.0.1.nip.io", "localtest.me", "spoofed.example."],
)
def test_public_looking_names_of_internal_addresses_are_refused(server, dns, name):
    dns[name.rstrip(".")] = ["127.0.0.1"]
    dns["localtest.me"] = ["::1"]
    port = server.base.rsplit(":", 1)[1]
    before = sum(server.hits.values())
    result = _fetcher(allow_private_addresses=False).fetch(f"http://{name}:{port}/img/a.jpg")
    assert result.reason == Reason.FORBIDDEN_ADDRESS, result
    assert sum(server.hits.values()) == before


def test_an_address_needs_no_lookup_but_other_spellings_of_it_are_resolved(dns):
    from curation.addresses import resolve

    assert resolve("127.0.0.1", 80, 1.0) == ["127.0.0.1"]
    assert resolve("::ffff:7f00:1", 80, 1.0) == ["::ffff:7f00:1"]
    assert dns.lookups == {}
    assert resolve("127.1", 80, 1.0) == ["127.0.0.1"]  # what the resolver makes of it
    assert dns.lookups == {"127.1": 1}


def test_slow_name_resolution_ends_at_the_deadline(server, dns):
    dns["tarpit-dns.example"] = lambda: time.sleep(5) or ["127.0.0.1"]
    start = time.monotonic()
    result = _fetcher(total_timeout=1.0).fetch("http://tarpit-dns.example/img/a.jpg")
    took = time.monotonic() - start
    assert result.reason == Reason.TIMEOUT and "resolving" in result.detail, result
    assert took < 1.6, took


def test_an_unknown_name_is_rejected_without_retries(dns, monkeypatch):
    def unknown(host, port, *args, **kwargs):
        dns.lookups[host] += 1
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    result = _fetcher(retries=3, backoff=0.5).fetch("http://no-such-host.example/a.jpg")
    assert result.reason == Reason.CONNECTION_ERROR and "cannot resolve" in result.detail
    assert dns.lookups["no-such-host.example"] == 1


@pytest.mark.parametrize(
    "url",
    ["http://[fe80::1%25eth0]:{port}/img/a.jpg", "http://[fe80::1%eth0]:{port}/img/a.jpg",
     "http://0x7f.0.0.1:{port}/img/a.jpg", "http://[::ffff:a9fe:a9fe]:{port}/",
     "http://[::ffff:7f00:1]:{port}/img/a.jpg", "HTTP://127.0.0.1:{port}/img/a.jpg",
     "hTtP://LocalHost:{port}/img/a.jpg", "http://127。0。0。1:{port}/img/a.jpg",
     "http://①②⑦.0.0.1:{port}/img/a.jpg", "http://１２７.0.0.1:{port}/img/a.jpg",
     "http://8.8.8.8\\@127.0.0.1:{port}/img/a.jpg", "http://127.0.0.1\t:{port}/img/a.jpg",
     "http://127.0.\n0.1:{port}/img/a.jpg", "http:/127.0.0.1:{port}/img/a.jpg",
     "http:127.0.0.1:{port}/img/a.jpg", "http://%31%32%37.0.0.1:{port}/img/a.jpg",
     "http://user@:{port}/img/a.jpg", "http://[::1:{port}/img/a.jpg",
     "http://127.0.0.1:{port}99999/img/a.jpg", "http://" + "a" * 64 + ".example/a.jpg",
     "http://127.0.0.1:{port}/" + "a" * 100_000],
)  # fmt: skip
def test_ssrf_spellings_never_reach_the_server(server, dns, url):
    """Every spelling of loopback or metadata, and every URL without a usable host, ends
    quickly (no retries) without a request reaching the loopback server."""
    dns["xn--127-2x1e.0.0.1"] = ["127.0.0.1"]  # in case an IDNA form escapes as a name
    port = server.base.rsplit(":", 1)[1]
    before = sum(server.hits.values())
    start = time.monotonic()
    result = _fetcher(allow_private_addresses=False, backoff=0.5).fetch(url.format(port=port))
    assert result.reason in (Reason.FORBIDDEN_ADDRESS, Reason.CONNECTION_ERROR), result
    assert time.monotonic() - start < 0.5
    assert sum(server.hits.values()) == before


def test_international_names_are_looked_up_and_sent_in_idna(server, loopback_is_public, dns):
    dns["xn--bcher-kva.example"] = ["127.0.0.1"]
    port = server.base.rsplit(":", 1)[1]
    result = _fetcher(allow_private_addresses=False).fetch(
        f"http://Bücher.example:{port}/img/a.jpg"
    )
    assert result.data == IMAGE, result
    assert dns.lookups["xn--bcher-kva.example"] == 1 and not dns.lookups["bücher.example"]


def test_non_ascii_and_spaces_in_a_path_are_percent_encoded(server):
    server.images["%C3%BC%20x.jpg"] = IMAGE
    assert _fetcher().fetch(server.url("img", "ü x.jpg")).data == IMAGE
    assert server.hits["/img/%C3%BC%20x.jpg"] == 1


# -- tarpits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_accepts_and_never_answers_ends_at_the_deadline(scheme):
    """Plain HTTP waits for a response, HTTPS for a handshake: neither outlives the deadline,
    whatever the (longer) read timeout."""
    with SilentServer() as silent:
        start = time.monotonic()
        result = _fetcher(total_timeout=1.0, read_timeout=30, retries=3).fetch(
            f"{scheme}://127.0.0.1:{silent.port}/a.jpg"
        )
        took = time.monotonic() - start
        assert silent.accepted >= 1  # the connection was made: this is a tarpit, not a refusal
    assert result.reason == Reason.TIMEOUT, result
    assert took < 1.6, took


def test_many_urls_to_one_tarpit_cost_a_batch_about_one_deadline(server):
    """40 slow-loris URLs before 4 good ones, fetched by 8 threads in list order (as a batch is):
    after the first fetches to the tarpit run out of time its other URLs are timeouts at once,
    so the good images arrive within about one deadline instead of 40 / 8 deadlines."""
    from concurrent.futures import ThreadPoolExecutor

    server.drip = 1.0
    fetcher = _fetcher(total_timeout=1.5, read_timeout=1.5, per_host_concurrency=2)
    with CrawlServer({"a.jpg": IMAGE}, host="127.0.0.2") as good:
        urls = [server.url("slowloris", f"a.jpg?{i}") for i in range(40)]
        urls += [good.url("img", "a.jpg")] * 4
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(fetcher.fetch, urls))
        took = time.monotonic() - start
    assert all(r.data == IMAGE for r in results[40:])
    assert {r.reason for r in results[:40]} == {Reason.TIMEOUT}
    assert sum("not tried" in r.detail for r in results[:40]) >= 30
    assert took < 4.0, took  # 40 / 8 deadlines would be 7.5 s


@pytest.mark.parametrize(
    "target",
    ["//127.0.0.2:9/a.jpg", "HTTP://0x7f.0.0.2:9/a.jpg", "http://127。0。0。2:9/a.jpg",
     "https://[::ffff:7f00:2]:9/a.jpg", "http://127.0.0.1@127.0.0.2:9/a.jpg",
     "http://[fe80::1%eth0]:9/", "http://100.100.100.200/latest/meta-data/"],
)  # fmt: skip
def test_redirect_chains_into_forbidden_places_are_refused_at_the_last_hop(
    server, loopback_is_public, target
):
    """public -> public -> forbidden: each hop is checked, whatever the spelling of the last."""
    second = server.url("to", quote(target, safe=""))
    first = server.url("to", quote(second, safe=""))
    before = server.hits[f"/to/{quote(target, safe='')}"]
    result = _fetcher(allow_private_addresses=False).fetch(first)
    assert result.reason == Reason.FORBIDDEN_ADDRESS, result
    assert server.hits[f"/to/{quote(target, safe='')}"] == before + 1  # the second hop was fetched


def test_failure_details_never_quote_a_secret(server, dns):
    """Details built from exceptions (refused connection, unknown name, read timeout) and from
    a redirect Location carry no userinfo and no signed value of the URL."""
    dns["no-such.example"] = lambda: (_ for _ in ()).throw(socket.gaierror(socket.EAI_NONAME, "x"))
    fetcher = _fetcher(retries=0, total_timeout=1.0, read_timeout=0.5)
    server.images["s.jpg"] = IMAGE
    urls = [
        "http://bob:pw-1-secret@127.0.0.1:9/a.jpg?token=tok-1-secret",  # refused
        "http://bob:pw-2-secret@no-such.example/a.jpg?sig=sig-2-secret",
        server.url("slowloris", "s.jpg").replace("://", "://u:pw-3-secret@") + "?sig=sig-3-secret",
        server.url("to", quote("gopher://u:pw-4-secret@x/?X-Amz-Signature=sig-4-secret", safe="")),
    ]
    results = [fetcher.fetch(url) for url in urls]
    assert [r.reason for r in results] == [
        Reason.CONNECTION_ERROR, Reason.CONNECTION_ERROR, Reason.TIMEOUT, Reason.UNSUPPORTED_SCHEME
    ]  # fmt: skip
    for result in results:
        assert "secret" not in result.detail, result.detail
