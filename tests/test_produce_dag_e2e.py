"""End to end: the producer DAG really runs (``dag.test()``, and once the ``airflow dags test``
CLI) against a local HTTP mirror and moto's S3 server, over one site and many; results are
read back from S3 (through each site's manifest) and from the metadata DB."""

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

from local.sample_dump import build_dump, pack_7z, write_file_list, write_site
from local.services import s3_client
from stackexchange import publish, source
from stackexchange.assets import POSTS, USERS, raw_assets
from stackexchange.settings import DownloadPolicy, Storage
from tests import legacy_layout
from tests.http_fixtures import DumpServer, S3FaultProxy

REPO = Path(__file__).resolve().parents[1]  # not from conftest: importing it twice resets
DAGS_FOLDER = REPO / "dags"  # the session's AIRFLOW_HOME
pytestmark = pytest.mark.e2e

SITE = "demo.stackexchange.com"
OTHER = "other.stackexchange.com"
PRODUCER, CONSUMER = "produce_data_asset", "trigger_databricks_workflow_dag"
STORAGE = Storage()  # what the DAG files read at parse time (the tests set no STACKEXCHANGE_*)
BUCKET = STORAGE.bucket
RAW = raw_assets(STORAGE)
RAW_POSTS, RAW_USERS = RAW[POSTS], RAW[USERS]
MEMBERS = (POSTS, USERS)
FILE_LIST = "stackexchange_files.xml"  # what write_file_list writes for the item "stackexchange"


@dataclass
class Mirror:
    server: DumpServer
    root: Path
    originals: dict[str, dict[str, bytes]]  # site -> Posts.xml / Users.xml as generated

    @property
    def base(self) -> str:
        return f"{self.server.url}/stackexchange"

    def conf(self, *sites: str, **extra: object) -> dict[str, object]:
        # Every param, always: in-process dag.test() runs keep an earlier run's conf in the
        # task's params (each real task process starts afresh), so `force` would stick.
        return {"sites": list(sites or [SITE]), "source_base_url": self.base, "force": False,
                "include_meta": False, "dry_run": False, **extra}  # fmt: skip

    def archive_gets(self, site: str = SITE) -> int:
        """Downloads of the archive: GETs of its whole body from byte 0 (not the Range reads of
        the 7z headers, its first 32 bytes and its end, which the ingest makes first)."""
        return sum(
            r.headers.get("Range", "bytes=0-") == "bytes=0-" for r in self.server.gets(f"{site}.7z")
        )


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """An archive.org look-alike: two sites (pipe tags), a corrupt one and the file list."""
    root = tmp_path_factory.mktemp("mirror")
    item = root / "stackexchange"
    originals = {}
    for n, site in enumerate((SITE, OTHER)):
        files = write_site(root / site, posts=600 - 200 * n, users=80, tag_style="pipe", seed=n)
        pack_7z(files, item / f"{site}.7z")
        originals[site] = {p.name: p.read_bytes() for p in files if p.name in MEMBERS}
    data = (item / f"{SITE}.7z").read_bytes()
    (item / f"corrupt.{SITE}.7z").write_bytes(data[: len(data) * 2 // 3])
    write_file_list(item)
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


def site_states(dag_run, task_id: str) -> dict[str, str]:
    """The mapped task's states by site: the name check_source's instance of the same map index
    was given (an ingest skipped without running is never named)."""
    tis = dag_run.get_task_instances()
    names = {ti.map_index: ti.rendered_map_index for ti in tis if ti.task_id == "check_source"}
    return {names[ti.map_index]: ti.state for ti in tis if ti.task_id == task_id}


def events(run_id: str) -> list[tuple[str, dict]]:
    """The asset events a producer run emitted: (asset name, extra)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetModel.name, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetEvent.source_dag_id == PRODUCER, AssetEvent.source_run_id == run_id)
            .all()
        )
    return [(name, extra) for name, extra in rows]


def by_site(run_id: str) -> dict[str, dict[str, dict]]:
    """site -> asset name -> extra (each site announced at most once per run)."""
    found: dict[str, dict[str, dict]] = {}
    for name, extra in events(run_id):
        assert name not in found.setdefault(extra["site"], {}), "announced twice"
        found[extra["site"]][name] = extra
    return found


def consumer_parameters(run_id: str) -> list[dict[str, str]]:
    """What the consumer's check task makes of these events: one job run per site."""
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from stackexchange.databricks_job import job_parameters, still_published

    assets = {asset.name: asset for asset in RAW.values()}
    accessor = TriggeringAssetEventsAccessor.build(
        AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=name, uri=assets[name].uri, extra={}),
            extra=extra,
            source_aliases=[],
            timestamp=datetime.now(UTC),
        )
        for name, extra in events(run_id)
    )
    return still_published(job_parameters(accessor, STORAGE), "aws_conn", STORAGE)


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


