"""Faults at every point of the streamed ingest leave the site's manifest naming a whole pair
(the previous one), and the next run publishes a consistent pair with no multipart upload left
open; the site's lock lets one writer in.

The ingest runs for real: a local HTTP mirror (tests/http_fixtures.py), the forward-only
decoder, the validator child process, and moto's S3 server over HTTP, with S3FaultProxy in front
of it to make chosen S3 calls fail. A killed task is a real process killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import py7zr
import pytest

from local.sample_dump import STORED, pack_7z, write_site
from local.services import s3_client
from stackexchange import archive, ingest, lock, multipart, publish
from stackexchange.dump_xml import DumpXmlError
from stackexchange.s3 import S3PublishError
from stackexchange.settings import Storage
from stackexchange.source import SourceError
from tests.http_fixtures import DumpServer, S3FaultProxy

REPO = Path(__file__).resolve().parents[1]
SITE = "faults.stackexchange.com"
STORAGE = Storage()
BUCKET = STORAGE.bucket
SITE_KEYS = publish.SiteKeys.of(STORAGE, SITE)
MEMBERS = ("Posts.xml", "Users.xml")
pytestmark = pytest.mark.e2e


@dataclass
class Mirror:
    server: DumpServer
    root: Path

    @property
    def base(self) -> str:
        return f"{self.server.url}/stackexchange"

    def version(self, name: str) -> str:
        """The mirror serving another version of SITE (``v1``, ``badusers``)."""
        return f"{self.server.url}/{name}"

    def archive(self, site: str = SITE) -> Path:
        return self.root / "stackexchange" / f"{site}.7z"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """Versions of one site, each at its own base URL: v1 (published first), v2 (replaces it;
    the default base) and one whose Users.xml breaks after all of Posts.xml streamed."""
    root = tmp_path_factory.mktemp("mirror")
    item = root / "stackexchange"
    v1 = write_site(root / "v1", posts=3000, users=200, seed=1)
    pack_7z(v1, root / "v1" / f"{SITE}.7z")
    # Posts.xml above 2 parts of 5 MiB (the tests lower the part size to S3's minimum).
    v2 = write_site(root / "v2", posts=24000, users=300, body_words=60, seed=2)
    pack_7z(v2, item / f"{SITE}.7z")
    bad = write_site(root / "bad", posts=3000, users=200, seed=3)
    users = next(p for p in bad if p.name == "Users.xml")
    users.write_bytes(users.read_bytes().replace(b"</users>", b"<row Id='x' </users>"))
    pack_7z(bad, root / "badusers" / f"{SITE}.7z")
    with DumpServer(root) as server:
        yield Mirror(server, root)


@pytest.fixture
def s3(aws_conn: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An empty bucket (objects and open uploads removed) and a fast, local-friendly ingest."""
    monkeypatch.setenv("STACKEXCHANGE_ALLOWED_HOSTS", "127.0.0.1,localhost")
    monkeypatch.setenv("STACKEXCHANGE_CHECKSUMS_URL", "none")
    monkeypatch.setenv("STACKEXCHANGE_DOWNLOAD_BACKOFF_SECONDS", "0")
    monkeypatch.setattr(multipart, "MIN_PART_BYTES", 5 << 20)
    client = s3_client(aws_conn)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return client


def run_ingest(base: str, ingest_id: str, site: str = SITE) -> list[dict]:
    return ingest.ingest(site, base, "aws_conn", ingest_id, STORAGE)


def publish_v1(mirror: Mirror) -> publish.Manifest:
    run_ingest(mirror.version("v1"), "v1-run#1")
    manifest = publish.read_manifest(s3_client_from_env(), SITE_KEYS)
    assert manifest is not None
    return manifest


def s3_client_from_env() -> Any:
    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_CONN"])
    return s3_client(conn["extra"]["endpoint_url"])


def assert_pair_is(client: Any, manifest: publish.Manifest) -> None:
    """The site's manifest on S3 is ``manifest``, and its objects are there as recorded, each
    written by the manifest's ingest."""
    assert publish.read_manifest(client, SITE_KEYS) == manifest
    assert publish.matches(client, SITE_KEYS, manifest) is None
    assert sorted(manifest.objects) == list(MEMBERS)
    for name, published in manifest.objects.items():
        assert published.uri == SITE_KEYS.uri(SITE_KEYS.key(manifest.generation, name))
        head = client.head_object(Bucket=BUCKET, Key=SITE_KEYS.key(manifest.generation, name))
        assert head["Metadata"]["ingest-id"] == manifest.ingest_id
        assert head["ETag"].strip('"') == published.etag


