"""The dump source: probe an archive, look up its published checksum, download it robustly.

Works with ``http(s)://`` (redirects followed: archive.org answers with a 302 to a storage node)
and ``file://`` (mirrors, the local stack). Downloads stream to disk in chunks, retry transient
faults with exponential backoff and resume with an HTTP ``Range`` request.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar
from xml.parsers import expat

import requests

from stackexchange.settings import DownloadPolicy, checksums_url_override

log = logging.getLogger(__name__)

SITE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
USER_AGENT = "airflow-stackexchange-ingest"
_MAX_CHECKSUM_LIST_BYTES = 32 << 20

T = TypeVar("T")


class SourceError(RuntimeError):
    """The source could not deliver the archive; the message names the cause and the fix."""


class SourceNotFound(SourceError):
    pass


class InvalidSourceParam(ValueError):
    """The ``site`` or ``source_base_url`` param cannot name a dump."""


class TransientSourceError(SourceError):
    """A fault worth retrying (5xx, connection reset, short body)."""


@dataclass(frozen=True)
class SourceInfo:
    """What the source says about the archive. ``version`` identifies its content."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None

    @property
    def version(self) -> str:
        if self.etag:
            return f"etag:{self.etag}"
        return f"last-modified:{self.last_modified or 'unknown'};size:{self.size}"


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a hashlib name: "sha1" or "md5"
    hexdigest: str


def archive_url(source_base_url: str, site: str) -> str:
    """``{source_base_url}/{site}.7z`` after checking both, with errors that say what to pass."""
    if not SITE_PATTERN.match(site):
        raise InvalidSourceParam(
            f"site {site!r} is not a Stack Exchange site name; pass one like "
            "'ai.meta.stackexchange.com' (see https://archive.org/download/stackexchange)"
        )
    scheme = urllib.parse.urlsplit(source_base_url).scheme
    if scheme not in ("http", "https", "file"):
        raise InvalidSourceParam(
            f"source_base_url {source_base_url!r} must start with https://, http:// or file://"
        )
    return f"{source_base_url.rstrip('/')}/{site}.7z"


def _local_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))


