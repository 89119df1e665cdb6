"""Fetching the bytes of one input: HTTP(S), S3, local files and members of tars.

HTTP is fetched with urllib3 against an address resolved and checked here, so a host name that
resolves (or redirects) to a private, loopback or link-local address is refused before any
connection is made, unless the configuration allows it. Every failure becomes a ``FetchResult``
with a reason code; nothing raises out of ``Fetcher.fetch``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlparse

from schemas import Reason

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
ACCEPTED_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


@dataclass(kw_only=True)
class FetchConfig:
    concurrency: int = field(default=16, metadata={"help": "parallel fetches per worker process"})
    per_host_concurrency: int = field(
        default=4, metadata={"help": "politeness: parallel requests to one host per worker"}
    )
    connect_timeout: float = field(default=5.0, metadata={"help": "seconds to connect"})
    read_timeout: float = field(default=20.0, metadata={"help": "seconds of silence while reading"})
    total_timeout: float = field(
        default=60.0, metadata={"help": "seconds for a whole download (stops trickling bodies)"}
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
        metadata={"help": "allow private, loopback and link-local addresses (demos and tests)"},
    )

    def __post_init__(self) -> None:
        for name in ("concurrency", "per_host_concurrency", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
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


class Fetcher:
    """Fetches inputs for one worker process; thread-safe, connection pools reused."""

    def __init__(self, config: FetchConfig) -> None:
        import urllib3

        self.config = config
        self._urllib3 = urllib3
        self._pools = urllib3.PoolManager(
            num_pools=256, maxsize=config.per_host_concurrency, retries=False, block=False
        )
        self._host_slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(config.per_host_concurrency)
        )
        self._lock = threading.Lock()
        self._s3 = None

    def fetch(self, uri: str, byte_range: str | None = None) -> FetchResult:
        try:
            scheme = urlparse(uri).scheme.lower()
            if scheme in ("http", "https"):
                return self._fetch_http(uri)
            if scheme in ("s3", "file"):
                return self._fetch_file(uri, byte_range)
            return FetchResult(reason=Reason.UNSUPPORTED_SCHEME, detail=scheme)
        except Exception as exc:  # a fetch must never take the worker down
            return FetchResult(
                reason=Reason.CONNECTION_ERROR, detail=f"{type(exc).__name__}: {exc}"
            )

    # -- files and objects ---------------------------------------------------------------
    def _fetch_file(self, uri: str, byte_range: str | None) -> FetchResult:
        from curation.storage import locate

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
        attempt = 0
        while True:
            try:
                return self._follow_redirects(url)
            except _Retryable as failure:
                if attempt >= self.config.retries:
                    return FetchResult(
                        http_status=failure.status, reason=failure.reason, detail=failure.detail
                    )
                if failure.delay is not None and failure.delay > self.config.max_backoff:
                    return FetchResult(
                        http_status=failure.status,
                        reason=failure.reason,
                        detail=f"{failure.detail}; Retry-After {failure.delay:.0f}s exceeds "
                        f"max_backoff {self.config.max_backoff:.0f}s",
                    )
                time.sleep(self._delay(attempt, failure.delay))
                attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        # exponential backoff with full jitter keeps retrying workers from synchronising
        return min(self.config.max_backoff, self.config.backoff * 2**attempt) * random.uniform(
            0.5, 1.0
        )

    def _follow_redirects(self, url: str) -> FetchResult:
        for _ in range(self.config.max_redirects + 1):
            result, location = self._request(url)
            if location is None:
                return result
            url = urljoin(url, location)
            if urlparse(url).scheme.lower() not in ("http", "https"):
                return FetchResult(reason=Reason.UNSUPPORTED_SCHEME, detail=f"redirect to {url}")
        return FetchResult(
            reason=Reason.TOO_MANY_REDIRECTS, detail=f"more than {self.config.max_redirects}"
        )

    def _request(self, url: str) -> tuple[FetchResult, str | None]:
        """One request; returns (result, redirect location or None). Raises _Retryable."""
        parsed = urlparse(url)
        host = parsed.hostname or ""
        address = self._resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        if isinstance(address, FetchResult):
            return address, None
        with self._host_slots[host]:
            return self._send(url, parsed, address)

    def _send(self, url, parsed, address: str) -> tuple[FetchResult, str | None]:
        u3 = self._urllib3
        cfg = self.config
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        pool_kwargs = (
            {"server_hostname": parsed.hostname, "assert_hostname": parsed.hostname}
            if parsed.scheme == "https"
            else {}
        )
        # connect to the checked address, never re-resolve: no DNS-rebinding window
        pool = self._pools.connection_from_host(
            address, port=port, scheme=parsed.scheme, pool_kwargs=pool_kwargs
        )
        host_header = parsed.netloc.rsplit("@", 1)[-1]
        path = parsed.path or "/"
        if parsed.query:
            path += "?" + parsed.query
        try:
            response = pool.urlopen(
                "GET",
                path,
                headers={"Host": host_header, "User-Agent": cfg.user_agent, "Accept": "image/*"},
                redirect=False,
                retries=False,
                preload_content=False,
                timeout=u3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
                assert_same_host=False,
            )
        except u3.exceptions.NewConnectionError as exc:  # subclasses ConnectTimeoutError
            raise _Retryable(Reason.CONNECTION_ERROR, str(exc), None) from exc
        except (u3.exceptions.ConnectTimeoutError, u3.exceptions.ReadTimeoutError) as exc:
            raise _Retryable(Reason.TIMEOUT, str(exc), None) from exc
        except u3.exceptions.HTTPError as exc:
            raise _Retryable(Reason.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}", None) from exc
        try:
            return self._read_response(response)
        finally:
            response.release_conn()

    def _read_response(self, response) -> tuple[FetchResult, str | None]:
        status = response.status
        if 300 <= status < 400 and response.headers.get("Location"):
            return FetchResult(http_status=status), response.headers["Location"]
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
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith(ACCEPTED_CONTENT_TYPES):
            return (
                FetchResult(
                    http_status=status, reason=Reason.BAD_CONTENT_TYPE, detail=content_type
                ),
                None,
            )
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.config.max_bytes:
            return FetchResult(
                http_status=status, reason=Reason.TOO_LARGE, detail=f"{length} bytes"
            ), None
        return self._read_body(response), None

    def _read_body(self, response) -> FetchResult:
        u3 = self._urllib3
        deadline = time.monotonic() + self.config.total_timeout
        chunks, size = [], 0
        try:
            # read1 returns whatever has arrived, so a trickling body meets the deadline check
            while chunk := response.read1(1 << 16):
                size += len(chunk)
                if size > self.config.max_bytes:
                    return FetchResult(
                        http_status=200,
                        reason=Reason.TOO_LARGE,
                        detail=f"over {self.config.max_bytes} bytes",
                    )
                if time.monotonic() > deadline:
                    return FetchResult(
                        http_status=200,
                        reason=Reason.TIMEOUT,
                        detail=f"body not complete after {self.config.total_timeout:.0f}s",
                    )
                chunks.append(chunk)
        except u3.exceptions.ReadTimeoutError as exc:
            raise _Retryable(Reason.TIMEOUT, f"read timeout after {size} bytes", 200) from exc
        except (u3.exceptions.ProtocolError, u3.exceptions.IncompleteRead) as exc:
            raise _Retryable(
                Reason.TRUNCATED_BODY, f"{type(exc).__name__} after {size} bytes", 200
            ) from exc
        return FetchResult(data=b"".join(chunks), http_status=200)

    def _resolve(self, host: str, port: int) -> str | FetchResult:
        """The address to connect to, or a rejection when the host is refused or unknown."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise _Retryable(
                Reason.CONNECTION_ERROR, f"cannot resolve {host!r}: {exc}", None
            ) from exc
        addresses = [info[4][0] for info in infos]
        if not self.config.allow_private_addresses:
            refused = [a for a in addresses if is_forbidden_address(a)]
            if refused:
                return FetchResult(
                    reason=Reason.FORBIDDEN_ADDRESS, detail=f"{host} resolves to {refused[0]}"
                )
        return addresses[0]


def is_forbidden_address(address: str) -> bool:
    """Private, loopback, link-local, multicast, reserved or unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


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
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
