"""Fetching the bytes of one input: HTTP(S), S3, local files and members of tars.

HTTP is fetched with urllib3 against an address resolved and checked here, so a host name that
resolves (or redirects) to an address that is not globally routable (private, loopback,
link-local, carrier-grade NAT, ...) is refused before any connection is made, unless the
configuration allows it. One deadline covers each fetch from start to end (``curation.deadline``).
Every failure becomes a ``FetchResult`` with a reason code whose detail is redacted
(``curation.redact``); nothing raises out of ``Fetcher.fetch``.

Which schemes a URL *list* may name is decided where lists are read (``curation.sources``):
``s3://`` and ``file://`` here serve the operator's own inputs (folders, prefixes, tars).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlparse

from curation.addresses import is_forbidden_address, resolve
from curation.deadline import WATCHDOG, watched_pools
from curation.politeness import HostLimits, LocalSlots
from curation.redact import redact_text
from schemas import Reason

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
ACCEPTED_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


@dataclass(kw_only=True)
class FetchConfig:
    concurrency: int = field(default=16, metadata={"help": "parallel fetches per worker process"})
    per_host_concurrency: int = field(
        default=16,
        metadata={"help": "politeness: requests in flight to one host, across the whole job"},
    )
    per_host_rate: float = field(
        default=0.0,
        metadata={
            "help": "politeness: requests per second to one host across the whole job; "
            "0: no limit but the concurrency"
        },
    )
    cluster_wide_limits: bool = field(
        default=True,
        metadata={
            "help": "enforce the per-host limits across all workers of the job (a Ray actor "
            "hands out each host's slots); off: each worker process enforces them alone"
        },
    )
    connect_timeout: float = field(default=5.0, metadata={"help": "seconds to connect"})
    read_timeout: float = field(default=20.0, metadata={"help": "seconds of silence while reading"})
    total_timeout: float = field(
        default=60.0,
        metadata={
            "help": "seconds for a whole fetch: connect, headers and body of every attempt, "
            "redirects and retry waits (stops tarpits)"
        },
    )
    retries: int = field(
        default=3, metadata={"help": "retries on timeouts, connection errors, 429 and 5xx"}
    )
    backoff: float = field(default=0.5, metadata={"help": "first retry delay in seconds (doubles)"})
    max_backoff: float = field(
        default=30.0, metadata={"help": "longest delay between retries, Retry-After included"}
    )
    max_bytes: int = field(default=32 << 20, metadata={"help": "largest body accepted, in bytes"})
    max_redirects: int = field(default=5, metadata={"help": "redirects followed per URL"})
    user_agent: str = field(
        default="humans300m-crawler/0.1 (+https://github.com/humans300m)",
        metadata={"help": "User-Agent header sent with every request"},
    )
    respect_opt_outs: bool = field(
        default=True, metadata={"help": "honour X-Robots-Tag noai/noimageai/noindex/noimageindex"}
    )
    allow_private_addresses: bool = field(
        default=False,
        metadata={
            "help": "allow addresses that are not globally routable: private, loopback, "
            "link-local, carrier-grade NAT (demos and tests)"
        },
    )

    def __post_init__(self) -> None:
        for name in ("concurrency", "per_host_concurrency", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.per_host_rate < 0:
            raise ValueError("per_host_rate must not be negative")
        if self.retries < 0 or self.max_redirects < 0 or self.backoff < 0:
            raise ValueError("retries, max_redirects and backoff must not be negative")


@dataclass
class FetchResult:
    data: bytes | None = None
    http_status: int | None = None
    reason: Reason | None = None  # None when data holds the body
    detail: str = ""


class _Retryable(Exception):
    def __init__(self, reason: Reason, detail: str, status: int | None, delay: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.status, self.delay = reason, detail, status, delay

    def result(self, note: str = "") -> FetchResult:
        return FetchResult(http_status=self.status, reason=self.reason, detail=self.detail + note)


class Fetcher:
    """Fetches inputs for one worker process; thread-safe, connection pools reused.

    ``total_timeout`` is one deadline per fetch: every attempt's connect, headers and body,
    redirects, waits for a per-host slot and sleeps between retries all count against it, so a
    tarpit costs one fetch at most ``total_timeout`` seconds and never stalls its batch longer.
    The host name is resolved within the same deadline. A host that ran a fetch out of time is
    not tried again for ``total_timeout`` seconds (its URLs become timeouts at once), so a batch
    naming one tarpit many times still ends in about one deadline.

    ``host_slots`` enforces the per-host limits (``curation.politeness``): a job passes its
    cluster-wide one; by default they hold within this process only.
    """

    def __init__(self, config: FetchConfig, host_slots: HostLimits | None = None) -> None:
        import urllib3

        self.config = config
        self._urllib3 = urllib3
        self._pools = urllib3.PoolManager(
            num_pools=256, maxsize=config.per_host_concurrency, retries=False, block=False
        )
        self._pools.pool_classes_by_scheme = watched_pools()
        self._host_slots = host_slots or LocalSlots(
            config.per_host_concurrency, config.per_host_rate
        )
        # host -> monotonic time before which it asked not to be contacted (Retry-After)
        self._not_before: dict[str, float] = {}
        # host -> monotonic time until which its URLs are not tried (it stalled a fetch)
        self._stalled_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._s3 = None

    def release_idle(self) -> None:
        """Give back the per-host slots kept for this process's next requests."""
        self._host_slots.release_idle()

    def fetch(self, uri: str, byte_range: str | None = None) -> FetchResult:
        """The bytes of ``uri`` or a rejection; ``detail`` never holds a secret of the URL."""
        try:
            scheme = urlparse(uri).scheme.lower()
            if scheme in ("http", "https"):
                result = self._fetch_http(uri)
            elif scheme in ("s3", "file"):
                result = self._fetch_file(uri, byte_range)
            else:
                result = FetchResult(reason=Reason.UNSUPPORTED_SCHEME, detail=scheme)
        except Exception as exc:  # a fetch must never take the worker down
            result = FetchResult(
                reason=Reason.CONNECTION_ERROR, detail=f"{type(exc).__name__}: {exc}"
            )
        result.detail = redact_text(result.detail)
        return result

    # -- files and objects ---------------------------------------------------------------
    def _fetch_file(self, uri: str, byte_range: str | None) -> FetchResult:
        from runtime.storage import locate

        path = uri.split("#", 1)[0] if byte_range else uri
        try:
            loc = locate(path)
            with loc.fs.open_input_file(loc.path) as stream:
                if byte_range:
                    offset, size = (int(x) for x in byte_range.split(":"))
                    if size > self.config.max_bytes:
                        return FetchResult(reason=Reason.TOO_LARGE, detail=f"{size} bytes")
                    data = stream.read_at(size, offset)
                else:
                    size = stream.size()
                    if size > self.config.max_bytes:
                        return FetchResult(reason=Reason.TOO_LARGE, detail=f"{size} bytes")
                    data = stream.read()
        except (OSError, ValueError) as exc:
            return FetchResult(reason=Reason.READ_ERROR, detail=f"{type(exc).__name__}: {exc}")
        return FetchResult(data=data)

    # -- HTTP ----------------------------------------------------------------------------
    def _fetch_http(self, url: str) -> FetchResult:
        deadline = time.monotonic() + self.config.total_timeout
        attempt = 0
        while True:
            try:
                return self._follow_redirects(url, deadline)
            except _Retryable as failure:
                # past the deadline the watchdog's shutdown looks like a dropped connection
                if time.monotonic() >= deadline:
                    return self._timed_out(failure.status, failure.detail)
                if attempt >= self.config.retries:
                    return failure.result()
                if failure.delay is not None and failure.delay > self.config.max_backoff:
                    return failure.result(
                        f"; Retry-After {failure.delay:.0f}s exceeds "
                        f"max_backoff {self.config.max_backoff:.0f}s"
                    )
                delay = self._delay(attempt, failure.delay)
                if time.monotonic() + delay >= deadline:
                    # retrying sooner than asked would be rude and likely refused again
                    return failure.result(
                        f"; no time left for a retry in {delay:.1f}s "
                        f"(total_timeout {self.config.total_timeout:g}s)"
                    )
                time.sleep(delay)  # no per-host slot is held here
                attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after  # never shortened by jitter: the server said how long
        # exponential backoff with full jitter keeps retrying workers from synchronising
        return min(self.config.max_backoff, self.config.backoff * 2**attempt) * random.uniform(
            0.5, 1.0
        )

    def _timed_out(self, status: int | None, detail: str) -> FetchResult:
        return FetchResult(
            http_status=status,
            reason=Reason.TIMEOUT,
            detail=f"no complete response within {self.config.total_timeout:g}s ({detail})",
        )

    def _follow_redirects(self, url: str, deadline: float) -> FetchResult:
        for _ in range(self.config.max_redirects + 1):
            result, location = self._request(url, deadline)
            if location is None:
                return result
            url = urljoin(url, location)
            if urlparse(url).scheme.lower() not in ("http", "https"):
                return FetchResult(reason=Reason.UNSUPPORTED_SCHEME, detail=f"redirect to {url}")
        return FetchResult(
            reason=Reason.TOO_MANY_REDIRECTS, detail=f"more than {self.config.max_redirects}"
        )

    def _request(self, url: str, deadline: float) -> tuple[FetchResult, str | None]:
        """One request; returns (result, redirect location or None). Raises _Retryable."""
        parsed = urlparse(url)
        host = _ascii_host(parsed.hostname or "")
        if not host:
            return FetchResult(reason=Reason.CONNECTION_ERROR, detail="no usable host name"), None
        stalled = self._stalled(host)
        if stalled is not None:
            return stalled, None
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            address = self._resolve(host, port, deadline)
            if isinstance(address, FetchResult):
                return address, None
            waited = self._wait_for_host(host, deadline)
            if waited is not None:
                return waited, None
            with self._host_slots.slot(host, max(0.0, deadline - time.monotonic())) as got:
                if not got:
                    return self._timed_out(None, f"waiting for a connection slot to {host}"), None
                return self._send(parsed, host, address, deadline)
        except _Retryable as failure:
            if failure.delay is not None:
                self._host_asks_to_wait(host, failure.delay)
            if time.monotonic() >= deadline:
                self._host_stalls(host)
            raise

    def _host_stalls(self, host: str) -> None:
        """``host`` (its name server or its web server) held a fetch to the very deadline."""
        with self._lock:
            self._stalled_until[host] = time.monotonic() + self.config.total_timeout

    def _stalled(self, host: str) -> FetchResult | None:
        """A timeout, without trying, for a host that ran a fetch out of time just now.

        A tarpit holds every fetch sent to it for the whole deadline: a batch listing it many
        times would take (times / concurrency) deadlines, its other hosts' images waiting
        behind. For ``total_timeout`` seconds after a fetch to it ran out of time, its other
        URLs are rejected at once instead, so one tarpit costs a batch about one deadline.
        """
        with self._lock:
            until = self._stalled_until.get(host)
            left = 0.0 if until is None else until - time.monotonic()
            if until is not None and left <= 0:
                del self._stalled_until[host]
        if left <= 0:
            return None
        return FetchResult(
            reason=Reason.TIMEOUT,
            detail=f"not tried: a fetch from {host} ran out its {self.config.total_timeout:g}s "
            f"just now (host skipped for {left:.0f}s more)",
        )

    def _host_asks_to_wait(self, host: str, seconds: float) -> None:
        """Retry-After applies to the host: no request of this worker reaches it before then."""
        with self._lock:
            until = time.monotonic() + seconds
            self._not_before[host] = max(self._not_before.get(host, 0.0), until)

    def _wait_for_host(self, host: str, deadline: float) -> FetchResult | None:
        """Sleeps (holding no slot) until ``host`` may be contacted; a rejection if too late."""
        with self._lock:
            until = self._not_before.get(host)
            if until is not None and until <= time.monotonic():
                del self._not_before[host]
                until = None
        if until is None:
            return None
        if until >= deadline:
            return FetchResult(
                reason=Reason.RATE_LIMITED,
                detail=f"{host} asked to wait {until - time.monotonic():.1f}s (Retry-After), "
                "beyond this fetch's deadline",
            )
        time.sleep(max(0.0, until - time.monotonic()))
        return None

    def _send(
        self, parsed, host: str, address: str, deadline: float
    ) -> tuple[FetchResult, str | None]:
        u3 = self._urllib3
        cfg = self.config
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        pool_kwargs = (
            {"server_hostname": host, "assert_hostname": host} if parsed.scheme == "https" else {}
        )
        # connect to the checked address, never re-resolve: no DNS-rebinding window
        pool = self._pools.connection_from_host(
            address, port=port, scheme=parsed.scheme, pool_kwargs=pool_kwargs
        )
        # credentials in a URL are never sent; the name as DNS and TLS know it (IDNA)
        host_header = f"[{host}]" if ":" in host else host
        if parsed.port is not None:
            host_header += f":{parsed.port}"
        path = parsed.path or "/"  # urllib3 percent-encodes what a request line cannot hold
        if parsed.query:
            path += "?" + parsed.query
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Retryable(Reason.TIMEOUT, "deadline passed before the request", None)
        timeout = u3.Timeout(
            connect=min(cfg.connect_timeout, left), read=min(cfg.read_timeout, left)
        )
        headers = {
            "Host": host_header,
            "User-Agent": cfg.user_agent,
            "Accept": "image/*",
            "Accept-Encoding": "identity",  # no decompression bombs: bytes are counted as sent
        }
        with WATCHDOG.watch(deadline) as watch:
            try:
                response = pool.urlopen(
                    "GET", path, headers=headers, redirect=False, retries=False,
                    preload_content=False, decode_content=False, timeout=timeout,
                    assert_same_host=False,
                )  # fmt: skip
            except u3.exceptions.NewConnectionError as exc:  # subclasses ConnectTimeoutError
                raise _Retryable(Reason.CONNECTION_ERROR, str(exc), None) from exc
            except (u3.exceptions.ConnectTimeoutError, u3.exceptions.ReadTimeoutError) as exc:
                raise _Retryable(Reason.TIMEOUT, str(exc), None) from exc
            except u3.exceptions.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}"
                raise _Retryable(Reason.CONNECTION_ERROR, detail, None) from exc
            try:
                return self._read_response(response)
            finally:
                if watch.expired or not response.isclosed():
                    response.close()  # unread bytes would poison the next request on it
                response.release_conn()

    def _read_response(self, response) -> tuple[FetchResult, str | None]:
        status = response.status
        if 300 <= status < 400 and response.headers.get("Location"):
            return FetchResult(http_status=status), _header_text(response.headers["Location"])
        if status == 429:
            raise _Retryable(Reason.RATE_LIMITED, "HTTP 429", status, _retry_after(response))
        if status >= 500:
            raise _Retryable(Reason.SERVER_ERROR, f"HTTP {status}", status, _retry_after(response))
        if status != 200:
            return FetchResult(
                http_status=status, reason=Reason.HTTP_ERROR, detail=f"HTTP {status}"
            ), None
        if self.config.respect_opt_outs:
            directives = opt_out_directives(response.headers.getlist("X-Robots-Tag"))
            if directives:
                detail = "X-Robots-Tag: " + ", ".join(sorted(directives))
                return FetchResult(http_status=status, reason=Reason.OPTED_OUT, detail=detail), None
        rejected = self._check_headers(response.headers)
        if rejected:
            return FetchResult(http_status=status, reason=rejected[0], detail=rejected[1]), None
        return self._read_body(response), None

    def _check_headers(self, headers) -> tuple[Reason, str] | None:
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith(ACCEPTED_CONTENT_TYPES):
            return Reason.BAD_CONTENT_TYPE, content_type
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            # asked for identity; decoding would let a few kB expand to gigabytes
            return Reason.BAD_CONTENT_TYPE, f"Content-Encoding {encoding[:40]}"
        length = headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.config.max_bytes:
            return Reason.TOO_LARGE, f"{length[:20]} bytes"
        return None

    def _read_body(self, response) -> FetchResult:
        u3 = self._urllib3
        chunks, size = [], 0
        try:
            # read1 returns whatever has arrived; the watchdog ends a body past the deadline
            while chunk := response.read1(1 << 16):
                size += len(chunk)
                if size > self.config.max_bytes:
                    return FetchResult(
                        http_status=200,
                        reason=Reason.TOO_LARGE,
                        detail=f"over {self.config.max_bytes} bytes",
                    )
                chunks.append(chunk)
        except u3.exceptions.ReadTimeoutError as exc:
            raise _Retryable(Reason.TIMEOUT, f"read timeout after {size} bytes", 200) from exc
        except (u3.exceptions.ProtocolError, u3.exceptions.IncompleteRead, OSError) as exc:
            raise _Retryable(
                Reason.TRUNCATED_BODY, f"{type(exc).__name__} after {size} bytes", 200
            ) from exc
        return FetchResult(data=b"".join(chunks), http_status=200)

    def _resolve(self, host: str, port: int, deadline: float) -> str | FetchResult:
        """The address to connect to, or a rejection when the host is refused or unknown.

        The lookup shares the fetch's deadline (a tarpit name server costs no more than a
        tarpit web server); only a temporary resolver failure is worth a retry.
        """
        left = deadline - time.monotonic()
        try:
            addresses = resolve(host, port, left)
        except TimeoutError as exc:
            raise _Retryable(Reason.TIMEOUT, str(exc), None) from exc
        except socket.gaierror as exc:
            detail = f"cannot resolve {host!r}: {exc}"
            if exc.errno == socket.EAI_AGAIN:
                raise _Retryable(Reason.CONNECTION_ERROR, detail, None) from exc
            return FetchResult(reason=Reason.CONNECTION_ERROR, detail=detail)
        except (UnicodeError, OSError) as exc:
            return FetchResult(
                reason=Reason.CONNECTION_ERROR, detail=f"cannot resolve {host!r}: {exc}"
            )
        if not addresses:
            return FetchResult(reason=Reason.CONNECTION_ERROR, detail=f"{host} has no address")
        if not self.config.allow_private_addresses:
            # every answer is checked: a name mixing a public and a private address is refused
            refused = [a for a in addresses if is_forbidden_address(a)]
            if refused:
                return FetchResult(
                    reason=Reason.FORBIDDEN_ADDRESS, detail=f"{host} resolves to {refused[0]}"
                )
        return addresses[0]


