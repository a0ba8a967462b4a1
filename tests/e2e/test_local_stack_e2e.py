"""End to end: ``python -m local.stack up`` then ``run`` (``make demo-up``, ``make demo-run``) runs
the pipeline on two generated sites, headless, with a real scheduler (LocalExecutor); ``status``
and ``logs`` describe the running stack.

The stack runs with a fan-out bound below the number of sites (``stack_harness.MAX_ACTIVE_SITES``),
so the scheduler must hold a site back: the task instances' start and end dates show it did.
Expected values come from parsing the generated dumps' XML here, independently of the pipeline.
The ``local_stack`` fixture's teardown checks ``down``: no process left, no port listening.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import signal
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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
def dumps(
    local_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, DumpFile]]:
    """Per site, Posts.xml and Users.xml of the archive the file server served, parsed with
    ElementTree."""
    parsed: dict[str, dict[str, DumpFile]] = {}
    for site, archive_path in local_stack.info.dumps.items():
        target = tmp_path_factory.mktemp("dump")
        with py7zr.SevenZipFile(archive_path) as archive:
            archive.extract(target, targets=["Posts.xml", "Users.xml"])
        parsed[site] = {}
        for name in ("Posts.xml", "Users.xml"):
            data = (target / name).read_bytes()
            rows = [dict(row.attrib) for row in ET.parse(target / name).getroot()]
            parsed[site][name] = DumpFile(rows, len(data), hashlib.sha256(data).hexdigest())
    return parsed


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


def test_every_dag_run_succeeded(local_stack: RunningStack) -> None:
    api, info = local_stack.api(), local_stack.info
    assert len(info.dumps) == 2  # the demo's two sample sites
    producer = api.dag_run(PRODUCER, info.producer_run_id)
    assert producer["state"] == "success"
    assert producer["conf"] == {
        "source_base_url": info.files_url,
        "sites": list(info.dumps),
        "force": True,
    }
    assert info.consumer_run_ids
    for run_id in info.consumer_run_ids:
        consumer = api.dag_run(CONSUMER, run_id)
        assert (consumer["state"], consumer["run_type"]) == ("success", "asset_triggered")


def _events_by_site(stack: RunningStack) -> dict[str, list[dict[str, Any]]]:
    by_site = defaultdict(list)
    for event in stack.api().asset_events(PRODUCER, stack.info.producer_run_id):
        by_site[event["extra"]["site"]].append(event)
    return by_site


def test_each_site_has_two_asset_events_carrying_its_published_objects(
    local_stack: RunningStack, dumps: dict[str, dict[str, DumpFile]]
) -> None:
    info = local_stack.info
    by_site = _events_by_site(local_stack)
    assert set(by_site) == set(info.dumps)
    raw = raw_assets(Storage())
    s3 = s3_client(info.s3_endpoint)
    for site, events in by_site.items():
        by_uri = {event["uri"]: event for event in events}
        assert len(events) == 2 and set(by_uri) == {asset.uri for asset in raw.values()}
        for name, asset in raw.items():
            dump, extra = dumps[site][name], by_uri[asset.uri]["extra"]
            assert set(extra) >= EXTRA_KEYS, f"missing {EXTRA_KEYS - set(extra)}"
            assert extra["uri"].endswith(f"/{site}/{extra['generation']}/{name}")
            assert extra["source_url"] == f"{info.files_url}/{site}.7z"
            assert extra["source_version"]
            assert extra["rows"] == len(dump.rows)
            assert extra["bytes"] == dump.size
            assert extra["sha256"] == dump.sha256
            bucket, key = extra["uri"].removeprefix("s3://").split("/", 1)
            stored = s3.get_object(Bucket=bucket, Key=key)
            assert hashlib.sha256(stored["Body"].read()).hexdigest() == dump.sha256
            assert extra["etag"] == stored["ETag"].strip('"')
            assert extra["version_id"] is None  # the stack's bucket is not versioned
            metadata = {meta: extra[field] for meta, field in METADATA_KEYS.items()}
            assert stored["Metadata"] == metadata
            consumer_runs = {run["run_id"] for run in by_uri[asset.uri]["created_dagruns"]}
            assert consumer_runs & set(info.consumer_run_ids)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one moment (one ending as another starts do not overlap)."""
    changes = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_, most = 0, 0
    for _, change in changes:  # at equal times the end (-1) sorts first
        open_ += change
        most = max(most, open_)
    return most