def manifest(s3, site: str = SITE) -> publish.Manifest | None:
    return publish.read_manifest(s3, publish.SiteKeys.of(STORAGE, site))


def body(s3, uri: str) -> bytes:
    key = uri.removeprefix(f"s3://{BUCKET}/")
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def expected_extra(mirror: Mirror, site: str, name: str, published, run_id: str) -> dict:
    data = mirror.originals[site][name]
    current = publish.SiteKeys.of(STORAGE, site)
    return {
        "site": site,
        "uri": published.uri,
        "bytes": len(data),
        "rows": len(ET.fromstring(data).findall("row")),
        "sha256": hashlib.sha256(data).hexdigest(),
        "etag": published.etag,
        "version_id": None,
        "last_modified": published.last_modified,
        "source_url": f"{mirror.base}/{site}.7z",
        "source_version": published.source_version,
        "ingest_id": f"{run_id}#1",
        "generation": published.uri.split("/")[-2],
        "manifest_uri": current.uri(current.manifest),
    }


def test_ingest_then_skip_then_force(dagbag, mirror: Mirror, s3) -> None:
    first = run(dagbag, mirror.conf())
    assert first.state == "success"
    (ingested,) = [ti for ti in first.get_task_instances() if ti.task_id == "ingest"]
    assert (ingested.rendered_map_index, ingested.state) == (SITE, "success")  # named by site
    current = manifest(s3)
    assert current is not None and current.ingest_id == f"{first.run_id}#1"
    emitted = by_site(first.run_id)
    assert set(emitted) == {SITE}
    for asset, name in [(RAW_POSTS, POSTS), (RAW_USERS, USERS)]:
        published = current.objects[name]
        assert published.uri == (
            f"s3://{BUCKET}/{STORAGE.prefix}/{SITE}/{current.generation}/{name}"
        )
        assert body(s3, published.uri) == mirror.originals[SITE][name]
        extra = emitted[SITE][asset.name]
        assert extra == expected_extra(mirror, SITE, name, published, first.run_id)
        assert extra["source_version"].startswith('etag:"')
        head = s3.head_object(Bucket=BUCKET, Key=published.uri.removeprefix(f"s3://{BUCKET}/"))
        assert head["ETag"].strip('"') == extra["etag"]
        assert head["Metadata"]["ingest-id"] == extra["ingest_id"]
    downloads = mirror.archive_gets()

    second = run(dagbag, mirror.conf())
    assert second.state == "success"
    assert site_states(second, "check_source") == {SITE: "skipped"}
    assert site_states(second, "ingest") == {SITE: "skipped"}
    assert events(second.run_id) == []
    assert mirror.archive_gets() == downloads  # not downloaded again
    assert manifest(s3) == current

    forced = run(dagbag, mirror.conf(force=True))
    assert site_states(forced, "ingest") == {SITE: "success"}
    assert set(by_site(forced.run_id)[SITE]) == {RAW_POSTS.name, RAW_USERS.name}
    assert mirror.archive_gets() == downloads + 1
    assert manifest(s3).previous == [current.generation]  # kept for rollback