def assert_nothing_left(client: Any, site: str = SITE) -> None:
    """No open upload, no lock; only the site's current generation and the kept ones."""
    site_keys = publish.SiteKeys.of(STORAGE, site)
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    manifest = publish.read_manifest(client, site_keys)
    assert manifest is not None
    kept = [manifest.generation, *manifest.previous]
    assert len(manifest.previous) <= STORAGE.keep_previous
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert keys == {site_keys.manifest} | {
        site_keys.key(generation, name) for generation in kept for name in MEMBERS
    }


def open_uploads(client: Any) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


@contextlib.contextmanager
def s3_through(proxy: S3FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_CONN"])
    with proxy, monkeypatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_AWS_CONN", json.dumps(
            {**conn, "extra": {**conn["extra"], "endpoint_url": proxy.url}}))  # fmt: skip
        yield


def recovers(mirror: Mirror, client: Any, ingest_id: str = "next-run#1") -> None:
    """The next run (by default another DAG run) publishes v2 whole and leaves nothing behind."""
    extras = run_ingest(mirror.base, ingest_id)
    manifest = publish.read_manifest(client, SITE_KEYS)
    assert manifest is not None and manifest.ingest_id == ingest_id
    assert_pair_is(client, manifest)
    assert_nothing_left(client)
    assert [e["etag"] for e in extras] == [manifest.objects[n].etag for n in MEMBERS]
    assert [e["uri"] for e in extras] == [manifest.objects[n].uri for n in MEMBERS]
    originals = {p.name: p.read_bytes() for p in (mirror.root / "v2").iterdir()}
    for name in MEMBERS:
        key = SITE_KEYS.key(manifest.generation, name)
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == originals[name]


