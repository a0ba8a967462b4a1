"""The consumer DAG drives the real DatabricksRunNowOperator against the local stand-in.

``dag.test()`` runs the tasks in-process and the trigger inline (Airflow 3.0.2). It creates a
manual run; a scheduler would attach the asset events that triggered the run, so the test
attaches real ``AssetEvent`` rows (registered through Airflow's AssetManager) to that run. The
objects the events announce are written to moto's S3 server, which the stand-in reads too.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from local import services
from local.sample_dump import write_site
from local.services import s3_client
from tests.databricks_fixtures import StandIn

DAGS = Path(__file__).resolve().parents[1] / "dags"
SITE = "conlang.example"


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("dump")
    write_site(directory, posts=400, users=60, tag_style="pipe", seed=5, other_files=False)
    return {"posts": directory / "Posts.xml", "users": directory / "Users.xml"}


@pytest.fixture
def databricks_conn(databricks_standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    """``databricks_conn`` pointing at the stand-in; ``schema: http`` is the hook's URL scheme."""
    conn = services.databricks_conn(f"http://127.0.0.1:{databricks_standin.port}",
                                    databricks_standin.token)  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", conn)
    return databricks_standin


def _put(s3, uri: str, body: bytes) -> dict[str, str]:
    """Write ``body`` at ``uri``; the object's ETag (unquoted), VersionId and LastModified, as
    the producer announces them (read back with a HEAD after the write)."""
    bucket, key = urlsplit(uri).netloc, urlsplit(uri).path.lstrip("/")
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    head = s3.head_object(Bucket=bucket, Key=key)
    return {
        "etag": head["ETag"].strip('"'),
        "version_id": head.get("VersionId"),
        "last_modified": head["LastModified"].astimezone(UTC).isoformat(),
    }


@pytest.fixture
def publish(aws_conn: str) -> Callable[..., dict[str, object]]:
    """``publish(asset, body)``: write the object at the asset's URI, return its event's extra."""
    from stackexchange.assets import BUCKET

    s3 = s3_client(aws_conn)
    s3.create_bucket(Bucket=BUCKET)  # idempotent in us-east-1: other tests may have made it

    def publish(asset, body: bytes, site: str = SITE) -> dict[str, object]:
        return {
            "uri": asset.uri,
            "site": site,
            "bytes": len(body),
            "rows": body.count(b"<row "),
            "sha256": hashlib.sha256(body).hexdigest(),
            **_put(s3, asset.uri, body),
            "source_url": "file:///dump.7z",
            "source_version": "test",
            "ingest_id": uuid.uuid4().hex,
        }

    return publish


@pytest.fixture
def published(publish, dump: dict[str, Path]) -> tuple[dict, dict]:
    """The generated dump published as the producer does: the two events' extras."""
    from stackexchange.assets import RAW_POSTS, RAW_USERS

    return publish(RAW_POSTS, dump["posts"].read_bytes()), publish(
        RAW_USERS, dump["users"].read_bytes()
    )


