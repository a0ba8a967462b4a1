"""Metrics: the statsd-exporter mapping (chart/values-metrics.yaml), the ingest's own figures sent
through Airflow's Stats to a real UDP listener by a real ingest, the Grafana dashboard and the
alert rules (every query names a metric the mapping produces), and chart/platform rendered by
real helm with and without the Prometheus Operator's API.

The exporter itself (a Go binary) is not installable here: ``Mapping`` applies the mapping the
way statsd_exporter 0.28 does (pkg/mapper: glob mappings first, in order, ``*`` = one dot-free
field; then regex mappings in order, searched, ``$n`` expanded; unmatched names escaped).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from local import k8s_tools
from local.sample_dump import pack_7z, write_site
from tests import chart_render
from tests.http_fixtures import DumpServer

REPO = Path(__file__).resolve().parents[1]
PLATFORM = REPO / "chart" / "platform"
DASHBOARD = PLATFORM / "dashboards" / "airflow-stackexchange.json"
VALUES_METRICS = REPO / "chart" / "values-metrics.yaml"
VERSIONS = dict(
    line.split("=", 1) for line in (REPO / "versions.env").read_text().splitlines()
    if re.match(r"^[A-Z_]+=", line)
)  # fmt: skip
KIND_NODE = yaml.safe_load((REPO / "kind-config.yaml").read_text())["nodes"][0]["image"]
KUBERNETES_VERSION = re.search(r":v(\d+\.\d+)\.", KIND_NODE).group(1)
SITE = "demo.stackexchange.com"
PRODUCER = "produce_data_asset"
MONITORING_API = "monitoring.coreos.com/v1"

# --- the exporter's mapping ----------------------------------------------------------------------

# pkg/mapper/mapper.go's validation
STATSD_FIELD = r"[a-zA-Z_](-?[a-zA-Z0-9_])*"
GLOB_RE = re.compile(rf"^(\*\.|{STATSD_FIELD}\.)+(\*|{STATSD_FIELD})$")
NAME_RE = re.compile(r"^([a-zA-Z_]|\$\{?\d+\}?)([a-zA-Z0-9_]|\$\{?\d+\}?)*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]+$")
DROP = ("<dropped>", {})


@dataclass
class Mapping:
    rules: list[dict[str, Any]]

    @classmethod
    def from_values(cls) -> Mapping:
        values = yaml.safe_load(VALUES_METRICS.read_text())
        return cls(values["statsd"]["overrideMappings"])

    def produced_names(self) -> dict[str, dict[str, Any]]:
        """Every metric name a mapping can produce (none is templated), with its rule."""
        return {r["name"]: r for r in self.rules if r.get("action") != "drop"}

    def map(self, statsd_name: str) -> tuple[str, dict[str, str]]:
        for rule in self.rules:
            if rule.get("match_type", "glob") != "glob":
                continue
            pattern, fields = rule["match"].split("."), statsd_name.split(".")
            if len(pattern) == len(fields) and all(
                p in ("*", f) and f for p, f in zip(pattern, fields, strict=True)
            ):
                captures = [f for p, f in zip(pattern, fields, strict=True) if p == "*"]
                return self._result(rule, lambda t, c=captures: _expand(t, c))
        for rule in self.rules:
            if rule.get("match_type") == "regex" and (m := re.search(rule["match"], statsd_name)):
                return self._result(rule, lambda t, m=m: _expand(t, m.groups()))
        return re.sub(r"[^a-zA-Z0-9_]", "_", statsd_name), {}

    @staticmethod
    def _result(rule: dict[str, Any], expand) -> tuple[str, dict[str, str]]:
        if rule.get("action") == "drop":
            return DROP
        labels = {k: expand(v) for k, v in rule.get("labels", {}).items()}
        return expand(rule["name"]), labels


def _expand(template: str, captures: list[str] | tuple[str, ...]) -> str:
    return re.sub(r"\$\{?(\d+)\}?", lambda m: captures[int(m.group(1)) - 1], template)


@functools.cache
def mapping() -> Mapping:
    return Mapping.from_values()


def allowed_series() -> set[str]:
    """The Prometheus names the mapping produces, with the exporter's observer suffixes:
    histograms add _bucket/_sum/_count; timers (the *_seconds names) are summaries otherwise."""
    names = set()
    for name, rule in mapping().produced_names().items():
        names.add(name)
        if rule.get("observer_type") == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif name.endswith("_seconds"):
            names |= {f"{name}_sum", f"{name}_count"}
    return names


def test_every_mapping_passes_the_exporters_validation() -> None:
    seen_names: dict[str, set[str]] = defaultdict(set)
    for rule in mapping().rules:
        assert NAME_RE.match(rule["name"]), rule
        assert all(LABEL_RE.match(key) for key in rule.get("labels", {})), rule
        if rule.get("match_type", "glob") == "glob":
            assert GLOB_RE.match(rule["match"]), rule
        else:
            assert rule["match"].startswith("^") and rule["match"].endswith("$"), rule
            re.compile(rule["match"])
        if rule.get("action") != "drop":
            seen_names[rule["name"]].add(tuple(sorted(rule.get("labels", {}))))
    # one label set per metric name: the exporter refuses a second one
    assert {n: s for n, s in seen_names.items() if len(s) > 1} == {}


# What Airflow 3.0.2 sends (each checked against its source below) -> the labelled metric.
AIRFLOW_SAMPLES = [
    ("scheduler_heartbeat", "airflow_scheduler_heartbeat", {}),
    ("triggerer_heartbeat", "airflow_triggerer_heartbeat", {}),
    ("dag_processor_heartbeat", "airflow_dag_processor_heartbeat", {}),
    ("dagrun.duration.success.produce_data_asset", "airflow_dagrun_duration_seconds",
     {"state": "success", "dag_id": "produce_data_asset"}),
    ("dagrun.duration.failed.my.dotted.dag", "airflow_dagrun_duration_seconds",
     {"state": "failed", "dag_id": "my.dotted.dag"}),
    ("dagrun.duration.success", *DROP),
    ("dagrun.schedule_delay.produce_data_asset", "airflow_dagrun_schedule_delay_seconds",
     {"dag_id": "produce_data_asset"}),
    ("ti_failures", "airflow_ti_failures", {}),
    ("scheduler.tasks.killed_externally", "airflow_scheduler_tasks_killed_externally", {}),
    ("task_instances_without_heartbeats_killed",
     "airflow_task_instances_without_heartbeats_killed", {}),
    ("operator_failures_PythonOperator", "airflow_operator_failures",
     {"operator": "PythonOperator"}),
    ("operator_failures", *DROP),
    ("task_instance_created_PythonOperator", "airflow_task_instance_created",
     {"operator": "PythonOperator"}),
    ("task_instance_created", *DROP),
    ("ti.running.default.produce_data_asset.group.ingest", "airflow_ti_running",
     {"queue": "default", "dag_id": "produce_data_asset", "task_id": "group.ingest"}),
    ("ti.running", *DROP),
    ("dag.produce_data_asset.ingest.queued_duration", "airflow_task_queued_duration_seconds",
     {"dag_id": "produce_data_asset", "task_id": "ingest"}),
    ("dag.produce_data_asset.ingest.scheduled_duration",
     "airflow_task_scheduled_duration_seconds",
     {"dag_id": "produce_data_asset", "task_id": "ingest"}),
    ("pool.open_slots.default_pool", "airflow_pool_slots",
     {"state": "open", "pool": "default_pool"}),
    ("pool.deferred_slots.default_pool", "airflow_pool_slots",
     {"state": "deferred", "pool": "default_pool"}),
    ("pool.queued_slots", *DROP),
    ("pool.starving_tasks.default_pool", "airflow_pool_starving_tasks", {"pool": "default_pool"}),
    ("pool.starving_tasks", *DROP),
    ("executor.open_slots", "airflow_executor_open_slots", {}),
    ("executor.queued_tasks", "airflow_executor_queued_tasks", {}),
    ("executor.running_tasks", "airflow_executor_running_tasks", {}),
    ("scheduler.scheduler_loop_duration", "airflow_scheduler_loop_duration_seconds", {}),
    ("triggers.running.triggerer-0.triggerer", "airflow_triggers_running",
     {"hostname": "triggerer-0.triggerer"}),
    ("triggers.running", *DROP),
    ("triggerer.capacity_left.triggerer-0", "airflow_triggerer_capacity_left",
     {"hostname": "triggerer-0"}),
    ("triggerer.capacity_left", *DROP),
    ("triggers.succeeded", "airflow_triggers_succeeded", {}),
    ("triggers.failed", "airflow_triggers_failed", {}),
    ("triggers.blocked_main_thread", "airflow_triggers_blocked_main_thread", {}),
    ("dag_processing.total_parse_time", "airflow_dag_processing_total_parse_time_seconds", {}),
    ("dag_processing.last_duration.produce_data_asset",
     "airflow_dag_processing_last_duration_seconds", {"dag_file": "produce_data_asset"}),
    ("dag_processing.last_run.seconds_ago.produce_data_asset",
     "airflow_dag_processing_last_run_seconds_ago", {"dag_file": "produce_data_asset"}),
    ("dagrun.dependency-check.produce_data_asset", "airflow_dagrun_dependency_check_seconds",
     {"dag_id": "produce_data_asset"}),
    ("asset.updates", "airflow_asset_updates", {}),
    ("asset.triggered_dagruns", "airflow_asset_triggered_dagruns", {}),
]  # fmt: skip


@functools.cache
def airflow_stat_templates() -> list[re.Pattern[str]]:
    """The names Airflow 3.0.2's own code passes to Stats, as patterns ({...} = any text)."""
    import airflow

    root = Path(airflow.__file__).parent
    call = re.compile(r"""Stats\.(?:incr|decr|gauge|timing|timer)\(\s*f?(["'])([^"']+)\1""")
    named = re.compile(r"_metric_name\s*=\s*\((.*?)\)\n", re.DOTALL)
    literal = re.compile(r"""f?(["'])([a-z_.{}]+)\1""")
    templates = set()
    for path in root.rglob("*.py"):
        if "tests" in path.parts:
            continue
        text = path.read_text(errors="replace")
        if "Stats." in text:
            templates |= {m.group(2) for m in call.finditer(text)}
            # names built first, e.g. open_slots_metric_name = (f"executor.open_slots.{x}" ...)
            for block in named.findall(text):
                templates |= {m.group(2) for m in literal.finditer(block)}
    return [re.compile(".+".join(map(re.escape, re.split(r"\{[^}]*\}", t)))) for t in templates]


