"""End to end: the producer DAG really runs (``dag.test()``, and once the ``airflow dags test``
CLI) against a local HTTP mirror and moto's S3 server; results are read back from S3 and
from the metadata DB."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from local.sample_dump import pack_7z, write_site
from local.services import s3_client
from stackexchange.assets import BUCKET, POSTS_KEY, RAW_POSTS, RAW_USERS, USERS_KEY
from tests.http_fixtures import DumpServer, S3FaultProxy

REPO = Path(__file__).resolve().parents[1]  # not from conftest: importing it twice resets
DAGS_FOLDER = REPO / "dags"  # the session's AIRFLOW_HOME
pytestmark = pytest.mark.e2e

SITE = "demo.stackexchange.com"
PRODUCER, CONSUMER = "produce_data_asset", "trigger_databricks_workflow_dag"
KEYS = {"Posts.xml": POSTS_KEY, "Users.xml": USERS_KEY}


@dataclass
class Mirror:
    server: DumpServer
    root: Path
    originals: dict[str, bytes]  # Posts.xml / Users.xml as generated

    @property
    def base(self) -> str:
        return f"{self.server.url}/stackexchange"

    def conf(self, site: str = SITE, **extra: object) -> dict[str, object]:
        # Every param, always: in-process dag.test() runs keep an earlier run's conf in the
        # task's params (each real task process starts afresh), so `force` would stick.
        return {"site": site, "source_base_url": self.base, "force": False, **extra}

    def archive_gets(self, site: str = SITE) -> int:
        """Downloads of the archive: GETs of its whole body from byte 0 (not the Range reads of
        the 7z headers, its first 32 bytes and its end, which the ingest makes first)."""
        return sum(
            r.headers.get("Range", "bytes=0-") == "bytes=0-" for r in self.server.gets(f"{site}.7z")
        )


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """An archive.org look-alike: the dump (pipe tags), a corrupt one and the checksum list."""
    root = tmp_path_factory.mktemp("mirror")
    item = root / "stackexchange"
    files = write_site(root / "site", posts=600, users=80, tag_style="pipe")
    archive = pack_7z(files, item / f"{SITE}.7z")
    data = archive.read_bytes()
    (item / f"corrupt.{SITE}.7z").write_bytes(data[: len(data) * 2 // 3])
    sha1 = hashlib.sha1(data).hexdigest()
    (item / "stackexchange_files.xml").write_text(
        f'<files><file name="{SITE}.7z" source="original"><sha1>{sha1}</sha1></file></files>'
    )
    originals = {p.name: p.read_bytes() for p in files if p.name in KEYS}
    with DumpServer(root) as server:
        yield Mirror(server, root, originals)


@pytest.fixture(scope="module")
def dagbag(airflow_db: None):  # an airflow.models.DagBag, synced to the DB
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models import DagBag, DagModel
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(DAGS_FOLDER), include_examples=False)
    bag.sync_to_db("dags-folder", None)
    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id == CONSUMER).update({"is_paused": False})
    for task in bag.dags[PRODUCER].tasks:
        task.retries = 0  # failures are asserted, not retried (dag.test would wait out the delay)
    return bag


@pytest.fixture
def s3(aws_conn: str, monkeypatch: pytest.MonkeyPatch):  # a boto3 S3 client on an empty bucket
    monkeypatch.setenv("STACKEXCHANGE_DOWNLOAD_BACKOFF_SECONDS", "0")
    monkeypatch.setenv("STACKEXCHANGE_ALLOWED_HOSTS", "127.0.0.1,localhost")
    client = s3_client(aws_conn)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return client


_runs = itertools.count()


def run(dagbag, conf: dict[str, object]):  # the finished DagRun
    """Each run has its own logical date: ``dag.test()`` deletes the earlier runs of the same
    one (None matches every manual run), and check_source looks the earlier runs up."""
    logical_date = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=next(_runs))
    return dagbag.dags[PRODUCER].test(run_conf=conf, logical_date=logical_date)


def ti_state(dag_run, task_id: str) -> str:
    return dag_run.get_task_instance(task_id).state


def events(run_id: str) -> dict[str, dict]:
    """The asset events a producer run emitted, by asset name."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetModel.name, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetEvent.source_dag_id == PRODUCER, AssetEvent.source_run_id == run_id)
            .all()
        )
    return {name: extra for name, extra in rows}


