"""The consumer's operator fails on every Databricks run that does not end in SUCCESS.

Real operator and trigger code (provider 7.4.0) against an in-process stand-in over HTTP, with
scripted task bodies: a run can fail before the operator's first look (the provider alone lets
that pass when deferrable), fail while the task is deferred (the trigger runs to its event,
then ``execute_complete``), be skipped at once, or succeed on either path. And against the
stand-in process: a run lost when the stand-in restarts fails the task that waits for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from datetime import UTC, datetime

import pytest
import requests
from airflow.exceptions import AirflowException, TaskDeferred

from local import services
from local.databricks_standin.bundle import load_jobs
from tests.databricks_fixtures import ScriptedTasks, ServedJobs, standin_process, write_bundle

SITE = "ai.meta.stackexchange.com"
TERMINAL = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")


def _parameters() -> dict[str, str]:
    """One site's job parameters, as the consumer's check task gives them to the operator."""
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from stackexchange.assets import raw_assets
    from stackexchange.databricks_job import job_parameters
    from stackexchange.settings import Storage

    storage = Storage()
    now = datetime.now(UTC)
    events = TriggeringAssetEventsAccessor.build(
        AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=asset.name, uri=asset.uri, extra={}),
            extra={
                "uri": f"s3://{storage.bucket}/{storage.prefix}/{SITE}/g1/{member}",
                "site": SITE,
                "bytes": 10,
                "rows": 1,
                "sha256": "a" * 64,
                "etag": "9b2cf535f27731c974343645a3985328-3",
                "version_id": None,
                "source_url": "https://archive.org/x.7z",
                "source_version": "v",
                "ingest_id": "i",
            },  # fmt: skip
            source_aliases=[],
            timestamp=now,
        )
        for member, asset in raw_assets(storage).items()
    )
    (parameters,) = job_parameters(events, storage)
    return parameters


def _context() -> dict:
    """The task context the operator writes its map index name into."""
    return {}


@pytest.fixture
def standin(serve_jobs, monkeypatch: pytest.MonkeyPatch):
    """``start(phase_seconds, queue_enabled)``: the bundle's job (declaring every parameter the
    DAG sends) on an in-process stand-in that ``databricks_conn`` points at."""
    (bundle_job,) = load_jobs()
    sent = dict.fromkeys(_parameters(), "")

    def start(phase_seconds: float = 0.0, **job_changes) -> tuple[ServedJobs, ScriptedTasks]:
        job = dataclasses.replace(
            bundle_job, parameters={**bundle_job.parameters, **sent}, **job_changes
        )
        tasks = ScriptedTasks()
        served = serve_jobs({1: job}, tasks, phase_seconds)
        conn = services.databricks_conn(f"http://127.0.0.1:{served.port}", served.token)
        monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", conn)
        return served, tasks

    return start


def _operator(operator_class=None, **kwargs):
    from stackexchange.databricks_operator import RunJobOnAssetEventsOperator

    defaults = {
        "task_id": "run_medallion_job",
        "databricks_conn_id": "databricks_conn",
        "job_name": "stackexchange_medallion",
        "deferrable": True,
        "polling_period_seconds": 0.05,
        "databricks_retry_limit": 1,
        "do_xcom_push": False,  # no task instance outside a DAG run
        "job_parameters": _parameters(),
    }
    return (operator_class or RunJobOnAssetEventsOperator)(**{**defaults, **kwargs})


def _fail_bronze_users(tasks: ScriptedTasks) -> None:
    def body(params) -> None:
        raise FileNotFoundError(f"No object at {params['users_uri']}")

    tasks.bodies["bronze_users"] = body


def _wait_terminal(served: ServedJobs, run_id: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        state = requests.get(
            f"{served.url}/api/2.1/jobs/runs/get",
            params={"run_id": run_id},
            headers={"Authorization": f"Bearer {served.token}"},
            timeout=5,
        ).json()["state"]
        if state["life_cycle_state"] in TERMINAL:
            return
        assert time.monotonic() < deadline, f"run {run_id} not terminal: {state}"
        time.sleep(0.01)


def _finish_before_the_first_look(operator, served: ServedJobs, monkeypatch) -> None:
    """Return from run-now only once the run is terminal: the operator's first look after
    run-now then sees a finished run, as for a run that fails at submission."""
    hook = operator._hook
    run_now = hook.run_now

    def run_now_then_wait(json: dict) -> int:
        run_id = run_now(json)
        _wait_terminal(served, run_id)
        return run_id

    monkeypatch.setattr(hook, "run_now", run_now_then_wait)


async def _first_event(trigger):
    async for event in trigger.run():
        return event
    raise AssertionError("the trigger ended without an event")


def _defer(operator) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(_context())
    return deferred.value


def test_the_provider_alone_lets_a_run_failed_before_its_first_look_pass(
    standin, monkeypatch
) -> None:
    """Why the operator checks: provider 7.4.0 returns normally for this failed run."""
    from airflow.providers.databricks.operators.databricks import DatabricksRunNowOperator

    served, tasks = standin()
    _fail_bronze_users(tasks)
    plain = _operator(DatabricksRunNowOperator, job_parameters={"site": SITE})
    _finish_before_the_first_look(plain, served, monkeypatch)
    plain.execute(_context())  # no exception: the failed run passed


def test_a_run_failed_before_the_first_look_fails_the_task(standin, monkeypatch, caplog) -> None:
    served, tasks = standin()
    _fail_bronze_users(tasks)
    operator = _operator()
    _finish_before_the_first_look(operator, served, monkeypatch)
    with caplog.at_level(logging.INFO), pytest.raises(AirflowException) as raised:
        operator.execute(_context())
    message = str(raised.value)
    assert f"Run page: {served.url}/runs/{operator.run_id}" in message
    assert "ended TERMINATED with result FAILED" in message
    assert "'task_key': 'bronze_users'" in message
    assert "FileNotFoundError: No object at s3://" in message  # the task's runs/get-output error
    assert "Databricks task bronze_users failed: FileNotFoundError" in caplog.text
    assert f"{served.url}/runs/{operator.run_id}" in caplog.text


def test_a_run_skipped_at_once_fails_the_task(standin) -> None:
    served, tasks = standin(queue_enabled=False)
    tasks.hold("bronze_posts")  # the first run occupies the job's only slot
    blocker = _operator()
    deferred = _defer(blocker)
    assert deferred.trigger.run_id == blocker.run_id
    with pytest.raises(AirflowException, match="limit of 1 maximum concurrent runs") as raised:
        _operator().execute(_context())
    assert "ended SKIPPED with result MAXIMUM_CONCURRENT_RUNS_REACHED" in str(raised.value)


def test_a_run_failing_while_deferred_fails_the_task(standin, caplog) -> None:
    served, tasks = standin(phase_seconds=0.05)
    tasks.hold("bronze_posts")  # not terminal at the first look: the operator defers
    _fail_bronze_users(tasks)
    deferred = _defer(_operator())
    tasks.release()
    event = asyncio.run(_first_event(deferred.trigger))
    assert json.loads(event.payload["run_state"])["result_state"] == "FAILED"

    resumed = _operator()  # Airflow resumes a deferred task on a fresh operator
    with caplog.at_level(logging.INFO), pytest.raises(AirflowException) as raised:
        resumed.execute_complete(_context(), event.payload)
    run_id = event.payload["run_id"]
    assert f"Run page: {served.url}/runs/{run_id}" in str(raised.value)
    assert "FileNotFoundError: No object at s3://" in str(raised.value)
    assert "Databricks task bronze_users failed" in caplog.text


def test_a_successful_run_succeeds_deferred_or_not(standin, monkeypatch, caplog) -> None:
    served, tasks = standin(phase_seconds=0.05)
    tasks.hold("bronze_posts")
    deferred = _defer(_operator())
    tasks.release()
    event = asyncio.run(_first_event(deferred.trigger))
    with caplog.at_level(logging.INFO):
        _operator().execute_complete(_context(), event.payload)
    assert "Job run completed successfully" in caplog.text

    at_once = _operator()
    _finish_before_the_first_look(at_once, served, monkeypatch)
    with caplog.at_level(logging.INFO):
        at_once.execute(_context())
    assert f"Databricks run {at_once.run_id} succeeded: {served.url}/runs/" in caplog.text


def test_without_deferring_a_failed_run_names_the_url_and_error(standin) -> None:
    served, tasks = standin()
    _fail_bronze_users(tasks)
    operator = _operator(deferrable=False)
    with pytest.raises(AirflowException) as raised:
        operator.execute(_context())
    assert f"Run page: {served.url}/runs/{operator.run_id}" in str(raised.value)
    assert "FileNotFoundError: No object at s3://" in str(raised.value)


def test_no_trigger_event_is_not_a_success(standin) -> None:
    with pytest.raises(AirflowException, match="without a run state"):
        _operator().execute_complete(_context(), None)


def test_repairing_runs_is_refused() -> None:
    with pytest.raises(ValueError, match="does not repair runs"):
        _operator(repair_run=True)


def test_a_run_lost_in_a_standin_restart_fails_the_deferred_task(tmp_path, monkeypatch) -> None:
    """The stand-in process stops while the deferred task's run runs, and starts again on the
    same state directory and port: the trigger sees that run end INTERNAL_ERROR, not the run a
    new client started after the restart."""
    sent = list(_parameters())
    bundle = write_bundle(
        tmp_path / "bundle", "stackexchange_medallion", sent, "import time", "time.sleep(600)"
    )
    options = ("--bundle", str(bundle), "--phase-seconds", "0")
    port = services.free_port()
    with standin_process(tmp_path, *options, port=port) as first:
        conn = services.databricks_conn(first.url, first.token)
        monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", conn)
        deferred = _defer(_operator())  # the run is RUNNING (its notebook sleeps)
    run_id = deferred.trigger.run_id
    with standin_process(tmp_path, *options, port=port) as second:
        new_run = requests.post(
            f"{second.url}/api/2.2/jobs/run-now",
            json={"job_id": 1},
            headers={"Authorization": f"Bearer {second.token}"},
            timeout=5,
        ).json()["run_id"]
        # A bounded wait: with repeated ids the trigger would follow the new run's long sleep.
        event = asyncio.run(asyncio.wait_for(_first_event(deferred.trigger), timeout=60))
        with pytest.raises(AirflowException) as raised:
            _operator().execute_complete(_context(), event.payload)
    assert new_run > run_id
    assert event.payload["run_id"] == run_id
    assert json.loads(event.payload["run_state"])["life_cycle_state"] == "INTERNAL_ERROR"
    message = str(raised.value)
    assert f"Databricks run {run_id} ended INTERNAL_ERROR with result FAILED" in message
    assert f"Run {run_id} was lost: the Databricks stand-in stopped while the run was RUNNING" in (
        message
    )
    assert f"Run page: {second.url}/runs/{run_id}" in message
