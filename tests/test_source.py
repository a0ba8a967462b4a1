"""Finding a site's archives: layout, checksums, versions and retries, against a real local HTTP
server (``tests.http_fixtures.DumpServer``) with injected faults, and ``file://`` sources."""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
from pathlib import Path

import pytest
import requests

from stackexchange import source, url_policy
from stackexchange.settings import DownloadPolicy
from tests.http_fixtures import DumpServer, Faults

POLICY = DownloadPolicy(attempts=4, backoff_seconds=0.0, progress_seconds=0.0, chunk_bytes=4096)
SITE = "demo.stackexchange.com"
SINGLE = f"{SITE}.7z"
SPLIT = [f"{SITE}-Posts.7z", f"{SITE}-Users.7z"]
LIST = "mirror_files.xml"  # archive.org's name for the list of item "mirror"


@pytest.fixture(autouse=True)
def local_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the producer reach the test server on 127.0.0.1; no overrides from the environment."""
    monkeypatch.setenv(url_policy.ALLOWED_HOSTS_ENV, "127.0.0.1,localhost")
    monkeypatch.delenv("STACKEXCHANGE_CHECKSUMS_URL", raising=False)
    monkeypatch.delenv(url_policy.FILE_ROOT_ENV, raising=False)


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """The directory the server publishes as ``/mirror`` (the item); empty to start with."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    return directory


def publish(mirror: Path, *names: str, size: int = 20_000) -> dict[str, bytes]:
    """Archives of random bytes (what they hold does not matter here); name -> content."""
    contents = {}
    for name in names:
        contents[name] = os.urandom(size)
        (mirror / name).write_bytes(contents[name])
    return contents


def file_list(entries: dict[str, dict[str, str]]) -> str:
    """An archive.org ``*_files.xml``: per file its fields, in archive.org's order (md5 first)."""
    files = "".join(
        f'<file name="{name}" source="original"><mtime>1700000000</mtime><size>1</size>'
        + "".join(f"<{field}>{value}</{field}>" for field, value in fields.items())
        + "</file>"
        for name, fields in entries.items()
    )
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<files>{files}</files>'


def digests(data: bytes) -> dict[str, str]:
    return {
        "md5": hashlib.md5(data).hexdigest(),
        "crc32": "0badc0de",
        "sha1": hashlib.sha1(data).hexdigest(),
    }


def calls(server: DumpServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.requests]


def test_single_layout_found_via_the_file_list(mirror: Path) -> None:
    contents = publish(mirror, SINGLE)
    (mirror / LIST).write_text(file_list({SINGLE: digests(contents[SINGLE])}))
    with DumpServer(mirror.parent) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror/", POLICY))
        assert calls(server) == [("GET", f"/mirror/{LIST}"), ("HEAD", f"/mirror/{SINGLE}")]
        url = f"{server.url}/mirror/{SINGLE}"
    assert found.layout == "single"
    archive = found.archives["Posts.xml"]
    assert found.archives == {"Posts.xml": archive, "Users.xml": archive}
    assert (archive.url, archive.name, archive.size) == (url, SINGLE, len(contents[SINGLE]))
    assert found.unique_archives() == [(archive, ["Posts.xml", "Users.xml"])]


def test_split_layout_found_via_the_file_list(mirror: Path) -> None:
    contents = publish(mirror, *SPLIT)
    (mirror / LIST).write_text(file_list({name: digests(contents[name]) for name in SPLIT}))
    with DumpServer(mirror.parent) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
        # The list names the split archives, so the single one is never probed.
        assert calls(server) == [("GET", f"/mirror/{LIST}")] + [
            ("HEAD", f"/mirror/{name}") for name in SPLIT
        ]
    assert found.layout == "split"
    assert {member: a.name for member, a in found.archives.items()} == {
        "Posts.xml": SPLIT[0],
        "Users.xml": SPLIT[1],
    }
    assert [members for _, members in found.unique_archives()] == [["Posts.xml"], ["Users.xml"]]
    assert all(a.size == len(contents[a.name]) for a in found.archives.values())


