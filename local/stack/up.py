"""``up`` and ``down``: bring the whole local stack up (and, for ``make demo``, run the pipeline
once), tear it down.

Processes (each in its own process group, pid file in ``<run>/pids``, log in ``<run>/logs``):
moto S3, a static file server holding the sample sites' dumps, the Databricks stand-in, PostgreSQL
(if installed; SQLite otherwise) and Airflow's api-server, scheduler, dag-processor and
triggerer with the LocalExecutor. Everything binds 127.0.0.1; the scheduler and triggerer run
with ``--skip-serve-logs`` because Airflow's log server binds all interfaces (every component
writes task logs to the same local folder, so the api-server reads them from disk).

What does not depend on something else starts at once: the services before the metadata DB, the
sample dumps built in a thread while PostgreSQL starts and ``airflow db migrate`` runs; each wait
is on a readiness condition (a port answering, a log line), never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from local import sample_dump, services
from local.services import MotoS3, http_answers
from local.stack import StackError, pipeline, postgres, prerequisites, processes
from local.stack.state import (
    DEFAULT_RUN_DIR,
    PYTHONPATH,
    REPO,
    USERNAME,
    StackInfo,
    check_run_dir,
    fresh_run_dir,
    save_info,
)

Log = Callable[[str], None]

POLICY_DIR = Path(__file__).resolve().parent / "policy"
# The sites the file server serves (options of sample_dump.write_site): different sizes, seeds
# and tag styles (<a><b> in older dumps, |a|b| in newer ones), so each site's gold differs.
SAMPLE_SITES: dict[str, dict[str, object]] = {
    "sample.stackexchange.com": {"posts": 5000, "users": 500, "seed": 0},
    "sample.meta.stackexchange.com": {"posts": 2000, "users": 200, "seed": 1, "tag_style": "pipe"},
}


@dataclass
class Options:
    run_dir: Path = DEFAULT_RUN_DIR
    api_port: int = 8080
    database: str = "auto"  # auto | postgres | sqlite
    run: bool = False  # also run the pipeline once the stack is up (make demo)
    timeout: float = 900.0
    # The producer's fan-out bound (STACKEXCHANGE_MAX_ACTIVE_SITES). 1: the second site ingests
    # while the first one's consumer run works. Airflow 3.0.2's scheduler leaves asset events
    # that arrive while it creates the consumer's run without a run of their own
    # (apache/airflow#56050, #62501): two ingests ending together can strand a site.
    max_active_sites: int = 1


def down(run_dir: Path) -> list[str]:
    """Stop what ``up`` started in ``run_dir``; safe when nothing runs. Returns service names."""
    stopped = processes.stop(run_dir)
    postgres.remove(run_dir)
    return stopped


def up(options: Options, log: Log = print) -> StackInfo:
    """Start everything (and with ``options.run`` run the pipeline once); on any failure or
    Ctrl-C stop what started."""
    started = time.monotonic()
    run_dir = options.run_dir.resolve()
    check_run_dir(run_dir)  # before anything else: never touch a directory the stack did not make
    prerequisites.ensure_java(log)
    if processes.running(run_dir):
        log(f"A stack from {run_dir} is running: stopping it to start a fresh one.")
        down(run_dir)
    if services.port_in_use(options.api_port):
        raise StackError(
            f"port {options.api_port} on 127.0.0.1 is taken by another program: stop it, "
            "or choose another port (make demo DEMO_API_PORT=8081)"
        )
    fresh_run_dir(run_dir)
    with _stop_on_failure(run_dir):
        info = _start(options, run_dir, log)
        api = pipeline.api_for(info)
        pipeline.prepare_dags(api)
        info.timings["stack_ready_s"] = round(time.monotonic() - started, 1)
        save_info(info)
        if options.run:
            pipeline.run_pipeline(info, api, options.timeout, log)
    return info


@contextmanager
def _stop_on_failure(run_dir: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        stopped = down(run_dir)
        if stopped:
            print(f"Stopped {', '.join(stopped)}; logs stay in {run_dir / 'logs'}", file=sys.stderr)
        raise


def _start(options: Options, run_dir: Path, log: Log) -> StackInfo:
    base_env = _clean_env()
    # This process imports Airflow (for the bucket of the assets): give it the stack's home,
    # not ~/airflow, and keep its provider-loading chatter out of the demo's output.
    os.environ["AIRFLOW_HOME"] = str(run_dir / "airflow")
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    from stackexchange.settings import Storage

    moto = MotoS3()
    files_port, databricks_port = services.free_port(), services.free_port()
    files_dir = run_dir / "files"
    token_file = run_dir / "databricks.token"
    token_file.touch(mode=0o600)
    token_file.write_text(secrets.token_urlsafe(24))
    info = StackInfo(
        run_dir=str(run_dir),
        ui_url=f"http://127.0.0.1:{options.api_port}",
        username=USERNAME,
        password_file=str(run_dir / "airflow" / "passwords.json"),
        database="",
        s3_endpoint=moto.url,
        files_url=f"http://127.0.0.1:{files_port}",
        databricks_url=f"http://127.0.0.1:{databricks_port}",
        databricks_token_file=str(token_file),
        warehouse=str(run_dir / "warehouse"),
        dumps={site: str(files_dir / f"{site}.7z") for site in SAMPLE_SITES},
        bucket=Storage.from_env().bucket,
        max_active_sites=options.max_active_sites,
    )
    aws_env = {**base_env, **services.DUMMY_AWS_ENV}

    log(f"Run directory {run_dir} (pids/, logs/)")
    started = _start_services(info, moto, base_env, aws_env)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample-dumps") as pool:
        dumps = pool.submit(_build_dumps, info.dumps)  # CPU-bound; overlaps the DB's start
        info.database, sql_url = _database(options, run_dir, base_env, log)
        env = {**aws_env, **_airflow_env(info, options, base_env, sql_url, token_file)}
        _migrate(run_dir, env)
        started.update(_start_airflow(options, run_dir, env))
        processes.wait_for("moto S3", moto.answers, timeout=60, service=started["s3"])
        moto.create_bucket(info.bucket)
        for site, rows in dumps.result().items():
            log(f"Sample dump {site}.7z: {rows['posts']:,} posts, {rows['users']:,} users")
    _wait_ready(info, started)
    log(
        f"Airflow {info.ui_url} on {info.database}; S3 {moto.url}; Databricks "
        f"{info.databricks_url}; up to {info.max_active_sites} site(s) at once"
    )
    return info


def _start_services(
    info: StackInfo, moto: MotoS3, base_env: dict[str, str], aws_env: dict[str, str]
) -> dict[str, processes.Service]:
    """moto S3, the file server and the Databricks stand-in (none waits for another)."""
    run_dir = Path(info.run_dir)
    files_port = info.files_url.rsplit(":", 1)[1]
    databricks_port = info.databricks_url.rsplit(":", 1)[1]
    files = [
        sys.executable,
        "-m",
        "local.file_server",  # honours Range, as the producer needs
        files_port,
        "--bind",
        "127.0.0.1",
        "--directory",
        str(run_dir / "files"),
    ]
    databricks = [
        sys.executable,
        "-m",
        "local.databricks_standin",
        "--port",
        databricks_port,
        "--token-file",
        info.databricks_token_file,
        "--warehouse",
        info.warehouse,
        "--state-dir",  # also holds the runs' s3:// downloads
        str(run_dir / "databricks-state"),
        "--s3-endpoint",
        moto.url,
        "--start-spark",  # the JVM starts while Airflow does, not with the first job run
    ]
    return {
        "s3": processes.start(run_dir, "s3", moto.command, env=base_env),
        "files": processes.start(run_dir, "files", files, env=base_env),
        "databricks": processes.start(run_dir, "databricks", databricks, env=aws_env),
    }


def _build_dumps(dumps: dict[str, str]) -> dict[str, dict[str, object]]:
    """Each sample site's archive, where the file server serves it; returns their options."""
    for site, path in dumps.items():
        sample_dump.build_dump(Path(path), **SAMPLE_SITES[site])
    return {site: SAMPLE_SITES[site] for site in dumps}


