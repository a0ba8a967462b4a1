"""End to end: ``python -m local.stack up`` then ``run`` (``make demo-up``, ``make demo-run``) runs
the pipeline on a generated dump, headless; ``status`` and ``logs`` describe the running stack.

Expected values come from parsing the generated dump's XML here, independently of the pipeline.
The ``local_stack`` fixture's teardown checks ``down``: no process left, no port listening.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import signal
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import py7zr
import pytest
import requests

from local import services
from local.databricks_standin import read_table
from local.services import s3_client
from local.stack import processes
from stackexchange.assets import raw_assets
from stackexchange.settings import Storage
from tests import stack_harness
from tests.stack_harness import RunningStack

pytestmark = pytest.mark.e2e

PRODUCER, CONSUMER = "produce_data_asset", "trigger_databricks_workflow_dag"
EXTRA_KEYS = {
    "uri", "site", "bytes", "rows", "sha256", "etag", "version_id", "source_url",
    "source_version", "ingest_id",
}  # fmt: skip  # the contract's keys (the producer may add more)
METADATA_KEYS = {"site": "site", "source-url": "source_url", "source-version": "source_version",
                 "ingest-id": "ingest_id"}  # fmt: skip
SERVICES = {"s3", "files", "databricks", "api-server", "scheduler", "dag-processor", "triggerer"}


@dataclass(frozen=True)
class DumpFile:
    rows: list[dict[str, str]]
    size: int
    sha256: str


@pytest.fixture(scope="module")
def dump(
    local_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, DumpFile]:
    """Posts.xml and Users.xml of the archive the file server served, parsed with ElementTree."""
    target = tmp_path_factory.mktemp("dump")
    with py7zr.SevenZipFile(local_stack.info.dump) as archive:
        archive.extract(target, targets=["Posts.xml", "Users.xml"])
    files = {}
    for name in ("Posts.xml", "Users.xml"):
        data = (target / name).read_bytes()
        rows = [dict(row.attrib) for row in ET.parse(target / name).getroot()]
        files[name] = DumpFile(rows, len(data), hashlib.sha256(data).hexdigest())
    return files


def _tags(value: str) -> set[str]:
    return (
        set(re.findall(r"<([^<>]+)>", value))
        if value.startswith("<")
        else set(value.split("|")) - {""}
    )


def test_every_service_runs_and_listens_on_localhost_only(local_stack: RunningStack) -> None:
    running = set(processes.running(local_stack.run_dir))
    expected = SERVICES | ({"postgres"} if local_stack.info.database == "PostgreSQL" else set())
    assert running == expected
    pids = {process.pid for process in local_stack.processes()}
    listening = [
        conn.laddr
        for conn in psutil.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    ]
    public = [addr for addr in listening if not _loopback(addr.ip)]
    assert not public, f"listening beyond 127.0.0.1: {public}"
    assert set(local_stack.ports()) <= {addr.port for addr in listening}


def _loopback(ip: str) -> bool:
    """127.0.0.1, also as the IPv4-mapped IPv6 address Java binds (Spark's driver ports)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address) == "127.0.0.1"


def test_both_dag_runs_succeeded(local_stack: RunningStack) -> None:
    api, info = local_stack.api(), local_stack.info
    producer = api.dag_run(PRODUCER, info.producer_run_id)
    consumer = api.dag_run(CONSUMER, info.consumer_run_id)
    assert producer["state"] == "success"
    assert producer["conf"] == {
        "source_base_url": info.files_url,
        "sites": [info.site],
        "force": True,
    }
    assert consumer["state"] == "success"
    assert consumer["run_type"] == "asset_triggered"


def test_two_asset_events_carry_the_published_objects(
    local_stack: RunningStack, dump: dict[str, DumpFile]
) -> None:
    info = local_stack.info
    events = local_stack.api().asset_events(PRODUCER, info.producer_run_id)
    by_uri = {event["uri"]: event for event in events}
    raw = raw_assets(Storage())
    assert len(events) == 2 and set(by_uri) == {asset.uri for asset in raw.values()}
    s3 = s3_client(info.s3_endpoint)
    for name, asset in raw.items():
        event = by_uri[asset.uri]
        extra = event["extra"]
        assert set(extra) >= EXTRA_KEYS, f"missing {EXTRA_KEYS - set(extra)}"
        assert extra["uri"].endswith(f"/{info.site}/{extra['generation']}/{name}")
        assert extra["site"] == info.site
        assert extra["source_url"] == f"{info.files_url}/{info.site}.7z"
        assert extra["source_version"]
        assert extra["rows"] == len(dump[name].rows)
        assert extra["bytes"] == dump[name].size
        assert extra["sha256"] == dump[name].sha256
        bucket, key = extra["uri"].removeprefix("s3://").split("/", 1)
        stored = s3.get_object(Bucket=bucket, Key=key)
        assert hashlib.sha256(stored["Body"].read()).hexdigest() == dump[name].sha256
        assert extra["etag"] == stored["ETag"].strip('"')
        assert extra["version_id"] is None  # the stack's bucket is not versioned
        assert stored["Metadata"] == {meta: extra[field] for meta, field in METADATA_KEYS.items()}
        consumer_runs = {run["run_id"] for run in event["created_dagruns"]}
        assert info.consumer_run_id in consumer_runs


def test_a_second_run_of_the_same_dump_skips(local_stack: RunningStack) -> None:
    """check_source asks the real API server whether the run that wrote the pair succeeded;
    it did, so the pair counts as published: no download, no asset event."""
    api, info = local_stack.api(), local_stack.info
    run_id = api.trigger(PRODUCER, {"source_base_url": info.files_url, "sites": [info.site]})[
        "dag_run_id"]  # fmt: skip
    processes.wait_for(
        f"{PRODUCER} run {run_id} to finish",
        lambda: api.dag_run(PRODUCER, run_id)["state"] in ("success", "failed"),
        timeout=180,
    )
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(PRODUCER, run_id)}
    assert states == {"choose_sites": "success", "check_source": "skipped", "ingest": "skipped"}
    assert api.asset_events(PRODUCER, run_id) == []


