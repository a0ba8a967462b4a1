"""scripts/backup-metadata-db.sh and scripts/restore-metadata-db.sh against a real PostgreSQL
server (the one the local stack starts, local/stack/postgres.py).

The source database gets Airflow 3's real schema (``airflow db migrate``) and real rows from
``dag.test()`` runs (DAG runs, task instances, asset events). It belongs to a role that logs in
with a password (scram-sha-256), so the password really has to reach libpq. The AWS CLI is a
stand-in (S3 as a folder); pg_dump, pg_restore and psql are the real ones behind wrappers that
record their command lines.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import psycopg2
import pytest

from local.stack import postgres, processes

REPO = Path(__file__).resolve().parents[1]
# one PostgreSQL server and one migrated Airflow schema for the module: its tests share a worker
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("postgres")]

ROLE = "airflow_backup"
# Every character a URI must encode, and the two pgpass escapes (':' and '\').
PASSWORD = "s3cr:et@pa/ss%w\\rd?#"
TABLES = ("dag_run", "task_instance", "asset_event", "asset", "dag", "serialized_dag", "log")
DEMO_DAG = """
from datetime import datetime

from airflow.sdk import DAG, Asset, task

with DAG("backup_demo", schedule=None, start_date=datetime(2025, 1, 1), catchup=False) as dag:

    @task(outlets=[Asset("s3://demo/backup.txt")])
    def produce():
        return 1

    @task
    def check(**context):
        if context["params"].get("fail"):
            raise RuntimeError("failed on purpose")

    produce() >> check()
"""
# Three runs: two succeed, one fails (after `produce`: three asset events).
POPULATE = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta, UTC
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models import DagBag

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
    bag.sync_to_db("dags-folder", None)
    dag = bag.dags["backup_demo"]
    for day, fail in enumerate([False, False, True]):
        run = dag.test(logical_date=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=day),
                       run_conf={"fail": fail})
        print(run.run_id, run.state)
""")


@dataclass
class Server:
    socket_dir: str
    superuser: str

    def admin(self, sql: str, database: str = "postgres") -> None:
        conn = psycopg2.connect(host=self.socket_dir, user=self.superuser, dbname=database)
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def uri(self, database: str, password: str = PASSWORD) -> str:
        """The SQLAlchemy URI Airflow uses (and METADATA_DB_URI holds)."""
        return (
            f"postgresql+psycopg2://{ROLE}:{quote(password, safe='')}@/{database}"
            f"?host={quote(self.socket_dir, safe='')}"
        )

    def new_database(self, name: str) -> str:
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def rows(self, database: str) -> dict[str, list[tuple]]:
        """Every row of every table outside the system schemas, sorted, by table name."""
        conn = psycopg2.connect(host=self.socket_dir, user=self.superuser, dbname=database)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                )
                tables = sorted(name for (name,) in cur.fetchall())
                found = {}
                for table in tables:
                    cur.execute(f'SELECT * FROM "{table}"')
                    found[table] = sorted(cur.fetchall(), key=repr)
                return found
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A throwaway PostgreSQL cluster; a password-only role for everything but the superuser."""
    if not postgres.available():
        pytest.fail(
            "PostgreSQL is not installed: apt-get install postgresql (.ci/run does), "
            "these tests need a real server"
        )
    run_dir = tmp_path_factory.mktemp("pg-run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    _, url = postgres.start(run_dir, env)
    socket_dir = parse_qs(urlsplit(url).query)["host"][0]
    superuser = postgres.server_user() or getpass.getuser()
    srv = Server(socket_dir, superuser)
    try:
        data_dir = Path(postgres.data_dir_record(run_dir).read_text().strip()) / "data"
        (data_dir / "pg_hba.conf").write_text(
            f"local all {superuser} trust\nlocal all all scram-sha-256\n"
        )
        srv.admin("SELECT pg_reload_conf()")
        srv.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        yield srv
    finally:
        processes.stop(run_dir)
        postgres.remove(run_dir)


@pytest.fixture(scope="module")
def source_db(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Airflow's schema, migrated by Airflow itself, and three real DAG runs."""
    name = server.new_database("airflow_src")
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    (dags / "backup_demo.py").write_text(DEMO_DAG)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": server.uri(name),
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    for cmd in ([airflow, "db", "migrate"], [sys.executable, "-c", POPULATE, str(dags)]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    counts = {t: len(rows) for t, rows in server.rows(name).items() if t in TABLES}
    assert counts["dag_run"] == 3 and counts["task_instance"] == 6, counts
    assert counts["asset_event"] == 3, counts  # produce ran in every run
    return name


@dataclass
class Tools:
    """PATH with recording wrappers around pg_dump/pg_restore/psql and an `aws s3 cp` stand-in."""

    bin: Path
    argv_log: Path
    s3_root: Path
    tmp: Path

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(self.tmp),
            "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
        }

    def argv(self) -> str:
        return self.argv_log.read_text() if self.argv_log.exists() else ""


