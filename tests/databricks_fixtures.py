"""Fixtures for the Databricks half: one local Spark session, one stand-in server per session.

Imported by conftest.py so every test module can use them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKEN = "testing"
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


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


@pytest.fixture(scope="session")
def databricks_standin(
    tmp_path_factory: pytest.TempPathFactory, moto_server: str
) -> Iterator[StandIn]:
    """``python -m local.databricks_standin`` as a subprocess, as the local stack starts it.

    ``s3://`` job parameters are read from the session's moto server.
    """
    from conftest import free_port

    workdir = tmp_path_factory.mktemp("standin")
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    command = [
        sys.executable, "-m", "local.databricks_standin", "--port", str(port),
        "--token-file", str(token_file), "--warehouse", str(workdir / "warehouse"),
        "--s3-endpoint", moto_server,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **MOTO_CREDENTIALS}
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
            yield StandIn(
                f"http://127.0.0.1:{port}", port, TOKEN, workdir / "warehouse", moto_server
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
