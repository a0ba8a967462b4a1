"""A throwaway PostgreSQL cluster for Airflow's metadata DB, reachable only on a unix socket.

The cluster lives in a short temporary directory (unix socket paths are limited to ~100
characters, and the ``postgres`` user must be able to reach it when we run as root); the run
directory records where, so ``down`` removes it. No TCP listener: ``listen_addresses=''``.
"""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg2

from local.stack import StackError, processes

DATABASE = "airflow"
# Throwaway data: durability settings off for speed, small buffers for memory.
SETTINGS = {
    "listen_addresses": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
}


def bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, if PostgreSQL is installed."""
    if initdb := shutil.which("initdb"):
        return Path(initdb).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _major(path: str) -> int:
    version = Path(path).parts[-3]
    return int(version) if version.isdigit() else 0


def server_user() -> str | None:
    """The user to run the server as: ourselves, or ``postgres`` when root (None if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


def available() -> bool:
    return bin_dir() is not None and (os.geteuid() != 0 or server_user() is not None)


def data_dir_record(run_dir: Path) -> Path:
    return run_dir / "postgres.dir"


def start(run_dir: Path, env: dict[str, str]) -> tuple[processes.Service, str]:
    """initdb + postgres on a unix socket; returns the service and the SQLAlchemy URL."""
    pg_bin = bin_dir()
    assert pg_bin is not None
    user = server_user()
    base = Path(tempfile.mkdtemp(prefix="airflow-demo-pg-"))
    data_dir_record(run_dir).write_text(f"{base}\n")
    data, socket_dir = base / "data", base / "socket"
    socket_dir.mkdir()
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (base, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    role = user or getpass.getuser()
    result = subprocess.run(
        [str(pg_bin / "initdb"), "-D", str(data), "-U", role, "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
        user=user,
        group=user,
        env=env,
        cwd=base,  # the server user may not be allowed into ours
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"initdb failed:\n{result.stdout}{result.stderr}")
    settings = {**SETTINGS, "unix_socket_directories": str(socket_dir)}
    cmd = [str(pg_bin / "postgres"), "-D", str(data)]
    for name, value in settings.items():
        cmd += ["-c", f"{name}={value}"]
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for clients to disconnect.
    service = processes.start(
        run_dir, "postgres", cmd, env=env, stop_signal=signal.SIGINT, user=user, cwd=base
    )

    def accepting() -> bool:
        try:
            psycopg2.connect(host=str(socket_dir), user=role, dbname="postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    processes.wait_for("PostgreSQL to accept connections", accepting, timeout=60, service=service)
    conn = psycopg2.connect(host=str(socket_dir), user=role, dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        conn.close()
    return service, f"postgresql+psycopg2://{role}@/{DATABASE}?host={socket_dir}"


def remove(run_dir: Path) -> None:
    """Delete the cluster's directory (after the server stopped)."""
    record = data_dir_record(run_dir)
    if record.exists():
        shutil.rmtree(record.read_text().strip(), ignore_errors=True)
        record.unlink()