def queued_for_consumer() -> set[str]:
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetModel.name)
            .join(AssetDagRunQueue, AssetDagRunQueue.asset_id == AssetModel.id)
            .filter(AssetDagRunQueue.target_dag_id == CONSUMER)
            .all()
        )
    return {name for (name,) in rows}


def stored(s3) -> dict[str, dict]:
    return {name: s3.head_object(Bucket=BUCKET, Key=key) for name, key in KEYS.items()}


def expected_extra(mirror: Mirror, name: str, head: dict, run_id: str) -> dict[str, object]:
    data = mirror.originals[name]
    return {
        "site": SITE,
        "uri": f"s3://{BUCKET}/{KEYS[name]}",
        "bytes": len(data),
        "rows": len(ET.fromstring(data).findall("row")),
        "sha256": hashlib.sha256(data).hexdigest(),
        "etag": head["ETag"].strip('"'),
        "version_id": None,
        "last_modified": head["LastModified"].isoformat(),
        "source_url": f"{mirror.base}/{SITE}.7z",
        "source_version": head["Metadata"]["source-version"],
        "ingest_id": f"{run_id}#1",
    }


def test_ingest_then_skip_then_force(dagbag, mirror: Mirror, s3) -> None:
    first = run(dagbag, mirror.conf())
    assert first.state == "success"
    for name, key in KEYS.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == mirror.originals[name]
    heads = stored(s3)
    emitted = events(first.run_id)
    assert set(emitted) == {RAW_POSTS.name, RAW_USERS.name}
    for asset, name in [(RAW_POSTS, "Posts.xml"), (RAW_USERS, "Users.xml")]:
        extra = emitted[asset.name]
        assert extra == expected_extra(mirror, name, heads[name], first.run_id)
        assert extra["source_version"].startswith('etag:"')
        assert heads[name]["Metadata"]["source-url"] == extra["source_url"]
        assert heads[name]["Metadata"]["ingest-id"] == extra["ingest_id"]
    downloads = mirror.archive_gets()

    second = run(dagbag, mirror.conf())
    assert second.state == "success"
    assert ti_state(second, "ingest") == "skipped"
    assert events(second.run_id) == {}
    assert mirror.archive_gets() == downloads  # not downloaded again
    assert stored(s3)["Posts.xml"]["ETag"] == heads["Posts.xml"]["ETag"]

    forced = run(dagbag, mirror.conf(force=True))
    assert ti_state(forced, "ingest") == "success"
    assert set(events(forced.run_id)) == {RAW_POSTS.name, RAW_USERS.name}
    assert mirror.archive_gets() == downloads + 1


def test_events_queue_the_consumer(dagbag, mirror: Mirror, s3) -> None:
    """The real consumer DAG (synced to the DB, unpaused) is queued on both assets."""
    assert CONSUMER in dagbag.dags, f"the consumer DAG does not import: {dagbag.import_errors}"
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(AssetDagRunQueue).delete()
    assert queued_for_consumer() == set()
    assert ti_state(run(dagbag, mirror.conf(force=True)), "ingest") == "success"
    assert queued_for_consumer() == {RAW_POSTS.name, RAW_USERS.name}


def test_corrupt_archive_fails_and_leaves_s3_untouched(dagbag, mirror: Mirror, s3) -> None:
    assert run(dagbag, mirror.conf()).state == "success"
    before = stored(s3)
    failed = run(dagbag, mirror.conf(site=f"corrupt.{SITE}"))
    assert failed.state == "failed"
    assert ti_state(failed, "ingest") == "failed"
    assert events(failed.run_id) == {}
    after = stored(s3)
    for name in KEYS:
        assert after[name]["ETag"] == before[name]["ETag"]
        assert after[name]["Metadata"] == before[name]["Metadata"]


