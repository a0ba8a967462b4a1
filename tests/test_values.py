"""What the values make of the official chart, asserted on the chart rendered with the install
script's real arguments (tests/chart_render.py), and the Kind config and the volumes that must
agree with it: executor and pod retention, images, secrets, the DAGs on PYTHONPATH, Postgres, the
logs and DAGs volumes, the UI port, and resources that fit a laptop."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import chart_render
from tests.chart_render import KIND, SCENARIOS, airflow_cfg, containers, of_kind, pods, quantity

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[1]
PV, PVC = yaml.safe_load_all((REPO / "chart/logs-persistent-volume.yaml").read_text())
DAGS_PV, DAGS_PVC = yaml.safe_load_all((REPO / "chart/dags-persistent-volume.yaml").read_text())
# A laptop Kind cluster: what the always-on pods may request in total, and the node a task pod
# must also fit on next to them (the ingest's own size: STACKEXCHANGE_INGEST_*, README).
LAPTOP_CPU_REQUESTS = 2.0
LAPTOP_MEMORY_REQUESTS_GI = 4.0
AIRFLOW_IMAGE = re.compile(r"airflow-stackexchange:[\w.-]+")


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory):
    return chart_render.renderer(tmp_path_factory)


def airflow_containers(docs: chart_render.Docs) -> list[tuple[str, dict[str, Any]]]:
    """(pod, container) for every container that runs the Airflow image."""
    return [
        (name, c)
        for name, pod in pods(docs).items()
        for c in containers(pod)
        if "postgresql" not in name and "statsd" not in name and not c["name"].startswith("git-")
    ]


def test_kubernetes_executor_keeps_failed_task_pods_and_the_dev_overlay_all(render) -> None:
    for scenario, keep_all in (("remote-logs", False), ("kind", True)):
        cfg = airflow_cfg(render(scenario))
        assert cfg["core"]["executor"] == "KubernetesExecutor"
        executor = cfg["kubernetes_executor"]
        assert executor["delete_worker_pods"] == str(not keep_all), scenario
        assert executor["delete_worker_pods_on_failure"] == "False", scenario


@pytest.mark.parametrize("scenario", ["kind", "git-https"])
def test_every_airflow_container_runs_the_installed_image_never_latest(render, scenario) -> None:
    docs = render(scenario)
    for name, container in airflow_containers(docs):
        if name == "pod-template":  # its image is replaced by the executor's, below
            continue
        assert AIRFLOW_IMAGE.fullmatch(container["image"]), (name, container["image"])
        assert container["imagePullPolicy"] == "IfNotPresent", name  # loaded with kind load
    executor = airflow_cfg(docs)["kubernetes_executor"]
    image = f"{executor['worker_container_repository']}:{executor['worker_container_tag']}"
    assert AIRFLOW_IMAGE.fullmatch(image)
    images = [c["image"] for p in pods(docs).values() for c in containers(p)]
    assert not [i for i in images if i.endswith(":latest") or ":" not in i.split("/")[-1]]


@pytest.mark.parametrize(
    ("scenario", "dags_folder"),
    [("kind", "/opt/airflow/dags"), ("git-https", "/opt/airflow/dags/repo/dags"),
     ("dags-from-host", "/opt/airflow/dags")],
)  # fmt: skip
def test_the_dags_folder_is_on_pythonpath_in_every_airflow_container(
    render, scenario: str, dags_folder: str
) -> None:
    docs = render(scenario)
    assert airflow_cfg(docs)["core"]["dags_folder"] == dags_folder
    for name, container in airflow_containers(docs):
        if container["name"].endswith("log-groomer"):
            continue
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        assert env.get("PYTHONPATH") == dags_folder, (name, container["name"])


def test_every_airflow_container_gets_the_connections_secret(render) -> None:
    for name, container in airflow_containers(render("kind")):
        if container["name"].endswith("log-groomer") or container["name"].startswith("wait-for"):
            continue
        assert {"secretRef": {"name": "airflow-connections"}} in container.get("envFrom", []), (
            name, container["name"],
        )  # fmt: skip


def secret_ref(container: dict[str, Any], var: str) -> dict[str, str] | None:
    for e in container.get("env") or []:
        if e["name"] == var:
            return e.get("valueFrom", {}).get("secretKeyRef")
    return None


def test_stable_secrets_come_from_the_installed_secrets(render) -> None:
    found = pods(render("kind"))
    for name in ("airflow-scheduler", "airflow-api-server", "airflow-dag-processor",
                 "airflow-triggerer"):  # fmt: skip
        main = found[name]["spec"]["containers"][0]
        assert secret_ref(main, "AIRFLOW__CORE__FERNET_KEY") == {
            "name": "airflow-fernet-key", "key": "fernet-key"}, name  # fmt: skip
        assert secret_ref(main, "AIRFLOW__API_AUTH__JWT_SECRET") == {
            "name": "airflow-jwt-secret", "key": "jwt-secret"}, name  # fmt: skip
        assert secret_ref(main, "AIRFLOW__API__SECRET_KEY") == {
            "name": "airflow-api-secret-key", "key": "api-secret-key"}, name  # fmt: skip


def test_ui_login_password_comes_from_a_secret_never_a_literal(render) -> None:
    docs = render("kind")
    (job,) = [p for n, p in pods(docs).items() if n.endswith("create-user")]
    (main,) = job["spec"]["containers"]
    assert secret_ref(main, "ADMIN_PASSWORD") == {"name": "airflow-admin-user", "key": "password"}
    command = " ".join(main.get("args") or [])
    # on stdin (the password and its confirmation), never on a process's command line (#17)
    assert "--password" not in command and '<<<"$ADMIN_PASSWORD"' in command
    assert "admin:admin" not in yaml.safe_dump(docs)


def test_postgres_runs_airflow_as_database_owner_not_superuser(render) -> None:
    (postgres,) = pods(render("kind"))["airflow-postgresql"]["spec"]["containers"]
    assert postgres["image"].split("/", 1)[1].startswith("bitnamilegacy/postgresql:14.10.0")
    env = {e["name"]: e for e in postgres["env"]}
    assert env["POSTGRES_USER"]["value"] == env["POSTGRES_DATABASE"]["value"] == "airflow"
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "airflow-postgresql-credentials", "key": "password"}  # fmt: skip
    # Airflow reads its URI (the `airflow` role) from the metadata Secret
    scheduler = pods(render("kind"))["airflow-scheduler"]
    secrets = {v.get("secret", {}).get("secretName") for v in scheduler["spec"]["volumes"]}
    assert "airflow-metadata-connection" in secrets


def claims(pod: dict[str, Any]) -> dict[str, str]:
    """volume name -> claim name of a pod's PVC volumes."""
    return {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }


