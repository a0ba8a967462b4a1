"""``download``: an archive read forward only from a real local HTTP server
(``tests.http_fixtures.DumpServer``) with injected faults, Range reads ahead, and ``file://``
archives read in place; nothing is ever written to disk."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from local.sample_dump import pack_7z, write_site
from stackexchange import archive, download, source, url_policy
from stackexchange.settings import DownloadPolicy, Limits
from tests.http_fixtures import DumpServer, Faults
from tests.test_archive import collectors

POLICY = DownloadPolicy(attempts=4, backoff_seconds=0.0, progress_seconds=0.0, chunk_bytes=4096)
SITE = "demo.stackexchange.com"
NAME = f"{SITE}.7z"
SIZE = 300_000


@pytest.fixture(autouse=True)
def local_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the producer reach the test server on 127.0.0.1; no checksum list to look up."""
    monkeypatch.setenv(url_policy.ALLOWED_HOSTS_ENV, "127.0.0.1,localhost")
    monkeypatch.setenv("STACKEXCHANGE_CHECKSUMS_URL", "none")
    monkeypatch.delenv(url_policy.FILE_ROOT_ENV, raising=False)


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """The served directory, holding ``NAME``: random bytes (the download ignores the format)."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    (directory / NAME).write_bytes(os.urandom(SIZE))
    return directory


def remote(server: DumpServer, checksum: source.Checksum | None = None) -> source.RemoteArchive:
    """The archive as ``source.resolve`` finds it (HEAD), with ``checksum`` as if published."""
    found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY)).archives["Posts.xml"]
    return dataclasses.replace(found, checksum=checksum)


def read_all(archive_bytes: download.ArchiveBytes) -> bytes:
    return b"".join(archive_bytes.chunks())


def ranges(server: DumpServer) -> list[str | None]:
    """The ``Range`` header of each GET of the archive, in order (None: the whole file)."""
    return [r.headers.get("Range") for r in server.gets(NAME)]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def download_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "download"]


def test_forward_read_equals_the_file_and_verifies_it(mirror: Path) -> None:
    data = (mirror / NAME).read_bytes()
    with DumpServer(mirror.parent) as server:
        checksum = source.Checksum("sha1", hashlib.sha1(data).hexdigest())
        with download.open_archive(remote(server, checksum), POLICY) as archive_bytes:
            assert isinstance(archive_bytes, download.RemoteArchiveBytes)
            assert archive_bytes.read_range(SIZE - 32, SIZE) == data[-32:]
            assert read_all(archive_bytes) == data
            assert archive_bytes.downloaded.done == SIZE
        assert ranges(server) == [f"bytes={SIZE - 32}-{SIZE - 1}", None]
        assert all(r.headers.get("Accept-Encoding") == "identity" for r in server.requests)
    assert download_threads() == []


def test_dropped_connection_resumes_with_range_and_if_range(
    mirror: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = (mirror / NAME).read_bytes()
    caplog.set_level(logging.INFO, logger="stackexchange.download")
    faults = Faults(drop_times=2, drop_after=100_000)
    with DumpServer(mirror.parent, faults) as server:
        found = remote(server, source.Checksum("md5", hashlib.md5(data).hexdigest()))
        with download.RemoteArchiveBytes(found, POLICY) as archive_bytes:
            assert read_all(archive_bytes) == data  # the hash carried across both resumes
        gets = server.gets(NAME)
    assert "Range" not in gets[0].headers
    # Each resume starts where the bytes received so far end (at most where the server cut).
    starts = [int(g.headers["Range"].removeprefix("bytes=").removesuffix("-")) for g in gets[1:]]
    assert len(starts) == 2
    assert 0 < starts[0] <= 100_000 < starts[1] <= starts[0] + 100_000
    assert [g.headers.get("If-Range") for g in gets[1:]] == [found.etag, found.etag]
    assert f"Resuming {found.url} at byte {starts[0]}" in caplog.text


def test_retries_are_counted_per_stall_not_per_archive(mirror: Path) -> None:
    """Ten drops, each after progress, with four attempts allowed: the download completes."""
    data = (mirror / NAME).read_bytes()
    with DumpServer(mirror.parent, Faults(drop_times=10, drop_after=20_000)) as server:
        with download.RemoteArchiveBytes(remote(server), POLICY) as archive_bytes:
            assert read_all(archive_bytes) == data
        assert len(server.gets(NAME)) == 11


def test_truncation_that_persists_fails_after_every_attempt(mirror: Path) -> None:
    with DumpServer(mirror.parent, Faults(drop_times=100, drop_after=0)) as server:
        with (
            download.RemoteArchiveBytes(remote(server), POLICY) as archive_bytes,
            pytest.raises(source.SourceError, match=f"failed {POLICY.attempts} times in a row"),
        ):
            read_all(archive_bytes)
        assert len(server.gets(NAME)) == POLICY.attempts


def test_a_server_ignoring_range_is_refused_with_the_reason(mirror: Path) -> None:
    with (
        DumpServer(mirror.parent, Faults(ignore_range=True)) as server,
        download.RemoteArchiveBytes(remote(server), POLICY) as archive_bytes,
        pytest.raises(source.SourceError, match=r"does not honour Range requests \(it answered"),
    ):
        archive_bytes.read_range(0, 32)


def test_short_range_read_is_retried_then_an_error(mirror: Path) -> None:
    """A server may answer a Range with fewer bytes than asked: never taken as the bytes."""
    with (
        DumpServer(mirror.parent) as server,
        download.RemoteArchiveBytes(remote(server), POLICY) as archive_bytes,
        pytest.raises(source.SourceError, match=f"failed {POLICY.attempts} times") as err,
    ):
        archive_bytes.read_range(SIZE - 10, SIZE + 10)  # the server sends the 10 it has
    assert "short range read" in str(err.value.__cause__)


def test_more_bytes_than_announced_is_an_error(mirror: Path) -> None:
    with DumpServer(mirror.parent) as server:
        found = remote(server)
        with (mirror / NAME).open("ab") as grown:  # the file changes after the HEAD
            grown.write(os.urandom(5000))
        with (
            download.RemoteArchiveBytes(found, POLICY) as archive_bytes,
            pytest.raises(source.SourceError, match=f"sent more than the {SIZE} bytes it announ"),
        ):
            read_all(archive_bytes)
        assert ranges(server) == [None]  # not retried: the source is inconsistent


def test_server_ignoring_range_on_resume_is_an_error(mirror: Path) -> None:
    faults = Faults(drop_times=1, drop_after=50_000, ignore_range=True)
    with DumpServer(mirror.parent, faults) as server:
        with (
            download.RemoteArchiveBytes(remote(server), POLICY) as archive_bytes,
            pytest.raises(source.SourceError, match="changed while it was downloading"),
        ):
            read_all(archive_bytes)
        assert len(ranges(server)) == 2 and ranges(server)[1] is not None


def test_checksum_mismatch_fails_after_the_last_byte(mirror: Path) -> None:
    data = (mirror / NAME).read_bytes()
    received = bytearray()
    with DumpServer(mirror.parent) as server:
        found = remote(server, source.Checksum("sha1", "0" * 40))
        with (
            download.RemoteArchiveBytes(found, POLICY) as archive_bytes,
            pytest.raises(source.SourceError, match=r"sha1 \w+ does not match the publ"),
        ):
            for chunk in archive_bytes.chunks():
                received += chunk
    assert received == data  # the bytes arrive; only the end judges them


def test_close_is_prompt_while_throttled(mirror: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With the real chunk size (1 MiB), one chunk at this rate takes seconds."""
    policy = dataclasses.replace(POLICY, chunk_bytes=DownloadPolicy().chunk_bytes)
    (mirror / NAME).write_bytes(os.urandom(2 << 20))
    with DumpServer(mirror.parent, Faults(bytes_per_second=200_000)) as server:
        archive_bytes = download.RemoteArchiveBytes(remote(server), policy)
        chunks = archive_bytes.chunks()
        reader = threading.Thread(target=lambda: next(chunks, None), daemon=True)
        reader.start()
        wait_until(lambda: server.served > 0, "the download to start")
        caplog.set_level(logging.WARNING, logger="stackexchange")
        caplog.clear()
        started = time.monotonic()
        archive_bytes.close()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"close() took {elapsed:.1f}s"
    assert download_threads() == []
    # A closed download is not a failed one: no warning, no retry.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_unannounced_size_is_refused() -> None:
    found = source.RemoteArchive("http://127.0.0.1:9/a.7z", None, '"e"', None)
    with pytest.raises(source.SourceError, match="does not announce its size"):
        download.RemoteArchiveBytes(found, POLICY)


