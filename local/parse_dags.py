"""``make parse``: import every DAG file as the DAG processor does, in seconds, without a DB.

Each file that Airflow's discovery picks in the DAGs folder (``.airflowignore`` and safe mode
honoured) goes through ``DagBag.process_file`` while connection and Variable lookups and any SQL
statement raise (a DAG file must not make them at parse time: the processor would run them on
every parse). Prints each file's parse time and DAGs, then the import errors; exits 1 on any.

A file's time is what the processor's parsing process spends on it: that process starts with
Airflow's processor modules imported, so they are imported first here; and it starts without
the DAGs folder's own modules (``stackexchange``), so those are forgotten before each file.
Usage: ``python -m local.parse_dags [--dags-folder DIR]``
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]


class ParseTimeLookup(AssertionError):
    """A DAG file asked for a connection, a Variable or the metadata DB while being parsed."""


def _forbid(what: str):
    def forbidden(*args: object, **kwargs: object) -> None:
        raise ParseTimeLookup(f"{what} called at parse time with {args[1:] or kwargs}")

    return forbidden


@contextmanager
def no_lookups() -> Iterator[list[str]]:
    """Inside: connection and Variable lookups raise, and so does any SQL (recorded, yielded)."""
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.sdk.definitions.connection import Connection as SdkConnection
    from airflow.sdk.definitions.variable import Variable as SdkVariable
    from airflow.sdk.execution_time import context
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []

    def on_sql(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)
        raise ParseTimeLookup(f"metadata DB query at parse time: {statement}")

    with ExitStack() as stack:
        for target, name in [
            (Connection, "get_connection_from_secrets"),
            (Variable, "get"),
            (SdkConnection, "get"),
            (SdkVariable, "get"),
            (context, "_get_connection"),
            (context, "_get_variable"),
        ]:
            stack.enter_context(
                mock.patch.object(target, name, _forbid(f"{target.__name__}.{name}"))
            )
        event.listen(Engine, "before_cursor_execute", on_sql)
        stack.callback(event.remove, Engine, "before_cursor_execute", on_sql)
        yield statements


@dataclass(frozen=True)
class ParsedFile:
    path: Path
    seconds: float
    dags: dict[str, int]  # dag_id -> number of tasks
    error: str | None
    warnings: tuple[str, ...]


def _forget_modules_under(folder: Path) -> None:
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).is_relative_to(folder):
            del sys.modules[name]


def parse(dags_folder: Path) -> list[ParsedFile]:
    """Every DAG file of ``dags_folder``, parsed once, by path."""
    importlib.import_module("airflow.dag_processing.processor")
    from airflow.configuration import conf
    from airflow.models.dagbag import DagBag
    from airflow.utils.file import list_py_file_paths

    safe_mode = conf.getboolean("core", "DAG_DISCOVERY_SAFE_MODE")
    bag = DagBag(dag_folder=str(dags_folder), include_examples=False, collect_dags=False)
    # The import errors are printed below; DagBag's own log would print each traceback again.
    logging.getLogger("airflow.models.dagbag").setLevel(logging.CRITICAL)
    parsed = []
    with no_lookups():
        for path in sorted(list_py_file_paths(str(dags_folder), safe_mode=safe_mode)):
            _forget_modules_under(dags_folder)
            started = time.perf_counter()
            dags = bag.process_file(path, only_if_updated=False, safe_mode=safe_mode)
            seconds = time.perf_counter() - started
            parsed.append(
                ParsedFile(
                    Path(path),
                    seconds,
                    {dag.dag_id: len(dag.tasks) for dag in dags},
                    bag.import_errors.get(path),
                    bag.captured_warnings.get(path, ()),
                )
            )
    return parsed


def report(dags_folder: Path, parsed: list[ParsedFile]) -> list[str]:
    """What ``make parse`` prints."""
    total = sum(item.seconds for item in parsed)
    lines = [f"Parsed {len(parsed)} DAG files in {dags_folder} in {total:.2f} s:"]
    for item in parsed:
        name = item.path.relative_to(dags_folder)
        if item.error:
            found = "IMPORT ERROR"
        elif item.dags:
            found = ", ".join(f"{dag_id} ({tasks} tasks)" for dag_id, tasks in item.dags.items())
        else:
            found = "no DAG"
        lines.append(f"  {item.seconds:7.3f} s  {name!s:<36} {found}")
        lines.extend(f"      warning: {warning}" for warning in item.warnings)
    errors = [item for item in parsed if item.error]
    if not errors:
        lines.append("No import errors.")
    for item in errors:
        lines.append(f"\nImport error in {item.path}:")
        lines.extend(f"    {line}" for line in (item.error or "").rstrip().splitlines())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.parse_dags", description=__doc__.split("Usage:")[0]
    )
    parser.add_argument(
        "--dags-folder",
        type=Path,
        default=REPO / "dags",
        help="the folder to parse (default: the repository's dags/)",
    )
    args = parser.parse_args(argv)
    folder = args.dags_folder.resolve()
    if not folder.is_dir():
        print(
            f"{folder} is not a directory: pass the DAGs folder with --dags-folder", file=sys.stderr
        )
        return 2
    parsed = parse(folder)
    print("\n".join(report(folder, parsed)))
    return 1 if any(item.error for item in parsed) else 0


if __name__ == "__main__":
    # Importing Airflow writes airflow.cfg into AIRFLOW_HOME: use a throwaway one, never ~/airflow.
    with tempfile.TemporaryDirectory(prefix="parse-dags-") as home:
        os.environ.update({"AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
        sys.exit(main())
