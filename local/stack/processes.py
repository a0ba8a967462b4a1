"""Start services in their own process groups, record them in pid files, stop them by pid.

A pid file holds the pid and the process's start time, so ``stop`` never signals a process
that merely reuses an old pid. Each service runs in a new session (its own process group) and
carries ``LOCAL_STACK_RUN=<run dir>`` in its environment, which its descendants inherit:
stopping signals each group, then sweeps up any tagged process that outlived its parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from local.services import WaitTimeout, wait_until
from local.stack import StackError

TAG = "LOCAL_STACK_RUN"
T = TypeVar("T")


@dataclass(frozen=True)
class Service:
    name: str
    pid: int
    log: Path


def pid_dir(run_dir: Path) -> Path:
    return run_dir / "pids"


def log_dir(run_dir: Path) -> Path:
    return run_dir / "logs"


def start(
    run_dir: Path,
    name: str,
    cmd: list[str],
    *,
    env: dict[str, str],
    stop_signal: signal.Signals = signal.SIGTERM,
    user: str | None = None,
    cwd: Path | None = None,
) -> Service:
    """Start ``cmd`` in a new session with its output in ``logs/<name>.log``; write its pid file."""
    pid_dir(run_dir).mkdir(parents=True, exist_ok=True)
    log_dir(run_dir).mkdir(parents=True, exist_ok=True)
    log = log_dir(run_dir) / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, TAG: str(run_dir.resolve())},
            start_new_session=True,
            user=user,
            group=user,
            cwd=cwd,
        )
    record = {
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "stop_signal": stop_signal.name,
        "cmd": cmd,
    }
    (pid_dir(run_dir) / f"{name}.pid").write_text(json.dumps(record) + "\n")
    return Service(name, proc.pid, log)


def _recorded(pid_file: Path) -> tuple[psutil.Process | None, signal.Signals]:
    """The live process a pid file names (None if gone or reused) and its stop signal."""
    try:
        record = json.loads(pid_file.read_text())
        process = psutil.Process(record["pid"])
        if abs(process.create_time() - record["create_time"]) > 0.01:
            return None, signal.SIGTERM
        return process, signal.Signals[record.get("stop_signal", "SIGTERM")]
    except (OSError, ValueError, KeyError, psutil.Error):
        return None, signal.SIGTERM


def recorded(run_dir: Path) -> list[str]:
    """The services of ``run_dir`` that have a pid file (alive or not), in start order."""
    return [path.stem for path in sorted(pid_dir(run_dir).glob("*.pid"), key=os.path.getmtime)]


def running(run_dir: Path) -> dict[str, psutil.Process]:
    """The services of ``run_dir`` whose recorded process is still alive, by name."""
    found = {}
    for pid_file in sorted(pid_dir(run_dir).glob("*.pid")):
        process, _ = _recorded(pid_file)
        if process is not None and _alive(process.pid):
            found[pid_file.stem] = process
    return found


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The process and all its descendants that are alive now."""
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def tagged(run_dir: Path) -> list[psutil.Process]:
    """Every live process started for ``run_dir``, found by the tag in its environment."""
    tag = str(run_dir.resolve())
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(TAG) == tag and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def stop(run_dir: Path, timeout: float = 20.0) -> list[str]:
    """Stop every service recorded in ``run_dir`` (group, then stragglers); returns their names."""
    victims: list[psutil.Process] = []
    stopped = []
    # Reverse start order: Airflow first, the servers it talks to last.
    for pid_file in sorted(pid_dir(run_dir).glob("*.pid"), key=os.path.getmtime, reverse=True):
        process, stop_signal = _recorded(pid_file)
        if process is not None:
            members = tree(process)
            victims.extend(members)
            stopped.append(pid_file.stem)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)
            for member in members[1:]:  # descendants that started their own group
                _signal(member, signal.SIGTERM)
        pid_file.unlink(missing_ok=True)
    for orphan in tagged(run_dir):  # e.g. a JVM whose Python parent crashed
        if orphan.pid not in {victim.pid for victim in victims}:
            victims.append(orphan)
            _signal(orphan, signal.SIGTERM)
    _, alive = psutil.wait_procs(victims, timeout=timeout)
    for process in alive:
        _signal(process, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return stopped


def _signal(process: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        process.send_signal(sig)


def wait_for(
    what: str,
    ready: Callable[[], T],
    *,
    timeout: float,
    service: Service | None = None,
    interval: float = 0.25,
) -> T:
    """Poll ``ready`` until it returns something truthy (returned); fail early, with the log's
    tail, if ``service`` died."""

    def check() -> T:
        if service is not None and not _alive(service.pid):
            raise StackError(f"{service.name} exited while waiting for {what}\n{tail(service.log)}")
        return ready()

    try:
        return wait_until(what, check, timeout=timeout, interval=interval)
    except WaitTimeout as error:
        where = f"\n{tail(service.log)}" if service else ""
        raise StackError(f"{error}{where}") from None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tail(log: Path, lines: int = 25) -> str:
    """The last lines of a log, framed with its path, for error messages."""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {log})"
    body = "\n".join(f"    {line}" for line in text)
    return f"  last lines of {log}:\n{body}"
