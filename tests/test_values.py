"""The Helm values (chart/), the Kind config and the volumes agree with each other and with the
deployment design. CI has no helm: this checks the values' structure; tests/test_chart_render.py
renders the real chart when AIRFLOW_CHART_DIR and HELM_BIN are set."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.utils import parse_quantity

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "chart/values.yaml").read_text())
OVERLAY = yaml.safe_load((REPO / "chart/values-override-with-persistence.yaml").read_text())
KIND = yaml.safe_load((REPO / "kind-config.yaml").read_text())
PV, PVC = yaml.safe_load_all((REPO / "chart/logs-persistent-volume.yaml").read_text())
DAGS_PV, DAGS_PVC = yaml.safe_load_all((REPO / "chart/dags-persistent-volume.yaml").read_text())
DAGS_OVERLAY = yaml.safe_load((REPO / "chart/values-dags-from-host.yaml").read_text())
REMOTE_LOGS = yaml.safe_load((REPO / "chart/values-remote-logging.yaml").read_text())

# (path in the values, long-running?) for every container the install starts
COMPONENTS = [
    ("scheduler", True),
    ("scheduler.logGroomerSidecar", True),
    ("apiServer", True),
    ("dagProcessor", True),
    ("dagProcessor.logGroomerSidecar", True),
    ("triggerer", True),
    ("triggerer.logGroomerSidecar", True),
    ("statsd", True),
    ("postgresql.primary", True),
    ("workers", False),  # one KubernetesExecutor task pod
    ("migrateDatabaseJob", False),
    ("createUserJob", False),
    ("dags.gitSync", False),  # only with git-sync
]
# A laptop Kind cluster: what the always-on components may request in total.
LAPTOP_CPU_REQUESTS = 2.0
LAPTOP_MEMORY_REQUESTS_GI = 4.0


def merged(base: Any, overlay: Any) -> Any:
    """Helm's merge of -f files: maps merge recursively, anything else is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {k: merged(base.get(k), overlay[k]) if k in overlay else base[k] for k in base} | {
            k: v for k, v in overlay.items() if k not in base
        }
    return overlay


def lookup(values: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        values = values[part]
    return values


def cpu(quantity: str | int | float) -> float:
    return float(parse_quantity(quantity))


def memory_gi(quantity: str) -> float:
    return float(parse_quantity(quantity)) / 2**30


DEV = merged(BASE, OVERLAY)


def test_merge_follows_helm() -> None:
    assert merged({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}, "d": 3}) == {
        "a": {"b": 1, "c": [2]},
        "d": 3,
    }


def test_kubernetes_executor_and_worker_pod_retention() -> None:
    assert BASE["executor"] == DEV["executor"] == "KubernetesExecutor"
    base = BASE["config"]["kubernetes_executor"]
    assert base["delete_worker_pods"] == "True"  # successful task pods go away
    assert base["delete_worker_pods_on_failure"] == "False"  # failed ones stay for debugging
    assert DEV["config"]["kubernetes_executor"]["delete_worker_pods"] == "False"


def test_image_is_set_per_install_and_never_latest() -> None:
    image = BASE["images"]["airflow"]
    assert image["repository"] is None and image["tag"] is None  # the scripts --set both
    assert image["pullPolicy"] == "IfNotPresent"  # loaded with kind load, not pulled
    assert "latest" not in yaml.safe_dump(BASE)


def test_git_sync_off_by_default_and_credentials_not_in_values() -> None:
    git_sync = BASE["dags"]["gitSync"]
    assert git_sync["enabled"] is False
    assert "credentialsSecret" not in git_sync and "repo" not in git_sync


def test_dags_folder_on_pythonpath_in_every_component() -> None:
    env = yaml.safe_load(BASE["extraEnv"])
    assert env == [{"name": "PYTHONPATH", "value": '{{ include "airflow_dags" . }}'}]