def _is_file(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme == "file"


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def _check_status(response: requests.Response, url: str) -> None:
    if response.status_code == 404:
        raise SourceNotFound(
            f"{url} does not exist (HTTP 404): check the `site` param (a name such as "
            "'ai.meta.stackexchange.com', listed at https://archive.org/download/stackexchange) "
            "and `source_base_url`"
        )
    if response.status_code in TRANSIENT_STATUS:
        raise TransientSourceError(f"{url} answered HTTP {response.status_code}")
    if response.status_code >= 400:
        raise SourceError(f"{url} answered HTTP {response.status_code} {response.reason}")


def _retrying(what: str, policy: DownloadPolicy, call: Callable[[], T]) -> T:
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except (*TRANSIENT_ERRORS, TransientSourceError) as exc:
            if attempt == policy.attempts:
                raise SourceError(
                    f"{what} failed {policy.attempts} times, last with: {exc}. The source looks "
                    "down: retry later, or point `source_base_url` at a mirror"
                ) from exc
            delay = policy.backoff(attempt)
            log.warning("%s failed (%s); attempt %d of %d in %.1fs", what, exc, attempt + 1,
                        policy.attempts, delay)  # fmt: skip
            time.sleep(delay)
    raise AssertionError("unreachable")


def _info_from_headers(url: str, headers: requests.structures.CaseInsensitiveDict) -> SourceInfo:
    length = headers.get("Content-Length")
    return SourceInfo(
        url=url,
        size=int(length) if length and length.isdigit() else None,
        etag=headers.get("ETag"),
        last_modified=headers.get("Last-Modified"),
    )


def _file_info(url: str) -> SourceInfo:
    path = _local_path(url)
    if not path.is_file():
        raise SourceNotFound(
            f"{path} does not exist: check the `site` param and `source_base_url` ({url})"
        )
    stat = path.stat()
    modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
    return SourceInfo(url=url, size=stat.st_size, etag=None, last_modified=modified)


def probe(url: str, policy: DownloadPolicy) -> SourceInfo:
    """Size, ETag and Last-Modified of the archive (HEAD, redirects followed)."""
    if _is_file(url):
        return _file_info(url)

    def head() -> SourceInfo:
        with _session() as session:
            response = session.head(
                url, allow_redirects=True, timeout=(policy.connect_timeout, policy.read_timeout)
            )
        _check_status(response, url)
        return _info_from_headers(url, response.headers)

    info = _retrying(f"HEAD {url}", policy, head)
    if not (info.etag or info.last_modified):
        log.warning("%s sends neither ETag nor Last-Modified: change detection uses size only", url)
    return info


def checksums_list_url(source_base_url: str) -> str | None:
    """Where the source publishes checksums: archive.org's ``{item}_files.xml`` by default."""
    override = checksums_url_override()
    if override:
        return None if override.lower() == "none" else override
    item = urllib.parse.urlsplit(source_base_url).path.rstrip("/").rsplit("/", 1)[-1]
    return f"{source_base_url.rstrip('/')}/{item}_files.xml" if item else None


def _read_small(url: str, policy: DownloadPolicy) -> bytes | None:
    if _is_file(url):
        path = _local_path(url)
        return path.read_bytes() if path.is_file() else None

    def get() -> bytes | None:
        with _session() as session:
            timeout = (policy.connect_timeout, policy.read_timeout)
            with session.get(url, stream=True, timeout=timeout) as response:
                if response.status_code in (403, 404, 410):
                    return None
                _check_status(response, url)
                body = response.raw.read(_MAX_CHECKSUM_LIST_BYTES + 1, decode_content=True)
        if len(body) > _MAX_CHECKSUM_LIST_BYTES:
            raise SourceError(f"{url} is larger than {_MAX_CHECKSUM_LIST_BYTES} bytes")
        return body

    return _retrying(f"GET {url}", policy, get)


def _parse_files_xml(body: bytes, filename: str) -> Checksum | None:
    """Find ``<file name=filename>``'s sha1 (else md5) in an archive.org files list."""
    found: dict[str, str] = {}
    state = {"in_file": False, "field": ""}

    def refuse_doctype(*_: object) -> None:
        raise SourceError("the checksum list declares a DOCTYPE; refusing to parse it")

    def start(name: str, attributes: dict[str, str]) -> None:
        if name == "file":
            state["in_file"] = attributes.get("name") == filename
        elif state["in_file"] and name in ("sha1", "md5"):
            state["field"] = name
            found[name] = ""

    def end(name: str) -> None:
        state["field"] = ""
        if name == "file":
            state["in_file"] = False

    def text(data: str) -> None:
        if state["field"]:
            found[state["field"]] += data.strip()

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.Parse(body, True)
    for algorithm in ("sha1", "md5"):
        if re.fullmatch(r"[0-9a-f]{32,40}", found.get(algorithm, "").lower()):
            return Checksum(algorithm, found[algorithm].lower())
    return None


def published_checksum(source_base_url: str, url: str, policy: DownloadPolicy) -> Checksum | None:
    """The checksum the source publishes for the archive at ``url``, or None (logged)."""
    list_url = checksums_list_url(source_base_url)
    if list_url is None:
        log.info("No checksum list configured (STACKEXCHANGE_CHECKSUMS_URL=none)")
        return None
    filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
    try:
        body = _read_small(list_url, policy)
        checksum = _parse_files_xml(body, filename) if body is not None else None
    except (SourceError, expat.ExpatError) as exc:
        log.warning("Cannot read the checksum list %s (%s); carrying on without it", list_url, exc)
        return None
    if checksum is None:
        log.info("No published checksum for %s in %s; verifying size only", filename, list_url)
    else:
        log.info("Published %s of %s: %s", checksum.algorithm, filename, checksum.hexdigest)
    return checksum


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Logs bytes, % and MB/s at most every ``interval`` seconds, and once at the end."""

    def __init__(self, what: str, total: int | None, interval: float) -> None:
        self.what, self.total, self.interval = what, total, interval
        self.started = self.last = time.monotonic()
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        share = (
            f" of {human_bytes(self.total)} ({100 * self.done / self.total:.1f}%)"
            if (self.total)
            else ""
        )
        log.info("%s: %s%s at %.1f MB/s", self.what, human_bytes(self.done), share,
                 self.done / elapsed / 1e6)  # fmt: skip


def _copy_file(
    url: str, dest: Path, policy: DownloadPolicy, hasher: hashlib._Hash | None
) -> SourceInfo:
    info = _file_info(url)
    progress = Progress(f"copying {url}", info.size, policy.progress_seconds)
    with _local_path(url).open("rb") as src, dest.open("wb") as out:
        while chunk := src.read(policy.chunk_bytes):
            out.write(chunk)
            if hasher is not None:
                hasher.update(chunk)
            progress.advance(len(chunk))
    progress.report()
    return info


class _Download:
    """One archive download: its file, bytes so far and running hash survive retries."""

    def __init__(
        self, url: str, out: IO[bytes], policy: DownloadPolicy, hasher: hashlib._Hash | None
    ):
        self.url, self.out, self.policy, self.hasher = url, out, policy, hasher
        self.written = 0
        self.info: SourceInfo | None = None
        self.progress: Progress | None = None

    def _restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.written = 0
        if self.hasher is not None:
            self.hasher = hashlib.new(self.hasher.name)

    def attempt(self, session: requests.Session) -> None:
        headers = {}
        if self.written and self.info is not None:
            headers["Range"] = f"bytes={self.written}-"
            validator = self.info.etag or self.info.last_modified
            if validator:  # the server sends the whole (new) file if the archive changed
                headers["If-Range"] = validator
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        with session.get(self.url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code == 416 and self.info and self.written == self.info.size:
                return
            _check_status(response, self.url)
            if response.status_code == 206:
                start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                if start is None or int(start.group(1)) != self.written:
                    raise SourceError(f"{self.url} sent an unexpected range for resume: "
                                      f"{response.headers.get('Content-Range')!r}")  # fmt: skip
                log.info("Resuming %s at byte %d", self.url, self.written)
            else:
                if self.written:
                    log.warning(
                        "%s sent the whole file instead of a range; starting over", self.url
                    )
                self._restart()
                self.info = _info_from_headers(self.url, response.headers)
                self.progress = Progress(f"downloading {self.url}", self.info.size,
                                         self.policy.progress_seconds)  # fmt: skip
            assert self.progress is not None
            for chunk in response.iter_content(self.policy.chunk_bytes):
                self.out.write(chunk)
                if self.hasher is not None:
                    self.hasher.update(chunk)
                self.written += len(chunk)
                self.progress.advance(len(chunk))
        size = self.info.size if self.info else None
        if size is not None and self.written != size:
            raise TransientSourceError(
                f"the connection ended after {self.written} of {size} bytes (truncated download)"
            )


def download(
    url: str, dest: Path, policy: DownloadPolicy, checksum: Checksum | None = None
) -> SourceInfo:
    """Stream ``url`` to ``dest``; verify its size (and ``checksum``). Returns what was served."""
    hasher = hashlib.new(checksum.algorithm) if checksum else None
    if _is_file(url):
        info = _copy_file(url, dest, policy, hasher)
    else:
        with dest.open("wb") as out, _session() as session:
            state = _Download(url, out, policy, hasher)
            _retrying(f"download of {url}", policy, lambda: state.attempt(session))
            if state.progress is not None:
                state.progress.report()
            assert state.info is not None
            info, hasher = state.info, state.hasher
    size = dest.stat().st_size
    if info.size is not None and size != info.size:
        raise SourceError(f"{url}: got {size} bytes but the source announced {info.size}")
    if checksum is not None and hasher is not None:
        if hasher.hexdigest() != checksum.hexdigest:
            raise SourceError(
                f"{url}: {checksum.algorithm} {hasher.hexdigest()} does not match the published "
                f"{checksum.hexdigest}; the download or the mirror is corrupt, run again"
            )
        log.info("%s matches the published %s", url, checksum.algorithm)
    return info
