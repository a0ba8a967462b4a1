"""Probe, checksum lookup and download against a real local HTTP server with injected faults."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from stackexchange import source
from stackexchange.settings import DownloadPolicy
from tests.http_fixtures import DumpServer, Faults

POLICY = DownloadPolicy(attempts=4, backoff_seconds=0.0, progress_seconds=0.0, chunk_bytes=4096)
NAME = "demo.stackexchange.com.7z"


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A 'dump' of 300 KB of varied bytes (the download does not care what is inside)."""
    root = tmp_path / "mirror"
    root.mkdir()
    path = root / NAME
    path.write_bytes(os.urandom(300_000))
    return path


def files_xml(entries: dict[str, str]) -> str:
    files = "".join(
        f'<file name="{name}" source="original"><size>1</size><sha1>{sha1}</sha1></file>'
        for name, sha1 in entries.items()
    )
    return f'<?xml version="1.0" encoding="UTF-8"?><files>{files}</files>'


def test_archive_url_checks_site_and_scheme() -> None:
    assert source.archive_url("https://x.org/dl/", "ai.meta.stackexchange.com") == (
        "https://x.org/dl/ai.meta.stackexchange.com.7z"
    )
    with pytest.raises(ValueError, match="not a Stack Exchange site name"):
        source.archive_url("https://x.org", "../etc/passwd")
    with pytest.raises(ValueError, match="must start with https://"):
        source.archive_url("ftp://x.org", "ai.stackexchange.com")


def test_probe_follows_redirect_and_reads_version(payload: Path) -> None:
    with DumpServer(payload.parent.parent, Faults(redirect=True)) as server:
        info = source.probe(f"{server.url}/mirror/{NAME}", POLICY)
        assert [r.path for r in server.requests] == [f"/mirror/{NAME}", f"/storage/mirror/{NAME}"]
    assert info.size == 300_000
    assert info.etag and info.etag.startswith('"')
    assert info.version == f"etag:{info.etag}"
    assert info.last_modified and info.last_modified.endswith("GMT")


def test_probe_unknown_site_names_the_param(payload: Path) -> None:
    with DumpServer(payload.parent.parent) as server, pytest.raises(source.SourceNotFound) as err:
        source.probe(f"{server.url}/mirror/nosuch.stackexchange.com.7z", POLICY)
    assert "404" in str(err.value) and "`site` param" in str(err.value)


def test_probe_retries_5xx_then_succeeds(payload: Path) -> None:
    with DumpServer(payload.parent.parent, Faults(fail_times=2)) as server:
        info = source.probe(f"{server.url}/mirror/{NAME}", POLICY)
        assert len(server.requests) == 3
    assert info.size == 300_000


def test_persistent_5xx_gives_up_with_advice(payload: Path, tmp_path: Path) -> None:
    with DumpServer(payload.parent.parent, Faults(fail_times=100)) as server:
        with pytest.raises(source.SourceError, match="failed 4 times.*HTTP 503.*mirror"):
            source.download(f"{server.url}/mirror/{NAME}", tmp_path / "a.7z", POLICY)
        assert len(server.requests) == 4


