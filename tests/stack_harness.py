"""The local stack as a session fixture: ``python -m local.stack up`` on free ports, then ``run``
(the pipeline, as ``make demo-up`` then ``make demo-run``), and at the end ``down``.

Started once for the e2e and the browser tests. The fixture's teardown runs ``down`` and fails
the session if any process the stack started is still alive or any of its ports still listens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from local import services
from local.stack import processes
from local.stack.airflow_api import AirflowApi
from local.stack.state import PYTHONPATH, REPO, StackInfo, load_info, read_password

UP_TIMEOUT = 1200
# The producer's fan-out bound for the tests' stack, given explicitly (not the demo's default):
# below the number of sample sites, so the real scheduler must hold one back.
MAX_ACTIVE_SITES = 1


@dataclass
class RunningStack:
    info: StackInfo
    api_port: int

    @property
    def run_dir(self) -> Path:
        return Path(self.info.run_dir)

    @property
    def password(self) -> str:
        return read_password(self.info)

    def api(self) -> AirflowApi:
        return AirflowApi(self.info.ui_url, self.info.username, self.password)

    def ports(self) -> list[int]:
        urls = (self.info.ui_url, self.info.s3_endpoint, self.info.files_url)
        return [int(url.rsplit(":", 1)[1]) for url in (*urls, self.info.databricks_url)]

    def processes(self) -> list[psutil.Process]:
        """Every process of every service, with descendants (Spark's JVM, task runners...)."""
        return [p for svc in processes.running(self.run_dir).values() for p in processes.tree(svc)]


def _env() -> dict[str, str]:
    """As ``make`` runs it: PYTHONPATH with the DAGs folder, no test-session Airflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["PYTHONPATH"] = PYTHONPATH
    return env


def stack_cmd(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "local.stack", "--run-dir", str(run_dir), *args]


def stack_command(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        stack_cmd(run_dir, *args),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT,
        check=False,
    )


def stack_popen(run_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        stack_cmd(run_dir, *args),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _checked(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m local.stack ARGS``, which must succeed; its output is kept in the run dir."""
    try:
        result = stack_command(run_dir, *args)
    except subprocess.TimeoutExpired:
        stack_command(run_dir, "down")  # killed before it could clean up
        raise
    if result.returncode != 0:
        stack_command(run_dir, "down")
        raise AssertionError(
            f"local stack {args[0]} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    (run_dir / f"{args[0]}.out").write_text(result.stdout)
    return result


def start(run_dir: Path) -> RunningStack:
    api_port = services.free_port()
    _checked(
        run_dir, "up", "--api-port", str(api_port), "--max-active-sites", str(MAX_ACTIVE_SITES)
    )
    _checked(run_dir, "run")
    return RunningStack(load_info(run_dir), api_port)


def stop_and_check(stack: RunningStack) -> None:
    """``down``, then nothing of the stack may run or listen; ``down`` again is a no-op."""
    before = stack.processes()
    ports = stack.ports()
    result = stack_command(stack.run_dir, "down")
    assert result.returncode == 0, result.stderr
    survivors = [p for p in before if alive(p)] + processes.tagged(stack.run_dir)
    assert not survivors, f"still running after down: {[p.cmdline() for p in survivors]}"
    listening = [port for port in ports if services.port_in_use(port)]
    assert not listening, f"still listening after down: {listening}"
    assert not (stack.run_dir / "postgres.dir").exists(), "the PostgreSQL cluster was not removed"
    again = stack_command(stack.run_dir, "down")
    assert again.returncode == 0 and "Nothing was running" in again.stdout, again.stdout


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
