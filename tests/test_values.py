"""The Helm values (chart/), the Kind config and the logs volume agree with each other and with
the deployment design. CI has no helm: this checks the values' structure; rendering against the
real chart is a manual step (README)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "chart/values.yaml").read_text())
OVERLAY = yaml.safe_load((REPO / "chart/values-override-with-persistence.yaml").read_text())
KIND = yaml.safe_load((REPO / "kind-config.yaml").read_text())
PV, PVC = yaml.safe_load_all((REPO / "chart/logs-persistent-volume.yaml").read_text())

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
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_gi(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


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


def test_postgres_from_the_subchart_with_a_secret_password() -> None:
    postgres = BASE["postgresql"]
    assert postgres["enabled"] is True
    assert postgres["image"] == {"repository": "bitnamilegacy/postgresql", "tag": "14.10.0"}
    assert set(postgres["auth"]) == {"existingSecret"}
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
    assert '--password "$ADMIN_PASSWORD"' in job["args"][-1]
    (env,) = job["env"]
    assert env["name"] == "ADMIN_PASSWORD"
    assert env["valueFrom"]["secretKeyRef"] == {"name": "airflow-admin-user", "key": "password"}


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


def test_every_kind_node_mounts_the_host_logs_at_the_volume_path() -> None:
    assert {n["role"] for n in KIND["nodes"]} == {"control-plane", "worker"}
    for node in KIND["nodes"]:
        mounts = {m["containerPath"]: m["hostPath"] for m in node["extraMounts"]}
        assert mounts.get(PV["spec"]["hostPath"]["path"]) == "./logs", node["role"]


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
    # the database admits Airflow's pods (task pods included) and nothing else
    postgres = BASE["postgresql"]["networkPolicy"]
    only_from = postgres["ingressRules"]["primaryAccessOnlyFrom"]
    assert postgres["enabled"] and only_from["enabled"]
    assert only_from["podSelector"].items() <= worker_pod_labels.items()


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