@pytest.fixture
def run_on_events(airflow_db, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Run a DAG with ``dag.test()`` as if the given raw-asset events had triggered it."""
    monkeypatch.setenv("COLUMNS", "400")  # fewer wrapped lines in tracebacks
    from airflow.assets.manager import AssetManager
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models import dag as dag_module
    from airflow.models.dagbag import DagBag
    from airflow.utils.session import create_session

    from stackexchange.assets import RAW_POSTS, RAW_USERS

    def run(dag, posts_extra: dict, users_extra: dict):
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder="/dev/null", include_examples=False)
        bag.bag_dag(dag)
        bag.sync_to_db("dags-folder", None)
        with create_session() as session:
            events = [
                AssetManager.register_asset_change(asset=asset, extra=extra, session=session)
                for asset, extra in ((RAW_POSTS, posts_extra), (RAW_USERS, users_extra))
            ]
            event_ids = [event.id for event in events]
        original = dag_module._create_orm_dagrun

        def with_events(**kwargs):
            from airflow.models.asset import AssetEvent

            session = kwargs["session"]
            run = original(**kwargs)
            run.consumed_asset_events = list(
                session.query(AssetEvent).filter(AssetEvent.id.in_(event_ids))
            )
            session.flush()
            return run

        monkeypatch.setattr(dag_module, "_create_orm_dagrun", with_events)
        return dag.test()

    yield run


def _dag(**operator_kwargs):
    """The DAG file's DAG (fast polling, no retries), or just its operator with other arguments
    (no check of the objects before the job run)."""
    from airflow.models.dagbag import DagBag
    from airflow.sdk import DAG

    from stackexchange.databricks_operator import RunJobOnAssetEventsOperator

    bag = DagBag(str(DAGS / "trigger_databricks_workflow_dag.py"), bundle_path=DAGS)
    dag = bag.dags["trigger_databricks_workflow_dag"]
    if not operator_kwargs:
        for task in dag.tasks:
            task.retries = 0
        dag.get_task("run_medallion_job").polling_period_seconds = 1
        return dag
    with DAG(dag_id=f"test_consumer_{abs(hash(frozenset(operator_kwargs.items())))}",
             schedule=dag.timetable.asset_condition) as variant:  # fmt: skip
        RunJobOnAssetEventsOperator(
            task_id="run_medallion_job",
            databricks_conn_id="databricks_conn",
            polling_period_seconds=1,
            execution_timeout=timedelta(minutes=5),
            **operator_kwargs,
        )
    variant.relative_fileloc = Path(__file__).name
    return variant


def _log(capfd: pytest.CaptureFixture[str]) -> str:
    """What the run printed, without colours and line wrapping of the rich traceback."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", capfd.readouterr().out).split())


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_deferrable_run_processes_the_published_data(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd
) -> None:
    from local.databricks_standin import read_table
    from stackexchange.assets import RAW_POSTS

    posts, users = published
    dag_run = run_on_events(_dag(), posts, users)
    out = _log(capfd)
    assert _states(dag_run) == {
        "check_announced_objects": "success",
        "run_medallion_job": "success",
    }, out[-3000:]
    assert "running trigger in line" in out  # the wait happened in the trigger
    assert f"{databricks_conn.url}/runs/" in out

    bronze = read_table(databricks_conn.warehouse, "bronze_posts").to_pylist()
    lineage = {(r["_source_uri"], r["_source_etag"], r["_source_sha256"]) for r in bronze}
    assert lineage == {(RAW_POSTS.uri, posts["etag"], posts["sha256"])}
    assert {row["_site"] for row in bronze} == {SITE}
    tags = read_table(databricks_conn.warehouse, "gold_most_popular_tags").to_pylist()
    assert [row["Rank"] for row in tags] == list(range(1, len(tags) + 1))


def test_a_superseded_object_skips_the_run_before_databricks(
    databricks_conn: StandIn, publish, dump: dict[str, Path], run_on_events, capfd
) -> None:
    from stackexchange.assets import RAW_POSTS, RAW_USERS

    posts = publish(RAW_POSTS, dump["posts"].read_bytes())
    users = publish(RAW_USERS, dump["users"].read_bytes())
    newer = publish(RAW_USERS, dump["users"].read_bytes() + b"\n")  # a newer ingest's object
    dag_run = run_on_events(_dag(), posts, users)
    out = _log(capfd)
    assert _states(dag_run) == {
        "check_announced_objects": "skipped",
        "run_medallion_job": "skipped",
    }
    assert (
        f"{RAW_USERS.uri} was superseded by a newer ingest (announced ETag {users['etag']}, "
        f"now {newer['etag']}); that ingest's own asset events trigger a run"
    ) in out
    assert "Run submitted" not in out


def test_an_event_naming_a_foreign_object_fails_before_databricks(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd
) -> None:
    posts, users = published
    foreign = {**posts, "uri": "s3://another-teams-bucket/raw/stackexchange/Posts.xml"}
    dag_run = run_on_events(_dag(), foreign, users)
    out = _log(capfd)
    assert _states(dag_run)["check_announced_objects"] == "failed"
    assert "announces 's3://another-teams-bucket/raw/stackexchange/Posts.xml'" in out
    assert "Run submitted" not in out