def test_split_layout_found_by_probing_without_a_file_list(mirror: Path) -> None:
    publish(mirror, *SPLIT)
    with DumpServer(mirror.parent) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
        assert calls(server) == [
            ("GET", f"/mirror/{LIST}"),  # 404: no list, probe instead
            ("HEAD", f"/mirror/{SINGLE}"),  # 404: not the single layout
            ("HEAD", f"/mirror/{SPLIT[0]}"),
            ("HEAD", f"/mirror/{SPLIT[1]}"),
        ]
    assert found.layout == "split"
    assert all(a.checksum is None for a in found.archives.values())


def test_neither_layout_names_every_url_tried(mirror: Path) -> None:
    publish(mirror, SPLIT[0])  # Posts alone is not a dump
    with DumpServer(mirror.parent) as server, pytest.raises(source.SourceNotFound) as err:
        source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
    message = str(err.value)
    for name in (SINGLE, *SPLIT):
        assert f"{server.url}/mirror/{name}" in message
    assert "`site` param" in message and "`source_base_url`" in message


def test_checksum_from_the_list_prefers_sha1_then_md5(mirror: Path) -> None:
    contents = publish(mirror, *SPLIT)
    posts, users = (digests(contents[name]) for name in SPLIT)
    del users["sha1"]
    (mirror / LIST).write_text(
        file_list({SPLIT[0]: posts, SPLIT[1]: users, SINGLE: {"md5": "0" * 32}})
    )
    with DumpServer(mirror.parent) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
    assert found.archives["Posts.xml"].checksum == source.Checksum("sha1", posts["sha1"])
    assert found.archives["Users.xml"].checksum == source.Checksum("md5", users["md5"])


def test_list_entry_without_a_valid_checksum_gives_none() -> None:
    listed = source.parse_file_list(
        file_list({"a.7z": {"sha1": "not-hex", "md5": "A" * 32}, "b.7z": {"size": "3"}}).encode()
    )
    assert listed == {"a.7z": source.Checksum("md5", "a" * 32), "b.7z": None}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            '<?xml version="1.0"?><!DOCTYPE files [<!ENTITY e "x">]>'
            f'<files><file name="{SINGLE}"><sha1>{"0" * 40}</sha1></file></files>',
            "DOCTYPE",
        ),
        (  # no entity at all: the DOCTYPE alone is refused (an external DTD is never read)
            '<?xml version="1.0"?><!DOCTYPE files SYSTEM "http://127.0.0.1:9/files.dtd">'
            f'<files><file name="{SINGLE}"><sha1>{"0" * 40}</sha1></file></files>',
            "DOCTYPE",
        ),
        ("<html><body>Item not available", "no element found|unclosed token"),
    ],
    ids=["doctype-with-entity", "doctype-external-dtd", "not-xml"],
)
def test_unusable_list_is_logged_and_probing_continues(
    mirror: Path, caplog: pytest.LogCaptureFixture, body: str, reason: str
) -> None:
    publish(mirror, SINGLE)
    (mirror / LIST).write_text(body)
    caplog.set_level(logging.INFO, logger="stackexchange.source")
    with DumpServer(mirror.parent) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
    assert found.layout == "single" and found.archives["Posts.xml"].checksum is None
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"Cannot read the file list {server.url}/mirror/{LIST}" in warning.getMessage()
    assert "probing instead" in warning.getMessage()
    assert any(part in warning.getMessage() for part in reason.split("|"))


def test_retries_5xx_then_succeeds(mirror: Path) -> None:
    contents = publish(mirror, SINGLE)
    (mirror / LIST).write_text(file_list({SINGLE: digests(contents[SINGLE])}))
    with DumpServer(mirror.parent, Faults(fail_times=2)) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
        assert calls(server) == [("GET", f"/mirror/{LIST}")] * 3 + [("HEAD", f"/mirror/{SINGLE}")]
    assert found.archives["Posts.xml"].checksum == source.Checksum(
        "sha1", hashlib.sha1(contents[SINGLE]).hexdigest()
    )