def test_a_failed_part_upload_aborts_both_uploads(
    mirror: Mirror, s3: Any, aws_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = publish_v1(mirror)
    second_part = lambda method, path: method == "PUT" and "partNumber=2" in path  # noqa: E731
    with (
        s3_through(S3FaultProxy(aws_conn, deny=second_part), monkeypatch),
        pytest.raises(S3PublishError, match="denied"),
    ):
        run_ingest(mirror.base, "broken#1")
    assert open_uploads(s3) == []  # both aborted by the failing run itself
    assert_pair_is(s3, previous)
    recovers(mirror, s3)


def test_a_failed_completion_leaves_the_manifest_on_the_previous_pair(
    mirror: Mirror, s3: Any, aws_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users.xml's completion is refused after Posts.xml's succeeded (each member completes
    once validated): no manifest names the new generation, and the failing run deletes the
    object it completed."""
    previous = publish_v1(mirror)
    completions: list[str] = []

    def users_completion(method: str, path: str) -> bool:
        if method == "POST" and "uploadId=" in path:
            completions.append(path)
            return "Users.xml" in path
        return False

    with (
        s3_through(S3FaultProxy(aws_conn, deny=users_completion), monkeypatch),
        pytest.raises(S3PublishError, match="denied"),
    ):
        run_ingest(mirror.base, "broken#1")
    assert sorted("Posts.xml" in path for path in completions) == [False, True]
    assert_pair_is(s3, previous)
    assert open_uploads(s3) == []
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=SITE_KEYS.site_prefix).get("Contents", [])
    assert {o["Key"] for o in listed} == {SITE_KEYS.manifest} | {
        SITE_KEYS.key(previous.generation, name) for name in MEMBERS
    }  # no lock, nothing of the failed generation
    recovers(mirror, s3)


def test_a_completion_whose_reply_was_lost_is_committed(
    mirror: Mirror, s3: Any, aws_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 completed Posts.xml but its reply never arrived (botocore retries: NoSuchUpload): the
    object at this ingest's own key with this ingest's id is ours, so the pair is committed."""
    publish_v1(mirror)
    first = lambda method, path: method == "POST" and "Posts.xml?uploadId=" in path  # noqa: E731
    proxy = S3FaultProxy(aws_conn, lose_reply=lambda m, p: first(m, p) and not proxy.lost)
    with s3_through(proxy, monkeypatch):
        extras = run_ingest(mirror.base, "lost-reply#1")
    assert proxy.lost  # the reply was really lost
    manifest = publish.read_manifest(s3, SITE_KEYS)
    assert manifest is not None and manifest.ingest_id == "lost-reply#1"
    assert_pair_is(s3, manifest)
    assert_nothing_left(s3)
    assert extras[0]["etag"] == manifest.objects["Posts.xml"].etag


def test_invalid_users_after_all_of_posts_streamed_publishes_nothing(
    mirror: Mirror, s3: Any
) -> None:
    previous = publish_v1(mirror)
    with pytest.raises(DumpXmlError, match="Users.xml: malformed XML"):
        run_ingest(mirror.version("badusers"), "bad#1")
    assert open_uploads(s3) == []
    assert_pair_is(s3, previous)
    recovers(mirror, s3)


KILLED_AT = """
import os, signal, sys
from stackexchange import multipart, publish
from stackexchange.ingest import ingest
from stackexchange.settings import Storage

owner = {"complete": multipart.MultipartUpload, "put_manifest": publish}[sys.argv[3]]
real, calls = getattr(owner, sys.argv[3]), []

def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(owner, sys.argv[3], dying)
ingest(sys.argv[1], sys.argv[2], "aws_conn", "killed#1", Storage())
"""


def _worker_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'dags'}:{REPO}", "TMPDIR": str(tmp_path)}


@pytest.mark.parametrize(
    ("method", "call"),
    [("complete", 1), ("complete", 2), ("put_manifest", 1)],
    ids=["before the first completion", "between the two completions", "before the manifest"],
)
def test_sigkill_inside_the_commit_leaves_the_manifest_on_a_whole_pair(
    mirror: Mirror, s3: Any, tmp_path: Path, method: str, call: int
) -> None:
    """A real SIGKILL at each instant of the commit: the manifest names the previous pair,
    whole; the killed run's retry takes over its lock and publishes."""
    previous = publish_v1(mirror)
    worker = subprocess.run(
        [sys.executable, "-c", KILLED_AT, SITE, mirror.base, method, str(call)],
        env=_worker_env(tmp_path),
        timeout=120,
    )
    assert worker.returncode == -signal.SIGKILL
    assert_pair_is(s3, previous)
    with pytest.raises(lock.SiteLocked, match="is being written by ingest killed#1"):
        run_ingest(mirror.base, "another-run#1")  # its lock holds against other runs
    recovers(mirror, s3, "killed#2")  # the retry of the killed run


WORKER = """
import sys
from stackexchange.ingest import ingest
from stackexchange.settings import Storage
ingest(sys.argv[1], sys.argv[2], "aws_conn", "killed#1", Storage())
"""


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_sigkill_mid_stream_leaves_the_previous_pair(
    mirror: Mirror, s3: Any, share: float, tmp_path: Path
) -> None:
    previous = publish_v1(mirror)
    size = mirror.archive().stat().st_size
    mirror.server.faults.bytes_per_second = size / 2  # about 2 s of download
    try:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, SITE, mirror.base], env=_worker_env(tmp_path)
        )
        start = mirror.server.served
        deadline = time.monotonic() + 60
        while mirror.server.served - start < share * size and worker.poll() is None:
            assert time.monotonic() < deadline, "the worker never got that far"
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        mirror.server.faults.bytes_per_second = 0
    assert worker.returncode == -signal.SIGKILL
    assert_pair_is(s3, previous)  # nothing of the killed run is visible
    recovers(mirror, s3, "killed#2")  # and its open uploads are aborted by its retry


def test_a_second_writer_is_refused_and_an_expired_lock_is_taken_over(
    mirror: Mirror, s3: Any
) -> None:
    """The lock is a conditional PUT (If-None-Match: *): while one writer holds the site,
    another run is refused before it downloads; past its expiry, the lock is taken over
    (If-Match on its ETag)."""
    previous = publish_v1(mirror)
    gets = len(mirror.server.gets(f"{SITE}.7z"))
    lock.acquire(s3, SITE_KEYS, "scheduled-run#1", ttl_seconds=3600)
    with pytest.raises(lock.SiteLocked) as refused:
        run_ingest(mirror.base, "manual-run#1")
    assert str(refused.value).startswith(
        f"{SITE} is being written by ingest scheduled-run#1 until "
    )
    assert "delete the lock object and run again" in str(refused.value)
    assert len(mirror.server.gets(f"{SITE}.7z")) == gets  # refused before downloading
    assert_pair_is(s3, previous)
    lock.release(s3, SITE_KEYS, "scheduled-run#1")
    lock.acquire(s3, SITE_KEYS, "dead-run#1", ttl_seconds=-1)  # a dead run's expired lock
    recovers(mirror, s3, "manual-run#2")


def test_two_writers_racing_for_the_lock_one_wins(s3: Any) -> None:
    """Eight threads create the lock at once: S3's If-None-Match lets exactly one in."""
    from concurrent.futures import ThreadPoolExecutor

    def take(n: int) -> bool:
        try:
            lock.acquire(s3_client_from_env(), SITE_KEYS, f"writer-{n}#1", ttl_seconds=60)
        except lock.SiteLocked:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(take, range(8)))
    assert won.count(True) == 1