@pytest.mark.parametrize("compared", ["etag", "size and last_modified"])
def test_bronze_refuses_an_object_replaced_after_the_dag_checked_it(
    databricks_conn: StandIn, publish, dump: dict[str, Path], run_on_events, capfd, compared: str
) -> None:
    """The operator alone (no check before): bronze's own check catches the newer object, by
    ETag, or without one (what serverless compares) by size and last_modified."""
    from stackexchange.assets import RAW_POSTS, RAW_USERS

    posts = publish(RAW_POSTS, dump["posts"].read_bytes())
    users = publish(RAW_USERS, dump["users"].read_bytes())
    newer = publish(RAW_POSTS, dump["posts"].read_bytes() + b"\n")
    if compared == "etag":
        expected = f"announced ETag {posts['etag']}, now ETag {newer['etag']}"
    else:
        posts = {**posts, "etag": None, "version_id": None}
        expected = (
            f"announced {posts['bytes']} bytes, last modified {posts['last_modified']}, "
            f"now {newer['bytes']} bytes, last modified {newer['last_modified']}"
        )
    dag = _dag(job_name="stackexchange_medallion", deferrable=False)
    dag_run = run_on_events(dag, posts, users)
    out = _log(capfd)
    assert _states(dag_run) == {"run_medallion_job": "failed"}
    assert "'task_key': 'bronze_posts'" in out
    assert (
        f"{RAW_POSTS.uri} was superseded by a newer ingest ({expected}); its own asset events "
        "trigger a run"
    ) in out


def test_failed_notebook_fails_the_task_with_url_and_message(
    databricks_conn: StandIn, publish, dump: dict[str, Path], run_on_events, capfd
) -> None:
    from stackexchange.assets import RAW_POSTS, RAW_USERS

    malformed = b'<posts>\r\n  <row Id="not-a-number" />\r\n</posts>'
    dag_run = run_on_events(
        _dag(), publish(RAW_POSTS, malformed), publish(RAW_USERS, dump["users"].read_bytes())
    )
    out = _log(capfd)
    assert _states(dag_run)["run_medallion_job"] == "failed"
    assert "Task bronze_posts failed with message" in out
    assert "FAILED_READ_FILE" in out  # the failing task's own error, from runs/get-output
    assert f"{databricks_conn.url}/runs/" in out


def test_not_deferrable_run_succeeds(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd
) -> None:
    dag = _dag(job_name="stackexchange_medallion", deferrable=False)
    dag_run = run_on_events(dag, *published)
    out = _log(capfd)
    assert _states(dag_run) == {"run_medallion_job": "success"}, out[-3000:]
    assert "run_medallion_job completed successfully" in out
    assert "running trigger in line" not in out


@pytest.mark.parametrize("deferrable", [True, False])
def test_unknown_job_name_is_a_clear_error(
    databricks_conn: StandIn, published: tuple[dict, dict], run_on_events, capfd, deferrable: bool
) -> None:
    dag = _dag(job_name="no_such_job", deferrable=deferrable)
    dag_run = run_on_events(dag, *published)
    assert _states(dag_run) == {"run_medallion_job": "failed"}
    assert "Job ID for job name no_such_job can not be found" in _log(capfd)


def test_events_from_different_sites_fail_before_any_job_run(
    databricks_conn: StandIn, publish, dump: dict[str, Path], run_on_events, capfd
) -> None:
    from stackexchange.assets import RAW_POSTS, RAW_USERS

    dag = _dag(job_name="stackexchange_medallion", deferrable=False)
    posts = publish(RAW_POSTS, dump["posts"].read_bytes())
    users = publish(RAW_USERS, dump["users"].read_bytes(), site="other")
    dag_run = run_on_events(dag, posts, users)
    out = _log(capfd)
    assert _states(dag_run) == {"run_medallion_job": "failed"}
    assert "from different sites" in out
    assert "Run submitted" not in out


def _events(*events: tuple) -> object:
    """Airflow's own accessor over (asset, extra, timestamp) events, as the task context has."""
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    return TriggeringAssetEventsAccessor.build(
        AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=asset.name, uri=asset.uri, extra={}),
            extra=extra,
            source_aliases=[],
            timestamp=timestamp,
        )
        for asset, extra, timestamp in events
    )


def _extra(asset, **values: object) -> dict[str, object]:
    return {"site": "s", "uri": asset.uri, "sha256": "x", **values}