def test_failed_publish_keeps_the_previous_pair_current(
    dagbag, mirror: Mirror, s3, aws_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second completion (Posts.xml, the larger) is refused: Users.xml, completed first,
    is put back, nothing is announced, and the next run ingests again without force."""
    assert run(dagbag, mirror.conf()).state == "success"
    before = stored(s3)
    deny = lambda method, path: method == "POST" and "Posts.xml?uploadId=" in path  # noqa: E731
    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_CONN"])
    with S3FaultProxy(aws_conn, deny=deny) as proxy, monkeypatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_AWS_CONN", json.dumps(
            {**conn, "extra": {**conn["extra"], "endpoint_url": proxy.url}}))  # fmt: skip
        broken = run(dagbag, mirror.conf(force=True))
        assert proxy.denied
    assert broken.state == "failed"
    assert events(broken.run_id) == {}
    after = stored(s3)
    for name in KEYS:
        assert after[name]["ETag"] == before[name]["ETag"]
        assert after[name]["Metadata"]["ingest-id"] == before[name]["Metadata"]["ingest-id"]

    after_failure = run(dagbag, mirror.conf())  # the previous pair is still the current one
    assert ti_state(after_failure, "ingest") == "skipped"
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_pair_whose_events_were_never_recorded_is_ingested_again(
    dagbag, mirror: Mirror, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies after both uploads, before Airflow records the events: S3 holds a
    complete pair of this version, but the consumer never heard of it, so it does not count."""
    from stackexchange import ingest

    def worker_lost(*_: object) -> dict[str, object]:
        raise RuntimeError("worker lost after the commit")

    with monkeypatch.context() as patch:
        patch.setattr(ingest, "extra", worker_lost)
        died = run(dagbag, mirror.conf(force=True))
    assert died.state == "failed"
    assert events(died.run_id) == {}
    for head in stored(s3).values():
        assert head["Metadata"]["ingest-id"].startswith(f"{died.run_id}#")
    downloads = mirror.archive_gets()

    healed = run(dagbag, mirror.conf())  # same source version, no force
    assert ti_state(healed, "ingest") == "success"
    assert set(events(healed.run_id)) == {RAW_POSTS.name, RAW_USERS.name}
    assert mirror.archive_gets() == downloads + 1


def test_airflow_dags_test_cli(dagbag, mirror: Mirror, s3) -> None:
    """The documented command, as a user runs it: ``airflow dags test produce_data_asset -c``."""
    conf = json.dumps(mirror.conf())
    result = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "dags", "test", PRODUCER, "-c", conf],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{DAGS_FOLDER}:{REPO}"},
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Posts.xml is valid" in output and "MB/s" in output
    for name, key in KEYS.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == mirror.originals[name]


def test_split_layout_is_ingested_from_two_archives(dagbag, mirror: Mirror, s3) -> None:
    """stackoverflow.com's layout: `{site}-Posts.7z` and `{site}-Users.7z`, found by probing."""
    site = f"split.{SITE}"
    files = write_site(mirror.root / "split", posts=300, users=40, seed=7)
    for table in ("Posts", "Users"):
        member = next(p for p in files if p.name == f"{table}.xml")
        pack_7z([member], mirror.root / "stackexchange" / f"{site}-{table}.7z")
    done = run(dagbag, mirror.conf(site=site))
    assert ti_state(done, "ingest") == "success"
    emitted = events(done.run_id)
    assert emitted[RAW_POSTS.name]["source_url"] == f"{mirror.base}/{site}-Posts.7z"
    assert emitted[RAW_USERS.name]["source_url"] == f"{mirror.base}/{site}-Users.7z"
    for name, key in KEYS.items():
        member = next(p for p in files if p.name == name)
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == member.read_bytes()


def test_unknown_site_fails_at_once_instead_of_retrying(
    dagbag, mirror: Mirror, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dagbag.dags[PRODUCER].get_task("check_source"), "retries", 3)
    failed = run(dagbag, mirror.conf(site="nosuch.stackexchange.com"))
    assert failed.state == "failed"
    check = failed.get_task_instance("check_source")
    assert (check.state, check.try_number) == ("failed", 1)  # not up_for_retry
    assert mirror.archive_gets("nosuch.stackexchange.com") == 0  # only the HEAD was sent
