"""PROFILE=production proven without a cluster: the official chart (AIRFLOW_CHART_VERSION) and the
repository's chart/platform rendered with exactly the values files the install script passed
(tests/test_chart_render.py `rendered`, scenario "production"), every object valid for
Kubernetes 1.29 there; here the production promises: replicas and spreading, each
PodDisruptionBudget selecting its pods, no in-cluster Postgres, PgBouncer in front of the external
database (from the Secrets the script made), the Ingress, NetworkPolicies, the db clean CronJob;
the Kind profile unchanged; settings literal; the admin password never on a command line.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import chart_render
from tests.chart_render import SCENARIOS, airflow_cfg, pods, restricted_violations
from tests.script_sandbox import DB_PASSWORD, METADATA_DB_URI, REGISTRY
from tests.test_chart_render import allowed, labels, selects

pytestmark = pytest.mark.k8s

Docs = tuple[dict[str, Any], ...]
HA_COMPONENTS = ("scheduler", "api-server", "triggerer", "pgbouncer")
DB_USERS = ("scheduler", "api-server", "dag-processor", "triggerer", "run-airflow-migrations",
            "create-user-job", "db-clean")  # fmt: skip


@pytest.fixture(scope="module")
def render_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chart_render.renderer(tmp_path_factory)  # fails (never skips) without Helm or the chart
    return chart_render.render_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def production(render_dir: Path) -> Docs:
    return chart_render.rendered("production", render_dir)


@pytest.fixture(scope="module")
def secrets(production: Docs, render_dir: Path) -> dict[str, dict[str, str]]:
    """The Secrets the install script created for that render (the stub cluster's state)."""
    state = json.loads((render_dir / "production" / "state.json").read_text())
    return {key.split("/", 1)[1]: value for key, value in state["secrets"].items()}


def of_kind(docs: Docs, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def workloads(docs: Docs) -> dict[str, dict[str, Any]]:
    """component -> its Deployment or StatefulSet."""
    return {
        d["spec"]["template"]["metadata"]["labels"].get("component", d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }


def cronjob_pods(docs: Docs) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["jobTemplate"]["spec"]["template"]
            for d in of_kind(docs, "CronJob")}  # fmt: skip


def test_two_of_each_control_plane_component_spread_over_nodes(production: Docs) -> None:
    found = workloads(production)
    for component in HA_COMPONENTS:
        spec = found[component]["spec"]
        assert spec["replicas"] == 2, component
        (spread,) = spec["template"]["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname", component
        assert spread["maxSkew"] == 1 and spread["whenUnsatisfiable"] == "DoNotSchedule"
        assert selects(spread["labelSelector"], spec["template"]["metadata"]["labels"])
        # it counts only this component's pods
        for other, workload in found.items():
            if other != component:
                pod_labels = workload["spec"]["template"]["metadata"]["labels"]
                assert not selects(spread["labelSelector"], pod_labels), (component, other)


def test_every_pod_disruption_budget_selects_its_pods_only(production: Docs) -> None:
    found = workloads(production)
    budgets = of_kind(production, "PodDisruptionBudget")
    covered = []
    for budget in budgets:
        assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}
        selector = budget["spec"]["selector"]
        matched = [
            c
            for c, w in found.items()
            if selects(selector, w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, (budget["metadata"]["name"], matched)
        covered += matched
    assert sorted(covered) == sorted(HA_COMPONENTS)  # the triggerer's from chart/platform
    (triggerer,) = [b for b in budgets if b["metadata"]["name"] == "airflow-triggerer-pdb"]
    assert triggerer["metadata"]["labels"]["release"] == "airflow"


def test_no_in_cluster_postgres(production: Docs) -> None:
    text = yaml.safe_dump(list(production))
    assert "bitnami" not in text and "postgresql:5432" not in text
    assert not [d for d in production if "postgresql" in d["metadata"]["name"]]
    assert "postgresql" not in workloads(production)
    # the chart renders no metadata connection of its own: the Secret made by the script is used
    secret_names = [d["metadata"]["name"] for d in of_kind(production, "Secret")]
    assert not [n for n in secret_names if "metadata" in n or "postgres" in n]


def test_pgbouncer_fronts_the_external_database_over_tls(
    production: Docs, secrets: dict[str, dict[str, str]]
) -> None:
    pgbouncer = workloads(production)["pgbouncer"]["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"] for v in pgbouncer["volumes"] if "secret" in v}
    assert "airflow-pgbouncer-config" in mounted
    exporter_env = [e for c in pgbouncer["containers"] for e in c.get("env", [])]
    assert {"name": "airflow-pgbouncer-stats", "key": "connection"} in [
        e.get("valueFrom", {}).get("secretKeyRef") for e in exporter_env
    ]
    # the chart generates no PgBouncer configuration of its own (it would hold no database)
    assert not [d for d in of_kind(production, "Secret") if "pgbouncer" in d["metadata"]["name"]]
    # what the script put in those Secrets: the external database, TLS required
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(secrets["airflow-pgbouncer-config"]["pgbouncer.ini"])
    target = dict(kv.split("=", 1) for kv in ini["databases"]["airflow-metadata"].split())
    assert target["host"] == "db.example.internal" and target["port"] == "5433"
    assert target["dbname"] == "airflow_meta"
    assert ini["pgbouncer"]["server_tls_sslmode"] == "require"
    assert ini["pgbouncer"]["listen_port"] == "6543"
    # Airflow's URI names the rendered PgBouncer Service and the database alias above
    (service,) = [s for s in of_kind(production, "Service")
                  if s["metadata"]["name"] == "airflow-pgbouncer"]  # fmt: skip
    assert 6543 in [p["port"] for p in service["spec"]["ports"]]
    uri = secrets["airflow-metadata-connection"]["connection"]
    assert "@airflow-pgbouncer.airflow:6543/airflow-metadata?" in uri
    # the external URI itself is in no rendered object
    text = yaml.safe_dump(list(production))
    assert METADATA_DB_URI not in text and DB_PASSWORD not in text
    assert "pa%3Ass" not in text


def test_the_api_server_is_behind_the_ingress(production: Docs) -> None:
    (ingress,) = of_kind(production, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "airflow.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    (service,) = [s for s in of_kind(production, "Service")
                  if s["metadata"]["name"] == backend["name"]]  # fmt: skip
    assert service["spec"]["type"] == "ClusterIP"
    assert selects({"matchLabels": service["spec"]["selector"]}, labels("api-server"))
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    assert not [s for s in of_kind(production, "Service") if s["spec"].get("type") == "NodePort"]
    # the ingress controller's namespace (and the Airflow pods) reach the API server; no ipBlock
    (policy,) = [p for p in of_kind(production, "NetworkPolicy")
                 if p["metadata"]["name"] == "airflow-api-server-policy"]  # fmt: skip
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}} in peers  # fmt: skip
    assert not [p for p in peers if "ipBlock" in p]


def test_network_policies(production: Docs) -> None:
    pgbouncer = labels("pgbouncer")
    for component in DB_USERS:
        assert allowed(production, pgbouncer, labels(component), 6543), component
    assert allowed(production, labels("api-server"), labels("worker"), 8080)
    assert allowed(production, labels("triggerer"), labels("api-server"), 8794)
    assert allowed(production, labels("worker"), labels("api-server"), 8793)
    assert not allowed(production, labels("worker"), labels("scheduler"), 8793)
    # PgBouncer may connect to the database's range and DNS, nothing else
    (egress,) = [p for p in of_kind(production, "NetworkPolicy")
                 if "Egress" in p["spec"]["policyTypes"]]  # fmt: skip
    assert selects(egress["spec"]["podSelector"], pgbouncer)
    database, dns = egress["spec"]["egress"]
    assert database == {"to": [{"ipBlock": {"cidr": "10.0.32.0/20"}}],
                        "ports": [{"protocol": "TCP", "port": 5433}]}  # fmt: skip
    assert "to" not in dns and {p["port"] for p in dns["ports"]} == {53}


def test_db_clean_runs_like_every_airflow_pod(production: Docs) -> None:
    jobs = cronjob_pods(production)
    # the chart's task-pod clean-up, db clean, the metadata backup (BACKUP_S3_PREFIX)
    assert set(jobs) == {"airflow-cleanup", "airflow-db-clean", "airflow-platform-metadata-backup"}
    for name, pod in jobs.items():
        assert restricted_violations(pod) == [], name
    (cron,) = [c for c in of_kind(production, "CronJob")
               if c["metadata"]["name"] == "airflow-db-clean"]  # fmt: skip
    assert (
        cron["spec"]["schedule"] == "30 3 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    )
    pod = jobs["airflow-db-clean"]["spec"]
    scheduler = workloads(production)["scheduler"]["spec"]["template"]["spec"]
    (main,) = [c for c in scheduler["containers"] if c["name"] == "scheduler"]
    (clean,) = pod["containers"]
    assert pod["securityContext"] == scheduler["securityContext"]
    assert clean["securityContext"] == main["securityContext"]
    assert clean["image"] == main["image"] == f"{REGISTRY}/airflow-stackexchange:v1.0.0"
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in clean["env"]}
    assert env["RETENTION_DAYS"] == "90"
    assert "airflow db clean" in clean["args"][-1] and "--yes" in clean["args"][-1]
    secret = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secret == ["airflow-metadata-connection"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"].endswith("/metadata-db/connection")


def test_task_logs_go_to_s3(production: Docs) -> None:
    cfg = airflow_cfg(production)
    assert cfg["logging"]["remote_logging"] == "True"
    assert cfg["logging"]["remote_base_log_folder"] == "s3://logs/airflow/task-logs"
    assert not [d for d in production if d["kind"] == "PersistentVolumeClaim"]


def test_the_release_tag_pins_image_and_dags(production: Docs) -> None:
    found = pods(production)
    images = {c["image"] for p in found.values() for c in p["spec"]["containers"]
              if c["image"].startswith(REGISTRY)}  # fmt: skip
    assert images == {f"{REGISTRY}/airflow-stackexchange:v1.0.0"}
    sync = [
        c for c in found["airflow-dag-processor"]["spec"]["containers"] if c["name"] == "git-sync"
    ]
    env = {e["name"]: e.get("value") for e in sync[0]["env"]}
    assert env["GITSYNC_REF"] == "v1.0.0"


def test_the_kind_profile_renders_as_before_plus_the_platform_chart(render_dir: Path) -> None:
    kind = chart_render.rendered("kind", render_dir)
    assert "airflow-postgresql" in workloads(kind)
    assert all(w["spec"].get("replicas", 1) == 1 for w in workloads(kind).values())
    assert not of_kind(kind, "PodDisruptionBudget") and not of_kind(kind, "Ingress")
    assert not of_kind(kind, "CronJob")
    (api,) = [s for s in of_kind(kind, "Service") if s["metadata"]["name"] == "airflow-api-server"]
    assert api["spec"]["type"] == "NodePort" and api["spec"]["ports"][0]["nodePort"] == 30080
    names = {p["metadata"]["name"] for p in of_kind(kind, "NetworkPolicy")}
    assert {
        "airflow-triggerer-logs-from-api-server",
        "airflow-worker-logs-from-api-server",
    } <= names
    assert "airflow-pgbouncer-to-external-database" not in names


def test_an_evil_setting_stays_a_literal_string(render_dir: Path) -> None:
    evil = chart_render.rendered("evil", render_dir)
    value = SCENARIOS["evil"]["STACKEXCHANGE_PREFIX"]
    for name, pod in pods(evil).items():
        for container in pod["spec"]["containers"]:
            assert not container["image"].endswith(":evil"), name
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            if "STACKEXCHANGE_PREFIX" in env:
                assert env["STACKEXCHANGE_PREFIX"] == value, name
    scheduler = workloads(evil)["scheduler"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "STACKEXCHANGE_PREFIX", "value": value} in scheduler["env"]


FAKE_AIRFLOW = """#!{python}
import json, sys
from airflow.providers.fab.auth_manager.cli_commands.user_command import _create_password


class Args:  # `airflow users create` without --password / --use-random-password
    use_random_password = False
    password = None


password = _create_password(Args())
with open({record!r}, "w") as out:
    json.dump({{"argv": sys.argv, "password": password}}, out)
"""


def test_the_admin_password_reaches_the_user_creation_on_stdin_only(
    production: Docs, tmp_path: Path
) -> None:
    (job,) = [
        d for d in of_kind(production, "Job") if d["metadata"]["name"] == "airflow-create-user"
    ]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "airflow-admin-user", "key": "password"
    }  # fmt: skip
    bash, flag, script = container["args"]
    assert (bash, flag) == ("bash", "-c") and "--password" not in script
    # run the rendered command with the FAB provider's own password prompt as `airflow`
    record = tmp_path / "record.json"
    fake = tmp_path / "bin" / "airflow"
    fake.parent.mkdir()
    fake.write_text(FAKE_AIRFLOW.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    password = 'Pa ss"$(x)\\n'
    subprocess.run(
        ["bash", "-c", script],
        env={"PATH": f"{fake.parent}:{os.environ['PATH']}", "ADMIN_PASSWORD": password,
             "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        stdin=subprocess.DEVNULL, start_new_session=True,  # no terminal, like a pod
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    seen = json.loads(record.read_text())
    assert seen["password"] == password
    assert not any(password in arg for arg in seen["argv"])
    assert seen["argv"][1:3] == ["users", "create"]


def test_the_metadata_backup_runs_nightly_from_the_external_database(production: Docs) -> None:
    (backup,) = [c for c in of_kind(production, "CronJob") if "backup" in c["metadata"]["name"]]
    pod = backup["spec"]["jobTemplate"]["spec"]["template"]
    assert restricted_violations(pod) == []
    env = [e for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]
           for e in c.get("env", [])]  # fmt: skip
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert "airflow-metadata-db-external" in refs  # the database itself, not PgBouncer
    assert "s3://backups/airflow/" in yaml.safe_dump(backup)
