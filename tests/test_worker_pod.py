"""The KubernetesExecutor pod of every task, rendered offline by Airflow itself
(`airflow kubernetes generate-dag-yaml`) with our chart values' executor settings, is valid
Kubernetes for the Kind cluster's version and carries what a task needs at run time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from airflow.providers.cncf.kubernetes import pod_template_file_examples

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
VALUES = yaml.safe_load((REPO / "chart/values.yaml").read_text())
OVERLAY = yaml.safe_load((REPO / "chart/values-override-with-persistence.yaml").read_text())
KIND_NODE = yaml.safe_load((REPO / "kind-config.yaml").read_text())["nodes"][0]["image"]
KUBERNETES_VERSION = re.search(r":v(\d+\.\d+)\.", KIND_NODE).group(1)
DAG_IDS = ["produce_data_asset", "trigger_databricks_workflow_dag"]
NAMESPACE = "airflow"
IMAGE_REPOSITORY, IMAGE_TAG = "airflow-stackexchange", "20250101T000000Z-0123456789ab"
IMAGE_DAGS_FOLDER = "/opt/airflow/dags"  # the chart's DAGs folder without git-sync


def base_pod_template() -> dict[str, Any]:
    """Airflow's DAGs-in-image worker template with what our values add to the chart's one."""
    example = Path(pod_template_file_examples.__file__).parent / "dags_in_image_template.yaml"
    pod = yaml.safe_load(example.read_text())
    container = pod["spec"]["containers"][0]
    container["resources"] = VALUES["workers"]["resources"]
    extra_env = VALUES["extraEnv"].replace('{{ include "airflow_dags" . }}', IMAGE_DAGS_FOLDER)
    container["env"] += yaml.safe_load(extra_env)
    container["envFrom"] = yaml.safe_load(VALUES["extraEnvFrom"])
    claim = OVERLAY["logs"]["persistence"]["existingClaim"]
    pod["spec"]["volumes"] = [
        {"name": "airflow-logs", "persistentVolumeClaim": {"claimName": claim}},
        *[v for v in pod["spec"]["volumes"] if v["name"] != "airflow-logs"],
    ]
    return pod


@pytest.fixture(scope="module")
def executor_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    template = tmp_path_factory.mktemp("pod-template") / "pod_template_file.yaml"
    template.write_text(yaml.safe_dump(base_pod_template()))
    section = "AIRFLOW__KUBERNETES_EXECUTOR__"
    return os.environ | {
        "AIRFLOW__CORE__EXECUTOR": VALUES["executor"],
        f"{section}POD_TEMPLATE_FILE": str(template),
        f"{section}NAMESPACE": NAMESPACE,
        f"{section}WORKER_CONTAINER_REPOSITORY": IMAGE_REPOSITORY,
        f"{section}WORKER_CONTAINER_TAG": IMAGE_TAG,
        "PYTHONPATH": os.pathsep.join([str(DAGS), os.environ.get("PYTHONPATH", "")]),
    }


def task_ids(dag_id: str) -> list[str]:
    from airflow.models.dagbag import DagBag

    bag = DagBag(str(DAGS / f"{dag_id}.py"), include_examples=False)  # file named as the DAG
    assert not bag.import_errors, bag.import_errors
    return [task.task_id for task in bag.get_dag(dag_id).tasks]


def render_pods(dag_id: str, env: dict[str, str], out: Path) -> dict[str, dict[str, Any]]:
    """task_id -> pod, as the KubernetesExecutor would build it."""
    result = subprocess.run(
        [
            Path(sys.executable).parent / "airflow",
            *("kubernetes", "generate-dag-yaml", dag_id),
            *("--logical-date", "2025-01-01T00:00:00+00:00", "--output-path", str(out)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pods = [yaml.safe_load(p.read_text()) for p in (out / "airflow_yaml_output").glob("*.yml")]
    return {pod["metadata"]["labels"]["task_id"]: pod for pod in pods}


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_task_pod_is_valid_kubernetes(
    dag_id: str, executor_env: dict[str, str], airflow_db: None, tmp_path: Path
) -> None:
    pods = render_pods(dag_id, executor_env, tmp_path)
    assert sorted(pods) == sorted(task_ids(dag_id))
    for task_id, pod in pods.items():
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        assert pod["metadata"]["namespace"] == NAMESPACE
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
        assert container["image"] == f"{IMAGE_REPOSITORY}:{IMAGE_TAG}", task_id
        # a task's executor_config may change resources, but must keep requests and limits
        assert {"requests", "limits"} <= set(container["resources"]), task_id
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PYTHONPATH"] == IMAGE_DAGS_FOLDER, task_id
        assert {"secretRef": {"name": "airflow-connections"}} in container["envFrom"], task_id
        assert pod["spec"]["restartPolicy"] == "Never"


def test_validation_catches_a_broken_pod(
    executor_env: dict[str, str], airflow_db: None, tmp_path: Path
) -> None:
    pod = next(iter(render_pods(DAG_IDS[0], executor_env, tmp_path).values()))
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = {"value": "1Gi"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
