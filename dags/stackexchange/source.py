"""The dump source: which archives hold a site's Posts.xml and Users.xml, and what they are.

A site is published either as one ``{site}.7z`` (every site but one) or as one archive per table
(``{site}-Posts.7z``, ``{site}-Users.7z``: stackoverflow.com). :func:`resolve` picks the layout
from the source's file list (archive.org publishes ``stackexchange_files.xml`` with each file's
size, md5 and sha1) or, without one, by probing; it returns each archive's size, version
(ETag, else Last-Modified and size) and published checksum. Every URL goes through the URL policy
(``url_policy``): http(s) to public addresses, ``file://`` under a configured root.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from xml.parsers import expat

import requests
import tenacity
import urllib3.exceptions

from stackexchange import url_policy
from stackexchange.settings import DownloadPolicy, checksums_url_override

log = logging.getLogger(__name__)

MEMBERS = ("Posts.xml", "Users.xml")
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_FILE_LIST_BYTES = 32 << 20

T = TypeVar("T")


class SourceError(RuntimeError):
    """The source could not deliver the archive; the message names the cause and the fix."""


class SourceNotFound(SourceError):
    pass


class TransientSourceError(SourceError):
    """A fault worth retrying (5xx, connection reset, short body)."""


TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,  # a body cut short, read raw (not through requests)
    urllib3.exceptions.ReadTimeoutError,
    TransientSourceError,
)


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a hashlib name: "sha1" or "md5"
    hexdigest: str


@dataclass(frozen=True)
class RemoteArchive:
    """One archive at the source. ``version`` identifies its content."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None
    checksum: Checksum | None = None

    @property
    def name(self) -> str:
        return file_name(self.url)

    @property
    def version(self) -> str:
        if self.etag:
            return f"etag:{self.etag}"
        return f"last-modified:{self.last_modified or 'unknown'};size:{self.size}"


@dataclass(frozen=True)
class Source:
    """Where a site's two files come from: ``archives[member]`` is the archive holding it."""

    site: str
    archives: dict[str, RemoteArchive]

    @property
    def layout(self) -> str:
        return "split" if len({a.url for a in self.archives.values()}) > 1 else "single"

    def unique_archives(self) -> list[tuple[RemoteArchive, list[str]]]:
        """Each archive once, with the members to take from it, in download order."""
        grouped: dict[str, tuple[RemoteArchive, list[str]]] = {}
        for member, archive in self.archives.items():
            grouped.setdefault(archive.url, (archive, []))[1].append(member)
        return list(grouped.values())


def file_name(url: str) -> str:
    return urllib.parse.unquote(url.rsplit("/", 1)[-1])


def layouts(source_base_url: str, site: str) -> list[dict[str, str]]:
    """The layouts a site may be published in, as member -> archive URL, single first."""
    base = source_base_url.rstrip("/")
    single = f"{base}/{site}.7z"
    return [
        dict.fromkeys(MEMBERS, single),
        {member: f"{base}/{site}-{member.removesuffix('.xml')}.7z" for member in MEMBERS},
    ]


def retrying(
    what: str,
    policy: DownloadPolicy,
    call: Callable[[], T],
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``call()``, retried with exponential backoff on transient faults; then a SourceError."""
    retryer = tenacity.Retrying(
        sleep=sleep,
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=tenacity.wait_exponential(
            multiplier=policy.backoff_seconds, max=policy.backoff_max_seconds
        ),
        retry=tenacity.retry_if_exception_type(TRANSIENT_ERRORS),
        before_sleep=lambda state: log.warning(
            "%s failed (%s); attempt %d of %d in %.1fs",
            what,
            state.outcome.exception(),
            state.attempt_number + 1,
            policy.attempts,
            state.upcoming_sleep,
        ),  # fmt: skip
        reraise=True,
    )
    try:
        return retryer(call)
    except TRANSIENT_ERRORS as exc:
        raise SourceError(
            f"{what} failed {policy.attempts} times, last with: {exc}. The source looks "
            "down: retry later, or point `source_base_url` at a mirror"
        ) from exc


def check_status(response: requests.Response, url: str) -> None:
    """Refuse an error status, and any body that is not sent as is (``identity``): we ask for
    nothing else, and a compressed body could expand without bound before any check."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise SourceError(
            f"{url} answered with Content-Encoding {encoding[:40]!a} although only 'identity' "
            "was accepted; refusing to decode it (a compressed body can expand without bound): "
            "use a mirror that serves the files as they are"
        )
    if response.status_code == 404:
        raise SourceNotFound(f"{url} does not exist (HTTP 404)")
    if response.status_code in TRANSIENT_STATUS:
        raise TransientSourceError(f"{url} answered HTTP {response.status_code}")
    if response.status_code >= 400:
        raise SourceError(f"{url} answered HTTP {response.status_code} {response.reason}")


