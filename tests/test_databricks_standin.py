"""The stand-in speaks the Jobs API as the provider's hook calls it, and runs the bundle's job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import requests

from local.databricks_standin import read_table
from local.databricks_standin.bundle import Job
from local.databricks_standin.runs import Runner
from local.databricks_standin.server import JobsApi, make_server
from local.sample_dump import write_site
from tests.databricks_fixtures import StandIn
from tests.moto_s3 import s3_client

JOB = "stackexchange_medallion"


def _hook(monkeypatch: pytest.MonkeyPatch, port: int, token: str):
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    conn = {"conn_type": "databricks", "host": "127.0.0.1", "port": port, "schema": "http",
            "password": token}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_CONN", json.dumps(conn))
    return DatabricksHook("databricks_conn", retry_limit=1, retry_delay=0)


@pytest.fixture
def many_jobs() -> Iterator[int]:
    """An in-process server (API layer only, no runs) with 30 jobs, two of them named alike."""
    from conftest import free_port

    names = [f"job_{i}" for i in range(27)] + ["wanted", "twin", "twin"]
    jobs = {i: Job(name, {}, (), 0) for i, name in enumerate(names, start=1)}
    port = free_port()
    server = make_server(port, "testing", JobsApi(jobs, cast(Runner, None)))
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


def test_job_list_pages_through_every_job(many_jobs: int, monkeypatch) -> None:
    hook = _hook(monkeypatch, many_jobs, "testing")
    assert len(hook.list_jobs(limit=4)) == 30
    assert hook.find_job_id_by_name("wanted") == 28
    assert hook.find_job_id_by_name("missing") is None
    with pytest.raises(Exception, match="more than one job with name twin"):
        hook.find_job_id_by_name("twin")


def test_wrong_or_missing_token_is_refused(many_jobs: int, monkeypatch) -> None:
    with pytest.raises(Exception, match="Status Code: 401"):
        _hook(monkeypatch, many_jobs, "wrong").list_jobs()
    response = requests.get(f"http://127.0.0.1:{many_jobs}/api/2.1/jobs/list", timeout=5)
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"


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
    assert set(posts.column("_site").to_pylist()) == {"s3.example"}
    # The notebook saw (and recorded) the S3 URI; only Spark's read went to the local copy.
    bronze = read_table(databricks_standin.warehouse, "bronze_users", schema="s3_test")
    assert set(bronze.column("_source_uri").to_pylist()) == {s3_dump["users_uri"]}


def test_async_hook_sends_get_with_json_body(
    databricks_standin: StandIn, s3_dump: dict, monkeypatch
) -> None:
    hook = _hook(monkeypatch, databricks_standin.port, databricks_standin.token)
    run_id = hook.run_now({"job_id": hook.find_job_id_by_name(JOB), "job_parameters": s3_dump})

    async def poll():
        async with hook:
            return await hook.a_get_run_page_url(run_id), await hook.a_get_run_state(run_id)

    url, state = asyncio.run(poll())
    assert url == f"{databricks_standin.url}/runs/{run_id}"
    assert state.life_cycle_state in {"PENDING", "RUNNING", "TERMINATED"}
    _wait(hook, run_id)


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


def test_cancel_a_queued_run(databricks_standin: StandIn, s3_dump: dict, monkeypatch) -> None:
    hook = _hook(monkeypatch, databricks_standin.port, databricks_standin.token)
    job = {"job_id": hook.find_job_id_by_name(JOB), "job_parameters": s3_dump}
    first, second = hook.run_now(job), hook.run_now(job)
    hook.cancel_run(second)
    assert _wait(hook, second).result_state == "CANCELED"
    assert _wait(hook, first).result_state == "SUCCESS"


def test_bad_requests_get_clear_errors(databricks_standin: StandIn, monkeypatch) -> None:
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
