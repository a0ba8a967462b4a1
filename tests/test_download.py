"""``StreamedArchive``: an archive read as a file while a thread downloads it from a real local
HTTP server (``tests.http_fixtures.DumpServer``) with injected faults; ``LocalArchive`` for
``file://``; and py7zr reading a generated dump through it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import threading
import time
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


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def remote(server: DumpServer, checksum: source.Checksum | None = None) -> source.RemoteArchive:
    """The archive as ``source.resolve`` finds it (HEAD), with ``checksum`` as if published."""
    found = source.resolve(SITE, f"{server.url}/mirror", POLICY).archives["Posts.xml"]
    return dataclasses.replace(found, checksum=checksum)


def read_all(fileobj: io.RawIOBase, piece: int = 7001) -> bytes:
    """Read sequentially in pieces that do not line up with the download's chunks."""
    parts = []
    while data := fileobj.read(piece):
        parts.append(data)
    return b"".join(parts)


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


def test_sequential_read_equals_the_file(mirror: Path, workdir: Path) -> None:
    data = (mirror / NAME).read_bytes()
    with DumpServer(mirror.parent) as server:
        checksum = source.Checksum("sha1", hashlib.sha1(data).hexdigest())
        with download.open_archive(remote(server, checksum), workdir, POLICY) as fileobj:
            assert isinstance(fileobj, download.StreamedArchive)
            assert (workdir / NAME).exists()  # the local copy a resume continues
            assert read_all(fileobj) == data
            fileobj.finish()
            assert fileobj.downloaded.done == SIZE
        assert ranges(server) == [None]
    assert list(workdir.iterdir()) == []