def test_job_parameters_come_from_the_newest_event_of_each_asset() -> None:
    from stackexchange.assets import RAW_POSTS, RAW_USERS
    from stackexchange.databricks_job import job_parameters

    old, new = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    events = _events(
        (RAW_POSTS, _extra(RAW_POSTS, sha256="p2", etag="e2-3", version_id="v2", bytes=2048,
                           last_modified="2025-02-01T00:00:07+00:00"), new),
        (RAW_POSTS, _extra(RAW_POSTS, sha256="p1", etag="e1", version_id="v1", bytes=1024,
                           last_modified="2025-01-01T00:00:09+00:00"), old),
        (RAW_USERS, _extra(RAW_USERS, sha256="u1", etag="eu", version_id=None, bytes=0,
                           last_modified="2025-01-01T00:00:03+00:00"), old),
    )  # fmt: skip
    assert job_parameters(events) == {
        "posts_uri": RAW_POSTS.uri,
        "users_uri": RAW_USERS.uri,
        "site": "s",
        "posts_sha256": "p2",
        "users_sha256": "u1",
        "posts_etag": "e2-3",
        "users_etag": "eu",
        "posts_version_id": "v2",
        "users_version_id": "",
        "posts_bytes": "2048",
        "users_bytes": "0",
        "posts_last_modified": "2025-02-01T00:00:07+00:00",
        "users_last_modified": "2025-01-01T00:00:03+00:00",
    }


def test_events_of_older_producers_leave_what_they_lack_empty() -> None:
    from stackexchange.assets import RAW_POSTS, RAW_USERS
    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)

    def identity(posts: dict, users: dict) -> dict[str, str]:
        parameters = job_parameters(_events((RAW_POSTS, posts, now), (RAW_USERS, users, now)))
        keys = ("etag", "version_id", "bytes", "last_modified")
        return {f"{p}_{k}": parameters[f"{p}_{k}"] for p in ("posts", "users") for k in keys}

    sha256_only = identity(_extra(RAW_POSTS), _extra(RAW_USERS))
    assert set(sha256_only.values()) == {""}
    # Before last_modified: an ETag and a size, no modification time.
    etag_era = identity(
        _extra(RAW_POSTS, etag="e1", version_id=None, bytes=8),
        _extra(RAW_USERS, etag="e2", version_id=None, bytes=9),
    )
    assert etag_era == {
        "posts_etag": "e1", "posts_version_id": "", "posts_bytes": "8", "posts_last_modified": "",
        "users_etag": "e2", "users_version_id": "", "users_bytes": "9", "users_last_modified": "",
    }  # fmt: skip


def test_an_event_announcing_another_object_is_refused() -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.assets import RAW_POSTS, RAW_USERS
    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)
    forged = _extra(RAW_USERS, uri="s3://another-teams-bucket/Users.xml")
    with pytest.raises(AirflowFailException) as raised:
        job_parameters(_events((RAW_POSTS, _extra(RAW_POSTS), now), (RAW_USERS, forged, now)))
    message = str(raised.value)
    assert "Asset event of stackexchange_raw_users announces" in message
    assert "'s3://another-teams-bucket/Users.xml'" in message
    assert f"the asset is {RAW_USERS.uri!r}" in message


def test_job_parameters_name_what_is_missing() -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.assets import RAW_POSTS, RAW_USERS
    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)
    with pytest.raises(AirflowFailException, match="No triggering event for asset .*users"):
        job_parameters(_events((RAW_POSTS, _extra(RAW_POSTS), now)))
    lacking = _events((RAW_POSTS, {"site": "s", "uri": RAW_POSTS.uri}, now), (RAW_USERS, {}, now))
    with pytest.raises(AirflowFailException, match=r"lacks \['sha256'\]"):
        job_parameters(lacking)


@pytest.fixture
def objects_bucket(aws_conn: str) -> tuple[object, str]:
    """A fresh bucket on moto, reached by the DAG through `aws_conn`, and a client for it."""
    s3 = s3_client(aws_conn)
    bucket = f"consumer-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket


def _parameters(posts: dict, users: dict, bucket: str) -> dict[str, str]:
    return {
        "posts_uri": f"s3://{bucket}/raw/Posts.xml",
        "users_uri": f"s3://{bucket}/raw/Users.xml",
        "posts_etag": posts["etag"],
        "users_etag": users["etag"],
        "posts_version_id": posts["version_id"] or "",
        "users_version_id": users["version_id"] or "",
    }