def test_a_lock_of_an_earlier_try_of_the_same_run_is_taken_over(s3: Any) -> None:
    """The run is the ingest id up to its last ``#`` (a run id may hold one too)."""
    lock.acquire(s3, SITE_KEYS, "manual__2025#a#1", ttl_seconds=3600)
    with pytest.raises(lock.SiteLocked, match="is being written by ingest manual__2025#a#1"):
        lock.acquire(s3, SITE_KEYS, "manual__2025#b#1", ttl_seconds=3600)
    lock.acquire(s3, SITE_KEYS, "manual__2025#a#2", ttl_seconds=3600)
    lock.release(s3, SITE_KEYS, "manual__2025#a#1")  # no longer its lock: kept
    lock.release(s3, SITE_KEYS, "manual__2025#a#2")
    lock.release(s3, SITE_KEYS, "manual__2025#a#2")  # already gone: nothing to do
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=SITE_KEYS.lock)


def test_retention_keeps_the_configured_generations(mirror: Mirror, s3: Any) -> None:
    """Each commit deletes the generations beyond keep_previous; the manifest lists the kept."""
    for n in range(3):
        run_ingest(mirror.base, f"run-{n}#1")
    manifest = publish.read_manifest(s3, SITE_KEYS)
    assert manifest is not None and len(manifest.previous) == 1
    assert publish.generations(s3, SITE_KEYS) == sorted([manifest.generation, *manifest.previous])
    assert_nothing_left(s3)
    keep_two = Storage(keep_previous=2)
    for n in range(3, 6):
        ingest.ingest(SITE, mirror.base, "aws_conn", f"run-{n}#1", keep_two)
    manifest = publish.read_manifest(s3, SITE_KEYS)
    assert manifest is not None and len(manifest.previous) == 2
    assert len(publish.generations(s3, SITE_KEYS)) == 3


def test_split_layout_publishes_the_pair(mirror: Mirror, s3: Any, tmp_path: Path) -> None:
    """stackoverflow.com's layout: one archive per table."""
    site = f"split.{SITE}"
    files = {p.name: p for p in write_site(tmp_path / "site", posts=500, users=50, seed=4)}
    for table in ("Posts", "Users"):
        pack_7z([files[f"{table}.xml"]], mirror.root / "stackexchange" / f"{site}-{table}.7z")
    extras = run_ingest(mirror.base, "split#1", site=site)
    assert [e["source_url"] for e in extras] == [
        f"{mirror.base}/{site}-Posts.7z",
        f"{mirror.base}/{site}-Users.7z",
    ]
    for extra, name in zip(extras, MEMBERS, strict=True):
        key = extra["uri"].removeprefix(f"s3://{BUCKET}/")
        assert key.startswith(f"{STORAGE.prefix}/{site}/") and key.endswith(f"/{name}")
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == files[name].read_bytes()
    assert_nothing_left(s3, site)


# --- the forward-only stream: no archive on disk, resume, refusals --------------------------


class DiskWatch:
    """Polls the bytes under ``directory`` (where every temporary file of the ingest goes) in a
    thread while the ingest runs; ``peak`` is the most it saw."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.peak, self.polls = directory, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            used = 0
            for path in self.directory.rglob("*"):
                with contextlib.suppress(FileNotFoundError):
                    used += path.stat().st_size if path.is_file() else 0
            self.peak, self.polls = max(self.peak, used), self.polls + 1
            time.sleep(0.005)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def published(client: Any, site: str = SITE) -> dict[str, bytes]:
    """The objects the site's manifest names, read back."""
    keys = publish.SiteKeys.of(STORAGE, site)
    manifest = publish.read_manifest(client, keys)
    assert manifest is not None
    return {
        n: client.get_object(Bucket=BUCKET, Key=keys.key(manifest.generation, n))["Body"].read()
        for n in MEMBERS
    }