@pytest.mark.parametrize("task_id", ["check_source", "ingest"])
def test_the_real_scheduler_keeps_the_fan_out_within_its_bound(
    local_stack: RunningStack, task_id: str
) -> None:
    """The bound (``max_active_tis_per_dagrun`` from STACKEXCHANGE_MAX_ACTIVE_SITES) below the
    number of sites: the mapped instances, each named by its site, never ran more at once."""
    info = local_stack.info
    assert 1 <= info.max_active_sites < len(info.dumps), "the bound must hold a site back"
    tasks = [
        ti
        for ti in local_stack.api().task_instances(PRODUCER, info.producer_run_id)
        if ti["task_id"] == task_id
    ]
    assert sorted(ti["rendered_map_index"] for ti in tasks) == sorted(info.dumps)
    assert {ti["state"] for ti in tasks} == {"success"}
    intervals = [(_time(ti["start_date"]), _time(ti["end_date"])) for ti in tasks]
    assert _most_at_once(intervals) <= info.max_active_sites, intervals


def test_most_at_once_counts_overlaps() -> None:
    """The helper above finds an overlap (so the bound's test can fail)."""
    t = [datetime.fromtimestamp(s) for s in range(5)]
    assert _most_at_once([(t[0], t[2]), (t[1], t[3])]) == 2
    assert _most_at_once([(t[0], t[1]), (t[1], t[2])]) == 1
    assert _most_at_once([(t[0], t[4]), (t[1], t[2]), (t[3], t[4])]) == 2


def test_a_second_run_of_the_same_dump_skips(local_stack: RunningStack) -> None:
    """check_source asks the real API server whether the run that wrote the pair succeeded;
    it did, so the pair counts as published: no download, no asset event."""
    api, info = local_stack.api(), local_stack.info
    run_id = api.trigger(PRODUCER, {"source_base_url": info.files_url, "sites": list(info.dumps)})[
        "dag_run_id"
    ]
    processes.wait_for(
        f"{PRODUCER} run {run_id} to finish",
        lambda: api.dag_run(PRODUCER, run_id)["state"] in ("success", "failed"),
        timeout=180,
    )
    tis = api.task_instances(PRODUCER, run_id)
    # An ingest skipped without running is never named: its site is check_source's name.
    sites = {
        ti["map_index"]: ti["rendered_map_index"] for ti in tis if ti["task_id"] == "check_source"
    }
    states = sorted((ti["task_id"], sites.get(ti["map_index"]), ti["state"]) for ti in tis)
    assert states == sorted(
        [("choose_sites", None, "success")]
        + [(task, site, "skipped") for site in info.dumps for task in ("check_source", "ingest")]
    )
    assert api.asset_events(PRODUCER, run_id) == []