@pytest.mark.parametrize(("stat", "name", "labels"), AIRFLOW_SAMPLES, ids=lambda v: str(v))
def test_airflow_3_names_map_to_labelled_metrics(stat: str, name: str, labels: dict) -> None:
    assert any(t.fullmatch(stat) for t in airflow_stat_templates()), (
        f"Airflow {VERSIONS['AIRFLOW_VERSION']} sends no metric named like {stat}"
    )
    assert mapping().map(f"airflow.{stat}") == (name, labels)


def test_every_mapping_is_exercised_by_a_real_airflow_name() -> None:
    produced = {name for _, name, _ in AIRFLOW_SAMPLES} | set(INGEST_NAMES.values())
    assert set(mapping().produced_names()) == produced - {DROP[0]}


def test_names_airflow_does_not_send_are_neither_sampled_nor_mapped() -> None:
    """The check above could fail: ti.finish is not sent by Airflow 3.0.2 (Task SDK)."""
    assert not any(t.fullmatch("ti.finish.dag.task.success") for t in airflow_stat_templates())
    assert mapping().map("airflow.ti.finish.dag.task.success")[1] == {}  # unmapped


# --- the ingest's figures, from a real run --------------------------------------------------------

INGEST_NAMES = {
    "bytes": "stackexchange_ingest_bytes",
    "throughput": "stackexchange_ingest_throughput_bytes_per_second",
    "rows": "stackexchange_ingest_rows",
    "pairs": "stackexchange_ingest_pairs",
    "last_pair_timestamp": "stackexchange_ingest_last_pair_timestamp_seconds",
}