def content_length(response: requests.Response, url: str) -> int | None:
    """The announced size: None when absent; an error when it is not a decimal number."""
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,20}", raw.strip()):
        raise SourceError(
            f"{url} announced a malformed Content-Length ({raw[:40]!a}); the size must be a "
            "decimal number: use a mirror that sends a valid one"
        )
    return int(raw.strip())


def timeout(policy: DownloadPolicy) -> tuple[float, float]:
    return policy.connect_timeout, policy.read_timeout


def _is_file(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme == "file"


def _head(url: str, policy: DownloadPolicy) -> RemoteArchive:
    """Size, ETag and Last-Modified of one archive (HEAD, every redirect hop checked)."""
    if _is_file(url):
        path = url_policy.local_file(url)
        if not path.is_file():
            raise SourceNotFound(f"{path} does not exist")
        stat = path.stat()
        modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        return RemoteArchive(url, stat.st_size, None, modified)

    def head() -> RemoteArchive:
        with url_policy.guarded_session() as session:
            response = session.head(url, allow_redirects=True, timeout=timeout(policy))
        check_status(response, url)
        return RemoteArchive(
            url,
            content_length(response, url),
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
        )

    return retrying(f"HEAD {url}", policy, head)


def file_list_url(source_base_url: str) -> str | None:
    """Where the source lists its files: archive.org's ``{item}_files.xml`` by default."""
    override = checksums_url_override()
    if override:
        return None if override.lower() == "none" else override
    item = urllib.parse.urlsplit(source_base_url).path.rstrip("/").rsplit("/", 1)[-1]
    return f"{source_base_url.rstrip('/')}/{item}_files.xml" if item else None


def _read_small(url: str, policy: DownloadPolicy) -> bytes | None:
    if _is_file(url):
        path = url_policy.local_file(url)
        return path.read_bytes()[: _MAX_FILE_LIST_BYTES + 1] if path.is_file() else None

    def get() -> bytes | None:
        with (
            url_policy.guarded_session() as session,
            session.get(url, stream=True, timeout=timeout(policy)) as response,
        ):
            if response.status_code in (403, 404, 410):
                return None
            check_status(response, url)
            return response.raw.read(_MAX_FILE_LIST_BYTES + 1, decode_content=False)

    return retrying(f"GET {url}", policy, get)


def parse_file_list(body: bytes) -> dict[str, Checksum | None]:
    """archive.org's ``<files><file name=…><sha1>…</sha1><md5>…</md5>…`` as name -> checksum
    (sha1, else md5, else None)."""
    files: dict[str, dict[str, str]] = {}
    state = {"file": "", "field": ""}

    def refuse_doctype(*_: object) -> None:
        raise SourceError("the file list declares a DOCTYPE; refusing to parse it")

    def start(name: str, attributes: dict[str, str]) -> None:
        if name == "file":
            state["file"] = attributes.get("name", "")
            files.setdefault(state["file"], {})
        elif state["file"] and name in ("sha1", "md5"):
            state["field"] = name
            files[state["file"]][name] = ""

    def end(name: str) -> None:
        state["field"] = ""
        if name == "file":
            state["file"] = ""

    def text(data: str) -> None:
        if state["field"]:
            files[state["file"]][state["field"]] += data.strip()

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.Parse(body, True)
    listed: dict[str, Checksum | None] = {}
    for name, fields in files.items():
        listed[name] = None
        for algorithm, pattern in (("sha1", r"[0-9a-f]{40}"), ("md5", r"[0-9a-f]{32}")):
            value = fields.get(algorithm, "").lower()
            if re.fullmatch(pattern, value):
                listed[name] = Checksum(algorithm, value)
                break
    return listed


def file_list(source_base_url: str, policy: DownloadPolicy) -> dict[str, Checksum | None] | None:
    """The source's file list, or None (logged) when it has none or it is unreadable."""
    url = file_list_url(source_base_url)
    if url is None:
        log.info("No file list configured (STACKEXCHANGE_CHECKSUMS_URL=none)")
        return None
    try:
        body = _read_small(url, policy)
        if body is not None and len(body) > _MAX_FILE_LIST_BYTES:
            raise SourceError(f"larger than {_MAX_FILE_LIST_BYTES} bytes")
        return parse_file_list(body) if body is not None else None
    except (SourceError, expat.ExpatError) as exc:
        log.warning("Cannot read the file list %s (%s); probing instead", url, exc)
        return None


@dataclass
class Dumps:
    """Where the dumps are (``source_base_url`` as given) and how to fetch them. The base URL is
    checked, and the file list read, on first use and then kept: one GET of the list however
    many sites are looked up."""

    source_base_url: str
    policy: DownloadPolicy

    @functools.cached_property
    def base_url(self) -> str:
        return url_policy.check_source_base_url(self.source_base_url)

    @functools.cached_property
    def files(self) -> dict[str, Checksum | None] | None:
        return file_list(self.base_url, self.policy)


def resolve(site: str, dumps: Dumps) -> Source:
    """The archives holding ``site``'s Posts.xml and Users.xml, with their checksums.

    The file list, when there is one, says which layout exists; otherwise each layout is
    probed with HEAD, the single archive first. SourceNotFound names every URL tried.
    """
    site = url_policy.check_site(site)
    source_base_url, policy = dumps.base_url, dumps.policy
    listed = dumps.files
    candidates = layouts(source_base_url, site)
    if listed:  # try the layout the list names first; a mirror may still hold the other
        candidates.sort(key=lambda layout: not all(file_name(u) in listed for u in layout.values()))
    tried: list[str] = []
    for layout in candidates:
        archives: dict[str, RemoteArchive] = {}
        try:
            for member, url in layout.items():
                if url not in {a.url for a in archives.values()}:
                    tried.append(url)
                    found = _head(url, policy)
                else:
                    found = next(a for a in archives.values() if a.url == url)
                archives[member] = found
        except SourceNotFound:
            continue
        checksums = listed or {}
        archives = {
            member: RemoteArchive(a.url, a.size, a.etag, a.last_modified, checksums.get(a.name))
            for member, a in archives.items()
        }
        for archive in {a.url: a for a in archives.values()}.values():
            _log_archive(archive, listed is not None)
        return Source(site, archives)
    raise SourceNotFound(
        f"no dump of {site!r} at {source_base_url}: tried {', '.join(tried)} (one archive per "
        "site, or per table as for stackoverflow.com). Check the `site` param (a name such as "
        "'ai.meta.stackexchange.com', listed at https://archive.org/download/stackexchange) "
        "and `source_base_url`"
    )


def _log_archive(archive: RemoteArchive, had_list: bool) -> None:
    size = human_bytes(archive.size) if archive.size is not None else "unknown size"
    log.info("Source %s: %s, version %s", archive.url, size, archive.version)
    if archive.checksum is not None:
        log.info("Published %s of %s: %s", archive.checksum.algorithm, archive.name,
                 archive.checksum.hexdigest)  # fmt: skip
    elif had_list:
        log.info("No published checksum for %s; verifying its size and the 7z CRCs", archive.name)
    if not (archive.etag or archive.last_modified):
        log.warning("%s sends neither ETag nor Last-Modified: change detection uses size only",
                    archive.url)  # fmt: skip


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError("unreachable")
