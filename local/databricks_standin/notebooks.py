"""Run a Databricks-style ``.ipynb``: its code cells in order, with ``spark`` and ``dbutils``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import SparkSession


class InputWidgetNotDefinedError(KeyError):
    """A notebook read a widget that neither the job nor the notebook defines."""


class Widgets:
    """The ``dbutils.widgets`` calls our notebooks use: ``text`` and ``get``.

    Job parameters win over a widget's default, as on Databricks. ``resolve`` maps a value
    before the notebook sees it (the stand-in uses it to fetch ``s3://`` objects).
    """

    def __init__(self, values: dict[str, str], resolve: Callable[[str], str]) -> None:
        self._values = dict(values)
        self._resolve = resolve

    def text(self, name: str, defaultValue: str = "", label: str | None = None) -> None:
        self._values.setdefault(name, defaultValue)

    def get(self, name: str) -> str:
        if name not in self._values:
            raise InputWidgetNotDefinedError(f"No input widget named {name} is defined")
        return self._resolve(self._values[name])


class DbUtils:
    def __init__(self, widgets: Widgets) -> None:
        self.widgets = widgets


def code_cells(notebook: Path) -> list[str]:
    """The source of each code cell, in order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def run_notebook(notebook: Path, spark: SparkSession, widgets: Widgets) -> None:
    """Execute the notebook's code cells in one fresh namespace; exceptions propagate."""
    namespace: dict[str, object] = {
        "__name__": "__main__",
        "spark": spark,
        "dbutils": DbUtils(widgets),
    }
    for number, source in enumerate(code_cells(notebook), start=1):
        exec(compile(source, f"{notebook.name}[cell {number}]", "exec"), namespace)