@pytest.mark.parametrize("layout", ["single", "split"])
def test_no_archive_byte_is_written_to_disk(
    mirror: Mirror, s3: Any, scratch: Path, tmp_path: Path, layout: str
) -> None:
    site = f"{layout}-disk.{SITE}"
    files = {p.name: p for p in write_site(tmp_path / "site", posts=4000, users=300, seed=5)}
    item = mirror.root / "stackexchange"
    if layout == "single":
        pack_7z(list(files.values()), item / f"{site}.7z")
    else:
        for table in ("Posts", "Users"):
            pack_7z([files[f"{table}.xml"]], item / f"{site}-{table}.7z")
    mirror.server.faults.bytes_per_second = 2 << 20  # slow enough to be watched
    try:
        with DiskWatch(scratch) as disk:
            ingest.ingest(site, mirror.base, "aws_conn", f"{layout}-disk#1", STORAGE)
    finally:
        mirror.server.faults.bytes_per_second = 0
    assert disk.polls > 10 and disk.peak == 0
    assert published(s3, site) == {n: files[n].read_bytes() for n in MEMBERS}
    assert_nothing_left(s3, site)


def test_a_connection_dropped_mid_archive_resumes_and_publishes_the_same(
    mirror: Mirror, s3: Any
) -> None:
    size = mirror.archive().stat().st_size
    name = mirror.archive().name
    mirror.server.requests.clear()
    mirror.server.faults.drop_times, mirror.server.faults.drop_after = 2, size // 3
    try:
        extras = ingest.ingest(SITE, mirror.base, "aws_conn", "dropped#1", STORAGE)
    finally:
        mirror.server.faults.drop_times = 0
    resumed = [r.headers.get("Range") for r in mirror.server.gets(name)][-3:]
    assert resumed[0] is None and all(r and r.endswith("-") for r in resumed[1:])
    originals = {p.name: p.read_bytes() for p in (mirror.root / "v2").iterdir()}
    assert published(s3) == {n: originals[n] for n in MEMBERS}
    assert [e["sha256"] for e in extras] == [
        hashlib.sha256(originals[n]).hexdigest() for n in MEMBERS
    ]
    assert_nothing_left(s3)


def test_a_server_ignoring_range_is_refused_and_publishes_nothing(mirror: Mirror, s3: Any) -> None:
    previous = publish_v1(mirror)
    mirror.server.faults.ignore_range = True
    try:
        with pytest.raises(SourceError, match="does not honour Range requests"):
            ingest.ingest(SITE, mirror.base, "aws_conn", "norange#1", STORAGE)
    finally:
        mirror.server.faults.ignore_range = False
    assert open_uploads(s3) == []
    assert_pair_is(s3, previous)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


@pytest.mark.parametrize("damage", ["packed-bytes", "member-crc", "unsupported-coder"])
def test_a_damaged_or_foreign_archive_publishes_nothing(
    mirror: Mirror, s3: Any, tmp_path: Path, damage: str
) -> None:
    previous = publish_v1(mirror)
    site = f"{damage}.{SITE}"
    files = write_site(tmp_path / "site", posts=3000, users=200, seed=6)
    path = mirror.root / "stackexchange" / f"{site}.7z"
    if damage == "packed-bytes":
        pack_7z(files, path)
        _flip(path, path.stat().st_size // 2)
        expected = (archive.ArchiveError, r"is damaged \(")
    elif damage == "member-crc":
        pack_7z(files, path, filters=STORED)
        # Users.xml sorts last and is stored as is: a letter in its last row.
        _flip(path, path.stat().st_size - 2000)
        expected = (archive.ArchiveError, r"CRC check failed for Users.xml")
    else:
        pack_7z(files, path, filters=[{"id": py7zr.FILTER_PPMD}])
        expected = (archive.ArchiveRefused, r"uses coder PPMd")
    with pytest.raises(expected[0], match=expected[1]):
        ingest.ingest(site, mirror.base, "aws_conn", f"{damage}#1", STORAGE)
    assert open_uploads(s3) == []
    assert_pair_is(s3, previous)


def test_a_wrong_published_checksum_publishes_nothing(
    mirror: Mirror, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both members stream whole and validate; the checksum, over the archive's last byte too,
    fails at the end, and nothing is published."""
    previous = publish_v1(mirror)
    listing = mirror.root / "stackexchange" / "wrong_files.xml"
    data = mirror.archive().read_bytes()
    wrong = hashlib.sha1(data[:-1] + bytes([data[-1] ^ 1])).hexdigest()  # differs in the end
    listing.write_text(f'<files><file name="{mirror.archive().name}"><sha1>{wrong}</sha1>'
                       "</file></files>")  # fmt: skip
    monkeypatch.setenv("STACKEXCHANGE_CHECKSUMS_URL", f"{mirror.base}/wrong_files.xml")
    with pytest.raises(SourceError, match=f"sha1 {hashlib.sha1(data).hexdigest()} does not"):
        ingest.ingest(SITE, mirror.base, "aws_conn", "wrongsum#1", STORAGE)
    assert open_uploads(s3) == []
    assert_pair_is(s3, previous)
