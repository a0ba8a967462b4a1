"""Local HTTP servers for tests and benchmarks (bound to 127.0.0.1, real sockets).

``DumpServer`` serves a directory like archive.org does: HEAD/GET with Content-Length, ETag,
Last-Modified, ``Range``/``If-Range``, and faults on demand (5xx n times, a connection dropped
mid-body, a 302 redirect, Range ignored, a Content-Encoding, a malformed Content-Length).
``S3FaultProxy`` sits in front of an S3 server and denies chosen requests, to make one upload
fail for real.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from local.file_server import RangeNotSatisfiable, byte_range

CHUNK = 1 << 20
POLL_SECONDS = 0.05  # how soon shutdown() returns (the default, 0.5 s, adds up over the suite)


@dataclass
class Faults:
    """What the server does wrong. Counters go down as faults are served."""

    fail_times: int = 0  # answer this many requests (HEAD or GET) with ``fail_status``
    fail_status: int = 503
    drop_times: int = 0  # on this many GETs longer than ``drop_after`` bytes, close the
    # connection after ``drop_after`` bytes
    drop_after: int = 0
    ignore_range: bool = False  # answer Range requests with the whole file (200)
    redirect: bool = False  # answer /NAME with 302 to /storage/NAME, as archive.org does
    bytes_per_second: float = 0  # throttle every body to this rate (0: as fast as possible)
    content_encoding: str = ""  # send this Content-Encoding (the body stays as it is)
    head_content_length: str = ""  # answer HEAD with this Content-Length instead of the size


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


class _LocalServer:
    """An HTTP server on 127.0.0.1 and a free port, serving on a thread inside ``with``."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@dataclass
class DumpServer(_LocalServer):
    root: Path
    faults: Faults = field(default_factory=Faults)
    requests: list[Request] = field(default_factory=list)
    served: int = 0  # body bytes sent, all requests together

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._serve(self._handler())

    def count(self, sent: int) -> None:
        with self._lock:
            self.served += sent

    def take(self, counter: str) -> bool:
        """Consume one fault of kind ``counter`` if any is left."""
        with self._lock:
            left = getattr(self.faults, counter)
            if left > 0:
                setattr(self.faults, counter, left - 1)
            return left > 0

    def gets(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + name)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _plain(self, status: int, text: str = "", headers: dict | None = None) -> None:
                data = text.encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _serve(self, *, body: bool) -> None:
                server.requests.append(Request(self.command, self.path, dict(self.headers)))
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                if server.faults.redirect and not path.startswith("/storage/"):
                    self._plain(302, headers={"Location": f"/storage{path}"})
                    return
                path = path.removeprefix("/storage")
                if server.take("fail_times"):
                    self._plain(server.faults.fail_status, "try later")
                    return
                file = (server.root / path.lstrip("/")).resolve()
                if not file.is_file() or server.root.resolve() not in file.parents:
                    self._plain(404, "not found")
                    return
                stat = file.stat()
                size = stat.st_size
                etag = '"' + hashlib.md5(f"{stat.st_mtime_ns}-{size}".encode()).hexdigest() + '"'
                start, end, status = 0, size, 200
                if not server.faults.ignore_range and self.headers.get("If-Range") in (None, etag):
                    try:
                        wanted = byte_range(self.headers.get("Range"), size)
                    except RangeNotSatisfiable:
                        self._plain(416, headers={"Content-Range": f"bytes */{size}"})
                        return
                    if wanted is not None:
                        (start, end), status = wanted, 206
                self.send_response(status)
                length = str(end - start)
                if not body and server.faults.head_content_length:
                    length = server.faults.head_content_length
                self.send_header("Content-Length", length)
                if server.faults.content_encoding:
                    self.send_header("Content-Encoding", server.faults.content_encoding)
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if not body:
                    return
                limit = end - start
                if limit > server.faults.drop_after and server.take("drop_times"):
                    limit = min(limit, server.faults.drop_after)
                    self.close_connection = True  # short body, then the connection drops
                rate = server.faults.bytes_per_second
                step = min(CHUNK, max(int(rate / 20), 1)) if rate else CHUNK
                began = time.monotonic()
                sent = 0
                with file.open("rb") as src:
                    src.seek(start)
                    while limit > 0 and (chunk := src.read(min(step, limit))):
                        if rate:  # hold each chunk until the rate allows it
                            time.sleep(max(began + sent / rate - time.monotonic(), 0))
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        server.count(len(chunk))
                        limit -= len(chunk)

        return Handler


class S3FaultProxy(_LocalServer):
    """Forwards every request to ``upstream`` except those ``deny(method, path)`` picks,
    which get S3's 403 AccessDenied. Requests ``lose_reply(method, path)`` picks reach S3, but
    their reply is lost: the client gets a 500 instead (and retries)."""

    def __init__(
        self,
        upstream: str,
        deny: Callable[[str, str], bool] = lambda method, path: False,
        lose_reply: Callable[[str, str], bool] = lambda method, path: False,
    ) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.deny, self.lose_reply = deny, lose_reply
        self.denied: list[str] = []
        self.lost: list[str] = []
        self._serve(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.deny(self.command, self.path):
                    proxy.denied.append(f"{self.command} {self.path}")
                    error = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                        b"<Message>Access Denied</Message></Error>"
                    )
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                if proxy.lose_reply(self.command, self.path):
                    proxy.lost.append(f"{self.command} {self.path}")
                    upstream.close()
                    error = b"<Error><Code>InternalError</Code><Message>lost</Message></Error>"
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                self.send_response(response.status)
                skip = {"connection", "transfer-encoding"}
                if self.command != "HEAD":
                    skip.add("content-length")
                    self.send_header("Content-Length", str(len(data)))
                for name, value in response.getheaders():
                    if name.lower() not in skip:
                        self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        return Handler