def test_postgres_from_the_subchart_airflow_as_database_owner_not_superuser() -> None:
    postgres = BASE["postgresql"]
    assert postgres["enabled"] is True
    image = postgres["image"]
    assert (image["repository"], image["tag"]) == ("bitnamilegacy/postgresql", "14.10.0")
    assert image["digest"] == "" or re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"])
    assert postgres["auth"] == {
        "username": "airflow",
        "database": "airflow",
        "existingSecret": "airflow-postgresql-credentials",
    }
    assert BASE["data"] == {"metadataSecretName": "airflow-metadata-connection"}


def test_stable_secrets_come_from_named_secrets() -> None:
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert BASE[key]
    for inline in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert inline not in BASE


def test_ui_login_uses_a_secret_password_not_admin() -> None:
    user = BASE["webserver"]["defaultUser"]
    assert user["enabled"] is True and user["password"] != "admin"
    job = BASE["createUserJob"]
    # on stdin (the password and its confirmation), never on the command line
    assert '<<<"$ADMIN_PASSWORD"$\'\\n\'"$ADMIN_PASSWORD"' in job["args"][-1]
    assert "--password" not in job["args"][-1]
    env = {e["name"]: e for e in job["env"]}
    assert env["ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "airflow-admin-user",
        "key": "password",
    }


def test_connections_reach_every_component_from_a_secret() -> None:
    assert yaml.safe_load(BASE["extraEnvFrom"]) == [{"secretRef": {"name": "airflow-connections"}}]


def test_logs_on_the_static_volume() -> None:
    persistence = DEV["logs"]["persistence"]
    assert persistence == {"enabled": True, "existingClaim": PVC["metadata"]["name"]}
    assert PVC["metadata"]["name"] == "airflow-logs-pvc"
    for doc in (PV, PVC):
        assert doc["spec"]["storageClassName"] == "manual"
        assert doc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert PV["spec"]["capacity"]["storage"] == PVC["spec"]["resources"]["requests"]["storage"]
    assert PVC["spec"]["resources"]["requests"]["storage"] == "5Gi"
    # the claim can bind only this volume
    assert PVC["spec"]["selector"]["matchLabels"].items() <= PV["metadata"]["labels"].items()
    assert "logs" not in BASE  # the base values keep the chart's default (no volume)


def test_every_kind_node_mounts_the_host_logs_and_dags_at_the_volume_paths() -> None:
    assert {n["role"] for n in KIND["nodes"]} == {"control-plane", "worker"}
    for node in KIND["nodes"]:
        mounts = {m["containerPath"]: m for m in node["extraMounts"]}
        assert mounts[PV["spec"]["hostPath"]["path"]]["hostPath"] == "./logs", node["role"]
        dags = mounts[DAGS_PV["spec"]["hostPath"]["path"]]
        assert dags["hostPath"] == "./dags" and dags["readOnly"] is True, node["role"]


