"""An HTTP server on 127.0.0.1 with the routes a crawler meets in the wild.

/img/NAME          the image registered under NAME
/redirect/NAME     302 to /img/NAME
/flaky/NAME        500 on the first request, then the image
/ratelimit/NAME    429 with Retry-After: 1 on the first request, then the image
/optout/NAME       the image with X-Robots-Tag: noai
/slow/NAME         the image, trickled slower than any sane total timeout
/truncated/NAME    Content-Length says more than is sent
/html/NAME         an HTML page served as image/jpeg
/text/NAME         an HTML page served as text/html
/loop              redirects to itself
/status/CODE       that status code

Hostile routes (a tarpit or an attacker's server):
/slowloris/NAME    status line and headers one byte per ``drip`` seconds, then the image
/bomb              a gzip bomb: Content-Encoding gzip, 64 MiB of zeros in about 64 kB
/endless           a chunked body that never ends
/bigheader         a 200 whose one header is 100 kB long
/continue          "100 Continue" interim responses, quickly and forever
/to/LOCATION       302 to LOCATION (percent-decoded): file://, credentials, private hosts
/echo/ANYTHING     a page served as image/jpeg that quotes the request line (and its query)

``times[path]`` holds the monotonic time of every request to ``path``.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

HTML = b"<!doctype html><html><body>not an image</body></html>"


class CrawlServer:
    def __init__(self, images: dict[str, bytes] | None = None, host: str = "127.0.0.1") -> None:
        self.images = dict(images or {})
        self.hits: Counter[str] = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.lag = 0.5  # seconds before /lag/ answers
        self.drip = 1.0  # seconds between the bytes of /slowloris/ headers
        self.in_flight = 0  # requests being answered now, and the most seen at once
        self.max_in_flight = 0
        self._lock = threading.Lock()
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.base = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CrawlServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, route: str, name: str = "") -> str:
        return f"{self.base}/{route}/{name}" if name else f"{self.base}/{route}"

    def _count(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            self.times[path].append(time.monotonic())
            return self.hits[path]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", **headers):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(headers.pop("length", len(body))))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self) -> None:
                hit = server._count(self.path)
                parts = self.path.split("?", 1)[0].strip("/").split("/", 1)
                route, name = parts[0], parts[1] if len(parts) > 1 else ""
                image = server.images.get(name)
                if route == "loop":
                    return self._send(302, Location="/loop")
                if route == "status":
                    return self._send(int(name), b"", "text/plain")
                if route in HOSTILE:
                    return HOSTILE[route](self, name, server)
                if route in ("html", "text"):
                    return self._send(200, HTML, "image/jpeg" if route == "html" else "text/html")
                if image is None:
                    return self._send(404, b"", "text/plain")
                if route == "img":
                    return self._send(200, image)
                if route == "lag":
                    time.sleep(server.lag)
                    return self._send(200, image)
                if route == "redirect":
                    return self._send(302, Location=f"/img/{name}")
                if route == "flaky":
                    return (
                        self._send(500, b"", "text/plain") if hit == 1 else self._send(200, image)
                    )
                if route == "ratelimit":
                    if hit == 1:
                        return self._send(429, b"", "text/plain", Retry_After="1")
                    return self._send(200, image)
                if route == "optout":
                    return self._send(200, image, X_Robots_Tag="noai, noimageai")
                if route == "truncated":
                    self._send(200, image[: len(image) // 2], length=len(image))
                    self.close_connection = True
                    return None
                if route == "slow":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    try:
                        for start in range(0, len(image), 256):
                            self.wfile.write(image[start : start + 256])
                            self.wfile.flush()
                            time.sleep(0.2)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the crawler gave up, as it should
                    return None
                return self._send(404, b"", "text/plain")

        return Handler


def _drip(handler, data: bytes, pause: float) -> None:
    try:
        for i in range(len(data)):
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
            time.sleep(pause)
    except OSError:
        pass  # the crawler hung up, as it should
    handler.close_connection = True


def _slowloris(handler, name: str, server: CrawlServer) -> None:
    image = server.images.get(name, b"")
    head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(image)}\r\n\r\n"
    _drip(handler, head.encode(), server.drip)
    with contextlib.suppress(OSError):
        handler.wfile.write(image)


@functools.cache
def _gzip_bomb() -> bytes:
    return gzip.compress(bytes(64 << 20), compresslevel=9)


def _bomb(handler, name: str, server: CrawlServer) -> None:
    handler._send(200, _gzip_bomb(), Content_Encoding="gzip")


def _endless(handler, name: str, server: CrawlServer) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"%x\r\n%s\r\n" % (1 << 16, bytes(1 << 16))
    try:
        while True:
            handler.wfile.write(chunk)
    except OSError:
        handler.close_connection = True


def _bigheader(handler, name: str, server: CrawlServer) -> None:
    handler._send(200, b"x", X_Padding="a" * 100_000)


def _continue(handler, name: str, server: CrawlServer) -> None:
    try:
        while True:
            handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            handler.wfile.flush()
            time.sleep(0.01)
    except OSError:
        handler.close_connection = True


def _to(handler, name: str, server: CrawlServer) -> None:
    # raw UTF-8 bytes on the wire, as real servers send a non-ASCII Location
    location = unquote(name).encode().decode("latin-1")
    handler._send(302, b"", "text/plain", Location=location)


def _echo(handler, name: str, server: CrawlServer) -> None:
    handler._send(200, f"<html>you asked for {handler.requestline}</html>".encode())


HOSTILE = {
    "slowloris": _slowloris,
    "bomb": _bomb,
    "endless": _endless,
    "bigheader": _bigheader,
    "continue": _continue,
    "to": _to,
    "echo": _echo,
}


class SilentServer:
    """A TCP port on 127.0.0.1 that accepts connections and never sends a byte: a tarpit for
    plain HTTP (no response) and for HTTPS (a TLS handshake that never completes)."""

    def __init__(self) -> None:
        import socket

        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            self._held.append(conn)  # held open, never answered

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import socket

        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        for conn in self._held:
            conn.close()
