"""Every DAG file parses cleanly, without touching the metadata DB, a connection or a Variable,
and the producer's outlets are exactly the consumer's schedule."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.parse_dags import main, no_lookups, parse

REPO = Path(__file__).resolve().parents[1]  # not from conftest: importing it twice resets
DAGS_FOLDER = REPO / "dags"  # the session's AIRFLOW_HOME
DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))
PRODUCER, CONSUMER = "produce_data_asset", "trigger_databricks_workflow_dag"


@pytest.fixture
def strict_parse() -> Iterator[list[str]]:
    """Any SQL statement, connection or Variable lookup during parsing raises (and is recorded).

    Our own modules are dropped from sys.modules so their import-time code runs again here.
    """
    with pytest.MonkeyPatch.context() as monkeypatch:
        for module in [
            m for m in sys.modules if m == "stackexchange" or m.startswith("stackexchange.")
        ]:
            monkeypatch.delitem(sys.modules, module)
        with no_lookups() as statements:
            yield statements


@pytest.fixture
def dagbag(strict_parse: list[str]):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER), include_examples=False, safe_mode=False)
    assert strict_parse == []
    return bag


def test_dag_files_exist_for_both_contract_dags() -> None:
    assert {p.stem for p in DAG_FILES} >= {PRODUCER, CONSUMER}


def test_each_file_imports_cleanly_without_lookups(strict_parse: list[str]) -> None:
    """`make parse`'s path: every file is discovered, imports, defines a DAG, looks nothing up."""
    parsed = parse(DAGS_FOLDER)
    assert sorted(item.path for item in parsed) == DAG_FILES
    for item in parsed:
        assert item.error is None, item.error
        assert item.dags, f"{item.path.name} defines no DAG"
    assert strict_parse == []


GOOD_DAG = "from airflow.sdk import DAG\nwith DAG('good', schedule=None):\n    pass\n"


def test_make_parse_reports_import_errors_and_parse_time_lookups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing module and a Variable read at parse time are both import errors; a folder the
    .airflowignore names is not parsed, as the DAG processor does not parse it."""
    folder = tmp_path / "dags"
    (folder / "helpers").mkdir(parents=True)
    (folder / "good.py").write_text(GOOD_DAG)
    (folder / "broken.py").write_text("from airflow.sdk import DAG\nimport no_such_module_here\n")
    (folder / "reads_variable.py").write_text(
        "from airflow.sdk import DAG, Variable\n"
        "with DAG('bad', schedule=None, tags=[Variable.get('x')]):\n    pass\n"
    )
    (folder / "helpers" / "ignored.py").write_text("import airflow, no_such_helper  # a DAG?\n")
    (folder / ".airflowignore").write_text("helpers/\n")

    assert main(["--dags-folder", str(folder)]) == 1
    out = capsys.readouterr().out
    timed = {
        match.group(2): match.group(3)
        for match in re.finditer(r"^ +(\d+\.\d{3}) s  (\S+) +(.+)$", out, re.MULTILINE)
    }
    assert timed == {
        "broken.py": "IMPORT ERROR",
        "good.py": "good (0 tasks)",
        "reads_variable.py": "IMPORT ERROR",
    }
    errors = out.split("\nImport error in ")[1:]
    assert [error.splitlines()[0] for error in errors] == [
        f"{folder / 'broken.py'}:",
        f"{folder / 'reads_variable.py'}:",
    ]
    assert "No module named 'no_such_module_here'" in errors[0]
    assert "Variable.get called at parse time" in errors[1]
    assert "no_such_helper" not in out


def test_make_parse_passes_a_clean_folder_without_touching_airflow_home(tmp_path: Path) -> None:
    """As `make parse` runs it: exit 0, and Airflow's config goes to a throwaway home."""
    folder, home = tmp_path / "dags", tmp_path / "home"
    folder.mkdir()
    home.mkdir()
    (folder / "good.py").write_text(GOOD_DAG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    result = subprocess.run(
        [sys.executable, "-m", "local.parse_dags", "--dags-folder", str(folder)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**env, "HOME": str(home), "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "No import errors."
    assert list(home.iterdir()) == []  # no ~/airflow/airflow.cfg


def test_make_parse_names_a_missing_folder(tmp_path: Path, capsys) -> None:
    assert main(["--dags-folder", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} is not a directory" in capsys.readouterr().err


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
        "sites": ["ai.meta.stackexchange.com"],
        "include_meta": False,
        "source_base_url": "https://archive.org/download/stackexchange",
        "force": False,
        "dry_run": False,
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


INGEST_MODULES = tuple(
    f"stackexchange.{name}"
    for name in ("source", "download", "archive", "sevenzip", "dump_xml", "multipart", "publish",
                 "s3", "url_policy", "ingest", "legacy")
)  # fmt: skip


def test_producer_file_does_not_import_the_ingest_stack() -> None:
    """Heavy modules load inside the tasks, never when the DAG processor parses the file."""
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print('imported:', ' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'py7zr' "
        f"or m in {INGEST_MODULES!r})))"
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