def test_objects_still_holding_the_announced_data_pass(objects_bucket, caplog) -> None:
    from stackexchange.databricks_job import ensure_still_published

    s3, bucket = objects_bucket
    posts = _put(s3, f"s3://{bucket}/raw/Posts.xml", b"<posts/>")
    users = _put(s3, f"s3://{bucket}/raw/Users.xml", b"<users/>")
    with caplog.at_level(logging.INFO, logger="stackexchange.databricks_job"):
        ensure_still_published(_parameters(posts, users, bucket), "aws_conn")
    assert f"s3://{bucket}/raw/Users.xml still holds the announced object" in caplog.text


def test_a_replaced_object_skips_with_both_etags(objects_bucket) -> None:
    from airflow.exceptions import AirflowSkipException

    from stackexchange.databricks_job import ensure_still_published

    s3, bucket = objects_bucket
    posts = _put(s3, f"s3://{bucket}/raw/Posts.xml", b"<posts/>")
    users = _put(s3, f"s3://{bucket}/raw/Users.xml", b"<users/>")
    newer = _put(s3, f"s3://{bucket}/raw/Posts.xml", b"<posts>newer</posts>")
    with pytest.raises(AirflowSkipException) as raised:
        ensure_still_published(_parameters(posts, users, bucket), "aws_conn")
    assert str(raised.value) == (
        f"s3://{bucket}/raw/Posts.xml was superseded by a newer ingest (announced ETag "
        f"{posts['etag']}, now {newer['etag']}); that ingest's own asset events trigger a run"
    )


def test_a_new_version_with_the_same_bytes_skips_too(objects_bucket) -> None:
    from airflow.exceptions import AirflowSkipException

    from stackexchange.databricks_job import ensure_still_published

    s3, bucket = objects_bucket
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    posts = _put(s3, f"s3://{bucket}/raw/Posts.xml", b"<posts/>")
    users = _put(s3, f"s3://{bucket}/raw/Users.xml", b"<users/>")
    again = _put(s3, f"s3://{bucket}/raw/Users.xml", b"<users/>")
    assert again["etag"] == users["etag"]
    with pytest.raises(
        AirflowSkipException, match=f"now {users['etag']}, version {again['version_id']}"
    ):
        ensure_still_published(_parameters(posts, users, bucket), "aws_conn")


def test_a_deleted_object_fails_and_sha256_only_events_are_not_checked(
    objects_bucket, caplog
) -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.databricks_job import ensure_still_published

    s3, bucket = objects_bucket
    posts = _put(s3, f"s3://{bucket}/raw/Posts.xml", b"<posts/>")
    gone = {"etag": "0" * 32, "version_id": None}  # Users.xml was never written
    with pytest.raises(AirflowFailException, match=r"Users\.xml no longer exists"):
        ensure_still_published(_parameters(posts, gone, bucket), "aws_conn")

    legacy = {"etag": "", "version_id": None}
    ensure_still_published(_parameters(posts, legacy, bucket), "aws_conn")
    assert "has no etag (older producer)" in caplog.text


def test_a_missing_aws_conn_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.exceptions import AirflowFailException

    from stackexchange.databricks_job import ensure_still_published

    monkeypatch.delenv("AIRFLOW_CONN_AWS_CONN", raising=False)
    with pytest.raises(AirflowFailException, match="connection 'aws_conn' is not defined"):
        ensure_still_published({}, "aws_conn")


def test_job_id_from_the_environment_replaces_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from stackexchange.databricks_job import job_lookup

    monkeypatch.setenv("DATABRICKS_JOB_ID", " 123 ")
    assert job_lookup() == {"job_id": "123"}
    monkeypatch.setenv("DATABRICKS_JOB_ID", "stackexchange_medallion")
    with pytest.raises(ValueError, match="DATABRICKS_JOB_ID must be a numeric"):
        job_lookup()


def test_the_dag_waits_for_both_assets(airflow_db) -> None:
    from airflow.assets.evaluation import AssetEvaluator
    from airflow.sdk.definitions.asset import AssetUniqueKey
    from airflow.utils.session import create_session

    from stackexchange.assets import RAW_POSTS, RAW_USERS

    condition = _dag().timetable.asset_condition
    posts, users = AssetUniqueKey.from_asset(RAW_POSTS), AssetUniqueKey.from_asset(RAW_USERS)
    with create_session() as session:  # the scheduler's evaluator of asset conditions
        ready = AssetEvaluator(session).run
        assert not ready(condition, {posts: True, users: False})
        assert not ready(condition, {posts: False, users: True})
        assert ready(condition, {posts: True, users: True})