class StatsdListener:
    """A UDP socket on 127.0.0.1 collecting statsd lines (name, value, type)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lines: list[tuple[str, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                name, _, rest = line.partition(":")
                value, kind = rest.split("|")[:2]
                self.lines.append((name, float(value), kind))

    def __enter__(self) -> StatsdListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def total(self, name: str) -> float:
        return sum(v for n, v, k in self.lines if n == name and k == "c")

    def gauges(self, name: str) -> list[float]:
        return [v for n, v, k in self.lines if n == name and k == "g"]


# Sync the DAGs, then one producer run with dag.test(), in a fresh process: Airflow chooses its
# Stats client when airflow.stats is first imported, from the [metrics] settings.
RUN_PRODUCER = """
import json, sys
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.models import DagBag
DagBundlesManager().sync_bundles_to_db()
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
bag.sync_to_db("dags-folder", None)
dag = bag.dags[sys.argv[2]]
for task in dag.tasks:
    task.retries = 0
run = dag.test(run_conf=json.loads(sys.argv[3]))
print("STATE", run.state, run.get_task_instance("ingest", map_index=0).state)
"""


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, bytes], int]]:
    """A served dump: base URL, the member files' bytes, the archive's size."""
    root = tmp_path_factory.mktemp("metrics-mirror")
    files = write_site(root / "site", posts=400, users=60, tag_style="pipe")
    archive = pack_7z(files, root / "stackexchange" / f"{SITE}.7z")
    sha1 = hashlib.sha1(archive.read_bytes()).hexdigest()
    (root / "stackexchange" / "stackexchange_files.xml").write_text(
        f'<files><file name="{SITE}.7z" source="original"><sha1>{sha1}</sha1></file></files>'
    )
    members = {p.name: p.read_bytes() for p in files if p.name in ("Posts.xml", "Users.xml")}
    with DumpServer(root) as server:
        yield f"{server.url}/stackexchange", members, archive.stat().st_size


@pytest.mark.e2e
def test_a_real_ingest_sends_its_figures_to_statsd(
    airflow_db: None, aws_conn: str, dump: tuple[str, dict[str, bytes], int]
) -> None:
    from local.services import s3_client
    from stackexchange.settings import Storage

    base_url, members, archive_size = dump
    client = s3_client(aws_conn)
    bucket = Storage.from_env().bucket
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    conf = {"sites": [SITE], "source_base_url": base_url, "force": True}
    with StatsdListener() as statsd:
        env = {
            **os.environ,
            "PYTHONPATH": f"{REPO / 'dags'}:{REPO}",
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            "STACKEXCHANGE_PROGRESS_SECONDS": "0.05",
            "STACKEXCHANGE_DOWNLOAD_BACKOFF_SECONDS": "0",
        }
        started = time.time()
        result = subprocess.run(
            [sys.executable, "-c", RUN_PRODUCER, str(REPO / "dags"), PRODUCER, json.dumps(conf)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        finished = time.time()
        assert "STATE success success" in result.stdout, (result.stdout + result.stderr)[-4000:]
        time.sleep(0.3)  # the last datagrams are in flight on loopback

    prefix = "airflow.stackexchange.ingest"
    xml_bytes = sum(len(data) for data in members.values())
    assert statsd.total(f"{prefix}.bytes.downloaded.{SITE}") == archive_size
    assert statsd.total(f"{prefix}.bytes.decompressed.{SITE}") == xml_bytes
    assert statsd.total(f"{prefix}.bytes.uploaded.{SITE}") == xml_bytes
    for table, member in (("posts", "Posts.xml"), ("users", "Users.xml")):
        rows = len(ET.fromstring(members[member]).findall("row"))
        assert statsd.total(f"{prefix}.rows.{table}.{SITE}") == rows
    assert statsd.total(f"{prefix}.pairs.{SITE}") == 1
    (published_at,) = statsd.gauges(f"{prefix}.last_pair_timestamp.{SITE}")
    assert started <= published_at <= finished
    assert max(statsd.gauges(f"{prefix}.throughput.uploaded.{SITE}")) > 0
    # Airflow's own figure for the run, mapped with the DAG as a label
    assert f"airflow.dagrun.duration.success.{PRODUCER}" in {n for n, _, _ in statsd.lines}

    mapped: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    ingest_series = set()
    for name, _, _ in statsd.lines:
        prom_name, labels = mapping().map(name)
        if prom_name != DROP[0]:
            mapped[prom_name].add(tuple(sorted(labels)))
        if name.startswith(prefix):
            assert prom_name in INGEST_NAMES.values() and labels["site"] == SITE, name
            ingest_series.add(prom_name)
    assert ingest_series == set(INGEST_NAMES.values())
    assert {n: s for n, s in mapped.items() if len(s) > 1} == {}  # no label-set clash
    assert mapping().map(f"airflow.dagrun.duration.success.{PRODUCER}") in [
        ("airflow_dagrun_duration_seconds", {"state": "success", "dag_id": PRODUCER})
    ]


def test_figures_are_sent_as_growth_so_counters_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cumulative progress becomes statsd increments; nothing is sent twice."""
    from stackexchange import metrics

    sent: list[tuple[str, str, float]] = []

    class Recorder:
        def incr(self, stat: str, count: int = 1) -> None:
            sent.append(("c", stat, count))

        def gauge(self, stat: str, value: float) -> None:
            sent.append(("g", stat, value))

    monkeypatch.setattr(metrics, "_stats", Recorder)
    figures = metrics.IngestFigures(SITE)
    figures.progress({"downloaded": 100, "uploaded": 0}, 1.0)
    figures.progress({"downloaded": 250, "uploaded": 40}, 2.0)
    figures.progress({"downloaded": 250, "uploaded": 40}, 4.0)
    counts = defaultdict(float)
    for kind, stat, value in sent:
        if kind == "c":
            counts[stat] += value
    assert counts == {
        f"stackexchange.ingest.bytes.downloaded.{SITE}": 250,
        f"stackexchange.ingest.bytes.uploaded.{SITE}": 40,
    }
    assert sent[-2:] == [
        ("g", f"stackexchange.ingest.throughput.downloaded.{SITE}", 62.5),
        ("g", f"stackexchange.ingest.throughput.uploaded.{SITE}", 10.0),
    ]


