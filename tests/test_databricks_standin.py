"""The stand-in speaks the Jobs API as its clients call it, and runs the bundle's job.

Clients: the official Databricks SDK for Python (Jobs API 2.2) and the Airflow provider's hook
(2.1, sync and async). Most tests use an in-process stand-in whose task bodies are scripted
(``ScriptedTasks``); the tests at the top run the real notebooks on Spark in the subprocess
stand-in, as the local stack does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk import errors as sdk_errors
from databricks.sdk.service.jobs import NotebookTask, RunLifeCycleState, SubmitTask

from local import services
from local.databricks_standin import read_table
from local.databricks_standin.__main__ import _use_s3_endpoint
from local.databricks_standin.bundle import Job, Task, load_jobs
from local.databricks_standin.notebooks import Widgets, run_notebook
from local.databricks_standin.s3_inputs import local_path
from local.sample_dump import write_site
from local.services import s3_client
from tests.databricks_fixtures import (
    ScriptedTasks,
    ServedJobs,
    StandIn,
    standin_process,
    write_bundle,
)

JOB = "stackexchange_medallion"


def _hook(monkeypatch: pytest.MonkeyPatch, port: int, token: str):
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    conn = services.databricks_conn(f"http://127.0.0.1:{port}", token)
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", conn)
    return DatabricksHook("databricks_conn", retry_limit=1, retry_delay=0)


@pytest.fixture(scope="module")
def s3_dump(databricks_standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A generated site uploaded to the moto server the stand-in reads s3:// from."""
    directory = tmp_path_factory.mktemp("s3dump")
    write_site(directory, posts=300, users=40, seed=9, other_files=False)
    s3 = s3_client(databricks_standin.s3_endpoint)
    s3.create_bucket(Bucket="standin-test")
    for name in ("Posts", "Users"):
        s3.upload_file(str(directory / f"{name}.xml"), "standin-test", f"raw/{name}.xml")
    return {
        "posts_uri": "s3://standin-test/raw/Posts.xml",
        "users_uri": "s3://standin-test/raw/Users.xml",
        "site": "s3.example",
        "posts_sha256": "1" * 64,
        "users_sha256": "2" * 64,
        "schema": "s3_test",
    }


