"""The consumer DAG drives the real DatabricksRunNowOperator against the local stand-in.

``dag.test()`` runs the task in-process and its trigger inline (Airflow 3.0.2). It creates a
manual run; a scheduler would attach the asset events that triggered the run, so the test
attaches real ``AssetEvent`` rows (registered through Airflow's AssetManager) to that run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from local.sample_dump import write_site
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
    conn = {
        "conn_type": "databricks",
        "host": "127.0.0.1",
        "port": databricks_standin.port,
        "schema": "http",
        "password": databricks_standin.token,
    }
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", json.dumps(conn))
    return databricks_standin


def _extra(path: Path, site: str = SITE) -> dict[str, object]:
    return {
        "site": site,
        "uri": str(path),
        "bytes": path.stat().st_size,
        "rows": 0,
        "sha256": "0" * 64,
        "source_url": "file:///dump.7z",
        "source_version": "test",
    }


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
    """The DAG file's DAG (fast polling, no retries), or one whose operator has other arguments."""
    from airflow.models.dagbag import DagBag
    from airflow.sdk import DAG

    from stackexchange.databricks_operator import RunJobOnAssetEventsOperator

    bag = DagBag(str(DAGS / "trigger_databricks_workflow_dag.py"), bundle_path=DAGS)
    dag = bag.dags["trigger_databricks_workflow_dag"]
    if not operator_kwargs:
        task = dag.get_task("run_medallion_job")
        task.polling_period_seconds, task.retries = 1, 0
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


def _task_state(dag_run) -> str:
    (ti,) = dag_run.get_task_instances()
    return ti.state


def test_deferrable_run_processes_the_published_data(
    databricks_conn: StandIn, dump: dict[str, Path], run_on_events, capfd
) -> None:
    from local.databricks_standin import read_table

    dag_run = run_on_events(_dag(), _extra(dump["posts"]), _extra(dump["users"]))
    out = _log(capfd)
    assert _task_state(dag_run) == "success", out[-3000:]
    assert "running trigger in line" in out  # the wait happened in the trigger
    assert f"{databricks_conn.url}/runs/" in out

    bronze = read_table(databricks_conn.warehouse, "bronze_posts").to_pylist()
    assert {row["_source_uri"] for row in bronze} == {str(dump["posts"])}
    assert {row["_site"] for row in bronze} == {SITE}
    tags = read_table(databricks_conn.warehouse, "gold_most_popular_tags").to_pylist()
    assert [row["Rank"] for row in tags] == list(range(1, len(tags) + 1))


def test_failed_notebook_fails_the_task_with_url_and_message(
    databricks_conn: StandIn, dump: dict[str, Path], run_on_events, capfd
) -> None:
    missing = dump["posts"].parent / "Missing.xml"
    posts_extra = {**_extra(dump["posts"]), "uri": str(missing)}
    dag_run = run_on_events(_dag(), posts_extra, _extra(dump["users"]))
    out = _log(capfd)
    assert _task_state(dag_run) == "failed"
    assert "Task bronze_posts failed with message" in out
    assert "Missing.xml" in out  # the failing task's own error, from runs/get-output
    assert f"{databricks_conn.url}/runs/" in out


def test_not_deferrable_failure_names_the_task(
    databricks_conn: StandIn, dump: dict[str, Path], run_on_events, capfd
) -> None:
    dag = _dag(job_name="stackexchange_medallion", deferrable=False)
    users_extra = {**_extra(dump["users"]), "uri": str(dump["users"].parent / "Nope.xml")}
    dag_run = run_on_events(dag, _extra(dump["posts"]), users_extra)
    out = _log(capfd)
    assert _task_state(dag_run) == "failed"
    assert "'task_key': 'bronze_users'" in out and "Nope.xml" in out


def test_not_deferrable_run_succeeds(
    databricks_conn: StandIn, dump: dict[str, Path], run_on_events, capfd
) -> None:
    dag = _dag(job_name="stackexchange_medallion", deferrable=False)
    dag_run = run_on_events(dag, _extra(dump["posts"]), _extra(dump["users"]))
    out = _log(capfd)
    assert _task_state(dag_run) == "success", out[-3000:]
    assert "run_medallion_job completed successfully" in out
    assert "running trigger in line" not in out


@pytest.mark.parametrize("deferrable", [True, False])
def test_unknown_job_name_is_a_clear_error(
    databricks_conn: StandIn, dump: dict[str, Path], run_on_events, capfd, deferrable: bool
) -> None:
    dag = _dag(job_name="no_such_job", deferrable=deferrable)
    dag_run = run_on_events(dag, _extra(dump["posts"]), _extra(dump["users"]))
    assert _task_state(dag_run) == "failed"
    assert "Job ID for job name no_such_job can not be found" in _log(capfd)


def test_events_from_different_sites_fail_before_any_job_run(
    databricks_conn: StandIn, dump: dict[str, Path], run_on_events, capfd
) -> None:
    dag = _dag(job_name="stackexchange_medallion", deferrable=False)
    dag_run = run_on_events(dag, _extra(dump["posts"]), _extra(dump["users"], site="other"))
    out = _log(capfd)
    assert _task_state(dag_run) == "failed"
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


def test_job_parameters_come_from_the_newest_event_of_each_asset() -> None:
    from datetime import UTC, datetime

    from stackexchange.assets import RAW_POSTS, RAW_USERS
    from stackexchange.databricks_job import job_parameters

    old, new = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    posts_new = {"site": "s", "uri": "s3://b/new/Posts.xml", "sha256": "p2"}
    events = _events(
        (RAW_POSTS, posts_new, new),
        (RAW_POSTS, {"site": "s", "uri": "s3://b/old/Posts.xml", "sha256": "p1"}, old),
        (RAW_USERS, {"site": "s", "uri": "s3://b/Users.xml", "sha256": "u1"}, old),
    )
    assert job_parameters(events) == {
        "posts_uri": "s3://b/new/Posts.xml",
        "users_uri": "s3://b/Users.xml",
        "site": "s",
        "posts_sha256": "p2",
        "users_sha256": "u1",
    }


def test_job_parameters_name_what_is_missing() -> None:
    from datetime import UTC, datetime

    from airflow.exceptions import AirflowFailException

    from stackexchange.assets import RAW_POSTS, RAW_USERS
    from stackexchange.databricks_job import job_parameters

    now = datetime.now(UTC)
    with pytest.raises(AirflowFailException, match="No triggering event for asset .*users"):
        job_parameters(_events((RAW_POSTS, {"site": "s", "uri": "u", "sha256": "x"}, now)))
    lacking = _events((RAW_POSTS, {"site": "s", "uri": "u"}, now), (RAW_USERS, {}, now))
    with pytest.raises(AirflowFailException, match=r"lacks \['sha256'\]"):
        job_parameters(lacking)


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