def _standin(stack: RunningStack, path: str, **params: object) -> dict[str, Any]:
    info = stack.info
    token = Path(info.databricks_token_file).read_text().strip()
    response = requests.get(
        f"{info.databricks_url}/api/2.1/jobs/{path}",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def _parameters(run: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in run["job_parameters"]}


def test_each_site_got_its_own_job_run_on_exactly_its_own_objects(
    local_stack: RunningStack, dumps: dict[str, dict[str, DumpFile]]
) -> None:
    """The stand-in records every run with its parameters: one run per site, on the objects that
    site's asset events announced, and the consumer's instance named by the site started it."""
    info, api = local_stack.info, local_stack.api()
    runs = _standin(local_stack, "runs/list", limit=25)["runs"]
    assert sorted(_parameters(run)["site"] for run in runs) == sorted(info.dumps)
    started = {}  # site -> the Databricks run its consumer task instance started
    for run_id in info.consumer_run_ids:
        for ti in api.task_instances(CONSUMER, run_id):
            if ti["task_id"] == "run_medallion_job":
                assert ti["state"] == "success"
                job_run = api.xcom(CONSUMER, run_id, ti["task_id"], "run_id", ti["map_index"])
                started[ti["rendered_map_index"]] = job_run
    assert sorted(started) == sorted(info.dumps)
    events = _events_by_site(local_stack)
    for run in runs:
        parameters = _parameters(run)
        site = parameters["site"]
        assert run["run_id"] == started[site] == info.sites[site].databricks_run_id
        assert run["state"]["result_state"] == "SUCCESS"
        announced = {event["extra"]["uri"] for event in events[site]}
        assert {parameters["posts_uri"], parameters["users_uri"]} == announced
        assert parameters["posts_sha256"] == dumps[site]["Posts.xml"].sha256
        assert parameters["users_sha256"] == dumps[site]["Users.xml"].sha256


def test_each_sites_gold_tables_hold_what_its_dump_says(
    local_stack: RunningStack, dumps: dict[str, dict[str, DumpFile]]
) -> None:
    warehouse = Path(local_stack.info.warehouse)
    runs = _standin(local_stack, "runs/list", limit=25)["runs"]
    for run in runs:
        parameters = _parameters(run)
        site = parameters["site"]
        location = {"catalog": parameters["catalog"], "schema": parameters["schema"]}
        posts, users = dumps[site]["Posts.xml"].rows, dumps[site]["Users.xml"].rows

        counts = Counter(tag for post in posts for tag in _tags(post.get("Tags", "")))
        expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        tags = read_table(warehouse, "gold_most_popular_tags", **location).to_pylist()
        ranked = sorted(
            (row["Rank"], row["Tag"], row["Posts"]) for row in tags if row["site"] == site
        )
        assert ranked == [(rank, tag, n) for rank, (tag, n) in enumerate(expected, start=1)]
        printed = [tuple(item) for item in local_stack.info.sites[site].top_tags]
        assert printed == expected[:10]

        user_ids = {user["Id"] for user in users}
        post_users = [
            row
            for row in read_table(warehouse, "gold_post_users", **location).to_pylist()
            if row["site"] == site
        ]
        assert len(post_users) == len(posts)
        known = sum(1 for post in posts if post.get("OwnerUserId") in user_ids)
        assert sum(1 for row in post_users if row["OwnerKnown"]) == known


def test_run_prints_each_sites_gold_tables_and_how_to_stop(local_stack: RunningStack) -> None:
    """``make demo-run``'s report: per site, labelled, every table with the site's row count and
    its top tags; then the login and how to stop."""
    info = local_stack.info
    out = (local_stack.run_dir / "run.out").read_text()
    sections = dict(re.findall(r"^== (\S+) ==\n(.*?)(?=^== |^Figures:)", out, re.M | re.S))
    assert list(sections) == list(info.dumps)
    for site, text in sections.items():
        result = info.sites[site]
        assert f"Databricks stand-in run {result.databricks_run_id}: " in text
        printed_rows = dict(re.findall(r"^  (\w+) +([\d,]+) rows$", text, re.M))
        counts = {name: int(n.replace(",", "")) for name, n in printed_rows.items()}
        assert counts == result.table_rows
        assert counts["bronze_posts"] == counts["silver_posts"] > 0
        assert set(counts) >= {"bronze_posts", "silver_posts", "gold_most_popular_tags"}
        printed_tags = re.findall(r"^ +\d+\. (\S+) +([\d,]+) posts$", text, re.M)
        assert [(tag, int(n.replace(",", ""))) for tag, n in printed_tags] == [
            tuple(item) for item in result.top_tags
        ]
    posts = [info.sites[site].table_rows["bronze_posts"] for site in info.dumps]
    assert len(set(posts)) == len(posts)  # each site's own rows, not the table's total
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
    ran = [(PRODUCER, info.producer_run_id)] + [(CONSUMER, r) for r in info.consumer_run_ids]
    for dag_id, run_id in ran:
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
