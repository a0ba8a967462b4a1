"""An archive read forward only, without a local copy: a few Range reads, then one stream.

``archive.open_members`` first reads the 7z signature header and the end header with
:meth:`RemoteArchiveBytes.read_range` (HTTP ``Range``). :meth:`~RemoteArchiveBytes.chunks` then
streams the whole archive from byte 0, in order, from a download thread through a small bounded
queue (backpressure: the connection waits while the decoder is behind). Nothing is written to
disk, whatever the archive's size.

- A dropped connection resumes with ``Range`` + ``If-Range`` (a strong ETag, else Last-Modified)
  from the byte where it stopped. Retries are counted per stall: the budget
  (``STACKEXCHANGE_DOWNLOAD_ATTEMPTS``) resets whenever a connection made progress, so a long
  download over a flaky link fails only when the source stops delivering.
- A source that does not honour ``Range`` is refused with an error saying so: without a local
  copy the end header cannot be read first.
- Bodies are asked for and accepted only as ``identity``: a compressed body (a decompression
  bomb) is refused before it is read.
- The checksum the source publishes covers every byte, read in order (the header bytes read
  ahead are read again by the stream, and ``archive.stream`` checks they did not change);
  ``chunks()`` raises at its end if it does not match, and if the source sends more bytes than
  it announced.

``file://`` archives are read in place (:class:`LocalArchiveBytes`), the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import requests

from stackexchange import url_policy
from stackexchange.progress import Counter
from stackexchange.settings import DownloadPolicy
from stackexchange.source import (
    TRANSIENT_ERRORS,
    Checksum,
    RemoteArchive,
    SourceError,
    TransientSourceError,
    check_status,
    retrying,
    timeout,
)

log = logging.getLogger(__name__)

# Chunks between the download thread and the decoder: with 1 MiB chunks, 8 MiB in memory.
QUEUED_CHUNKS = 8
_END = object()


class _Cancelled(Exception):
    pass


class _ArchiveBytes:
    """The forward stream's machinery, shared by HTTP and ``file://`` archives: a producer thread
    (:meth:`_produce`) hashes each chunk and queues it; :meth:`chunks` hands them out in order.
    Use as a context manager: closing stops the producer at once."""

    def __init__(self, url: str, size: int, checksum: Checksum | None) -> None:
        self.url, self.size, self.checksum = url, size, checksum
        self.downloaded = Counter(size)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._cancel = threading.Event()
        self._hasher = hashlib.new(checksum.algorithm) if checksum else None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_range(self, start: int, end: int) -> bytes:
        raise NotImplementedError

    def _produce(self) -> None:
        raise NotImplementedError

    def _put(self, item: object) -> None:
        while not self._cancel.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.2)
                return
        raise _Cancelled

    def _received(self, chunk: bytes) -> None:
        """One chunk in order: counted, hashed, queued (blocks while the queue is full)."""
        if self.downloaded.done + len(chunk) > self.size:
            raise SourceError(
                f"{self.url} sent more than the {self.size} bytes it announced; stopped: the "
                "source is inconsistent, run again later"
            )
        if self._hasher is not None:
            self._hasher.update(chunk)
        self.downloaded.add(len(chunk))
        self._put(chunk)

    def _run(self) -> None:
        try:
            self._produce()
            self._verify()
            self._put(_END)
        except _Cancelled:
            return
        except BaseException as exc:  # reported to the reader of chunks()
            with contextlib.suppress(_Cancelled):
                self._put(exc)

    def _verify(self) -> None:
        if self.checksum is None or self._hasher is None:
            return
        if self._hasher.hexdigest() != self.checksum.hexdigest:
            raise SourceError(
                f"{self.url}: {self.checksum.algorithm} {self._hasher.hexdigest()} does not "
                f"match the published {self.checksum.hexdigest}; the download or the mirror is "
                "corrupt, run again"
            )
        log.info("%s matches the published %s", self.url, self.checksum.algorithm)

    def chunks(self) -> Iterator[bytes]:
        """Every byte of the archive from the first, in order; once. Raises where the download
        failed, and at the end if the archive does not match its published checksum."""
        if self._thread is not None:
            raise RuntimeError(f"{self.url} is already being read")
        self._thread = threading.Thread(target=self._run, name="download", daemon=True)
        self._thread.start()
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def _interrupt(self) -> None:
        """Wake the producer if it is blocked on I/O."""

    def close(self) -> None:
        self._cancel.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join()
        while not self._queue.empty():  # the chunks go with the archive, not later
            self._queue.get_nowait()


class RemoteArchiveBytes(_ArchiveBytes):
    """An http(s) archive: Range reads ahead, then the forward stream with resume."""

    def __init__(self, archive: RemoteArchive, policy: DownloadPolicy) -> None:
        if archive.size is None:
            raise SourceError(
                f"{archive.url} does not announce its size (no Content-Length on HEAD); a "
                "streamed ingest needs it: use a mirror that sends it"
            )
        super().__init__(archive.url, archive.size, archive.checksum)
        self.archive, self.policy = archive, policy
        strong = archive.etag if not (archive.etag or "").startswith("W/") else None
        self._validator = strong or archive.last_modified  # If-Range ignores weak ETags
        self._session = url_policy.guarded_session()
        self._response: requests.Response | None = None

    def _get(self, headers: dict[str, str]) -> requests.Response:
        response = self._session.get(
            self.url, headers=headers, stream=True, timeout=timeout(self.policy)
        )
        try:
            check_status(response, self.url)
        except BaseException:
            response.close()
            raise
        return response

    def _range_start(self, response: requests.Response) -> int | None:
        match = re.fullmatch(r"bytes ([0-9]+)-[0-9]+/(?:[0-9]+|\*)",
                             response.headers.get("Content-Range", "").strip())  # fmt: skip
        return int(match.group(1)) if match else None

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes [start, end) with their own Range request (the headers, read ahead)."""

        def get() -> bytes:
            headers = {"Range": f"bytes={start}-{end - 1}"}
            if self._validator:
                headers["If-Range"] = self._validator
            with self._get(headers) as response:
                if response.status_code != 206:
                    raise SourceError(
                        f"{self.url} does not honour Range requests (it answered HTTP "
                        f"{response.status_code} to one), or it changed since it was found; "
                        "the ingest reads the archive's end header first and keeps no local "
                        "copy, so it needs a source that serves byte ranges: use a mirror "
                        "that does (archive.org does)"
                    )
                if self._range_start(response) != start:
                    raise SourceError(f"{self.url} answered a Range request with another range: "
                                      f"{response.headers.get('Content-Range')!a}")  # fmt: skip
                if self.archive.etag and response.headers.get("ETag") not in (
                    None,
                    self.archive.etag,
                ):
                    raise SourceError(f"{self.url} changed while it was read: run again")
                data = response.raw.read(end - start + 1, decode_content=False)
            if len(data) != end - start:  # short (a dropped connection) or longer than asked
                raise TransientSourceError(
                    f"short range read of {self.url}: {len(data)} of {end - start} bytes"
                )
            return data

        return retrying(f"range {start}-{end - 1} of {self.url}", self.policy, get)

    def _produce(self) -> None:
        """The forward stream, resumed after each drop; retries counted per stall."""
        stalls = 0
        while self.downloaded.done < self.size:
            before = self.downloaded.done
            try:
                self._receive()
            except TRANSIENT_ERRORS as exc:
                if self._cancel.is_set():  # close() cut the connection: nothing to retry
                    raise _Cancelled from None
                stalls = 1 if self.downloaded.done > before else stalls + 1
                if stalls >= self.policy.attempts:
                    raise SourceError(
                        f"download of {self.url} failed {stalls} times in a row without "
                        f"receiving a byte (at byte {self.downloaded.done} of {self.size}), last "
                        f"with: {exc}. The source looks down: retry later, or point "
                        "`source_base_url` at a mirror"
                    ) from exc
                delay = min(
                    self.policy.backoff_seconds * 2 ** (stalls - 1),
                    self.policy.backoff_max_seconds,
                )
                log.warning("download of %s stopped at byte %d (%s); resuming in %.1fs "
                            "(attempt %d of %d without progress)", self.url, self.downloaded.done,
                            exc, delay, stalls + 1, self.policy.attempts)  # fmt: skip
                if self._cancel.wait(delay):
                    raise _Cancelled from None

    def _receive(self) -> None:
        if self._cancel.is_set():
            raise _Cancelled
        offset = self.downloaded.done
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self._validator:  # the server sends the whole (new) file if the archive changed
                headers["If-Range"] = self._validator
        with self._get(headers) as response:
            self._response = response
            if self._cancel.is_set():  # close() came before it could see this response
                raise _Cancelled
            if response.status_code == 206:
                if self._range_start(response) != offset:
                    raise SourceError(f"{self.url} sent an unexpected range for resume: "
                                      f"{response.headers.get('Content-Range')!a}")  # fmt: skip
                log.info("Resuming %s at byte %d", self.url, offset)
            elif offset:
                raise SourceError(
                    f"{self.url} changed while it was downloading (it answered a resume "
                    "with the whole file): run again to ingest the new version"
                )
            for chunk in response.raw.stream(self.policy.chunk_bytes, decode_content=False):
                if self._cancel.is_set():
                    raise _Cancelled
                self._received(chunk)
        if self.downloaded.done != self.size:
            raise TransientSourceError(
                f"the connection ended after {self.downloaded.done} of {self.size} bytes "
                "(truncated download)"
            )

    def _interrupt(self) -> None:
        response = self._response
        if response is not None:  # wakes a read blocked on the network at once
            with contextlib.suppress(AttributeError, OSError):  # already released
                response.raw.connection.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        super().close()
        if self._response is not None:
            self._response.close()
        self._session.close()