def _migrate(run_dir: Path, env: dict[str, str]) -> None:
    """The login (a random password for the demo user), then ``airflow db migrate``."""
    password_file = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    password_file.parent.mkdir(parents=True, exist_ok=True)
    _write_password(password_file)
    migrate_log = processes.log_dir(run_dir) / "airflow-db-migrate.log"
    with migrate_log.open("wb") as out:
        result = subprocess.run(
            [_bin("airflow"), "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed\n{processes.tail(migrate_log)}")


def _start_airflow(
    options: Options, run_dir: Path, env: dict[str, str]
) -> dict[str, processes.Service]:
    api_server = ["api-server", "--host", "127.0.0.1", "--port", str(options.api_port)]
    airflow = {
        "api-server": [*api_server, "--workers", "1"],
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer", "--skip-serve-logs"],
    }
    return {
        name: processes.start(run_dir, name, [_bin("airflow"), *args], env=env)
        for name, args in airflow.items()
    }


def _wait_ready(info: StackInfo, started: dict[str, processes.Service]) -> None:
    """Every service answers (the file server with each dump); the slowest decides."""
    first_dump = Path(next(iter(info.dumps.values()))).name
    processes.wait_for(
        "the file server",
        lambda: http_answers(f"{info.files_url}/{first_dump}"),
        timeout=30,
        service=started["files"],
    )
    processes.wait_for(
        "the Databricks stand-in",
        lambda: "databricks stand-in listening on" in started["databricks"].log.read_text(),
        timeout=120,
        service=started["databricks"],
    )
    processes.wait_for(
        "Airflow's api-server",
        lambda: http_answers(f"{info.ui_url}/api/v2/monitor/health"),
        timeout=180,
        service=started["api-server"],
    )


def _write_password(path: Path) -> None:
    """The simple auth manager reads ``{"user": "password"}`` from this file (0600)."""
    path.touch(mode=0o600)
    path.write_text(json.dumps({USERNAME: secrets.token_urlsafe(12)}) + "\n")


def _database(options: Options, run_dir: Path, env: dict[str, str], log: Log) -> tuple[str, str]:
    choice = options.database
    if choice == "postgres" and not postgres.available():
        raise StackError(
            "PostgreSQL is not installed (or no 'postgres' user to run it as root): "
            "apt-get install postgresql, or use --database sqlite"
        )
    if choice == "postgres" or (choice == "auto" and postgres.available()):
        _, url = postgres.start(run_dir, env)
        return "PostgreSQL", url
    if choice == "auto":
        log("PostgreSQL not found: using SQLite (apt-get install postgresql to use it)")
    return "SQLite", f"sqlite:///{run_dir / 'airflow' / 'airflow.db'}"


def _airflow_env(
    info: StackInfo, options: Options, base_env: dict[str, str], sql_url: str, token_file: Path
) -> dict[str, str]:
    """Airflow configured entirely through environment variables (fresh secrets each time)."""
    return {
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW_HOME": str(Path(info.run_dir) / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "local.stack.executor.LocalExecutor",  # see there
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{info.ui_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": info.password_file,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(options.api_port),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(Path(info.run_dir) / "airflow" / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # The policy folder first: Airflow imports its airflow_local_settings (see there).
        "PYTHONPATH": os.pathsep.join([str(POLICY_DIR), base_env["PYTHONPATH"]]),
        # The sample dump is served from 127.0.0.1, which the producer refuses unless exempted.
        **services.LOCAL_SOURCE_ENV,
        "STACKEXCHANGE_MAX_ACTIVE_SITES": str(info.max_active_sites),
        # The stand-in's sample runs take seconds and it answers on loopback: poll every 2 s,
        # not every 30 s (the gold tables are there up to 28 s sooner per run).
        "DATABRICKS_POLL_SECONDS": "2",
        **services.connections_env(
            info.s3_endpoint, info.databricks_url, token_file.read_text().strip()
        ),
    }


def _clean_env() -> dict[str, str]:
    """Our environment without any Airflow/AWS settings the caller may have exported."""
    prefixes = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.pop("AIRFLOW_HOME", None)
    env["PYTHONPATH"] = PYTHONPATH
    return env


def _bin(name: str) -> str:
    """A console script of the interpreter's environment (the .venv), else from PATH."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name