def test_dags_from_host_overlay_names_the_claim_that_binds_the_dags_volume() -> None:
    persistence = DAGS_OVERLAY["dags"]["persistence"]
    assert persistence == {"enabled": True, "existingClaim": DAGS_PVC["metadata"]["name"]}
    assert (
        DAGS_PVC["spec"]["selector"]["matchLabels"].items() <= DAGS_PV["metadata"]["labels"].items()
    )
    assert DAGS_PV["spec"]["accessModes"] == DAGS_PVC["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert "persistence" not in BASE["dags"]  # the base keeps the DAGs baked into the image


def test_remote_logging_overlay_uses_aws_conn_and_leaves_the_bucket_to_the_scripts() -> None:
    logging = REMOTE_LOGS["config"]["logging"]
    assert logging["remote_logging"] == "True" and logging["remote_log_conn_id"] == "aws_conn"
    assert logging["remote_base_log_folder"] == ""  # --set-string from REMOTE_LOG_BUCKET/PREFIX
    assert "logs" not in REMOTE_LOGS  # no volume: the logs go to S3


def test_kind_node_image_is_kubernetes_1_29_pinned_by_digest() -> None:
    for node in KIND["nodes"]:
        assert re.fullmatch(r"kindest/node:v1\.29\.\d+@sha256:[0-9a-f]{64}", node["image"])


def test_ui_nodeport_is_the_one_kind_maps_to_host_8080() -> None:
    (port,) = BASE["apiServer"]["service"]["ports"]
    mappings = [m for n in KIND["nodes"] for m in n.get("extraPortMappings", [])]
    assert [(m["containerPort"], m["hostPort"]) for m in mappings] == [(port["nodePort"], 8080)]
    assert mappings[0]["listenAddress"] == "127.0.0.1"
    assert BASE["apiServer"]["service"]["type"] == "NodePort"


def test_network_policies_admit_task_pods_to_the_api_server() -> None:
    assert BASE["networkPolicies"]["enabled"] is True
    worker_pod_labels = {"tier": "airflow", "component": "worker", "release": "airflow"}
    rules = BASE["apiServer"]["networkPolicy"]["ingress"]
    selectors = [r["podSelector"]["matchLabels"] for r in rules["from"] if "podSelector" in r]
    assert any(s.items() <= worker_pod_labels.items() for s in selectors)
    assert rules["ports"] == [{"port": "{{ .Values.ports.apiServer }}"}]
    # the database admits the components that use it, not the task pods
    postgres = BASE["postgresql"]["networkPolicy"]
    only_from = postgres["ingressRules"]["primaryAccessOnlyFrom"]
    assert postgres["enabled"] and only_from["enabled"] and "podSelector" not in only_from
    ((peer,),) = [rule["from"] for rule in only_from["customRules"]]
    (expression,) = peer["podSelector"]["matchExpressions"]
    assert expression["key"] == "component" and expression["operator"] == "In"
    assert "scheduler" in expression["values"] and "worker" not in expression["values"]


def test_statsd_on() -> None:
    assert BASE["statsd"]["enabled"] is True


@pytest.mark.parametrize("path", [path for path, _ in COMPONENTS])
def test_every_component_has_requests_within_limits(path: str) -> None:
    resources = lookup(BASE, path)["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert cpu(requests["cpu"]) <= cpu(limits["cpu"])
    assert memory_gi(requests["memory"]) <= memory_gi(limits["memory"])


def test_the_install_fits_a_laptop() -> None:
    always_on = [lookup(BASE, p)["resources"]["requests"] for p, on in COMPONENTS if on]
    assert sum(cpu(r["cpu"]) for r in always_on) <= LAPTOP_CPU_REQUESTS
    assert sum(memory_gi(r["memory"]) for r in always_on) <= LAPTOP_MEMORY_REQUESTS_GI


def inline_secrets(values: Any, path: str = "") -> list[str]:
    """Paths of chart keys that would carry a secret value in the values themselves."""
    found = []
    if isinstance(values, dict):
        for key, value in values.items():
            here = f"{path}.{key}".lstrip(".")
            if key in INLINE_SECRET_KEYS and value is not None:
                found.append(here)
            found += inline_secrets(value, here)
    return found


INLINE_SECRET_KEYS = {
    "fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey", "postgresPassword",
    "password", "pass", "sshKey", "metadataConnection", "GITSYNC_PASSWORD", "GIT_SYNC_PASSWORD",
}  # fmt: skip


def test_no_secret_material_in_the_values() -> None:
    assert inline_secrets({"a": {"sshKey": "x", "b": [1]}, "password": None}) == ["a.sshKey"]
    for values in (BASE, OVERLAY):
        found = inline_secrets(values)
        # the one allowed: the chart's install notes show a hint where the password is
        assert found in ([], ["webserver.defaultUser.password"])
        assert (
            not found
            or "get secret airflow-admin-user" in BASE["webserver"]["defaultUser"]["password"]
        )
    text = (REPO / "chart/values.yaml").read_text()
    assert not re.search(r"\b\d{12}\b", text)  # no AWS account id