# --- PromQL: the dashboard's and the alerts' queries ---------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and",
    "or", "unless", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, durations...)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)\s*\(", "(", expr)  # sum by (x) (...)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*(\([^)]*\))?", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__range)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\w)(\s*\()?", expr):
        if not m.group(2) and m.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


def test_the_query_parser_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, dag_id) (rate(a_bucket{state="x y", b="c"}[5m]))) '
        "/ on (dag_id) group_left b_total offset 1h or absent_over_time(c:d[$__range]) > 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c:d"}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_has_the_grafana_schemas_required_fields() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["uid"], str) and 0 < len(dashboard["uid"]) <= 40
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["refId"] and t["expr"] for t in panel["targets"])
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    names = set().union(*map(metric_names, dashboard_queries(json.loads(DASHBOARD.read_text()))))
    assert {
        "airflow_scheduler_heartbeat", "airflow_dagrun_duration_seconds_bucket",
        "airflow_dagrun_duration_seconds_count", "airflow_ti_failures", "airflow_pool_slots",
        "airflow_triggers_running", *INGEST_NAMES.values(),
    } <= names  # fmt: skip


def test_every_dashboard_query_names_only_mapped_metrics() -> None:
    for expr in dashboard_queries(json.loads(DASHBOARD.read_text())):
        assert metric_names(expr), expr
        assert metric_names(expr) <= allowed_series(), (expr, metric_names(expr) - allowed_series())