def test_an_upgraded_deployment_adopts_its_legacy_pair_and_announces_it(
    dagbag, mirror: Mirror, s3
) -> None:
    """The single-site version left SITE's pair at the fixed keys: the first run adopts it as
    SITE's first generation without downloading, announces it from there (the consumer takes
    it), and deletes the legacy keys; the next run finds SITE up to date."""
    archives = source.resolve(SITE, source.Dumps(mirror.base, DownloadPolicy.from_env())).archives
    legacy_layout.write_legacy(s3, BUCKET, STORAGE.prefix, SITE, mirror.originals[SITE], archives)
    downloads = mirror.archive_gets()

    upgraded = run(dagbag, mirror.conf())

    assert site_states(upgraded, "ingest") == {SITE: "success"}
    assert mirror.archive_gets() == downloads
    current = manifest(s3)
    assert current is not None and current.ingest_id == f"{upgraded.run_id}#1"
    (parameters,) = consumer_parameters(upgraded.run_id)
    for name, prefix in [(POSTS, "posts"), (USERS, "users")]:
        uri = parameters[f"{prefix}_uri"]
        assert uri == current.objects[name].uri
        assert uri == f"s3://{BUCKET}/{STORAGE.prefix}/{SITE}/{current.generation}/{name}"
        assert body(s3, uri) == mirror.originals[SITE][name]
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert not any(key.count("/") == STORAGE.prefix.count("/") + 1 for key in listed)

    again = run(dagbag, mirror.conf())
    assert site_states(again, "check_source") == {SITE: "skipped"}
    assert events(again.run_id) == []
    assert manifest(s3) == current


def test_events_queue_the_consumer(dagbag, mirror: Mirror, s3) -> None:
    """The real consumer DAG (synced to the DB, unpaused) is queued on both assets."""
    assert CONSUMER in dagbag.dags, f"the consumer DAG does not import: {dagbag.import_errors}"
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(AssetDagRunQueue).delete()
    assert queued_for_consumer() == set()
    assert site_states(run(dagbag, mirror.conf(force=True)), "ingest") == {SITE: "success"}
    assert queued_for_consumer() == {RAW_POSTS.name, RAW_USERS.name}


def test_two_sites_one_corrupt_the_good_one_publishes_alone(dagbag, mirror: Mirror, s3) -> None:
    """Two sites in one run, one archive corrupt: the good site publishes and the consumer gets
    exactly its objects; the bad site fails alone and its previous pair stays; a site whose
    pair is unchanged is skipped."""
    assert run(dagbag, mirror.conf(SITE)).state == "success"
    before = manifest(s3)
    # The corrupt archive, served under SITE's name by a second mirror item.
    broken_item = mirror.root / "broken"
    broken_item.mkdir(exist_ok=True)
    (broken_item / f"{SITE}.7z").write_bytes((mirror.root / "stackexchange" /
                                              f"corrupt.{SITE}.7z").read_bytes())  # fmt: skip
    (broken_item / f"{OTHER}.7z").write_bytes((mirror.root / "stackexchange" /
                                               f"{OTHER}.7z").read_bytes())  # fmt: skip
    conf = {**mirror.conf(SITE, OTHER), "source_base_url": f"{mirror.server.url}/broken"}
    mixed = run(dagbag, conf)
    assert mixed.state == "failed"
    assert site_states(mixed, "ingest") == {SITE: "failed", OTHER: "success"}
    assert manifest(s3) == before  # the bad site's previous pair stays current
    emitted = by_site(mixed.run_id)
    assert set(emitted) == {OTHER}
    other = manifest(s3, OTHER)
    assert other is not None
    parameters = consumer_parameters(mixed.run_id)
    assert [p["site"] for p in parameters] == [OTHER]
    assert parameters[0]["posts_uri"] == other.objects[POSTS].uri
    assert parameters[0]["users_uri"] == other.objects[USERS].uri
    assert parameters[0]["posts_etag"] == other.objects[POSTS].etag
    for name in MEMBERS:
        assert body(s3, other.objects[name].uri) == mirror.originals[OTHER][name]

    # From the good mirror: SITE's pair is its current version, OTHER's came from elsewhere.
    again = run(dagbag, mirror.conf(SITE, OTHER))
    assert site_states(again, "check_source") == {SITE: "skipped", OTHER: "success"}
    assert site_states(again, "ingest") == {SITE: "skipped", OTHER: "success"}
    assert set(by_site(again.run_id)) == {OTHER}
    last = run(dagbag, mirror.conf(SITE, OTHER))
    assert site_states(last, "check_source") == {SITE: "skipped", OTHER: "skipped"}
    assert events(last.run_id) == []


