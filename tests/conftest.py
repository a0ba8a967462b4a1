"""Shared pytest set-up: an isolated AIRFLOW_HOME, a metadata DB, a moto S3 server over HTTP.

The environment is set at import time, before any test module imports Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The Databricks half's fixtures: `spark` (one local session) and `databricks_standin`.
pytest_plugins = ["tests.databricks_fixtures"]

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "dags"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-tests-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(_AIRFLOW_HOME / "logs"),
    }
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh Airflow metadata DB (SQLite) for the session."""
    from airflow.utils import db

    db.initdb()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto in server mode: real HTTP on 127.0.0.1, as any S3-compatible endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_conn(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The `aws_conn` Airflow connection pointing at the moto server (as an env var)."""
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_CONN", json.dumps(conn))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return moto_server


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The whole local stack, up once for the e2e and browser tests (see tests/stack_harness.py)."""
    from tests import stack_harness

    stack = stack_harness.start(tmp_path_factory.mktemp("local-stack"))
    yield stack
    stack_harness.stop_and_check(stack)