class LocalArchiveBytes(_ArchiveBytes):
    """A ``file://`` archive, read in place (never copied), hashed as it is read."""

    def __init__(self, path: Path, checksum: Checksum | None, chunk_bytes: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        super().__init__(path.as_uri(), os.fstat(self._fd).st_size, checksum)
        self.chunk_bytes = chunk_bytes

    def read_range(self, start: int, end: int) -> bytes:
        data = os.pread(self._fd, end - start, start)
        if len(data) != end - start:
            raise SourceError(f"{self.url} is shorter than it was: it changed while read")
        return data

    def _produce(self) -> None:
        while self.downloaded.done < self.size:
            if self._cancel.is_set():
                raise _Cancelled
            chunk = os.pread(self._fd, self.chunk_bytes, self.downloaded.done)
            if not chunk:
                raise SourceError(f"{self.url} is shorter than it was: it changed while read")
            self._received(chunk)

    def close(self) -> None:
        super().close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


ArchiveBytes = RemoteArchiveBytes | LocalArchiveBytes


def open_archive(archive: RemoteArchive, policy: DownloadPolicy) -> ArchiveBytes:
    if archive.url.startswith("file:"):
        path = url_policy.local_file(archive.url)
        return LocalArchiveBytes(path, archive.checksum, policy.chunk_bytes)
    return RemoteArchiveBytes(archive, policy)