# --- chart/platform rendered by real helm ------------------------------------------------------


def tools() -> k8s_tools.Tools:
    """Helm and the official chart, as `make k8s-tools` provides them (one way, for every test)."""
    try:
        return chart_render.tools()
    except k8s_tools.ToolError as error:
        pytest.fail(str(error), pytrace=False)


def helm_bin() -> str:
    return str(tools().helm)


# The metrics and backup objects among what chart/platform renders (it carries NetworkPolicies too).
METRICS_KINDS = {"ConfigMap", "ServiceMonitor", "PrometheusRule", "CronJob"}


def render(*args: str, chart: Path = PLATFORM, check: bool = True) -> list[dict[str, Any]]:
    """chart/platform with the base values files, as the install passes them."""
    values = ["--values", str(REPO / "chart/values.yaml")] if chart == PLATFORM else []
    result = subprocess.run(
        [helm_bin(), "template", "airflow", str(chart), "--namespace", "airflow", *values, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if not check:
        return result  # type: ignore[return-value]
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return [doc for doc in docs if chart != PLATFORM or doc["kind"] in METRICS_KINDS]


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


@pytest.mark.k8s
def test_without_the_operator_only_the_dashboard_is_rendered() -> None:
    docs = render()
    assert [d["kind"] for d in docs] == ["ConfigMap"]
    (configmap,) = docs
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["airflow-stackexchange.json"]) == json.loads(
        DASHBOARD.read_text()
    )


@pytest.mark.k8s
def test_with_the_operator_a_servicemonitor_and_the_alerts() -> None:
    docs = kinds(render("--api-versions", MONITORING_API, "--set", "metrics.maxPairAgeHours=12"))
    assert set(docs) == {"ConfigMap", "ServiceMonitor", "PrometheusRule"}
    monitor = docs["ServiceMonitor"]
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "tier": "airflow", "component": "statsd", "release": "airflow",
    }  # fmt: skip
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["airflow"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "statsd-scrape" and endpoint["path"] == "/metrics"

    rules = {r["alert"]: r for g in docs["PrometheusRule"]["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {
        "AirflowSchedulerHeartbeatMissing", "AirflowDagRunFailed", "StackExchangeNoNewPair",
    }  # fmt: skip
    for rule in rules.values():
        assert isinstance(rule["expr"], str) and rule["labels"]["severity"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "1m"))
        assert metric_names(rule["expr"]) <= allowed_series(), rule["expr"]
    assert "> 43200" in rules["StackExchangeNoNewPair"]["expr"]  # 12 hours
    assert "[12h]" in rules["StackExchangeNoNewPair"]["expr"]
    assert "airflow_scheduler_heartbeat" in metric_names(
        rules["AirflowSchedulerHeartbeatMissing"]["expr"]
    )


@pytest.mark.k8s
def test_a_bad_max_pair_age_is_refused() -> None:
    result = render("--api-versions", MONITORING_API, "--set", "metrics.maxPairAgeHours=0",
                    check=False)  # fmt: skip
    assert result.returncode != 0 and "metrics.maxPairAgeHours" in result.stderr


# --- the official chart with the overlay ---------------------------------------------------------


@pytest.mark.k8s
def test_the_official_chart_takes_the_mapping_and_admits_prometheus() -> None:
    docs = render("--values", str(REPO / "chart" / "values.yaml"), "--values",
                  str(VALUES_METRICS), chart=tools().chart)  # fmt: skip
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    mappings = yaml.safe_load(by_name[("ConfigMap", "airflow-statsd")]["data"]["mappings.yml"])
    assert mappings["mappings"] == mapping().rules
    service = by_name[("Service", "airflow-statsd")]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert "statsd-scrape" in {p["name"] for p in service["spec"]["ports"]}
    policy = by_name[("NetworkPolicy", "airflow-statsd-policy")]
    sources = policy["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in sources
    config = by_name[("ConfigMap", "airflow-config")]["data"]["airflow.cfg"]
    assert "statsd_on = True" in config and "statsd_prefix = airflow" in config


# --- the backup CronJob -----------------------------------------------------------------------

BACKUP = ("--set", "backup.enabled=true", "--set", "backup.s3Prefix=s3://backups/airflow/")


@pytest.mark.k8s
def test_backup_cronjob_is_valid_and_pod_security_restricted() -> None:
    docs = render(*BACKUP)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    objects = kinds(docs)
    cron = objects["CronJob"]
    assert (
        cron["spec"]["schedule"] == "30 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    )
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    containers = pod["initContainers"] + pod["containers"]
    for container in containers:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        image = container["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest")
    dump = pod["initContainers"][0]
    (uri,) = [e for e in dump["env"] if e["name"] == "METADATA_DB_URI"]
    assert uri["valueFrom"]["secretKeyRef"] == {
        "name": "airflow-metadata-connection", "key": "connection",
    }  # fmt: skip
    script = dump["args"][0]
    assert "pg_dump --format=custom --no-password" in script and "pg_uri_env" in script
    assert "METADATA_DB_URI" not in script.split("pg_uri_env", 1)[1].split("\n", 1)[1].replace(
        "unset METADATA_DB_URI", ""
    )  # after pg_uri_env, the URI is gone and never on a command line
    (upload,) = pod["containers"]
    assert {"name": "BACKUP_S3_PREFIX", "value": "s3://backups/airflow/"} in upload["env"]
    (scripts,) = [d["data"]["pg-uri-env.sh"] for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == "airflow-metadata-backup-scripts"]  # fmt: skip
    assert scripts == (PLATFORM / "files" / "pg-uri-env.sh").read_text().rstrip("\n")


@pytest.mark.k8s
def test_backup_images_are_pulled_by_digest_once_set() -> None:
    digest = "sha256:" + "a" * 64
    pod = kinds(render(*BACKUP, "--set", f"backup.image.digest={digest}"))["CronJob"]
    image = pod["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0]["image"]
    assert image.endswith(f":17.5-bookworm@{digest}")


@pytest.mark.k8s
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "backup.enabled=true"), "backup.s3Prefix is required"),
        (("--set", "backup.enabled=true", "--set", "backup.s3Prefix=/data"), "s3://BUCKET/PREFIX/"),
    ],
)
def test_backup_needs_an_s3_prefix(args: tuple[str, ...], message: str) -> None:
    result = render(*args, check=False)
    assert result.returncode != 0 and message in result.stderr