def _job_parameters(stack: RunningStack) -> dict[str, str]:
    info = stack.info
    token = Path(info.databricks_token_file).read_text().strip()
    response = requests.get(
        f"{info.databricks_url}/api/2.1/jobs/runs/get",
        params={"run_id": info.databricks_run_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    response.raise_for_status()
    run = response.json()
    assert run["state"]["result_state"] == "SUCCESS"
    return {p["name"]: p["value"] for p in run["job_parameters"]}


def test_standin_ran_the_job_on_exactly_the_published_uris(
    local_stack: RunningStack, dump: dict[str, DumpFile]
) -> None:
    parameters = _job_parameters(local_stack)
    events = local_stack.api().asset_events(PRODUCER, local_stack.info.producer_run_id)
    announced = {event["extra"]["uri"] for event in events}
    assert {parameters["posts_uri"], parameters["users_uri"]} == announced
    assert parameters["site"] == local_stack.info.site
    assert parameters["posts_sha256"] == dump["Posts.xml"].sha256
    assert parameters["users_sha256"] == dump["Users.xml"].sha256


def test_gold_tables_hold_what_the_dump_says(
    local_stack: RunningStack, dump: dict[str, DumpFile]
) -> None:
    parameters = _job_parameters(local_stack)
    location = {"catalog": parameters["catalog"], "schema": parameters["schema"]}
    warehouse = Path(local_stack.info.warehouse)
    posts, users = dump["Posts.xml"].rows, dump["Users.xml"].rows

    counts = Counter(tag for post in posts for tag in _tags(post.get("Tags", "")))
    expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    tags = read_table(warehouse, "gold_most_popular_tags", **location).sort_by("Rank").to_pylist()
    assert [(row["Rank"], row["Tag"], row["Posts"]) for row in tags] == [
        (rank, tag, n) for rank, (tag, n) in enumerate(expected, start=1)
    ]
    assert [tuple(item) for item in local_stack.info.top_tags] == expected[:10]  # as printed

    user_ids = {user["Id"] for user in users}
    post_users = read_table(warehouse, "gold_post_users", **location).to_pylist()
    assert len(post_users) == len(posts)
    known = sum(1 for post in posts if post.get("OwnerUserId") in user_ids)
    assert sum(1 for row in post_users if row["OwnerKnown"]) == known


def test_run_prints_the_gold_tables_and_how_to_stop(local_stack: RunningStack) -> None:
    """``make demo-run``'s report: every table with its row count, the top tags, the login."""
    info = local_stack.info
    out = (local_stack.run_dir / "run.out").read_text()
    printed_rows = dict(re.findall(r"^  (\w+) +([\d,]+) rows$", out, re.MULTILINE))
    assert {name: int(n.replace(",", "")) for name, n in printed_rows.items()} == info.table_rows
    assert set(info.table_rows) >= {"bronze_posts", "silver_posts", "gold_most_popular_tags"}
    printed_tags = re.findall(r"^ +\d+\. (\S+) +([\d,]+) posts$", out, re.MULTILINE)
    assert [(tag, int(n.replace(",", ""))) for tag, n in printed_tags] == [
        tuple(item) for item in info.top_tags
    ]
    assert f"Airflow UI: {info.ui_url}" in out
    assert f"user admin  password {local_stack.password}" in out
    assert f"python -m local.stack --run-dir {info.run_dir} down" in out


def test_status_lists_services_addresses_and_recent_runs(local_stack: RunningStack) -> None:
    info = local_stack.info
    result = stack_harness.stack_command(local_stack.run_dir, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        match.group(1): (match.group(2), int(match.group(3)), match.group(4).strip())
        for match in re.finditer(r"^  (\S+) +(running|STOPPED) +(\d+) +(.*)$", result.stdout, re.M)
    }
    running = processes.running(local_stack.run_dir)
    assert {name: pid for name, (_, pid, _) in rows.items()} == {
        name: process.pid for name, process in running.items()
    }
    assert rows["api-server"][2] == info.ui_url
    assert rows["s3"][2] == info.s3_endpoint
    assert rows["databricks"][2] == info.databricks_url
    assert f"Airflow UI: {info.ui_url}" in result.stdout
    for dag_id, run_id in ((PRODUCER, info.producer_run_id), (CONSUMER, info.consumer_run_id)):
        assert re.search(
            rf"^  {dag_id} +success +[\d.]+s +{re.escape(run_id)}$", result.stdout, re.M
        )


def test_logs_prints_the_named_services_and_refuses_unknown_ones(local_stack: RunningStack) -> None:
    run_dir = local_stack.run_dir
    result = stack_harness.stack_command(run_dir, "logs", "--no-follow", "-n", "3", "s3", "files")
    assert result.returncode == 0, result.stderr
    assert f"==> {run_dir}/logs/s3.log <==" in result.stdout
    assert f"==> {run_dir}/logs/files.log <==" in result.stdout
    assert "scheduler.log" not in result.stdout
    wrong = stack_harness.stack_command(run_dir, "logs", "--no-follow", "schedular")
    assert wrong.returncode == 1
    assert "no log for schedular: choose from " in wrong.stderr
    assert "scheduler" in wrong.stderr.split("choose from ")[1]


def test_ctrl_c_during_up_stops_everything_it_started(tmp_path: Path) -> None:
    """A second stack, interrupted once Airflow's processes run: nothing may survive."""
    run_dir = tmp_path / "run"
    up = stack_harness.stack_popen(run_dir, "up", "--api-port", str(services.free_port()))
    api_pid = run_dir / "pids" / "api-server.pid"

    def airflow_started() -> bool:
        assert up.poll() is None, up.communicate()[0]
        return api_pid.exists()

    services.wait_until("up to start Airflow", airflow_started, timeout=120, interval=0.2)
    started = [p for svc in processes.running(run_dir).values() for p in processes.tree(svc)]
    assert len(started) >= len(SERVICES)

    up.send_signal(signal.SIGINT)
    output, _ = up.communicate(timeout=120)
    assert up.returncode == 130, output
    assert "everything started was stopped" in output
    survivors = [p for p in started if stack_harness.alive(p)] + processes.tagged(run_dir)
    assert not survivors, [p.cmdline() for p in survivors]
    assert not list((run_dir / "pids").glob("*.pid"))
    assert not (run_dir / "postgres.dir").exists()