def _wait(hook, run_id: int, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (state := hook.get_run_state(run_id)).is_terminal:
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(0.5)
    return state


def test_runs_the_job_on_s3_inputs_and_reports_states(
    databricks_standin: StandIn, s3_dump: dict, monkeypatch
) -> None:
    hook = _hook(monkeypatch, databricks_standin.port, databricks_standin.token)
    job_id = hook.find_job_id_by_name(JOB)
    run_id = hook.run_now({"job_id": job_id, "job_parameters": s3_dump})
    assert hook.get_run_state(run_id).life_cycle_state in {"PENDING", "RUNNING", "TERMINATED"}
    assert _wait(hook, run_id).result_state == "SUCCESS"

    run = hook.get_run(run_id)
    assert run["job_id"] == job_id and run["run_page_url"].startswith(databricks_standin.url)
    assert {task["task_key"]: task["state"]["result_state"] for task in run["tasks"]} == {
        key: "SUCCESS"
        for key in ("bronze_posts", "bronze_users", "silver_posts", "gold_post_users",
                    "gold_most_popular_tags")
    }  # fmt: skip
    page = requests.get(run["run_page_url"], timeout=5)
    assert page.ok and "SUCCESS" in page.text

    posts = read_table(databricks_standin.warehouse, "silver_posts", schema="s3_test")
    assert posts.num_rows == 300
    assert set(posts.column("site").to_pylist()) == {"s3.example"}
    # The notebook saw (and recorded) the S3 URI; only Spark's read went to the local copy.
    bronze = read_table(databricks_standin.warehouse, "bronze_users", schema="s3_test")
    assert set(bronze.column("_source_uri").to_pylist()) == {s3_dump["users_uri"]}
    downloads = databricks_standin.warehouse / ".databricks-state" / "downloads"
    assert list(downloads.iterdir()) == []  # each task run removed its copies


def test_missing_s3_object_fails_the_task_with_its_uri(
    databricks_standin: StandIn, s3_dump: dict, monkeypatch
) -> None:
    hook = _hook(monkeypatch, databricks_standin.port, databricks_standin.token)
    params = {**s3_dump, "users_uri": "s3://standin-test/raw/Gone.xml"}
    run_id = hook.run_now({"job_id": hook.find_job_id_by_name(JOB), "job_parameters": params})
    state = _wait(hook, run_id)
    assert state.result_state == "FAILED"
    assert state.state_message.startswith("Task bronze_users failed with message:")
    assert "s3://standin-test/raw/Gone.xml" in state.state_message
    tasks = {task["task_key"]: task for task in hook.get_run(run_id)["tasks"]}
    assert tasks["bronze_posts"]["state"]["result_state"] == "SUCCESS"
    assert tasks["gold_post_users"]["state"]["result_state"] == "UPSTREAM_FAILED"
    output = hook.get_run_output(tasks["bronze_users"]["run_id"])
    assert "Gone.xml" in output["error"] and "Traceback" in output["error_trace"]


def test_bad_requests_get_clear_errors(databricks_standin: StandIn, monkeypatch) -> None:
    """Through the provider's hook: the message a DAG author sees names the problem."""
    hook = _hook(monkeypatch, databricks_standin.port, databricks_standin.token)
    job_id = hook.find_job_id_by_name(JOB)
    with pytest.raises(Exception, match=r"does not declare parameter\(s\) \['posts_url'\]"):
        hook.run_now({"job_id": job_id, "job_parameters": {"posts_url": "x"}})
    with pytest.raises(Exception, match="Job 999 does not exist"):
        hook.run_now({"job_id": 999})
    with pytest.raises(Exception, match="Run 424242 does not exist"):
        hook.get_run(424242)


def test_read_table_names_a_missing_table(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No table gold_post_users"):
        read_table(tmp_path, "gold_post_users")


def test_a_jvm_error_is_reported_by_its_java_message(
    databricks_standin: StandIn, s3_dump: dict, monkeypatch, tmp_path: Path
) -> None:
    malformed = tmp_path / "Posts.xml"
    malformed.write_text('<posts>\r\n  <row Id="not-a-number" />\r\n</posts>', encoding="utf-8")
    hook = _hook(monkeypatch, databricks_standin.port, databricks_standin.token)
    params = {**s3_dump, "posts_uri": str(malformed)}
    run_id = hook.run_now({"job_id": hook.find_job_id_by_name(JOB), "job_parameters": params})
    message = _wait(hook, run_id).state_message
    assert message.startswith("Task bronze_posts failed with message:")
    assert "FAILED_READ_FILE" in message and str(malformed) in message
    assert "An error occurred while calling" not in message


# --- In-process stand-in, scripted task bodies: the API and the run lifecycle ------------------

(MEDALLION,) = load_jobs()
PARAMS = {"posts_uri": "s3://b/raw/Posts.xml", "users_uri": "s3://b/raw/Users.xml", "site": "s"}
TERMINAL = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")


def _sdk(served: ServedJobs, token: str | None = None) -> WorkspaceClient:
    return WorkspaceClient(host=served.url, token=token or served.token)


def _api(served: ServedJobs, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {served.token}", **kwargs.pop("headers", {})}
    return requests.request(method, served.url + path, headers=headers, timeout=10, **kwargs)


def _states(served: ServedJobs, run_id: int, timeout: float = 30) -> list[str]:
    """Every life cycle state runs/get showed, in order, until the run was terminal."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] not in TERMINAL:
        assert time.monotonic() < deadline, f"run {run_id} stuck in {seen}"
        state = _api(served, "GET", "/api/2.2/jobs/runs/get", params={"run_id": run_id}).json()
        if not seen or seen[-1] != state["state"]["life_cycle_state"]:
            seen.append(state["state"]["life_cycle_state"])
        time.sleep(0.01)  # polling interval of this observer, far below the phase length
    return seen


@pytest.fixture
def medallion(serve_jobs) -> Callable[..., tuple[ServedJobs, ScriptedTasks]]:
    """The bundle's job (its real tasks, parameters, queue settings) with scripted bodies."""

    def start(phase_seconds: float = 0.0, **job_changes) -> tuple[ServedJobs, ScriptedTasks]:
        tasks = ScriptedTasks()
        job = dataclasses.replace(MEDALLION, **job_changes)
        return serve_jobs({1: job}, tasks, phase_seconds), tasks

    return start


def test_sdk_lists_jobs_by_name_case_insensitively_and_pages(serve_jobs) -> None:
    names = [f"job_{i}" for i in range(5)] + ["Stackexchange_Medallion"]
    jobs = {i: Job(name, {}, (), 0) for i, name in enumerate(names, start=1)}
    sdk = _sdk(serve_jobs(jobs, ScriptedTasks()))
    assert [job.job_id for job in sdk.jobs.list(name="STACKEXCHANGE_medallion")] == [6]
    assert list(sdk.jobs.list(name="missing")) == []
    assert [job.job_id for job in sdk.jobs.list(limit=1)] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(sdk_errors.InvalidParameterValue, match="limit must be between 1 and 100"):
        list(sdk.jobs.list(limit=101))


def test_sdk_gets_the_job_and_2_2_pages_its_tasks(serve_jobs) -> None:
    many = tuple(Task(f"t{i:03}", Path(f"t{i}.ipynb"), ()) for i in range(150))
    served = serve_jobs({1: MEDALLION, 2: Job("wide", {}, many, 0)}, ScriptedTasks())
    sdk = _sdk(served)

    job = sdk.jobs.get(1)
    assert job.settings.name == MEDALLION.name
    assert job.settings.max_concurrent_runs == 1 and job.settings.queue.enabled
    assert [t.task_key for t in job.settings.tasks] == [t.key for t in MEDALLION.tasks]
    assert {p.name for p in job.settings.parameters} == MEDALLION.parameters.keys()
    # 2.2 pages arrays by 100 (the SDK follows next_page_token); 2.1 returns them whole.
    assert [t.task_key for t in sdk.jobs.get(2).settings.tasks] == [t.key for t in many]
    first = _api(served, "GET", "/api/2.2/jobs/get", params={"job_id": 2}).json()
    assert len(first["settings"]["tasks"]) == 100 and first["next_page_token"]
    whole = _api(served, "GET", "/api/2.1/jobs/get", params={"job_id": 2}).json()
    assert len(whole["settings"]["tasks"]) == 150 and "next_page_token" not in whole
    with pytest.raises(sdk_errors.ResourceDoesNotExist, match="Job 9 does not exist"):
        sdk.jobs.get(9)


def test_a_run_goes_through_every_phase_and_the_sdk_waits_for_it(medallion) -> None:
    served, _ = medallion(phase_seconds=0.3)
    sdk = _sdk(served)
    waiter = sdk.jobs.run_now(1, job_parameters=PARAMS)
    assert _states(served, waiter.run_id) == ["PENDING", "RUNNING", "TERMINATING", "TERMINATED"]
    run = waiter.result(timeout=timedelta(seconds=30))  # the SDK's own poller
    assert run.state.result_state.value == "SUCCESS"
    assert run.status.state.value == "TERMINATED"
    assert run.status.termination_details.code.value == "SUCCESS"
    assert {p.name: p.value for p in run.job_parameters}["site"] == "s"
    assert {t.task_key: t.state.result_state.value for t in run.tasks} == {
        t.key: "SUCCESS" for t in MEDALLION.tasks
    }


def test_over_the_concurrency_limit_a_run_queues_then_runs(medallion) -> None:
    served, tasks = medallion(phase_seconds=0.2)
    tasks.hold("bronze_posts")
    sdk = _sdk(served)
    first = sdk.jobs.run_now(1, job_parameters=PARAMS).run_id
    second = sdk.jobs.run_now(1, job_parameters=PARAMS).run_id
    queued = sdk.jobs.get_run(second)
    assert queued.state.life_cycle_state == RunLifeCycleState.QUEUED
    assert queued.status.queue_details.code.value == "MAX_CONCURRENT_RUNS_REACHED"
    active = [run.run_id for run in sdk.jobs.list_runs(job_id=1, active_only=True)]
    assert active == [second, first]  # newest first
    tasks.release()
    assert _states(served, second) == [
        "QUEUED", "PENDING", "RUNNING", "TERMINATING", "TERMINATED"
    ]  # fmt: skip
    assert sdk.jobs.get_run(first).state.result_state.value == "SUCCESS"
    assert [run.run_id for run in sdk.jobs.list_runs(job_id=1, completed_only=True)] == [
        second, first
    ]  # fmt: skip
    assert [run.run_id for run in sdk.jobs.list_runs(job_id=1, limit=1)] == [second, first]
    assert list(sdk.jobs.list_runs(job_id=1, active_only=True)) == []


def test_without_a_queue_a_run_over_the_limit_is_skipped(medallion) -> None:
    served, tasks = medallion(queue_enabled=False)
    tasks.hold("bronze_posts")
    sdk = _sdk(served)
    sdk.jobs.run_now(1, job_parameters=PARAMS)
    skipped = sdk.jobs.run_now(1, job_parameters=PARAMS).result(timeout=timedelta(seconds=5))
    assert skipped.state.life_cycle_state == RunLifeCycleState.SKIPPED
    assert skipped.state.result_state.value == "MAXIMUM_CONCURRENT_RUNS_REACHED"
    assert "limit of 1 maximum concurrent runs" in skipped.state.state_message
    assert skipped.status.termination_details.code.value == "MAX_CONCURRENT_RUNS_EXCEEDED"


def test_a_failed_task_has_its_error_in_the_run_output(medallion) -> None:
    served, tasks = medallion()

    def missing_users(params) -> None:
        raise FileNotFoundError(f"no object at {params['users_uri']}")

    tasks.bodies.update({"bronze_users": missing_users, "bronze_posts": lambda params: "42"})
    sdk = _sdk(served)
    run = sdk.jobs.run_now(1, job_parameters=PARAMS).result(timeout=timedelta(seconds=30))
    assert run.state.result_state.value == "FAILED"
    assert run.state.state_message.startswith(
        "Task bronze_users failed with message: FileNotFoundError: no object at s3://b/raw/Users"
    )
    assert run.status.termination_details.code.value == "RUN_EXECUTION_ERROR"
    by_key = {task.task_key: task for task in run.tasks}
    assert by_key["gold_post_users"].state.result_state.value == "UPSTREAM_FAILED"
    assert by_key["gold_most_popular_tags"].state.result_state.value == "SUCCESS"

    failed = sdk.jobs.get_run_output(by_key["bronze_users"].run_id)
    assert failed.error == "FileNotFoundError: no object at s3://b/raw/Users.xml"
    assert "Traceback" in failed.error_trace and "missing_users" in failed.error_trace
    assert failed.metadata.job_id == 1 and failed.metadata.run_page_url == run.run_page_url
    succeeded = sdk.jobs.get_run_output(by_key["bronze_posts"].run_id)
    assert succeeded.notebook_output.result == "42" and succeeded.error is None
    with pytest.raises(sdk_errors.InvalidParameterValue, match="runs with multiple tasks"):
        sdk.jobs.get_run_output(run.run_id)


def test_cancelling_ends_queued_and_running_runs(medallion) -> None:
    served, tasks = medallion(phase_seconds=0.1)
    tasks.hold("bronze_posts")
    sdk = _sdk(served)
    running = sdk.jobs.run_now(1, job_parameters=PARAMS).run_id
    queued = sdk.jobs.run_now(1, job_parameters=PARAMS).run_id
    third = sdk.jobs.run_now(1, job_parameters=PARAMS).run_id

    cancelled = sdk.jobs.cancel_run(queued).result(timeout=timedelta(seconds=10))
    assert cancelled.state.result_state.value == "CANCELED"
    assert cancelled.status.termination_details.code.value == "USER_CANCELED"
    assert {(t.state.life_cycle_state.value, t.state.result_state.value)
            for t in cancelled.tasks} == {("SKIPPED", "CANCELED")}  # fmt: skip

    deadline = time.monotonic() + 10
    while "bronze_posts" not in tasks.started:  # cancel the running run while a task runs
        assert time.monotonic() < deadline, "bronze_posts never started"
        time.sleep(0.01)
    sdk.jobs.cancel_all_runs(job_id=1)
    for run_id in (running, third):
        run = sdk.jobs.wait_get_run_job_terminated_or_skipped(run_id, timedelta(seconds=10))
        assert run.state.result_state.value == "CANCELED"
    tasks_of_running = {t.task_key: t.state for t in sdk.jobs.get_run(running).tasks}
    assert tasks_of_running["bronze_posts"].result_state.value == "CANCELED"  # interrupted
    assert tasks_of_running["silver_posts"].life_cycle_state.value == "SKIPPED"
    assert "silver_posts" not in tasks.started


def test_the_same_idempotency_token_gives_the_same_run(medallion) -> None:
    served, _ = medallion()
    sdk = _sdk(served)
    first = sdk.jobs.run_now(1, job_parameters=PARAMS, idempotency_token="ingest-7").run_id
    again = sdk.jobs.run_now(1, job_parameters=PARAMS, idempotency_token="ingest-7").run_id
    other = sdk.jobs.run_now(1, job_parameters=PARAMS, idempotency_token="ingest-8").run_id
    assert first == again != other
    with pytest.raises(sdk_errors.InvalidParameterValue, match="idempotency_token"):
        sdk.jobs.run_now(1, idempotency_token="x" * 65)


def test_errors_have_databricks_status_and_shape(medallion) -> None:
    served, _ = medallion()
    with pytest.raises(sdk_errors.PermissionDenied, match="Invalid access token"):
        list(_sdk(served, token="wrong").jobs.list())
    response = requests.get(f"{served.url}/api/2.2/jobs/list", timeout=5)
    assert response.status_code == 403
    assert response.json() == {"error_code": "403", "message": "Invalid access token."}

    sdk = _sdk(served)
    # The SDK maps exactly "Run <id> does not exist." on runs/get to ResourceDoesNotExist.
    with pytest.raises(sdk_errors.ResourceDoesNotExist, match=r"^Run 123 does not exist\.$"):
        sdk.jobs.get_run(123)
    with pytest.raises(sdk_errors.InvalidParameterValue, match="Run 123 does not exist"):
        sdk.jobs.cancel_run(123)
    with pytest.raises(sdk_errors.NotFound, match="No API found for 'POST /jobs/rename'"):
        sdk.api_client.do("POST", "/api/2.2/jobs/rename", body={"job_id": 1})
    with pytest.raises(sdk_errors.NotFound, match="No API found for 'GET /jobs/runs/cancel'"):
        sdk.api_client.do("GET", "/api/2.1/jobs/runs/cancel")  # a POST endpoint
    with pytest.raises(sdk_errors.InvalidParameterValue, match="Invalid page_token"):
        list(sdk.jobs.list(page_token="not-a-token"))
    with pytest.raises(sdk_errors.InvalidParameterValue, match="cannot both be true"):
        list(sdk.jobs.list_runs(active_only=True, completed_only=True))

    bad = {"limit": "ten"}, {"limit": "0"}, {"page_token": "%%%"}, {"offset": "-1"}
    for params in bad:
        response = _api(served, "GET", "/api/2.1/jobs/list", params=params)
        assert response.status_code == 400, params
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE", params
    response = _api(served, "POST", "/api/2.2/jobs/run-now", data=b"{not json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "MALFORMED_REQUEST"
    response = _api(served, "POST", "/api/2.2/jobs/run-now", json=["job_id", 1])
    assert response.json()["message"].endswith("expected a map")


def test_a_bad_content_length_gets_an_answer_not_a_dropped_connection(medallion) -> None:
    served, _ = medallion()
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    connection.putrequest("POST", "/api/2.2/jobs/run-now")
    connection.putheader("Authorization", f"Bearer {served.token}")
    connection.putheader("Content-Length", "lots")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error_code"] == "MALFORMED_REQUEST"
    connection.close()


def test_get_takes_arguments_from_the_query_or_a_json_body(medallion, monkeypatch) -> None:
    served, _ = medallion()
    run_id = _sdk(served).jobs.run_now(1, job_parameters=PARAMS).run_id
    by_query = _api(served, "GET", "/api/2.1/jobs/runs/get", params={"run_id": run_id}).json()
    by_body = _api(served, "GET", "/api/2.1/jobs/runs/get", json={"run_id": run_id}).json()
    assert by_query["run_id"] == by_body["run_id"] == run_id
    assert "status" not in by_query  # 2.1 has only ``state``

    hook = _hook(monkeypatch, served.port, served.token)

    async def poll():  # the provider's async hook: what the deferrable operator's trigger uses
        async with hook:
            return await hook.a_get_run_page_url(run_id), await hook.a_get_run_state(run_id)

    url, state = asyncio.run(poll())
    assert url == f"{served.url}/runs/{run_id}"
    assert state.life_cycle_state in {"PENDING", "RUNNING", "TERMINATING", "TERMINATED"}


def test_the_provider_hook_pages_jobs_and_finds_them_by_name(serve_jobs, monkeypatch) -> None:
    names = [f"job_{i}" for i in range(27)] + ["wanted", "twin", "twin"]
    jobs = {i: Job(name, {}, (), 0) for i, name in enumerate(names, start=1)}
    served = serve_jobs(jobs, ScriptedTasks())
    hook = _hook(monkeypatch, served.port, served.token)
    assert len(hook.list_jobs(limit=4)) == 30
    assert hook.find_job_id_by_name("wanted") == 28
    assert hook.find_job_id_by_name("missing") is None
    with pytest.raises(Exception, match="more than one job with name twin"):
        hook.find_job_id_by_name("twin")
    with pytest.raises(Exception, match="Status Code: 403"):
        _hook(monkeypatch, served.port, "wrong").list_jobs()


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/../../etc/passwd",
        "s3://bucket/raw/../../../x",
        "s3://bucket//etc/passwd",
        "s3://bucket/raw//Posts.xml",
        "s3://bucket/raw/./Posts.xml",
        "s3://bucket/",
        "s3://../raw/Posts.xml",
    ],
)
def test_s3_keys_cannot_leave_the_download_directory(tmp_path: Path, uri: str) -> None:
    with pytest.raises(ValueError, match=r"Cannot read s3://"):
        local_path(tmp_path, uri)


def test_s3_keys_map_below_their_bucket_directory(tmp_path: Path) -> None:
    target = local_path(tmp_path, "s3://stackexchange-raw/raw/stackexchange/Posts.xml")
    assert target == tmp_path / "stackexchange-raw" / "raw" / "stackexchange" / "Posts.xml"


def test_an_s3_endpoint_is_announced_to_boto3_in_the_process(monkeypatch) -> None:
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    _use_s3_endpoint("http://127.0.0.1:9")
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9"
    assert os.environ["AWS_ACCESS_KEY_ID"] and os.environ["AWS_SECRET_ACCESS_KEY"]
    import boto3

    assert boto3.client("s3", region_name="us-east-1").meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mine")
    _use_s3_endpoint("http://127.0.0.1:9")
    assert os.environ["AWS_ACCESS_KEY_ID"] == "mine"  # real credentials are kept


def test_dbutils_notebook_exit_ends_the_notebook_with_its_value(tmp_path: Path) -> None:
    cells = ["x = dbutils.widgets.get('site')", "dbutils.notebook.exit(x.upper())", "1 / 0"]
    notebook = tmp_path / "exits.ipynb"
    notebook.write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": [source]} for source in cells
    ]}))  # fmt: skip
    result = run_notebook(notebook, None, Widgets({"site": "ai"}), str)  # type: ignore[arg-type]
    assert result == "AI"  # and the third cell never ran