def test_a_malformed_content_length_is_a_clear_error(mirror: Path) -> None:
    """'²' is a digit to str.isdigit() but not to int()."""
    with (
        DumpServer(mirror.parent, Faults(head_content_length="\u00b2")) as server,
        pytest.raises(source.SourceError, match=r"malformed Content-Length \('\\xb2'\)"),
    ):
        remote(server)


def test_a_compressed_body_is_refused_before_it_is_read(
    mirror: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 50 KB gzip body that expands to 50 MiB: neither the download nor the file list
    decodes it."""
    (mirror / NAME).write_bytes(gzip.compress(b"\0" * (50 << 20)))
    (mirror / "mirror_files.xml").write_bytes((mirror / NAME).read_bytes())
    with DumpServer(mirror.parent) as server:
        found = remote(server)
        server.faults.content_encoding = "gzip, gzip"
        tracemalloc.start()
        try:
            with (
                download.RemoteArchiveBytes(found, POLICY) as archive_bytes,
                pytest.raises(source.SourceError, match="Content-Encoding 'gzip, gzip' although"),
            ):
                archive_bytes.read_range(0, 32)
            with (
                download.RemoteArchiveBytes(found, POLICY) as archive_bytes,
                pytest.raises(source.SourceError, match="Content-Encoding 'gzip, gzip' although"),
            ):
                read_all(archive_bytes)
            listed = f"{server.url}/mirror/mirror_files.xml"
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("STACKEXCHANGE_CHECKSUMS_URL", listed)
                caplog.set_level(logging.WARNING, logger="stackexchange.source")
                assert source.file_list(f"{server.url}/mirror", POLICY) is None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20
    assert "Content-Encoding 'gzip, gzip' although only 'identity'" in caplog.text


def test_a_dump_streams_from_http_headers_first_then_once_forward(
    tmp_path: Path, mirror: Path
) -> None:
    """The real read pattern: the 7z headers by Range, then one forward stream that the
    published checksum covers whole, header bytes included."""
    files = write_site(tmp_path / "site", posts=300, users=40)
    packed = pack_7z(files, mirror / NAME)
    size = packed.stat().st_size
    checksum = source.Checksum("sha1", hashlib.sha1(packed.read_bytes()).hexdigest())
    with DumpServer(mirror.parent, Faults(bytes_per_second=200_000)) as server:
        with download.RemoteArchiveBytes(remote(server, checksum), POLICY) as archive_bytes:
            opened, members = archive.open_members(
                archive_bytes, NAME, ["Posts.xml", "Users.xml"], Limits()
            )
            assert archive_bytes.downloaded.done == 0  # the headers came ahead of the stream
            writers, _ = collectors(members)
            archive.stream(archive_bytes, opened, writers)
        gets = ranges(server)
    assert gets[0] == "bytes=0-31"
    assert gets[1] is not None and gets[1].endswith(f"-{size - 1}")  # the end header
    assert len(gets) <= 4 and None not in gets[:-1]  # (and the packed header it encodes)
    assert gets[-1] is None  # then the whole archive, once
    for name, writer in writers.items():
        assert writer.data == (tmp_path / "site" / name).read_bytes()
        assert members[name].size == len(writer.data)


def test_local_archive_is_read_in_place_and_verified(
    mirror: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read where it lies: no copy in the temporary directory, while read or after."""
    monkeypatch.setenv(url_policy.FILE_ROOT_ENV, str(mirror))
    data = (mirror / NAME).read_bytes()
    found = source.resolve(SITE, source.Dumps(mirror.as_uri(), POLICY)).archives["Posts.xml"]
    good = dataclasses.replace(
        found, checksum=source.Checksum("md5", hashlib.md5(data).hexdigest())
    )
    with download.open_archive(good, POLICY) as archive_bytes:
        assert isinstance(archive_bytes, download.LocalArchiveBytes)
        assert archive_bytes.read_range(10, 20) == data[10:20]
        assert read_all(archive_bytes) == data
        assert archive_bytes.downloaded.done == SIZE
        assert list(scratch.iterdir()) == []  # nothing copied
    bad = dataclasses.replace(found, checksum=source.Checksum("md5", "0" * 32))
    with (
        download.open_archive(bad, POLICY) as archive_bytes,
        pytest.raises(source.SourceError, match="does not match the published"),
    ):
        read_all(archive_bytes)
    assert list(scratch.iterdir()) == []
