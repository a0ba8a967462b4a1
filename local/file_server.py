"""A static file server for the local stack's sample dumps that honours HTTP Range requests, as
archive.org does (the producer reads a 7z archive's headers by Range, then streams it once and
resumes a dropped download by Range): ``python -m local.file_server PORT --directory DIR``.

The standard library's ``http.server`` ignores Range and answers every GET with the whole file.
One range per request (:func:`byte_range`), a strong ETag from the file's size and mtime, and
``If-Range`` are enough for the producer; anything else gets the whole file.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)  # the range unit is case-insensitive


class RangeNotSatisfiable(ValueError):
    """A well-formed range that selects no byte of the file: answer 416."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes [start, end) a ``Range`` header asks of a ``size``-byte file, as RFC 9110
    (14.1.2) reads one byte range: ``bytes=a-b`` (b clipped to the end), ``bytes=a-`` and
    ``bytes=-n`` (the last n bytes, or all if fewer). None for no header or one to ignore (not
    a single byte range, or ``a > b``): the whole file, 200. Raises RangeNotSatisfiable if it
    selects nothing (``a`` at or past the end, ``bytes=-0``, any range of an empty file).
    """
    match = RANGE.fullmatch((header or "").strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first and last and int(last) < int(first):
        return None  # invalid, so ignored
    if first:
        start, end = int(first), min(int(last) + 1, size) if last else size
    else:
        start, end = max(size - int(last), 0), size
        if int(last) == 0:
            start = end  # a zero-length suffix selects nothing
    if start >= end:
        raise RangeNotSatisfiable(f"{header} of {size} bytes")
    return start, end


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single byte ranges and an ETag."""

    def send_head(self):  # type: ignore[no-untyped-def]  # the base class's signature
        self._remaining = None
        path = self.translate_path(self.path)
        if os.path.isdir(path) or not os.path.isfile(path):
            return super().send_head()
        stat = os.stat(path)
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        wanted = None
        if self.headers.get("If-Range", etag) == etag:
            try:
                wanted = byte_range(self.headers.get("Range"), stat.st_size)
            except RangeNotSatisfiable:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{stat.st_size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
        if wanted is None:
            return self._send(path, HTTPStatus.OK, 0, stat.st_size, stat, etag)
        start, end = wanted
        return self._send(path, HTTPStatus.PARTIAL_CONTENT, start, end, stat, etag)

    def _send(self, path, status, start, end, stat, etag):  # type: ignore[no-untyped-def]
        handle = open(path, "rb")  # noqa: SIM115  # closed by copyfile's caller (the base class)
        handle.seek(start)
        self.send_response(status)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{stat.st_size}")
        self.end_headers()
        self._remaining = end - start
        return handle

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            shutil.copyfileobj(source, outputfile)
            return
        while remaining > 0:
            chunk = source.read(min(1 << 20, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--directory", default=os.getcwd())
    args = parser.parse_args()
    handler = functools.partial(RangeRequestHandler, directory=args.directory)
    with ThreadingHTTPServer((args.bind, args.port), handler) as server:
        print(f"Serving {args.directory} on http://{args.bind}:{args.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