def test_two_sites_finishing_together_give_one_job_run_each(dagbag, mirror: Mirror, s3) -> None:
    done = run(dagbag, mirror.conf(SITE, OTHER, force=True))
    assert site_states(done, "ingest") == {SITE: "success", OTHER: "success"}
    parameters = {p["site"]: p for p in consumer_parameters(done.run_id)}
    assert set(parameters) == {SITE, OTHER}
    for site, given in parameters.items():
        current = manifest(s3, site)
        assert given["posts_uri"] == current.objects[POSTS].uri
        assert given["users_uri"] == current.objects[USERS].uri
        assert given["users_sha256"] == current.objects[USERS].sha256
        assert f"/{site}/" in given["posts_uri"]


def test_a_pair_whose_events_were_never_recorded_is_ingested_again(
    dagbag, mirror: Mirror, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies after the commit, before Airflow records the events: S3 holds a
    complete pair of this version, but the consumer never heard of it, so it does not count."""
    from stackexchange import ingest

    def worker_lost(*_: object) -> dict[str, object]:
        raise RuntimeError("worker lost after the commit")

    with monkeypatch.context() as patch:
        patch.setattr(ingest, "extra", worker_lost)
        died = run(dagbag, mirror.conf(force=True))
    assert died.state == "failed"
    assert events(died.run_id) == []
    assert manifest(s3).ingest_id.startswith(f"{died.run_id}#")
    downloads = mirror.archive_gets()

    healed = run(dagbag, mirror.conf())  # same source version, no force
    assert site_states(healed, "ingest") == {SITE: "success"}
    assert set(by_site(healed.run_id)[SITE]) == {RAW_POSTS.name, RAW_USERS.name}
    assert mirror.archive_gets() == downloads + 1


def test_a_failed_publish_keeps_the_previous_pair_current(
    dagbag, mirror: Mirror, s3, aws_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest PUT (the commit) is refused: nothing is announced, the previous pair stays
    current, and the next run ingests again without force."""
    assert run(dagbag, mirror.conf()).state == "success"
    before = manifest(s3)
    deny = lambda method, path: method == "PUT" and path.split("?")[0].endswith(  # noqa: E731
        "/_manifest.json"
    )
    conn = json.loads(os.environ["AIRFLOW_CONN_AWS_CONN"])
    with S3FaultProxy(aws_conn, deny=deny) as proxy, monkeypatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_AWS_CONN", json.dumps(
            {**conn, "extra": {**conn["extra"], "endpoint_url": proxy.url}}))  # fmt: skip
        broken = run(dagbag, mirror.conf(force=True))
        assert proxy.denied
    assert broken.state == "failed"
    assert events(broken.run_id) == []
    assert manifest(s3) == before
    after_failure = run(dagbag, mirror.conf())  # the previous pair is still the current one
    assert site_states(after_failure, "ingest") == {SITE: "skipped"}
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_airflow_dags_test_cli(dagbag, mirror: Mirror, s3) -> None:
    """The documented command, as a user runs it: ``airflow dags test produce_data_asset -c``."""
    conf = json.dumps(mirror.conf(force=True))
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
    current = manifest(s3)
    for name in MEMBERS:
        assert body(s3, current.objects[name].uri) == mirror.originals[SITE][name]


def test_split_layout_is_ingested_from_two_archives(dagbag, mirror: Mirror, s3) -> None:
    """stackoverflow.com's layout: `{site}-Posts.7z` and `{site}-Users.7z`, found by probing."""
    site = f"split.{SITE}"
    files = write_site(mirror.root / "split", posts=300, users=40, seed=7)
    for table in ("Posts", "Users"):
        member = next(p for p in files if p.name == f"{table}.xml")
        pack_7z([member], mirror.root / "stackexchange" / f"{site}-{table}.7z")
    done = run(dagbag, mirror.conf(site))
    assert site_states(done, "ingest") == {site: "success"}
    emitted = by_site(done.run_id)[site]
    assert emitted[RAW_POSTS.name]["source_url"] == f"{mirror.base}/{site}-Posts.7z"
    assert emitted[RAW_USERS.name]["source_url"] == f"{mirror.base}/{site}-Users.7z"
    current = manifest(s3, site)
    for name in MEMBERS:
        member = next(p for p in files if p.name == name)
        assert body(s3, current.objects[name].uri) == member.read_bytes()