# --- Restarts: runs outlive the process, ids never repeat -------------------------------------


def _wait_for(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_after_a_restart_runs_remain_ids_go_on_and_a_lost_run_is_internal_error(
    tmp_path: Path,
) -> None:
    """The stand-in process stopped while a run ran, then started on the same state directory:
    the old ids answer for the old runs, never for a new one."""
    bundle = write_bundle(
        tmp_path / "bundle",
        "waiter",
        ["seconds"],
        "import time",
        "time.sleep(float(dbutils.widgets.get('seconds')))",
        "dbutils.notebook.exit('slept')",
    )
    options = ("--bundle", str(bundle), "--state-dir", str(tmp_path / "state"))
    with standin_process(tmp_path, *options, "--phase-seconds", "0") as first:
        sdk = WorkspaceClient(host=first.url, token=first.token)
        done = sdk.jobs.run_now(1, job_parameters={"seconds": "0"}).result(
            timeout=timedelta(seconds=30)
        )
        lost = sdk.jobs.run_now(1, job_parameters={"seconds": "600"}, idempotency_token="t-1")
        _wait_for(
            lambda: sdk.jobs.get_run(lost.run_id).tasks[0].state.life_cycle_state.value
            == "RUNNING",
            "the notebook to run",
        )
    assert done.state.result_state.value == "SUCCESS"
    old_ids = {done.run_id, lost.run_id, done.tasks[0].run_id}

    with standin_process(tmp_path, *options, "--phase-seconds", "0") as second:
        sdk = WorkspaceClient(host=second.url, token=second.token)
        kept = sdk.jobs.get_run(done.run_id)
        assert kept.state.result_state.value == "SUCCESS"
        assert kept.run_page_url == f"{second.url}/runs/{done.run_id}"  # this process's URL
        assert sdk.jobs.get_run_output(kept.tasks[0].run_id).notebook_output.result == "slept"

        gone = sdk.jobs.get_run(lost.run_id)
        assert gone.state.life_cycle_state == RunLifeCycleState.INTERNAL_ERROR
        assert gone.state.result_state.value == "FAILED"
        assert gone.state.state_message.startswith(f"Run {lost.run_id} was lost:")
        assert "outcome is unknown" in gone.state.state_message
        assert gone.status.termination_details.code.value == "INTERNAL_ERROR"
        assert "was lost" in sdk.jobs.get_run_output(gone.tasks[0].run_id).error
        # The token still names the lost run: it is never run twice.
        again = sdk.jobs.run_now(1, job_parameters={"seconds": "0"}, idempotency_token="t-1")
        assert again.run_id == lost.run_id

        new = sdk.jobs.run_now(1, job_parameters={"seconds": "0"}).result(
            timeout=timedelta(seconds=30)
        )
        assert new.state.result_state.value == "SUCCESS"  # the lost run holds no slot
        assert min(new.run_id, new.tasks[0].run_id) > max(old_ids)
        listed = [run.run_id for run in sdk.jobs.list_runs(job_id=1)]
        assert listed == [new.run_id, lost.run_id, done.run_id]
        with pytest.raises(sdk_errors.ResourceDoesNotExist, match=r"^Run 99999 does not exist"):
            sdk.jobs.get_run(99999)  # an id never given out is still unknown


def test_a_second_standin_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", "idle", [], "pass")
    state = tmp_path / "state"
    with standin_process(tmp_path, "--bundle", str(bundle), "--state-dir", str(state)):
        (tmp_path / "token2").write_text("testing")
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "local.databricks_standin",
                "--port",
                "1",
                "--token-file",
                str(tmp_path / "token2"),
                "--warehouse",
                str(tmp_path / "w2"),
                "--bundle",
                str(bundle),
                "--state-dir",
                str(state),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    assert second.returncode != 0
    assert f"The state directory {state} is in use by another Databricks stand-in" in (
        second.stderr
    )


@pytest.mark.spark
def test_a_killed_standin_leaves_its_s3_downloads_only_in_its_state_directory(
    tmp_path: Path, moto_server: str
) -> None:
    """SIGKILL while a notebook holds its ``s3://`` download: nothing lands in the temporary
    folder (TMPDIR); the download sits under the state directory, and the next stand-in there
    clears it."""
    s3 = s3_client(moto_server)
    s3.create_bucket(Bucket="standin-kill")
    s3.put_object(Bucket="standin-kill", Key="raw/Posts.xml", Body=b"<posts/>")
    bundle = write_bundle(
        tmp_path / "bundle",
        "holder",
        ["uri"],
        "spark.read.format('text').load(dbutils.widgets.get('uri'))",
        "import time",
        "time.sleep(600)",
    )
    state, temporary = tmp_path / "state", tmp_path / "tmp"
    temporary.mkdir()
    options = ("--bundle", str(bundle), "--state-dir", str(state), "--s3-endpoint", moto_server)
    env = {"TMPDIR": str(temporary)}
    with standin_process(tmp_path, *options, "--phase-seconds", "0", env=env) as standin:
        sdk = WorkspaceClient(host=standin.url, token=standin.token)
        sdk.jobs.run_now(1, job_parameters={"uri": "s3://standin-kill/raw/Posts.xml"})
        downloads = state / "downloads"
        _wait_for(
            lambda: list(downloads.glob("*/standin-kill/raw/Posts.xml")),
            "the notebook's download",
            timeout=120,
        )
        killed = psutil.Process(int((state / "standin.lock").read_text()))
        family = [killed, *killed.children(recursive=True)]  # Spark's JVM with it
        killed.kill()
        psutil.wait_procs(family, timeout=60)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert list(temporary.iterdir()) == []
    assert [p.read_bytes() for p in downloads.glob("*/standin-kill/raw/Posts.xml")] == [b"<posts/>"]

    with standin_process(tmp_path, *options, env=env):
        assert list(downloads.iterdir()) == []  # the killed one's leftovers are gone
    assert list(temporary.iterdir()) == []


# --- Requests: the token first; listings, repairs and what the stand-in does not serve --------


def test_a_bad_token_is_refused_before_the_body_is_read(medallion) -> None:
    served, _ = medallion()
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    connection.putrequest("POST", "/api/2.2/jobs/run-now")
    connection.putheader("Authorization", "Bearer wrong")
    connection.putheader("Content-Length", str(10**12))  # a terabyte that is never sent
    connection.endheaders()
    response = connection.getresponse()  # answered at once: the server did not wait for it
    assert response.status == 403
    assert json.loads(response.read()) == {
        "error_code": "403",
        "message": "Invalid access token.",
    }
    connection.close()

    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    connection.putrequest("POST", "/api/2.2/jobs/run-now")
    connection.putheader("Authorization", f"Bearer {served.token}")
    connection.putheader("Content-Length", str(10**12))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "is over" in json.loads(response.read())["message"]
    connection.close()


def test_runs_list_filters_by_start_time_type_and_state(medallion) -> None:
    served, _ = medallion()
    sdk = _sdk(served)
    runs = []
    for _ in range(3):
        runs.append(
            sdk.jobs.run_now(1, job_parameters=PARAMS).result(timeout=timedelta(seconds=10))
        )
        time.sleep(0.01)  # distinct start times (milliseconds)
    first, second, third = runs
    assert first.start_time < second.start_time < third.start_time

    def ids(**filters) -> list[int]:
        return [run.run_id for run in sdk.jobs.list_runs(**filters)]

    assert ids(start_time_from=second.start_time) == [third.run_id, second.run_id]
    assert ids(start_time_to=second.start_time) == [second.run_id, first.run_id]
    assert ids(start_time_from=second.start_time, start_time_to=second.start_time) == [
        second.run_id
    ]
    assert ids(start_time_from=third.start_time + 1) == []
    assert ids(job_id=1, completed_only=True, limit=2) == [r.run_id for r in reversed(runs)]
    page = _api(served, "GET", "/api/2.2/jobs/runs/list", params={"limit": 1, "offset": 1}).json()
    assert [run["run_id"] for run in page["runs"]] == [second.run_id] and page["has_more"]
    from databricks.sdk.service.jobs import RunType

    assert ids(run_type=RunType.SUBMIT_RUN) == []
    response = _api(served, "GET", "/api/2.1/jobs/runs/list", params={"run_type": "NIGHTLY"})
    assert response.status_code == 400 and "run_type must be one of" in response.json()["message"]


def test_2_2_listings_show_100_tasks_and_has_more_and_the_sdk_fetches_the_rest(
    serve_jobs,
) -> None:
    many = tuple(Task(f"t{i:03}", Path(f"t{i}.ipynb"), ()) for i in range(150))
    served = serve_jobs({1: Job("wide", {}, many, 0)}, ScriptedTasks())
    sdk = _sdk(served)
    run_id = sdk.jobs.run_now(1).result(timeout=timedelta(seconds=30)).run_id

    expanded = {"expand_tasks": "true"}
    listed = _api(served, "GET", "/api/2.2/jobs/runs/list", params=expanded).json()["runs"][0]
    assert len(listed["tasks"]) == 100 and listed["has_more"] is True
    whole = _api(served, "GET", "/api/2.1/jobs/runs/list", params=expanded).json()["runs"][0]
    assert len(whole["tasks"]) == 150 and "has_more" not in whole
    job = _api(served, "GET", "/api/2.2/jobs/list", params=expanded).json()["jobs"][0]
    assert len(job["settings"]["tasks"]) == 100 and job["has_more"] is True

    first = _api(served, "GET", "/api/2.2/jobs/runs/get", params={"run_id": run_id}).json()
    assert len(first["tasks"]) == 100 and first["next_page_token"]
    # The SDK follows has_more (listings) and next_page_token (runs/get) to every task.
    assert len(sdk.jobs.get_run(run_id).tasks) == 150
    assert [len(run.tasks) for run in sdk.jobs.list_runs(expand_tasks=True)] == [150]
    assert [len(job.settings.tasks) for job in sdk.jobs.list(expand_tasks=True)] == [150]


def test_a_cancelled_notebook_that_finishes_anyway_does_not_succeed(medallion) -> None:
    served, tasks = medallion()
    started, proceed = threading.Event(), threading.Event()

    def ignores_cancel(params) -> str:  # Python code that a Spark job cancel does not stop
        started.set()
        proceed.wait(10)
        return "finished"

    tasks.bodies["bronze_posts"] = ignores_cancel
    sdk = _sdk(served)
    run_id = sdk.jobs.run_now(1, job_parameters=PARAMS).run_id
    assert started.wait(10)
    waiter = sdk.jobs.cancel_run(run_id)
    proceed.set()  # the notebook ends normally after the cancel
    run = waiter.result(timeout=timedelta(seconds=10))
    assert run.state.result_state.value == "CANCELED"
    by_key = {task.task_key: task for task in run.tasks}
    assert by_key["bronze_posts"].state.result_state.value == "CANCELED"
    assert {
        by_key[key].state.life_cycle_state.value for key in by_key if key != "bronze_posts"
    } == {"SKIPPED"}
    output = sdk.jobs.get_run_output(by_key["bronze_posts"].run_id)
    assert output.notebook_output.result is None  # the outcome was discarded


def test_repair_reruns_failed_tasks_in_the_same_run_with_its_history(medallion) -> None:
    served, tasks = medallion()
    broken = {"users": True}

    def bronze_users(params) -> str:
        if broken["users"]:
            raise FileNotFoundError(f"no object at {params['users_uri']}")
        return "users"

    tasks.bodies["bronze_users"] = bronze_users
    sdk = _sdk(served)
    failed = sdk.jobs.run_now(1, job_parameters=PARAMS).result(timeout=timedelta(seconds=10))
    assert failed.state.result_state.value == "FAILED"
    before = {task.task_key: task for task in failed.tasks}
    assert before["gold_post_users"].state.result_state.value == "UPSTREAM_FAILED"

    with pytest.raises(sdk_errors.InvalidParameterValue, match="Exactly one of rerun_tasks"):
        sdk.jobs.repair_run(
            failed.run_id, rerun_tasks=["bronze_users"], rerun_all_failed_tasks=True
        )
    with pytest.raises(sdk_errors.InvalidParameterValue, match=r"no task\(s\) \['nope'\]"):
        sdk.jobs.repair_run(failed.run_id, rerun_tasks=["nope"])
    with pytest.raises(sdk_errors.InvalidParameterValue, match="is a task run"):
        sdk.jobs.repair_run(before["bronze_users"].run_id, rerun_all_failed_tasks=True)

    broken["users"] = False
    waiter = sdk.jobs.repair_run(failed.run_id, rerun_all_failed_tasks=True)
    repair_id = waiter.response.repair_id
    repaired = waiter.result(timeout=timedelta(seconds=10))
    assert repaired.run_id == failed.run_id
    assert repaired.state.result_state.value == "SUCCESS"
    after = {task.task_key: task for task in repaired.tasks}
    rerun = {"bronze_users", "gold_post_users"}  # the failed task and the one it skipped
    for key, task in after.items():
        assert task.state.result_state.value == "SUCCESS"
        assert (task.run_id != before[key].run_id) == (key in rerun), key
    history = sdk.jobs.get_run(failed.run_id, include_history=True).repair_history
    assert [(item.type.value, item.id) for item in history] == [
        ("ORIGINAL", None),
        ("REPAIR", repair_id),
    ]
    assert history[0].state.result_state.value == "FAILED"
    assert history[1].state.result_state.value == "SUCCESS"
    assert set(history[1].task_run_ids) == {after[key].run_id for key in rerun}
    # The first attempt's task run keeps its error.
    assert "no object at" in sdk.jobs.get_run_output(before["bronze_users"].run_id).error

    with pytest.raises(sdk_errors.InvalidParameterValue, match="latest repair ID needs to be"):
        sdk.jobs.repair_run(failed.run_id, rerun_tasks=["silver_posts"])
    with pytest.raises(sdk_errors.InvalidParameterValue, match="no failed tasks to repair"):
        sdk.jobs.repair_run(failed.run_id, rerun_all_failed_tasks=True, latest_repair_id=repair_id)
    again = sdk.jobs.repair_run(
        failed.run_id,
        rerun_tasks=["silver_posts"],
        rerun_dependent_tasks=True,
        latest_repair_id=repair_id,
    ).result(timeout=timedelta(seconds=10))
    rerun_now = {t.task_key for t in again.tasks if t.run_id != after[t.task_key].run_id}
    assert rerun_now == {"silver_posts", "gold_post_users", "gold_most_popular_tags"}


def test_repairing_a_run_in_progress_is_refused(medallion) -> None:
    served, tasks = medallion()
    tasks.hold("bronze_posts")
    sdk = _sdk(served)
    run_id = sdk.jobs.run_now(1, job_parameters=PARAMS).run_id
    with pytest.raises(sdk_errors.InvalidParameterValue, match="only a run that has ended"):
        sdk.jobs.repair_run(run_id, rerun_all_failed_tasks=True)


def test_jobs_outside_the_bundle_are_refused_in_databricks_shape(medallion) -> None:
    served, _ = medallion()
    sdk = _sdk(served)
    with pytest.raises(sdk_errors.NotImplemented, match="does not serve jobs/create: it runs"):
        sdk.jobs.create(name="adhoc")
    with pytest.raises(sdk_errors.NotImplemented, match="does not serve jobs/delete"):
        sdk.jobs.delete(1)
    with pytest.raises(sdk_errors.NotImplemented, match="does not serve jobs/runs/submit"):
        sdk.jobs.submit(
            run_name="once",
            tasks=[SubmitTask(task_key="x", notebook_task=NotebookTask(notebook_path="/x"))],
        )
    response = _api(served, "POST", "/api/2.1/jobs/runs/submit", json={"tasks": []})
    assert response.status_code == 501 and response.json()["error_code"] == "NOT_IMPLEMENTED"


def test_the_2_0_paths_answer_as_2_1(medallion) -> None:
    """The legacy databricks-cli calls Jobs API 2.0."""
    served, _ = medallion()
    jobs = _api(served, "GET", "/api/2.0/jobs/list").json()["jobs"]
    assert [job["settings"]["name"] for job in jobs] == [MEDALLION.name]
    run_id = _api(
        served, "POST", "/api/2.0/jobs/run-now", json={"job_id": 1, "job_parameters": PARAMS}
    ).json()["run_id"]
    _states(served, run_id)
    run = _api(served, "GET", "/api/2.0/jobs/runs/get", params={"run_id": run_id}).json()
    assert run["state"]["result_state"] == "SUCCESS" and "status" not in run
    listed = _api(served, "GET", "/api/2.0/jobs/runs/list", params={"job_id": 1}).json()
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    response = _api(served, "GET", "/api/2.0/jobs/runs/get", params={"run_id": 5})
    assert response.status_code == 400
    assert response.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Run 5 does not exist.",
    }
