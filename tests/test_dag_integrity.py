"""Every DAG file parses cleanly, without touching the metadata DB, a connection or a Variable,
and the producer's outlets are exactly the consumer's schedule."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parents[1]  # not from conftest: importing it twice resets
DAGS_FOLDER = REPO / "dags"  # the session's AIRFLOW_HOME
DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))
PRODUCER, CONSUMER = "produce_data_asset", "trigger_databricks_workflow_dag"


class ParseTimeLookup(AssertionError):
    pass


def _forbid(what: str):
    def forbidden(*args: object, **kwargs: object) -> None:
        raise ParseTimeLookup(f"{what} called at parse time with {args[1:] or kwargs}")

    return forbidden


@pytest.fixture
def strict_parse(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any SQL statement, connection or Variable lookup during parsing raises (and is recorded).

    Our own modules are dropped from sys.modules so their import-time code runs again here.
    """
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.sdk.definitions.connection import Connection as SdkConnection
    from airflow.sdk.definitions.variable import Variable as SdkVariable
    from airflow.sdk.execution_time import context

    for target, name in [
        (Connection, "get_connection_from_secrets"),
        (Variable, "get"),
        (SdkConnection, "get"),
        (SdkVariable, "get"),
        (context, "_get_connection"),
        (context, "_get_variable"),
    ]:
        monkeypatch.setattr(target, name, _forbid(f"{target.__name__}.{name}"))
    for module in [
        m for m in sys.modules if m == "stackexchange" or m.startswith("stackexchange.")
    ]:
        monkeypatch.delitem(sys.modules, module)

    statements: list[str] = []

    def on_sql(conn, cursor, statement, *args: object) -> None:
        statements.append(statement)
        raise ParseTimeLookup(f"metadata DB query at parse time: {statement}")

    event.listen(Engine, "before_cursor_execute", on_sql)
    yield statements
    event.remove(Engine, "before_cursor_execute", on_sql)


@pytest.fixture
def dagbag(strict_parse: list[str]):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER), include_examples=False, safe_mode=False)
    assert strict_parse == []
    return bag


def test_dag_files_exist_for_both_contract_dags() -> None:
    assert {p.stem for p in DAG_FILES} >= {PRODUCER, CONSUMER}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_each_file_imports_cleanly_without_lookups(path: Path, strict_parse: list[str]) -> None:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(path), include_examples=False, safe_mode=False)
    assert bag.import_errors == {}
    assert bag.dags, f"{path.name} defines no DAG"
    assert strict_parse == []


def test_forbidden_lookups_are_really_caught(strict_parse: list[str], tmp_path: Path) -> None:
    """The guard itself works: a DAG file that reads a Variable at parse time is reported."""
    from airflow.models import DagBag

    bad = tmp_path / "bad_dag.py"
    bad.write_text(
        "from airflow.sdk import DAG, Variable\n"
        "with DAG('bad', schedule=None, tags=[Variable.get('x')]):\n    pass\n"
    )
    bag = DagBag(dag_folder=str(bad), include_examples=False, safe_mode=False)
    assert "called at parse time" in next(iter(bag.import_errors.values()))


def test_every_dag_has_owner_tags_retries_and_timeouts(dagbag) -> None:
    assert set(dagbag.dag_ids) >= {PRODUCER, CONSUMER}
    for dag in dagbag.dags.values():
        assert dag.tags, f"{dag.dag_id} has no tags"
        assert dag.doc_md, f"{dag.dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag.dag_id}.{task.task_id}: owner"
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id}: retries"
            assert task.execution_timeout is not None, f"{dag.dag_id}.{task.task_id}: timeout"


def test_producer_schedule_params_and_backoff(dagbag) -> None:
    dag = dagbag.dags[PRODUCER]
    assert dag.timetable.summary == "0 0 * * *" and dag.catchup is False  # @daily
    params = dag.params.validate()
    assert params == {
        "site": "ai.meta.stackexchange.com",
        "source_base_url": "https://archive.org/download/stackexchange",
        "force": False,
    }
    for name in params:  # the trigger form needs a type and a description for each
        param = dag.params.get_param(name)
        assert param.schema["type"] and param.description
    assert all(task.retry_exponential_backoff for task in dag.tasks)


def _keys(assets) -> set[tuple[str, str]]:
    return {(asset.name, asset.uri) for asset in assets}


def test_producer_emits_exactly_what_the_consumer_is_scheduled_on(dagbag) -> None:
    from airflow.sdk import Asset

    producer, consumer = dagbag.dags[PRODUCER], dagbag.dags[CONSUMER]
    emitted = [outlet for task in producer.tasks for outlet in task.outlets]
    assert all(isinstance(outlet, Asset) for outlet in emitted)
    scheduled = [asset for _, asset in consumer.timetable.asset_condition.iter_assets()]
    assert _keys(emitted) == _keys(scheduled)
    assert len(emitted) == 2
    assert all(asset.uri.startswith("s3://") for asset in emitted)


def test_producer_file_does_not_import_the_ingest_stack() -> None:
    """Heavy modules load inside the tasks, never when the DAG processor parses the file."""
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print('imported:', ' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'py7zr' "
        "or m in ('stackexchange.source', 'stackexchange.archive', 'stackexchange.ingest', "
        "'stackexchange.s3_publish', 'stackexchange.dump_xml'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(DAGS_FOLDER / f"{PRODUCER}.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{DAGS_FOLDER}:{REPO}"},
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "imported:"
