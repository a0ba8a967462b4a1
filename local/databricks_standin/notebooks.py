"""Run a Databricks-style ``.ipynb``: its code cells in order, with ``spark`` and ``dbutils``.

``NotebookTasks`` is the stand-in's task executor: each task's notebook on the local Spark session.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrameReader, SparkSession

from local.databricks_standin.bundle import Task
from local.databricks_standin.s3_inputs import S3Inputs


class InputWidgetNotDefinedError(KeyError):
    """A notebook read a widget that neither the job nor the notebook defines."""


class Widgets:
    """The ``dbutils.widgets`` calls our notebooks use: ``text`` and ``get``.

    Job parameters win over a widget's default, as on Databricks.
    """

    def __init__(self, values: dict[str, str]) -> None:
        self._values = dict(values)

    def text(self, name: str, defaultValue: str = "", label: str | None = None) -> None:
        self._values.setdefault(name, defaultValue)

    def get(self, name: str) -> str:
        if name not in self._values:
            raise InputWidgetNotDefinedError(f"No input widget named {name} is defined")
        return self._values[name]


class _Reader:
    """A ``DataFrameReader`` whose ``load(path)`` reads ``resolve(path)`` instead.

    Local Spark has no S3 filesystem (no hadoop-aws), so the stand-in maps ``s3://`` paths to
    local copies here, at the read, and notebooks still see (and record) the real URI.
    """

    def __init__(self, reader: DataFrameReader, resolve: Callable[[str], str]) -> None:
        self._reader, self._resolve = reader, resolve

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._reader, name)
        if name == "load":
            return lambda path, *args, **kwargs: attribute(self._resolve(path), *args, **kwargs)
        if not callable(attribute):
            return attribute

        def chained(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            return _Reader(result, self._resolve) if result is self._reader else result

        return chained


class _Session:
    """The notebook's ``spark``: the real session (got at its first use), with ``spark.read``
    mapping paths."""

    def __init__(self, spark: Callable[[], SparkSession], resolve: Callable[[str], str]) -> None:
        self._spark, self._resolve = spark, resolve

    @property
    def read(self) -> _Reader:
        return _Reader(self._spark().read, self._resolve)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spark(), name)


class NotebookExit(Exception):
    """Raised by ``dbutils.notebook.exit(value)``: the notebook ends with ``value``."""

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.value = value


class NotebookUtils:
    def exit(self, value: str) -> None:
        """End the notebook here; ``value`` is the run's ``notebook_output.result``."""
        raise NotebookExit(str(value))


class DbUtils:
    def __init__(self, widgets: Widgets) -> None:
        self.widgets = widgets
        self.notebook = NotebookUtils()


def code_cells(notebook: Path) -> list[str]:
    """The source of each code cell, in order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def run_notebook(
    notebook: Path,
    spark: Callable[[], SparkSession],
    widgets: Widgets,
    resolve: Callable[[str], str],
) -> str | None:
    """Execute the notebook's code cells in one fresh namespace; exceptions propagate.

    ``spark`` gives the session when the notebook first uses it; ``resolve`` maps each path the
    notebook reads (the stand-in fetches ``s3://`` objects).
    Returns the value given to ``dbutils.notebook.exit``, if the notebook called it.
    """
    namespace: dict[str, object] = {
        "__name__": "__main__",
        "spark": _Session(spark, resolve),
        "dbutils": DbUtils(widgets),
    }
    try:
        for number, source in enumerate(code_cells(notebook), start=1):
            exec(compile(source, f"{notebook.name}[cell {number}]", "exec"), namespace)
    except NotebookExit as exit_:
        return exit_.value
    return None


class NotebookTasks:
    """The stand-in's ``TaskExecutor``: a task's notebook on the shared local Spark session.

    The session starts when a notebook first uses ``spark`` (as a job cluster starts for its
    first task), so the stand-in itself starts in a second. Each task run is a Spark job group:
    cancelling the run cancels its Spark jobs (Python code between them is not interrupted; the
    runner discards the outcome of a cancelled task).
    """

    def __init__(
        self, session: Callable[[], SparkSession], s3_endpoint: str | None, downloads: Path
    ) -> None:
        self._start_session = session
        self._session: SparkSession | None = None
        self._lock = threading.Lock()
        self.s3_endpoint = s3_endpoint
        self.downloads = downloads  # each task run's s3:// inputs go into a directory here

    def session(self) -> SparkSession:
        with self._lock:
            if self._session is None:
                self._session = self._start_session()
            return self._session

    def run(self, task_run_id: int, task: Task, parameters: Mapping[str, str]) -> str | None:
        grouped: list[bool] = []

        def spark() -> SparkSession:
            session = self.session()
            if not grouped:  # this thread's Spark jobs from now on belong to the task run
                session.sparkContext.setJobGroup(f"task-{task_run_id}", task.key, True)
                grouped.append(True)
            return session

        inputs = S3Inputs(self.s3_endpoint, self.downloads)
        try:
            return run_notebook(task.notebook, spark, Widgets(dict(parameters)), inputs.resolve)
        finally:
            inputs.cleanup()

    def cancel(self, task_run_id: int) -> None:
        if self._session is not None:
            self._session.sparkContext.cancelJobGroup(f"task-{task_run_id}")

    def stop(self) -> None:
        """Stop the session if a notebook started it."""
        with self._lock:
            if self._session is not None:
                self._session.stop()
