"""Fixtures for the Databricks half: one local Spark session, one stand-in server per session,
and in-process stand-ins whose task bodies a test scripts (no Spark).

Imported by conftest.py so every test module can use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from local.services import DUMMY_AWS_ENV, free_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "testing"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):  # -> SparkSession (lazy import)
    """The lean local Spark session the stand-in also uses; warehouse in a temp dir."""
    from local.databricks_standin.spark import lean_session

    session = lean_session(tmp_path_factory.mktemp("warehouse"), app_name="tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@dataclass(frozen=True)
class StandIn:
    url: str
    port: int
    token: str
    warehouse: Path
    s3_endpoint: str


def write_bundle(directory: Path, job_name: str, parameters: list[str], *cells: str) -> Path:
    """A bundle with one job of one notebook task ``run`` made of ``cells`` (no Spark unless the
    cells use it); its parameters default to "". Returns the bundle directory."""
    (directory / "resources").mkdir(parents=True)
    (directory / "databricks.yml").write_text(
        "bundle: {name: test}\ninclude: [resources/*.job.yml]\n"
    )
    job = {
        "name": job_name,
        "max_concurrent_runs": 1,
        "queue": {"enabled": True},
        "parameters": [{"name": name, "default": ""} for name in parameters],
        "tasks": [{"task_key": "run", "notebook_task": {"notebook_path": "../run.ipynb"}}],
    }
    (directory / "resources" / "test.job.yml").write_text(
        json.dumps({"resources": {"jobs": {"test": job}}})  # JSON is YAML
    )
    notebook = {"cells": [{"cell_type": "code", "source": [cell]} for cell in cells]}
    (directory / "run.ipynb").write_text(json.dumps(notebook))
    return directory


@contextlib.contextmanager
def standin_process(
    workdir: Path, *options: str, port: int | None = None, env: Mapping[str, str] | None = None
) -> Iterator[StandIn]:
    """``python -m local.databricks_standin`` as a subprocess, as the local stack starts it:
    token, warehouse and (unless ``options`` name another) state directory under ``workdir``.
    Yields once it listens; stopped (SIGTERM) at the end."""
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    port = port or free_port()
    command = [
        sys.executable, "-m", "local.databricks_standin", "--port", str(port),
        "--token-file", str(token_file), "--warehouse", str(workdir / "warehouse"), *options,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **DUMMY_AWS_ENV, **(env or {})}
    with (
        tempfile.TemporaryFile(mode="w+") as log,
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        ) as process,
    ):
        assert process.stdout is not None
        ready = f"databricks stand-in listening on http://127.0.0.1:{port}"
        for line in process.stdout:  # blocks until the line, or EOF if the process died
            if line.strip() == ready:
                break
        else:
            log.seek(0)
            pytest.fail(f"stand-in did not start (exit {process.wait()}):\n{log.read()[-3000:]}")
        try:
            yield StandIn(f"http://127.0.0.1:{port}", port, TOKEN, workdir / "warehouse", "")
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def databricks_standin(
    tmp_path_factory: pytest.TempPathFactory, moto_server: str
) -> Iterator[StandIn]:
    """The stand-in subprocess running the bundle's job; ``s3://`` job parameters are read from
    the session's moto server."""
    workdir = tmp_path_factory.mktemp("standin")
    with standin_process(workdir, "--s3-endpoint", moto_server) as standin:
        yield dataclasses.replace(standin, s3_endpoint=moto_server)


class ScriptedTasks:
    """A ``TaskExecutor`` for tests: each task key's body is a function of the job parameters.

    A task without a body succeeds at once. ``hold(key)`` makes that task wait until
    ``release()`` or until its run is cancelled (then it raises, as a cancelled notebook does).
    """

    def __init__(
        self, bodies: Mapping[str, Callable[[Mapping[str, str]], str | None]] | None = None
    ) -> None:
        self.bodies = dict(bodies or {})
        self.started: list[str] = []
        self._held: set[str] = set()
        self._released = threading.Event()
        self._cancelled: set[int] = set()
        self._changed = threading.Condition()

    def hold(self, key: str) -> None:
        self._held.add(key)

    def release(self) -> None:
        with self._changed:
            self._released.set()
            self._changed.notify_all()

    def run(self, task_run_id: int, task, parameters: Mapping[str, str]) -> str | None:
        self.started.append(task.key)
        if task.key in self._held:
            with self._changed:
                done = self._changed.wait_for(
                    lambda: self._released.is_set() or task_run_id in self._cancelled, timeout=60
                )
            if not done or task_run_id in self._cancelled:
                raise RuntimeError(f"task {task.key} was cancelled")
        body = self.bodies.get(task.key)
        return body(parameters) if body else None

    def cancel(self, task_run_id: int) -> None:
        with self._changed:
            self._cancelled.add(task_run_id)
            self._changed.notify_all()


@dataclass(frozen=True)
class ServedJobs:
    """An in-process stand-in: its URL, token, and the ``Runner`` behind it."""

    url: str
    port: int
    token: str
    runner: object  # local.databricks_standin.runs.Runner


@pytest.fixture
def serve_jobs() -> Iterator[Callable[..., ServedJobs]]:
    """Start in-process stand-ins: ``serve_jobs(jobs, executor, phase_seconds=0.0)``.

    ``jobs`` maps job ids to ``bundle.Job``s; ``executor`` runs their tasks (``ScriptedTasks``).
    Each server and its runner are stopped after the test.
    """

    from local.databricks_standin.runs import Runner
    from local.databricks_standin.server import JobsApi, make_server

    started = []

    def serve(jobs: dict, executor, phase_seconds: float = 0.0) -> ServedJobs:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        runner = Runner(executor, url, phase_seconds)
        server = make_server(port, TOKEN, JobsApi(jobs, runner))
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        started.append((server, runner, executor))
        return ServedJobs(url, port, TOKEN, runner)

    yield serve
    for server, runner, executor in started:
        server.shutdown()
        server.server_close()
        if isinstance(executor, ScriptedTasks):
            executor.release()
        runner.stop()
