"""An archive as a seekable file while it is still downloading.

py7zr reads a 7z archive through a file object: the 32-byte start header, then the end header
(at the end of the file), then the packed stream from the front, sequentially. So a download
thread fetches the archive from byte 0 into a local file while :class:`StreamedArchive` serves
py7zr's reads: a read the download has not reached yet waits for it, and a read far ahead of it
(the end header) is fetched at once with its own ``Range`` request. Decompression therefore
starts after the first megabyte, not after the last.

The local copy is what makes a dropped connection cheap: the download resumes with ``Range``
where it stopped. Disk used: the archive's size. The download verifies the size the server
announced (it stops with an error past it) and the checksum the source publishes; ``finish()``
reports either failure, so nothing is published from an archive that did not verify.
``file://`` archives are read in place (:class:`LocalArchive`), hashed alongside.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import socket
import threading
from pathlib import Path

import requests

from stackexchange import url_policy
from stackexchange.progress import Counter
from stackexchange.settings import DownloadPolicy
from stackexchange.source import (
    TRANSIENT_ERRORS,
    RemoteArchive,
    SourceError,
    TransientSourceError,
    check_status,
    retrying,
    timeout,
)

log = logging.getLogger(__name__)

# A read this far beyond the download is fetched on its own instead of waited for.
LOOKAHEAD_BYTES = 16 << 20


class _Cancelled(Exception):
    pass


class StreamedArchive(io.RawIOBase):
    """A read-only, seekable view of ``archive`` backed by ``path``, filled by a download thread.

    Use as a context manager; ``finish()`` waits for the download and raises if it failed or
    did not verify. Closing stops the download and deletes the local file.
    """

    def __init__(self, archive: RemoteArchive, path: Path, policy: DownloadPolicy) -> None:
        super().__init__()
        if archive.size is None:
            raise SourceError(
                f"{archive.url} does not announce its size (no Content-Length on HEAD); a "
                "streamed ingest needs it: use a mirror that sends it"
            )
        self.archive, self.path, self.policy = archive, path, policy
        self.size: int = archive.size
        self.downloaded = Counter(self.size)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._pos = 0
        self._fetched: list[tuple[int, int]] = []  # ranges fetched ahead of the download
        self._ready = threading.Condition()
        self._error: BaseException | None = None
        self._done = False
        self._cancel = threading.Event()
        self._response: requests.Response | None = None
        self._session = url_policy.guarded_session()
        self._thread = threading.Thread(target=self._download, name="download", daemon=True)
        self._thread.start()

    # --- the download thread -------------------------------------------------------------

    def _download(self) -> None:
        hasher = hashlib.new(self.archive.checksum.algorithm) if self.archive.checksum else None
        try:
            state = {"hasher": hasher}
            retrying(
                f"download of {self.archive.url}",
                self.policy,
                lambda: self._attempt(state),
                sleep=self._cancel.wait,  # a closed archive stops waiting at once
            )
            self._verify(state["hasher"])
        except _Cancelled:
            return
        except BaseException as exc:  # reported to the reader and by finish()
            with self._ready:
                self._error = exc
                self._ready.notify_all()
            return
        with self._ready:
            self._done = True
            self._ready.notify_all()

    def _attempt(self, state: dict) -> None:
        try:
            self._receive(state)
        except TRANSIENT_ERRORS:
            if self._cancel.is_set():  # close() cut the connection: nothing to retry or log
                raise _Cancelled from None
            raise

    def _receive(self, state: dict) -> None:
        if self._cancel.is_set():
            raise _Cancelled
        written = self.downloaded.done
        headers = {}
        if written:
            headers["Range"] = f"bytes={written}-"
            strong = self.archive.etag if not (self.archive.etag or "").startswith("W/") else None
            validator = strong or self.archive.last_modified  # If-Range ignores weak ETags
            if validator:  # the server sends the whole (new) file if the archive changed
                headers["If-Range"] = validator
        with self._session.get(
            self.archive.url, headers=headers, stream=True, timeout=timeout(self.policy)
        ) as response:
            self._response = response
            if self._cancel.is_set():  # close() came before it could see this response
                raise _Cancelled
            check_status(response, self.archive.url)
            if response.status_code == 206:
                start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                if start is None or int(start.group(1)) != written:
                    raise SourceError(f"{self.archive.url} sent an unexpected range for resume: "
                                      f"{response.headers.get('Content-Range')!r}")  # fmt: skip
                log.info("Resuming %s at byte %d", self.archive.url, written)
            elif written:
                raise SourceError(
                    f"{self.archive.url} changed while it was downloading (it answered a resume "
                    "with the whole file): run again to ingest the new version"
                )
            for chunk in response.iter_content(self.policy.chunk_bytes):
                if self._cancel.is_set():
                    raise _Cancelled
                offset = self.downloaded.done
                if offset + len(chunk) > self.size:
                    raise SourceError(
                        f"{self.archive.url} sent more than the {self.size} bytes it announced; "
                        "stopped: the source is inconsistent, run again later"
                    )
                os.pwrite(self._fd, chunk, offset)
                if state["hasher"] is not None:
                    state["hasher"].update(chunk)
                with self._ready:
                    self.downloaded.done += len(chunk)
                    self._ready.notify_all()
        if self.downloaded.done != self.size:
            raise TransientSourceError(
                f"the connection ended after {self.downloaded.done} of {self.size} bytes "
                "(truncated download)"
            )

    def _verify(self, hasher: hashlib._Hash | None) -> None:
        checksum = self.archive.checksum
        if checksum is None or hasher is None:
            return
        if hasher.hexdigest() != checksum.hexdigest:
            raise SourceError(
                f"{self.archive.url}: {checksum.algorithm} {hasher.hexdigest()} does not match "
                f"the published {checksum.hexdigest}; the download or the mirror is corrupt, "
                "run again"
            )
        log.info("%s matches the published %s", self.archive.name, checksum.algorithm)

    # --- the reader side -----------------------------------------------------------------

    def _fetch_ahead(self, start: int, end: int) -> None:
        """Fetch [start, end) with its own Range request (the end header, far ahead)."""
        validator = self.archive.etag

        def get() -> bytes:
            headers = {"Range": f"bytes={start}-{end - 1}"}
            with self._session.get(
                self.archive.url, headers=headers, stream=True, timeout=timeout(self.policy)
            ) as response:
                check_status(response, self.archive.url)
                if response.status_code != 206:
                    raise SourceError(
                        f"{self.archive.url} does not serve byte ranges (HTTP "
                        f"{response.status_code}); a streamed ingest needs Range support"
                    )
                if validator and response.headers.get("ETag") not in (None, validator):
                    raise SourceError(f"{self.archive.url} changed while it was read: run again")
                data = response.raw.read(end - start + 1, decode_content=False)
            if len(data) != end - start:
                raise TransientSourceError(f"short range read: {len(data)} of {end - start} bytes")
            return data

        data = retrying(f"range {start}-{end - 1} of {self.archive.url}", self.policy, get)
        os.pwrite(self._fd, data, start)
        self._fetched.append((start, end))

    def _wait_for(self, end: int) -> None:
        with self._ready:
            while self.downloaded.done < end:
                if self._error is not None:
                    raise self._error
                self._ready.wait(1.0)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        start = self._pos
        end = min(start + len(buffer), self.size)
        if end <= start:
            return 0
        covered = any(a <= start and end <= b for a, b in self._fetched)
        if not covered and end > self.downloaded.done:
            if start >= self.downloaded.done + LOOKAHEAD_BYTES:
                self._fetch_ahead(start, min(max(end, start + (64 << 10)), self.size))
            else:
                self._wait_for(end)
        data = os.pread(self._fd, end - start, start)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def finish(self) -> None:
        """Wait until the whole archive arrived and verified; raise if it did not."""
        self._wait_for(self.size)
        self._thread.join()
        with self._ready:
            if self._error is not None:
                raise self._error

    def close(self) -> None:
        if not self.closed:
            self._cancel.set()
            if self._response is not None:  # wakes a read blocked on the network at once
                with contextlib.suppress(AttributeError, OSError):  # already released
                    self._response.raw.connection.sock.shutdown(socket.SHUT_RDWR)
                self._response.close()
            self._thread.join()
            self._session.close()
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
        super().close()


class LocalArchive(io.FileIO):
    """A ``file://`` archive read in place; ``finish()`` verifies its published checksum."""

    def __init__(self, archive: RemoteArchive) -> None:
        super().__init__(url_policy.local_file(archive.url), "rb")
        self.archive = archive
        self.size = os.fstat(self.fileno()).st_size
        self.downloaded = Counter(self.size)
        self.downloaded.done = self.size

    def finish(self) -> None:
        checksum = self.archive.checksum
        if checksum is None:
            return
        hasher = hashlib.new(checksum.algorithm)
        with open(self.name, "rb") as src:
            while chunk := src.read(1 << 20):
                hasher.update(chunk)
        if hasher.hexdigest() != checksum.hexdigest:
            raise SourceError(
                f"{self.archive.url}: {checksum.algorithm} {hasher.hexdigest()} does not match "
                f"the published {checksum.hexdigest}; the file is corrupt"
            )


def open_archive(
    archive: RemoteArchive, workdir: Path, policy: DownloadPolicy
) -> StreamedArchive | LocalArchive:
    if archive.url.startswith("file:"):
        return LocalArchive(archive)
    return StreamedArchive(archive, workdir / archive.name, policy)
