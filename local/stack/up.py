"""``up`` and ``down``: bring the whole local stack up, run the pipeline once, tear it down.

Processes (each in its own process group, pid file in ``<run>/pids``, log in ``<run>/logs``):
moto S3, a static file server holding the sample dump, the Databricks stand-in, PostgreSQL
(if installed; SQLite otherwise) and Airflow's api-server, scheduler, dag-processor and
triggerer with the LocalExecutor. Everything binds 127.0.0.1; the scheduler and triggerer run
with ``--skip-serve-logs`` because Airflow's log server binds all interfaces (every component
writes task logs to the same local folder, so the api-server reads them from disk).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from local import sample_dump
from local.stack import postgres, prerequisites, processes, report
from local.stack.airflow_api import AirflowApi
from local.stack.processes import StackError

Log = Callable[[str], None]

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = Path(__file__).resolve().parent / "policy"
DEFAULT_RUN_DIR = REPO / ".run" / "demo"
PRODUCER = "produce_data_asset"
CONSUMER = "trigger_databricks_workflow_dag"
SITE = "sample.stackexchange.com"
USERNAME = "admin"


@dataclass
class Options:
    run_dir: Path = DEFAULT_RUN_DIR
    api_port: int = 8080
    database: str = "auto"  # auto | postgres | sqlite
    timeout: float = 900.0
    posts: int = 5000
    users: int = 500


@dataclass
class StackInfo:
    """What ``up`` started and produced; written to ``<run>/stack.json`` (no secrets)."""

    run_dir: str
    ui_url: str
    username: str
    password_file: str
    database: str
    s3_endpoint: str
    files_url: str
    databricks_url: str
    databricks_token_file: str
    warehouse: str
    site: str
    dump: str
    bucket: str
    producer_run_id: str = ""
    consumer_run_id: str = ""
    databricks_run_id: int = 0
    databricks_run_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    table_rows: dict[str, int] = field(default_factory=dict)
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    memory_pss: dict[str, int] = field(default_factory=dict)


def info_path(run_dir: Path) -> Path:
    return run_dir / "stack.json"


def load_info(run_dir: Path) -> StackInfo:
    return StackInfo(**json.loads(info_path(run_dir).read_text()))


def down(run_dir: Path) -> list[str]:
    """Stop what ``up`` started in ``run_dir``; safe when nothing runs. Returns service names."""
    stopped = processes.stop(run_dir)
    postgres.remove(run_dir)
    return stopped


def up(options: Options, log: Log = print) -> StackInfo:
    """Start everything, run the pipeline once; on any failure or Ctrl-C stop what started."""
    started = time.monotonic()
    run_dir = options.run_dir.resolve()
    prerequisites.ensure_java(log)
    if processes.running(run_dir):
        log(f"A stack from {run_dir} is running: stopping it to start a fresh one.")
        down(run_dir)
    if processes.port_in_use(options.api_port):
        raise StackError(
            f"port {options.api_port} on 127.0.0.1 is taken by another program: stop it, "
            "or choose another port (make demo DEMO_API_PORT=8081)"
        )
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with _stop_on_failure(run_dir):
        info = _start(options, run_dir, log)
        info.timings["stack_ready_s"] = round(time.monotonic() - started, 1)
        _run_pipeline(info, options, log)
        warehouse = Path(info.warehouse)
        info.table_rows = report.table_rows(warehouse)
        info.top_tags = report.top_tags(warehouse)
        info.timings["gold_ready_s"] = round(time.monotonic() - started, 1)
        info.memory_pss = report.memory(run_dir)
        info_path(run_dir).write_text(json.dumps(asdict(info), indent=2) + "\n")
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
    from stackexchange.assets import BUCKET

    ports = {name: processes.free_port() for name in ("s3", "files", "databricks")}
    s3_url = f"http://127.0.0.1:{ports['s3']}"
    files_dir, warehouse = run_dir / "files", run_dir / "warehouse"
    token_file = run_dir / "databricks.token"
    token_file.touch(mode=0o600)
    token_file.write_text(secrets.token_urlsafe(24))
    aws_env = {**base_env, **_AWS_DUMMY}

    log(f"Run directory {run_dir} (pids/, logs/)")
    services = {
        "s3": processes.start(
            run_dir,
            "s3",
            [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])],
            env=base_env,
        ),
        "files": processes.start(
            run_dir,
            "files",
            [
                sys.executable,
                "-m",
                "http.server",
                str(ports["files"]),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(files_dir),
            ],
            env=base_env,
        ),
        "databricks": processes.start(
            run_dir,
            "databricks",
            [
                sys.executable,
                "-m",
                "local.databricks_standin",
                "--port",
                str(ports["databricks"]),
                "--token-file",
                str(token_file),
                "--warehouse",
                str(warehouse),
                "--s3-endpoint",
                s3_url,
            ],
            env=aws_env,
        ),
    }
    dump = files_dir / f"{SITE}.7z"
    sample_dump.build_dump(dump, posts=options.posts, users=options.users, seed=0)
    log(f"Sample dump {dump.name}: {options.posts} posts, {options.users} users")

    database, sql_url = _database(options, run_dir, base_env, log)
    secrets_env = {
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
    }
    info = StackInfo(
        run_dir=str(run_dir),
        ui_url=f"http://127.0.0.1:{options.api_port}",
        username=USERNAME,
        password_file=str(run_dir / "airflow" / "passwords.json"),
        database=database,
        s3_endpoint=s3_url,
        files_url=f"http://127.0.0.1:{ports['files']}",
        databricks_url=f"http://127.0.0.1:{ports['databricks']}",
        databricks_token_file=str(token_file),
        warehouse=str(warehouse),
        site=SITE,
        dump=str(dump),
        bucket=BUCKET,
    )
    env = {**aws_env, **_airflow_env(info, options, base_env, sql_url, token_file), **secrets_env}
    Path(info.password_file).parent.mkdir(parents=True, exist_ok=True)
    _write_password(Path(info.password_file))

    migrate_log = processes.log_dir(run_dir) / "airflow-db-migrate.log"
    with migrate_log.open("wb") as out:
        result = subprocess.run(
            [_bin("airflow"), "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed\n{processes.tail(migrate_log)}")

    airflow = {
        "api-server": [
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(options.api_port),
            "--workers",
            "1",
        ],
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer", "--skip-serve-logs"],
    }
    for name, args in airflow.items():
        services[name] = processes.start(run_dir, name, [_bin("airflow"), *args], env=env)

    processes.wait_for(
        "moto S3",
        lambda: _http_ok(s3_url),
        timeout=60,
        service=services["s3"],
    )
    _create_bucket(s3_url, BUCKET)
    processes.wait_for(
        "the file server",
        lambda: _http_ok(f"{info.files_url}/{dump.name}"),
        timeout=30,
        service=services["files"],
    )
    processes.wait_for(
        "the Databricks stand-in",
        lambda: "databricks stand-in listening on" in services["databricks"].log.read_text(),
        timeout=120,
        service=services["databricks"],
    )
    processes.wait_for(
        "Airflow's api-server",
        lambda: _http_ok(f"{info.ui_url}/api/v2/monitor/health"),
        timeout=180,
        service=services["api-server"],
    )
    log(f"Airflow {info.ui_url} on {database}; S3 {s3_url}; Databricks {info.databricks_url}")
    return info


def _run_pipeline(info: StackInfo, options: Options, log: Log) -> None:
    run_dir = Path(info.run_dir)
    api = AirflowApi(info.ui_url, USERNAME, read_password(info))
    deadline = time.monotonic() + options.timeout

    def dags_parsed() -> bool:
        if errors := api.import_errors():
            text = "\n".join(f"  {e['filename']}:\n{e['stack_trace']}" for e in errors)
            raise StackError(f"the DAG processor reports import errors:\n{text}")
        return {PRODUCER, CONSUMER} <= api.dag_ids()

    processes.wait_for("both DAGs to be parsed", dags_parsed, timeout=180, interval=1.0)
    for dag_id in (PRODUCER, CONSUMER):
        api.unpause(dag_id)
    conf = {"source_base_url": info.files_url, "site": info.site}
    producer = api.trigger(PRODUCER, conf)
    info.producer_run_id = producer["dag_run_id"]
    log(f"Triggered {PRODUCER} run {info.producer_run_id} with conf {json.dumps(conf)}")

    progress = report.Progress(log)
    producer = _wait_run(api, PRODUCER, info.producer_run_id, deadline, progress, run_dir)
    consumer_run_id = _wait_consumer_created(api, info.producer_run_id, deadline, progress)
    info.consumer_run_id = consumer_run_id
    consumer = _wait_run(api, CONSUMER, consumer_run_id, deadline, progress, run_dir)
    events = api.asset_events(PRODUCER, info.producer_run_id)
    info.timings.update(report.run_timings(producer, consumer, events))
    info.databricks_run_id = int(api.xcom(CONSUMER, consumer_run_id, "run_id"))
    info.databricks_run_url = str(api.xcom(CONSUMER, consumer_run_id, "run_page_url"))


def _wait_run(
    api: AirflowApi,
    dag_id: str,
    run_id: str,
    deadline: float,
    progress: report.Progress,
    run_dir: Path,
) -> dict:
    while True:
        run = api.dag_run(dag_id, run_id)
        tasks = api.task_instances(dag_id, run_id)
        progress.show(dag_id, run["state"], tasks)
        if run["state"] == "success":
            return run
        if run["state"] == "failed":
            failed = [t["task_id"] for t in tasks if t["state"] in ("failed", "upstream_failed")]
            logs = Path(run_dir) / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
            raise StackError(f"{dag_id} run {run_id} failed (tasks {failed}); task logs: {logs}")
        _check_deadline(deadline, f"{dag_id} run {run_id} to finish")
        time.sleep(1.0)


def _wait_consumer_created(
    api: AirflowApi, producer_run_id: str, deadline: float, progress: report.Progress
) -> str:
    """The consumer run the producer's asset events created (the asset hop)."""
    while True:
        events = api.asset_events(PRODUCER, producer_run_id)
        created = [run for event in events for run in event["created_dagruns"]]
        runs = {run["run_id"] for run in created if run["dag_id"] == CONSUMER}
        if runs:
            return sorted(runs)[0]
        progress.show(CONSUMER, "waiting for the asset events", [])
        _check_deadline(deadline, f"the asset events of {producer_run_id} to trigger {CONSUMER}")
        time.sleep(0.5)


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise StackError(f"timed out waiting for {what} (raise it with --timeout)")


