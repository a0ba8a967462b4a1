"""The job as code: the bundle's job is complete, acyclic and agrees with notebooks and DAG."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from local.databricks_standin.bundle import BUNDLE_DIR, Job, Task, load_jobs
from local.databricks_standin.notebooks import code_cells

CONTRACT_PARAMETERS = {
    "posts_uri", "users_uri", "site", "posts_sha256", "users_sha256", "posts_etag", "users_etag",
    "posts_version_id", "users_version_id", "posts_bytes", "users_bytes", "posts_last_modified",
    "users_last_modified", "catalog", "schema",
}  # fmt: skip


@pytest.fixture(scope="module", params=["dev", "prod"])
def job(request: pytest.FixtureRequest) -> Job:
    (job,) = load_jobs(BUNDLE_DIR, request.param)
    return job


def _widgets_read(notebook: Path) -> set[str]:
    """Names passed to ``dbutils.widgets.get(...)`` / ``.text(...)`` in the code cells."""
    names = set()
    for source in code_cells(notebook):
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"get", "text"}
                and ast.unparse(node.func.value) == "dbutils.widgets"
            ):
                assert isinstance(node.args[0], ast.Constant), f"{notebook.name}: dynamic widget"
                names.add(node.args[0].value)
    return names


def test_every_task_notebook_exists(job: Job) -> None:
    for task in job.tasks:
        assert task.notebook.is_file(), f"task {task.key}: no notebook {task.notebook}"
        assert task.notebook.parent == BUNDLE_DIR


def test_dependencies_form_the_medallion_dag(job: Job) -> None:
    order = [task.key for task in job.task_order()]
    assert len(order) == len(set(order)) == len(job.tasks)
    deps = {task.key: set(task.depends_on) for task in job.tasks}
    assert deps == {
        "bronze_posts": set(),
        "bronze_users": set(),
        "silver_posts": {"bronze_posts"},
        "gold_post_users": {"silver_posts", "bronze_users"},
        "gold_most_popular_tags": {"silver_posts"},
    }
    for key, upstream in deps.items():
        assert all(order.index(u) < order.index(key) for u in upstream)


def test_a_cycle_is_rejected() -> None:
    tasks = (Task("a", Path("a"), ("b",)), Task("b", Path("b"), ("a",)))
    with pytest.raises(ValueError, match="cycle"):
        Job("j", {}, tasks, 0).task_order()
    with pytest.raises(ValueError, match="unknown task"):
        Job("j", {}, (Task("a", Path("a"), ("zzz",)),), 0).task_order()


def test_every_widget_a_notebook_reads_is_a_job_parameter(job: Job) -> None:
    for task in job.tasks:
        read = _widgets_read(task.notebook)
        assert read, f"{task.notebook.name} reads no widgets"
        assert read <= job.parameters.keys(), (
            f"{task.notebook.name}: {read - job.parameters.keys()}"
        )


def test_parameters_follow_the_contract(job: Job) -> None:
    assert job.parameters.keys() == CONTRACT_PARAMETERS
    assert job.parameters["catalog"] and job.parameters["schema"]
    assert job.timeout_seconds > 0


def test_the_job_declares_every_parameter_the_dag_sends(job: Job) -> None:
    """What ``job_parameters`` builds from complete events, plus the bundle's own location."""
    from datetime import UTC, datetime

    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from stackexchange.assets import raw_assets
    from stackexchange.databricks_job import job_parameters
    from stackexchange.settings import Storage

    storage = Storage()

    extra = {"site": "s", "sha256": "a" * 64, "etag": "e", "version_id": "v", "bytes": 8,
             "last_modified": "2026-12-01T21:30:12+00:00"}  # fmt: skip
    events = TriggeringAssetEventsAccessor.build(
        AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=asset.name, uri=asset.uri, extra={}),
            extra={**extra, "uri": f"s3://{storage.bucket}/{storage.prefix}/s/g/{member}"},
            source_aliases=[],
            timestamp=datetime.now(UTC),
        )
        for member, asset in raw_assets(storage).items()
    )
    (parameters,) = job_parameters(events, storage)
    assert parameters.keys() | {"catalog", "schema"} == job.parameters.keys()


def test_job_name_is_what_the_dag_looks_up(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    from stackexchange import databricks_job

    monkeypatch.delenv("DATABRICKS_JOB_ID", raising=False)
    assert databricks_job.job_lookup() == {"job_name": job.name}


def test_targets_use_different_schemas() -> None:
    (dev,), (prod,) = load_jobs(BUNDLE_DIR, "dev"), load_jobs(BUNDLE_DIR, "prod")
    assert dev.parameters["schema"] != prod.parameters["schema"]
    with pytest.raises(ValueError, match="no target 'staging'"):
        load_jobs(BUNDLE_DIR, "staging")