def test_logs_on_the_static_volume_in_kind_and_none_with_remote_logs(render) -> None:
    for name, pod in pods(render("kind")).items():
        if "postgresql" in name or "statsd" in name or name.endswith(("create-user", "migrations")):
            continue
        assert claims(pod).get("logs") == PVC["metadata"]["name"], name
    for name, pod in pods(render("remote-logs")).items():
        assert PVC["metadata"]["name"] not in claims(pod).values(), name
    assert not of_kind(render("kind"), "PersistentVolumeClaim")  # the install applies it


def test_the_logs_and_dags_claims_bind_only_their_volumes() -> None:
    for pv, pvc, mode in ((PV, PVC, "ReadWriteMany"), (DAGS_PV, DAGS_PVC, "ReadOnlyMany")):
        for doc in (pv, pvc):
            assert doc["spec"]["storageClassName"] == "manual"
            assert doc["spec"]["accessModes"] == [mode]
        assert pv["spec"]["capacity"]["storage"] == pvc["spec"]["resources"]["requests"]["storage"]
        assert pvc["spec"]["selector"]["matchLabels"].items() <= pv["metadata"]["labels"].items()


def test_every_kind_node_mounts_the_host_logs_and_dags_at_the_volume_paths() -> None:
    assert {n["role"] for n in KIND["nodes"]} == {"control-plane", "worker"}
    for node in KIND["nodes"]:
        mounts = {m["containerPath"]: m for m in node["extraMounts"]}
        assert mounts[PV["spec"]["hostPath"]["path"]]["hostPath"] == "./logs", node["role"]
        dags = mounts[DAGS_PV["spec"]["hostPath"]["path"]]
        assert dags["hostPath"] == "./dags" and dags["readOnly"] is True, node["role"]


def test_dags_from_host_mounts_the_dags_claim_in_every_dag_reader(render) -> None:
    found = pods(render("dags-from-host"))
    # what parses or runs DAG code (the API server reads serialized DAGs from the database)
    for name in ("pod-template", "airflow-dag-processor", "airflow-triggerer"):
        assert claims(found[name]).get("dags") == DAGS_PVC["metadata"]["name"], name
    assert "dags" not in claims(pods(render("kind"))["pod-template"])  # baked into the image


def test_kind_node_image_is_kubernetes_1_29_pinned_by_digest() -> None:
    for node in KIND["nodes"]:
        assert re.fullmatch(r"kindest/node:v1\.29\.\d+@sha256:[0-9a-f]{64}", node["image"])


def test_ui_nodeport_is_the_one_kind_maps_to_host_8080(render) -> None:
    (service,) = [s for s in of_kind(render("kind"), "Service")
                  if s["metadata"]["name"] == "airflow-api-server"]  # fmt: skip
    assert service["spec"]["type"] == "NodePort"
    (port,) = service["spec"]["ports"]
    mappings = [m for n in KIND["nodes"] for m in n.get("extraPortMappings", [])]
    assert [(m["containerPort"], m["hostPort"]) for m in mappings] == [(port["nodePort"], 8080)]
    assert mappings[0]["listenAddress"] == "127.0.0.1"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_has_requests_within_limits(render, scenario: str) -> None:
    for name, pod in pods(render(scenario)).items():
        for c in containers(pod):
            resources = c.get("resources") or {}
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits), (
                name, c["name"],
            )  # fmt: skip
            for what in ("cpu", "memory"):
                assert quantity(requests[what]) <= quantity(limits[what]), (name, c["name"])


def always_on_requests(docs: chart_render.Docs) -> tuple[float, float]:
    """CPU and memory (GiB) requested by the long-running pods, replicas counted."""
    cpu = memory = 0.0
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]
        for c in pod["spec"]["containers"]:  # init containers finish before the pod runs
            requests = c["resources"]["requests"]
            cpu += doc["spec"].get("replicas", 1) * quantity(requests["cpu"])
            memory += doc["spec"].get("replicas", 1) * quantity(requests["memory"]) / 2**30
    return cpu, memory


@pytest.mark.parametrize("scenario", ["kind", "git-https"])
def test_the_install_fits_a_laptop(render, scenario: str) -> None:
    cpu, memory = always_on_requests(render(scenario))
    assert cpu <= LAPTOP_CPU_REQUESTS
    assert memory <= LAPTOP_MEMORY_REQUESTS_GI