def test_unknown_site_fails_at_once_instead_of_retrying(
    dagbag, mirror: Mirror, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dagbag.dags[PRODUCER].get_task("check_source"), "retries", 3)
    failed = run(dagbag, mirror.conf("nosuch.stackexchange.com"))
    assert failed.state == "failed"
    check = next(ti for ti in failed.get_task_instances() if ti.task_id == "check_source")
    assert (check.state, check.try_number) == ("failed", 1)  # not up_for_retry
    assert mirror.archive_gets("nosuch.stackexchange.com") == 0  # only the HEAD was sent


def test_an_invalid_site_name_is_refused_before_any_request(dagbag, mirror: Mirror, s3) -> None:
    from airflow.exceptions import ParamValidationError

    requests = len(mirror.server.requests)
    with pytest.raises(ParamValidationError, match="'Bad..Name' does not match"):
        run(dagbag, mirror.conf(SITE, "Bad..Name"))
    assert len(mirror.server.requests) == requests


def test_dry_run_plans_without_downloading(dagbag, mirror: Mirror, s3, capfd) -> None:
    assert run(dagbag, mirror.conf(SITE)).state == "success"
    gets = mirror.archive_gets() + mirror.archive_gets(OTHER)
    planned = run(dagbag, mirror.conf(SITE, OTHER, dry_run=True))
    assert planned.state == "success"
    out = capfd.readouterr().out
    assert f"{SITE}: {SITE}.7z (" in out and "SKIP (unchanged)" in out
    assert f"{OTHER}: {OTHER}.7z (" in out and "INGEST: no pair of" in out
    assert "Total: 1 to ingest, 1 unchanged" in out
    ingests = [ti for ti in planned.get_task_instances() if ti.task_id == "ingest"]
    assert {ti.state for ti in ingests} == {"skipped"}  # the fan-out over no site
    assert mirror.archive_gets() + mirror.archive_gets(OTHER) == gets
    assert manifest(s3, OTHER) is None


@pytest.mark.parametrize("sites", [[SITE, OTHER], ["all"]])
def test_a_dry_run_reads_the_file_list_once(dagbag, mirror: Mirror, s3, sites, capfd) -> None:
    """However many sites it plans: the source's file list is one GET, not one per site."""
    reads = len(mirror.server.gets(FILE_LIST))
    assert run(dagbag, mirror.conf(*sites, dry_run=True)).state == "success"
    planned = [line for line in capfd.readouterr().out.splitlines() if ".7z (" in line]
    assert len(planned) >= 2
    assert len(mirror.server.gets(FILE_LIST)) - reads == 1


@pytest.fixture(scope="module")
def fifty_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mirror of 50 tiny sites (and two meta sites), with its file list; its base URL."""
    root = tmp_path_factory.mktemp("fifty")
    item = root / "stackexchange"
    sites = [f"s{n:02d}.stackexchange.com" for n in range(50)]
    source = build_dump(root / "one.7z", posts=4, users=2, other_files=False)
    for site in [*sites, "meta.s00.stackexchange.com", "s01.meta.stackexchange.com"]:
        (item / f"{site}.7z").parent.mkdir(parents=True, exist_ok=True)
        (item / f"{site}.7z").write_bytes(source.read_bytes())
    write_file_list(item)
    with DumpServer(root) as server:
        yield f"{server.url}/stackexchange"


def test_all_fans_out_over_fifty_sites_bounded_and_a_rerun_skips_them(
    dagbag, fifty_sites: str, s3
) -> None:
    from produce_data_asset import MAX_ACTIVE_SITES

    dag = dagbag.dags[PRODUCER]
    for task_id in ("check_source", "ingest"):  # the bound the scheduler applies
        assert dag.get_task(task_id).max_active_tis_per_dagrun == MAX_ACTIVE_SITES == 4
    conf = {"sites": ["all"], "source_base_url": fifty_sites, "force": False,
            "include_meta": False, "dry_run": False}  # fmt: skip
    first = run(dagbag, conf)
    assert first.state == "success"
    states = site_states(first, "ingest")
    assert len(states) == 50 and set(states.values()) == {"success"}
    assert not any(".meta." in s or s.startswith("meta.") for s in states)
    assert sorted(by_site(first.run_id)) == sorted(states)  # each announced once
    for site in states:
        assert manifest(s3, site) is not None
    rerun = run(dagbag, conf)
    assert set(site_states(rerun, "check_source").values()) == {"skipped"}
    assert len(site_states(rerun, "ingest")) == 50
    assert events(rerun.run_id) == []