AWS_STANDIN = """#!/usr/bin/env bash
# aws s3 cp [--only-show-errors] SRC DST, S3 being the folder $S3_ROOT; aws --version.
set -euo pipefail
echo "aws $*" >>"$ARGV_LOG"
[ "$1" != --version ] || { echo "aws-cli/2 (test stand-in)"; exit 0; }
[ "$1 $2" = "s3 cp" ] || { echo "aws stand-in: unexpected $*" >&2; exit 2; }
shift 2
[ "$1" != --only-show-errors ] || shift
path() { case "$1" in s3://*) echo "$S3_ROOT/${1#s3://}" ;; *) echo "$1" ;; esac; }
src="$(path "$1")"; dst="$(path "$2")"
[ -f "$src" ] || { echo "fatal error: (404) HeadObject: Not Found" >&2; exit 1; }
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
"""


@pytest.fixture
def tools(tmp_path: Path) -> Tools:
    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir()
    tmp.mkdir()
    log = tmp_path / "argv.log"
    for tool in ("pg_dump", "pg_restore", "psql"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >>"{log}"\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    aws = bin_dir / "aws"
    aws.write_text(AWS_STANDIN)
    aws.chmod(0o755)
    s3_root = tmp_path / "s3"
    s3_root.mkdir()
    return Tools(bin_dir, log, s3_root, tmp)


def env_file(path: Path, uri: str) -> Path:
    path.write_text(f"METADATA_DB_URI='{uri}'\n")
    return path


def run_script(tools: Tools, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "scripts" / script), *args],
        env={**tools.env(), "ARGV_LOG": str(tools.argv_log), "S3_ROOT": str(tools.s3_root), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_secret_never_shown(tools: Tools, *results: subprocess.CompletedProcess) -> None:
    for secret in (PASSWORD, quote(PASSWORD, safe="")):
        assert secret not in tools.argv()
        for result in results:
            assert secret not in result.stdout + result.stderr


def test_backup_and_restore_into_a_new_database_keep_every_row(
    server: Server, source_db: str, tools: Tools, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    source_env = env_file(tmp_path / "source.env", server.uri(source_db))
    backup = run_script(tools, "backup-metadata-db.sh", "--env-file", str(source_env),
                        "--to", f"{backups}/")  # fmt: skip
    assert backup.returncode == 0, backup.stderr
    (dump,) = backups.iterdir()
    assert dump.name.startswith("airflow-metadata-") and dump.suffix == ".dump"
    assert dump.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert "pg_dump --format=custom" in tools.argv()

    target = server.new_database("airflow_restored")
    restore = run_script(tools, "restore-metadata-db.sh", "--from", str(dump),
                         METADATA_DB_URI=server.uri(target))  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    assert "--single-transaction --exit-on-error --no-owner" in tools.argv()

    before, after = server.rows(source_db), server.rows(target)
    assert set(after) == set(before) and len(before) > 40  # Airflow 3's whole schema
    for table in before:
        assert after[table] == before[table], table
    assert len(after["dag_run"]) == 3 and len(after["asset_event"]) == 3
    assert_secret_never_shown(tools, backup, restore)
    assert list(tools.tmp.iterdir()) == []  # the private temp dir (pgpass, dump) is gone


def test_backup_to_s3_and_restore_from_it(
    server: Server, source_db: str, tools: Tools, tmp_path: Path
) -> None:
    source_env = env_file(tmp_path / "source.env", server.uri(source_db))
    backup = run_script(tools, "backup-metadata-db.sh", "--env-file", str(source_env),
                        "--to", "s3://backups/airflow/metadata.dump")  # fmt: skip
    assert backup.returncode == 0, backup.stderr
    assert (tools.s3_root / "backups/airflow/metadata.dump").read_bytes()[:5] == b"PGDMP"

    target = server.new_database("airflow_from_s3")
    target_env = env_file(tmp_path / "target.env", server.uri(target))
    restore = run_script(tools, "restore-metadata-db.sh", "--env-file", str(target_env),
                         "--from", "s3://backups/airflow/metadata.dump")  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    assert server.rows(target)["asset_event"] == server.rows(source_db)["asset_event"]
    assert_secret_never_shown(tools, backup, restore)


def test_restore_refuses_a_database_that_is_not_empty(
    server: Server, source_db: str, tools: Tools, tmp_path: Path
) -> None:
    dump = tmp_path / "metadata.dump"
    backup = run_script(tools, "backup-metadata-db.sh", "--to", str(dump),
                        METADATA_DB_URI=server.uri(source_db))  # fmt: skip
    assert backup.returncode == 0, backup.stderr
    tools.argv_log.write_text("")
    before = server.rows(source_db)
    refused = run_script(tools, "restore-metadata-db.sh", "--from", str(dump),
                         METADATA_DB_URI=server.uri(source_db))  # fmt: skip
    assert refused.returncode != 0
    assert "is not empty" in refused.stderr and "EMPTY database" in refused.stderr
    assert "pg_restore --no-password" not in tools.argv()  # never started
    assert server.rows(source_db) == before


def test_dry_runs_print_the_plan_and_change_nothing(
    server: Server, source_db: str, tools: Tools, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    dry = run_script(tools, "backup-metadata-db.sh", "--dry-run", "--to", f"{backups}/",
                     METADATA_DB_URI=server.uri(source_db))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "+ pg_dump --format=custom" in dry.stderr and "Dry run" in dry.stdout
    assert list(backups.iterdir()) == [] and tools.argv() == ""

    dump = tmp_path / "metadata.dump"
    assert run_script(tools, "backup-metadata-db.sh", "--to", str(dump),
                      METADATA_DB_URI=server.uri(source_db)).returncode == 0  # fmt: skip
    tools.argv_log.write_text("")
    target = server.new_database("airflow_dry_run")
    dry = run_script(tools, "restore-metadata-db.sh", "--dry-run", "--from", str(dump),
                     METADATA_DB_URI=server.uri(target))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "+ pg_restore --no-password --single-transaction" in dry.stderr
    assert "is empty" in dry.stdout
    # Only the read-only emptiness query ran; the database is still empty.
    assert [line.split()[0] for line in tools.argv().splitlines()] == ["psql"]
    assert server.rows(target) == {}
    assert_secret_never_shown(tools, dry)


def test_a_wrong_password_fails_clearly_and_stores_nothing(
    server: Server, source_db: str, tools: Tools, tmp_path: Path
) -> None:
    dump = tmp_path / "metadata.dump"
    failed = run_script(tools, "backup-metadata-db.sh", "--to", str(dump),
                        METADATA_DB_URI=server.uri(source_db, password="wrong"))  # fmt: skip
    assert failed.returncode != 0
    assert "password authentication failed" in failed.stderr
    assert not dump.exists() and not Path(f"{dump}.partial").exists()
    assert list(tools.tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("mysql://u:p@db/airflow", "scheme is 'mysql'"),
        ("postgresql://u:p@db:5432/", "names no database"),
        ("postgresql://u:p@db/airflow?sslmode=require&keepalives=1", "parameter 'keepalives'"),
    ],
)
def test_an_unusable_uri_is_refused_without_echoing_it(
    uri: str, message: str, tools: Tools, tmp_path: Path
) -> None:
    result = run_script(tools, "backup-metadata-db.sh", "--to", str(tmp_path / "x.dump"),
                        METADATA_DB_URI=uri)  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr
    assert "u:p@" not in result.stdout + result.stderr
    assert tools.argv() == ""


def test_an_existing_backup_file_is_never_overwritten(tools: Tools, tmp_path: Path) -> None:
    dump = tmp_path / "metadata.dump"
    dump.write_bytes(b"keep me")
    result = run_script(tools, "backup-metadata-db.sh", "--to", str(dump),
                        METADATA_DB_URI="postgresql://u@db/airflow")  # fmt: skip
    assert result.returncode != 0 and "never overwrites" in result.stderr
    assert dump.read_bytes() == b"keep me"


def test_the_cronjobs_dump_command_backs_up_the_database(
    server: Server, source_db: str, tools: Tools, tmp_path: Path
) -> None:
    """The scheduled backup's dump container, as chart/platform renders it, run here: its
    command and the ConfigMap's script, with the pod's mount paths moved into tmp_path."""
    from tests.test_metrics import render

    docs = render("--set", "backup.enabled=true", "--set", "backup.s3Prefix=s3://b/airflow/")
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    (scripts_map,) = [d for d in docs if "pg-uri-env.sh" in d.get("data", {})]
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0]
    mounts = {m["mountPath"]: tmp_path / "pod" / m["name"] for m in container["volumeMounts"]}
    for path in mounts.values():
        path.mkdir(parents=True)
    (mounts["/scripts"] / "pg-uri-env.sh").write_text(scripts_map["data"]["pg-uri-env.sh"])
    paths = "|".join(map(re.escape, mounts))
    script = re.sub(
        rf"(?<![\w/])({paths})(?=[/\s])", lambda m: str(mounts[m[1]]), container["args"][0]
    )
    dumped = subprocess.run(
        [*container["command"], script],
        env={**tools.env(), "METADATA_DB_URI": server.uri(source_db)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dumped.returncode == 0, dumped.stderr
    assert "Dump checked" in dumped.stdout
    assert PASSWORD not in dumped.stdout + dumped.stderr

    target = server.new_database("airflow_from_cronjob")
    restore = run_script(tools, "restore-metadata-db.sh", "--from",
                         str(mounts["/backup"] / "metadata.dump"),
                         METADATA_DB_URI=server.uri(target))  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    assert server.rows(target) == server.rows(source_db)
