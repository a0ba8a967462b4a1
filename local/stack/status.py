"""``status`` and ``logs``: what a stack runs, where, what it ran; its services' logs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import requests

from local.stack import StackError, processes
from local.stack.pipeline import CONSUMER, PRODUCER, api_for
from local.stack.state import DEFAULT_RUN_DIR, StackInfo, info_path, load_info, read_password

Log = Callable[[str], None]


def status(run_dir: Path, log: Log, runs: int = 5) -> bool:
    """Print the services (state, pid, address), the login and recent DAG runs.

    Returns whether every service the stack started is running.
    """
    recorded = processes.recorded(run_dir)
    if not recorded:
        log(f"Nothing is running in {run_dir}: make demo-up starts the stack.")
        return False
    info = load_info(run_dir) if info_path(run_dir).exists() else None
    running = processes.running(run_dir)
    log(f"Local stack in {run_dir}" + (f" (metadata DB {info.database})" if info else ""))
    log(f"  {'service':<14} {'state':<8} {'pid':>7}  address")
    for name in recorded:
        state, pid = ("running", str(running[name].pid)) if name in running else ("STOPPED", "-")
        log(f"  {name:<14} {state:<8} {pid:>7}  {_address(name, info)}")
    stopped = [name for name in recorded if name not in running]
    if stopped:
        logs = processes.log_dir(run_dir)
        log(f"Stopped: {', '.join(stopped)}; see {logs}/<name>.log; make demo-up starts afresh")
    if info is None:
        log("The stack is still starting (no stack.json yet).")
        return not stopped
    log(f"Airflow UI: {info.ui_url}  user {info.username}  password {read_password(info)}")
    if "api-server" in running:
        _recent_runs(info, log, runs)
    log(f"Logs: {processes.log_dir(run_dir)} (make demo-logs SERVICE=<name>); task logs: "
        f"{Path(info.run_dir) / 'airflow' / 'logs'}")  # fmt: skip
    return not stopped


def _address(name: str, info: StackInfo | None) -> str:
    if info is None:
        return ""
    urls = {
        "s3": info.s3_endpoint,
        "files": info.files_url,
        "databricks": info.databricks_url,
        "api-server": info.ui_url,
        "postgres": "unix socket (no TCP)",
    }
    return urls.get(name, "")


def _recent_runs(info: StackInfo, log: Log, limit: int) -> None:
    try:
        api = api_for(info)
        found = {dag_id: api.dag_runs(dag_id)[:limit] for dag_id in (PRODUCER, CONSUMER)}
    except requests.RequestException as error:
        log(f"Airflow's API at {info.ui_url} does not answer: {error}")
        return
    log("Recent DAG runs (newest first):")
    for dag_id, dag_runs in found.items():
        if not dag_runs:
            log(f"  {dag_id}: no runs yet (make demo-run triggers one)")
        for run in dag_runs:
            log(f"  {dag_id:<32} {run['state'] or '-':<8} {_duration(run):>8}  {run['dag_run_id']}")


def _duration(run: dict) -> str:
    """How long the run took, or has taken so far (``+``)."""
    if not run.get("start_date"):
        return "-"
    start = datetime.fromisoformat(run["start_date"])
    if run.get("end_date"):
        return f"{(datetime.fromisoformat(run['end_date']) - start).total_seconds():.1f}s"
    return f"{(datetime.now(UTC) - start).total_seconds():.0f}s+"


def log_files(run_dir: Path, names: list[str]) -> list[Path]:
    """The logs of the named services (all of them when ``names`` is empty)."""
    available = {path.stem: path for path in sorted(processes.log_dir(run_dir).glob("*.log"))}
    if not available:
        where = "" if run_dir == DEFAULT_RUN_DIR.resolve() else f" in {run_dir}"
        raise StackError(f"no stack logs{where}: start the stack with make demo-up")
    if unknown := sorted(set(names) - set(available)):
        raise StackError(
            f"no log for {', '.join(unknown)}: choose from {', '.join(available)} "
            "(make demo-logs SERVICE=scheduler)"
        )
    return [available[name] for name in names] if names else list(available.values())


def tail_logs(run_dir: Path, names: list[str], lines: int, follow: bool) -> None:
    """Hand over to ``tail`` (``-F`` follows across restarts; Ctrl-C stops it)."""
    files = log_files(run_dir, names)
    tail = shutil.which("tail")
    if tail is None:
        raise StackError("the 'tail' command is missing: install coreutils")
    args = [tail, "-n", str(lines), *(["-F"] if follow else []), *map(str, files)]
    os.execv(tail, args)