def test_dropped_connection_resumes_with_range_and_if_range(
    mirror: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = (mirror / NAME).read_bytes()
    caplog.set_level(logging.INFO, logger="stackexchange.download")
    faults = Faults(drop_times=2, drop_after=100_000)
    with DumpServer(mirror.parent, faults) as server:
        found = remote(server, source.Checksum("md5", hashlib.md5(data).hexdigest()))
        with download.StreamedArchive(found, workdir / NAME, POLICY) as fileobj:
            assert read_all(fileobj) == data
            fileobj.finish()  # the hash carried across both resumes
        gets = server.gets(NAME)
    assert "Range" not in gets[0].headers
    # Each resume starts where the bytes received so far end (at most where the server cut).
    starts = [int(g.headers["Range"].removeprefix("bytes=").removesuffix("-")) for g in gets[1:]]
    assert len(starts) == 2
    assert 0 < starts[0] <= 100_000 < starts[1] <= starts[0] + 100_000
    assert [g.headers.get("If-Range") for g in gets[1:]] == [found.etag, found.etag]
    assert f"Resuming {found.url} at byte {starts[0]}" in caplog.text


def test_far_ahead_read_is_fetched_with_its_own_range(
    mirror: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """py7zr reads the end header right after the start: it must not wait for the download."""
    monkeypatch.setattr(download, "LOOKAHEAD_BYTES", 64 << 10)
    data = (mirror / NAME).read_bytes()
    with (
        DumpServer(mirror.parent, Faults(bytes_per_second=50_000)) as server,  # 6 s for all
        download.StreamedArchive(remote(server), workdir / NAME, POLICY) as fileobj,
    ):
        assert fileobj.read(32) == data[:32]  # waits for the download's first chunk
        fileobj.seek(-32, os.SEEK_END)
        assert fileobj.read(32) == data[-32:]
        assert fileobj.downloaded.done < SIZE - (64 << 10)  # the download is far behind
        assert ranges(server) == [None, f"bytes={SIZE - 32}-{SIZE - 1}"]
        fileobj.seek(SIZE - 16)
        assert fileobj.read(16) == data[-16:]  # already fetched: no new request
        assert len(ranges(server)) == 2


def test_far_ahead_read_from_a_server_without_ranges_is_an_error(
    mirror: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "LOOKAHEAD_BYTES", 64 << 10)
    faults = Faults(ignore_range=True, bytes_per_second=50_000)
    with (
        DumpServer(mirror.parent, faults) as server,
        download.StreamedArchive(remote(server), workdir / NAME, POLICY) as fileobj,
    ):
        fileobj.seek(-32, os.SEEK_END)
        with pytest.raises(source.SourceError, match=r"does not serve byte ranges \(HTTP 200\)"):
            fileobj.read(32)


def test_more_bytes_than_announced_is_an_error(mirror: Path, workdir: Path) -> None:
    with DumpServer(mirror.parent) as server:
        found = remote(server)
        with (mirror / NAME).open("ab") as grown:  # the file changes after the HEAD
            grown.write(os.urandom(5000))
        with (
            download.StreamedArchive(found, workdir / NAME, POLICY) as fileobj,
            pytest.raises(source.SourceError, match=f"sent more than the {SIZE} bytes it announ"),
        ):
            fileobj.finish()
        assert ranges(server) == [None]  # not retried: the source is inconsistent


def test_server_ignoring_range_on_resume_is_an_error(mirror: Path, workdir: Path) -> None:
    faults = Faults(drop_times=1, drop_after=50_000, ignore_range=True)
    with DumpServer(mirror.parent, faults) as server:
        found = remote(server)
        with (
            download.StreamedArchive(found, workdir / NAME, POLICY) as fileobj,
            pytest.raises(source.SourceError, match="changed while it was downloading"),
        ):
            fileobj.finish()
        assert len(ranges(server)) == 2 and ranges(server)[1] is not None


def test_truncation_that_persists_fails_after_every_attempt(mirror: Path, workdir: Path) -> None:
    with DumpServer(mirror.parent, Faults(drop_times=100, drop_after=0)) as server:
        found = remote(server)
        with (
            download.StreamedArchive(found, workdir / NAME, POLICY) as fileobj,
            pytest.raises(source.SourceError, match=f"failed {POLICY.attempts} times") as err,
        ):
            fileobj.read(10)
        assert len(server.gets(NAME)) == POLICY.attempts
    assert isinstance(err.value.__cause__, source.TRANSIENT_ERRORS)


def test_checksum_mismatch_fails_at_finish(mirror: Path, workdir: Path) -> None:
    data = (mirror / NAME).read_bytes()
    with DumpServer(mirror.parent) as server:
        found = remote(server, source.Checksum("sha1", "0" * 40))
        with download.StreamedArchive(found, workdir / NAME, POLICY) as fileobj:
            assert read_all(fileobj) == data  # the bytes arrive; only finish() judges them
            with pytest.raises(source.SourceError, match=r"sha1 \w+ does not match the publ"):
                fileobj.finish()


def test_close_is_prompt_and_removes_the_local_file_while_throttled(
    mirror: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the real chunk size (1 MiB), one chunk at this rate takes seconds."""
    policy = dataclasses.replace(POLICY, chunk_bytes=DownloadPolicy().chunk_bytes)
    (mirror / NAME).write_bytes(os.urandom(2 << 20))
    with DumpServer(mirror.parent, Faults(bytes_per_second=200_000)) as server:
        fileobj = download.StreamedArchive(remote(server), workdir / NAME, policy)
        wait_until(lambda: server.served > 0, "the download to start")
        caplog.set_level(logging.WARNING, logger="stackexchange")
        caplog.clear()
        started = time.monotonic()
        fileobj.close()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"close() took {elapsed:.1f}s"
    assert not (workdir / NAME).exists()
    assert download_threads() == []
    # A closed download is not a failed one: no warning, no retry.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_unannounced_size_is_refused(workdir: Path) -> None:
    found = source.RemoteArchive("http://127.0.0.1:9/a.7z", None, '"e"', None)
    with pytest.raises(source.SourceError, match="does not announce its size"):
        download.StreamedArchive(found, workdir / "a.7z", POLICY)
    assert list(workdir.iterdir()) == []


def test_py7zr_extracts_a_dump_through_the_streamed_archive(
    tmp_path: Path, mirror: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real read pattern: start header, end header fetched ahead, packed stream in order."""
    monkeypatch.setattr(download, "LOOKAHEAD_BYTES", 8 << 10)
    files = write_site(tmp_path / "site", posts=300, users=40)
    packed = pack_7z(files, mirror / NAME)
    size = packed.stat().st_size
    with DumpServer(mirror.parent, Faults(bytes_per_second=20_000)) as server:
        with download.StreamedArchive(remote(server), workdir / NAME, POLICY) as fileobj:
            seven_zip, members = archive.open_members(
                fileobj, NAME, ["Posts.xml", "Users.xml"], Limits()
            )
            assert fileobj.downloaded.done < size  # the header came ahead of the download
            writers, _ = collectors(members)
            with seven_zip:
                archive.stream(seven_zip, NAME, writers)
            fileobj.finish()
        # One request for the whole file, one closed range for the header at its end.
        assert ranges(server)[0] is None
        assert [r for r in ranges(server)[1:] if r and r.endswith(f"-{size - 1}")] != []
    for name, writer in writers.items():
        assert writer.data == (tmp_path / "site" / name).read_bytes()
        assert members[name].size == len(writer.data)


def test_local_archive_is_read_in_place_and_verified(
    mirror: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(url_policy.FILE_ROOT_ENV, str(mirror))
    data = (mirror / NAME).read_bytes()
    found = source.resolve(SITE, mirror.as_uri(), POLICY).archives["Posts.xml"]
    good = dataclasses.replace(
        found, checksum=source.Checksum("md5", hashlib.md5(data).hexdigest())
    )
    with download.open_archive(good, workdir, POLICY) as fileobj:
        assert isinstance(fileobj, download.LocalArchive)
        assert (fileobj.size, fileobj.downloaded.done) == (SIZE, SIZE)
        assert read_all(fileobj) == data
        fileobj.finish()
    assert list(workdir.iterdir()) == []  # nothing copied
    bad = dataclasses.replace(found, checksum=source.Checksum("md5", "0" * 32))
    with (
        download.open_archive(bad, workdir, POLICY) as fileobj,
        pytest.raises(source.SourceError, match="does not match the published"),
    ):
        fileobj.finish()