def read_password(info: StackInfo) -> str:
    return json.loads(Path(info.password_file).read_text())[info.username]


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
    """Airflow configured entirely through environment variables."""
    databricks_port = int(info.databricks_url.rsplit(":", 1)[1])
    return {
        "AIRFLOW_HOME": str(Path(info.run_dir) / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
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
        "AIRFLOW_CONN_AWS_CONN": json.dumps(
            {
                "conn_type": "aws",
                "login": _AWS_DUMMY["AWS_ACCESS_KEY_ID"],
                "password": _AWS_DUMMY["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": info.s3_endpoint, "region_name": "us-east-1"},
            }
        ),
        "AIRFLOW_CONN_DATABRICKS_CONN": json.dumps(
            {
                "conn_type": "databricks",
                "host": "127.0.0.1",
                "port": databricks_port,
                "schema": "http",
                "password": token_file.read_text().strip(),
            }
        ),
    }


# moto accepts any credentials; these obvious dummies keep boto3 from looking for real ones.
_AWS_DUMMY = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _clean_env() -> dict[str, str]:
    """Our environment without any Airflow/AWS settings the caller may have exported."""
    prefixes = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.pop("AIRFLOW_HOME", None)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("dags", "notebooks", ""))
    return env


def _bin(name: str) -> str:
    """A console script of the interpreter's environment (the .venv), else from PATH."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def _create_bucket(s3_url: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        aws_access_key_id=_AWS_DUMMY["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_AWS_DUMMY["AWS_SECRET_ACCESS_KEY"],
        region_name=_AWS_DUMMY["AWS_DEFAULT_REGION"],
    )
    s3.create_bucket(Bucket=bucket)