def _header_text(value: str) -> str:
    """A header as its sender meant it: servers send non-ASCII Locations as raw UTF-8, which
    http.client decodes as Latin-1 (browsers and requests decode them as UTF-8)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _ascii_host(hostname: str) -> str:
    """The host name as DNS, TLS and the Host header spell it ("" if it has none usable).

    IDNA turns ``bücher.example`` into ``xn--bcher-kva.example`` and ideographic full stops
    into dots (``127。0。0。1`` is 127.0.0.1, and is checked as such); an IP literal stays.
    """
    hostname = hostname.strip().lower().rstrip(".")
    if hostname.isascii():
        return hostname
    try:
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def opt_out_directives(values: list[str]) -> set[str]:
    """Opt-out directives in ``X-Robots-Tag`` values that apply to every crawler.

    A directive may be addressed to a named bot (``googlebot: noindex``); those aimed at another
    bot are ignored, those without a name or addressed to ``*`` count.
    """
    found = set()
    for value in values:
        for part in value.lower().split(","):
            bot, _, directive = part.rpartition(":")
            if bot.strip() not in ("", "*", "all"):
                continue
            if directive.strip() in OPT_OUT_DIRECTIVES:
                found.add(directive.strip())
    return found


def _retry_after(response) -> float | None:
    """Seconds the server asks us to wait: delay-seconds (fractions accepted) or an HTTP date."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT even when it fails to say so
            when = when.replace(tzinfo=dt.UTC)
        return max(0.0, when.timestamp() - time.time())
    return max(0.0, seconds) if math.isfinite(seconds) else None