def test_download_resumes_with_range_after_a_dropped_connection(
    payload: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "a.7z"
    caplog.set_level(logging.INFO, logger="stackexchange.source")
    with DumpServer(payload.parent.parent, Faults(drop_times=2, drop_after=100_000)) as server:
        info = source.download(f"{server.url}/mirror/{NAME}", dest, POLICY)
        gets = server.gets(NAME)
    assert dest.read_bytes() == payload.read_bytes()
    assert info.size == 300_000
    assert "Range" not in gets[0].headers
    # Each resume starts where the bytes received so far end (at most where the server cut).
    starts = [int(g.headers["Range"].removeprefix("bytes=").rstrip("-")) for g in gets[1:]]
    assert len(starts) == 2
    assert 0 < starts[0] <= 100_000 < starts[1] <= starts[0] + 100_000
    assert all(g.headers.get("If-Range") == info.etag for g in gets[1:])
    assert "Resuming" in caplog.text and "MB/s" in caplog.text and "%" in caplog.text


def test_download_starts_over_when_the_server_ignores_range(payload: Path, tmp_path: Path) -> None:
    dest = tmp_path / "a.7z"
    faults = Faults(drop_times=1, drop_after=50_000, ignore_range=True)
    with DumpServer(payload.parent.parent, faults) as server:
        source.download(f"{server.url}/mirror/{NAME}", dest, POLICY)
        assert len(server.gets(NAME)) == 2
    assert dest.read_bytes() == payload.read_bytes()


def test_download_that_stays_truncated_fails(payload: Path, tmp_path: Path) -> None:
    faults = Faults(drop_times=100, drop_after=0)
    with (
        DumpServer(payload.parent.parent, faults) as server,
        pytest.raises(source.SourceError, match="failed 4 times") as err,
    ):
        source.download(f"{server.url}/mirror/{NAME}", tmp_path / "a.7z", POLICY)
    assert "connection" in str(err.value.__cause__).lower()


def test_published_checksum_is_found_and_verified(payload: Path, tmp_path: Path) -> None:
    sha1 = hashlib.sha1(payload.read_bytes()).hexdigest()
    (payload.parent / "mirror_files.xml").write_text(files_xml({"other.7z": "0" * 40, NAME: sha1}))
    with DumpServer(payload.parent.parent, Faults(drop_times=1, drop_after=70_000)) as server:
        checksum = source.published_checksum(
            f"{server.url}/mirror/", f"{server.url}/mirror/{NAME}", POLICY
        )
        assert checksum == source.Checksum("sha1", sha1)
        source.download(f"{server.url}/mirror/{NAME}", tmp_path / "a.7z", POLICY, checksum)


def test_checksum_mismatch_fails(payload: Path, tmp_path: Path) -> None:
    (payload.parent / "mirror_files.xml").write_text(files_xml({NAME: "1" * 40}))
    with DumpServer(payload.parent.parent) as server:
        checksum = source.published_checksum(
            f"{server.url}/mirror", f"{server.url}/mirror/{NAME}", POLICY
        )
        with pytest.raises(source.SourceError, match="does not match the published"):
            source.download(f"{server.url}/mirror/{NAME}", tmp_path / "a.7z", POLICY, checksum)


def test_missing_checksum_list_is_logged_not_fatal(
    payload: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stackexchange.source")
    with DumpServer(payload.parent.parent) as server:
        assert (
            source.published_checksum(f"{server.url}/mirror", f"{server.url}/mirror/{NAME}", POLICY)
            is None
        )
    assert "carrying on" in caplog.text or "verifying size only" in caplog.text


def test_checksum_list_override_and_doctype_refusal(
    payload: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    listing = payload.parent / "custom.xml"
    listing.write_text('<?xml version="1.0"?><!DOCTYPE files [<!ENTITY a "b">]><files/>')
    monkeypatch.setenv("STACKEXCHANGE_CHECKSUMS_URL", listing.as_uri())
    assert source.published_checksum("https://x", f"https://x/{NAME}", POLICY) is None
    assert "DOCTYPE" in caplog.text
    monkeypatch.setenv("STACKEXCHANGE_CHECKSUMS_URL", "none")
    assert source.checksums_list_url("https://archive.org/download/stackexchange") is None
    monkeypatch.delenv("STACKEXCHANGE_CHECKSUMS_URL")
    assert source.checksums_list_url("https://archive.org/download/stackexchange") == (
        "https://archive.org/download/stackexchange/stackexchange_files.xml"
    )


def test_file_urls_probe_and_copy(payload: Path, tmp_path: Path) -> None:
    url = payload.as_uri()
    info = source.probe(url, POLICY)
    assert info.size == 300_000 and info.etag is None
    assert info.version.startswith("last-modified:") and info.version.endswith(";size:300000")
    dest = tmp_path / "copy.7z"
    assert source.download(url, dest, POLICY) == info
    assert dest.read_bytes() == payload.read_bytes()
    with pytest.raises(source.SourceNotFound, match="does not exist"):
        source.probe(payload.with_name("nosuch.7z").as_uri(), POLICY)