def test_persistent_5xx_fails_after_every_attempt(
    mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACKEXCHANGE_CHECKSUMS_URL", "none")
    publish(mirror, SINGLE)
    with DumpServer(mirror.parent, Faults(fail_times=100, fail_status=502)) as server:
        with pytest.raises(source.SourceError) as err:
            source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
        assert calls(server) == [("HEAD", f"/mirror/{SINGLE}")] * POLICY.attempts
    assert not isinstance(err.value, source.SourceNotFound)
    assert f"HEAD {server.url}/mirror/{SINGLE} failed 4 times" in str(err.value)
    assert "HTTP 502" in str(err.value) and "mirror" in str(err.value)


def test_list_that_keeps_failing_does_not_stop_probing(mirror: Path) -> None:
    publish(mirror, SINGLE)
    with DumpServer(mirror.parent, Faults(fail_times=POLICY.attempts)) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
        assert calls(server)[-1] == ("HEAD", f"/mirror/{SINGLE}")
    assert found.archives["Posts.xml"].checksum is None


def test_redirects_are_followed_and_the_archive_keeps_its_url(mirror: Path) -> None:
    publish(mirror, SINGLE)
    with DumpServer(mirror.parent, Faults(redirect=True)) as server:
        found = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY))
        assert calls(server)[-2:] == [
            ("HEAD", f"/mirror/{SINGLE}"),
            ("HEAD", f"/storage/mirror/{SINGLE}"),
        ]
    assert found.archives["Posts.xml"].url == f"{server.url}/mirror/{SINGLE}"
    assert found.archives["Posts.xml"].size == 20_000


def test_version_is_the_etag_when_the_server_sends_one(mirror: Path) -> None:
    publish(mirror, SINGLE)
    with DumpServer(mirror.parent) as server:
        archive = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY)).archives[
            "Posts.xml"
        ]
        etag = requests.head(f"{server.url}/mirror/{SINGLE}", timeout=10).headers["ETag"]
    assert archive.etag == etag
    assert archive.version == f"etag:{etag}"
    (mirror / SINGLE).write_bytes(os.urandom(20_001))  # a new upload: a new version
    with DumpServer(mirror.parent) as server:
        changed = source.resolve(SITE, source.Dumps(f"{server.url}/mirror", POLICY)).archives[
            "Posts.xml"
        ]
    assert changed.version != archive.version


def test_version_without_an_etag_is_last_modified_and_size() -> None:
    modified = "Tue, 01 Apr 2025 08:00:00 GMT"
    with_date = source.RemoteArchive("https://x/a.7z", 123, None, modified)
    assert with_date.version == f"last-modified:{modified};size:123"
    resized = source.RemoteArchive("https://x/a.7z", 124, None, modified)
    assert resized.version != with_date.version
    assert source.RemoteArchive("https://x/a.7z", 9, None, None).version == (
        "last-modified:unknown;size:9"
    )


def test_file_url_under_the_root(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = publish(mirror, SINGLE)
    (mirror / LIST).write_text(file_list({SINGLE: digests(contents[SINGLE])}))
    monkeypatch.setenv(url_policy.FILE_ROOT_ENV, str(mirror.parent))
    found = source.resolve(SITE, source.Dumps(mirror.as_uri(), POLICY))
    archive = found.archives["Posts.xml"]
    assert archive.url == (mirror / SINGLE).as_uri()
    assert (archive.size, archive.etag) == (len(contents[SINGLE]), None)
    modified = email.utils.parsedate_to_datetime(archive.last_modified or "")
    assert modified.timestamp() == int((mirror / SINGLE).stat().st_mtime)
    assert archive.version == f"last-modified:{archive.last_modified};size:20000"
    assert archive.checksum == source.Checksum("sha1", hashlib.sha1(contents[SINGLE]).hexdigest())


def test_file_url_outside_the_root_is_refused(
    mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(mirror, SINGLE)
    root = mirror.parent / "root"
    root.mkdir()
    monkeypatch.setenv(url_policy.FILE_ROOT_ENV, str(root))
    with pytest.raises(url_policy.InvalidSourceParam, match=url_policy.FILE_ROOT_ENV):
        source.resolve(SITE, source.Dumps(f"{root.as_uri()}/../mirror", POLICY))


def test_a_list_expanding_entities_is_refused_before_any_expansion() -> None:
    """The "billion laughs" shape: nested entities that would expand to gigabytes."""
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    body = (
        f'<?xml version="1.0"?><!DOCTYPE files [<!ENTITY l0 "ha">{laughs}]>'
        f'<files><file name="{SINGLE}"><md5>&l9;</md5></file></files>'
    )
    with pytest.raises(source.SourceError, match="declares a DOCTYPE; refusing to parse it"):
        source.parse_file_list(body.encode())
