"""Each task's final pod, as the KubernetesExecutor builds it: the pod template of the rendered
chart (its `pod_template_file` ConfigMap) merged with the task's `executor_config` by the
provider's own `PodGenerator.construct_pod` (what the scheduler and `airflow kubernetes
generate-dag-yaml` call), from the DAG as the scheduler gets it (serialized and read back) and
parsed with the settings the install gave the Airflow components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from airflow.models.dagbag import DagBag
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from airflow.serialization.serialized_objects import SerializedDAG
from kubernetes.client import ApiClient

from stackexchange.pod_resources import SCRATCH_DIR, IngestPodSettings
from tests import chart_render
from tests.chart_render import (
    TASK_SERVICE_ACCOUNT,
    airflow_cfg,
    pods,
    quantity,
    restricted_violations,
    subjects_bound,
    validate,
)

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[1]
DAG_IDS = ["produce_data_asset", "trigger_databricks_workflow_dag"]
BIG_TASKS = {("produce_data_asset", "ingest")}
# The chart's small task default (chart/values.yaml workers.resources) is what every other task
# gets: at most this much CPU requested.
SMALL_CPU = 0.5


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory):
    return chart_render.renderer(tmp_path_factory)


def component_env(docs: chart_render.Docs) -> dict[str, str]:
    """The plain env the chart gives the DAG processor (where DAG files are parsed)."""
    (processor,) = [p for n, p in pods(docs).items() if n.endswith("dag-processor")]
    (main,) = [c for c in processor["spec"]["containers"] if c["name"] == "dag-processor"]
    return {e["name"]: e["value"] for e in main.get("env") or [] if "value" in e}


def final_pods(
    docs: chart_render.Docs, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[tuple[str, str], dict[str, Any]]:
    """(dag_id, task_id) -> the pod the KubernetesExecutor would create for that task."""
    template = tmp / "pod_template_file.yaml"
    template.write_text(yaml.safe_dump(pods(docs)["pod-template"]))
    executor = airflow_cfg(docs)["kubernetes_executor"]
    image = f"{executor['worker_container_repository']}:{executor['worker_container_tag']}"
    for name, value in component_env(docs).items():
        if name.startswith("STACKEXCHANGE_"):
            monkeypatch.setenv(name, value)
    found = {}
    for dag_id in DAG_IDS:
        bag = DagBag(str(REPO / "dags" / f"{dag_id}.py"), include_examples=False)
        assert not bag.import_errors, bag.import_errors
        # what the DAG processor stores and the scheduler reads back
        dag = SerializedDAG.from_dict(SerializedDAG.to_dict(bag.get_dag(dag_id)))
        for task in dag.tasks:
            pod = PodGenerator.construct_pod(
                dag_id=dag_id,
                task_id=task.task_id,
                pod_id=f"{dag_id}-{task.task_id}".replace("_", "-"),
                try_number=1,
                kube_image=image,
                date=None,
                args=["airflow", "tasks", "run", dag_id, task.task_id],
                pod_override_object=PodGenerator.from_obj(task.executor_config),
                base_worker_pod=PodGenerator.deserialize_model_file(str(template)),
                namespace="airflow",
                scheduler_job_id="1",
                run_id="manual__2025-01-01",
                with_mutation_hook=True,
            )
            found[dag_id, task.task_id] = ApiClient().sanitize_for_serialization(pod)
    return found


@pytest.fixture(scope="module")
def task_pods(render, airflow_db: None, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return final_pods(render("kind"), tmp_path_factory.mktemp("pods"), monkeypatch)


def base(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    return container


def mounted_volume(pod: dict[str, Any], path: str) -> dict[str, Any]:
    (mount,) = [m for m in base(pod)["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    return volume


def test_every_task_has_its_pod_and_it_is_valid_kubernetes(task_pods) -> None:
    assert {dag for dag, _ in task_pods} == set(DAG_IDS)
    assert set(task_pods) >= BIG_TASKS
    for key, pod in task_pods.items():
        validate(pod)
        # the provider appends the override's volumes, mounts and env: no duplicate may result
        for items, field in ((pod["spec"]["volumes"], "name"), (base(pod)["volumeMounts"],
                             "mountPath"), (base(pod)["env"], "name")):  # fmt: skip
            names = [item[field] for item in items]
            assert len(names) == len(set(names)), (key, names)
        assert base(pod)["image"].startswith("airflow-stackexchange:"), key


def test_task_pods_run_as_the_task_account_with_no_token_and_no_rights(render, task_pods) -> None:
    docs = render("kind")
    for key, pod in task_pods.items():
        assert pod["spec"]["serviceAccountName"] == TASK_SERVICE_ACCOUNT, key
        assert pod["spec"]["automountServiceAccountToken"] is False, key
        assert not any("serviceAccountToken" in str(v) for v in pod["spec"]["volumes"]), key
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"
                  and d["metadata"]["name"] == TASK_SERVICE_ACCOUNT]  # fmt: skip
    assert account["automountServiceAccountToken"] is False
    bound = subjects_bound(docs)
    assert TASK_SERVICE_ACCOUNT not in bound
    # the scheduler still launches the pods
    (launcher,) = [d for d in docs if d["metadata"]["name"].endswith("pod-launcher-rolebinding")]
    assert f"{chart_render.RELEASE}-scheduler" in {s["name"] for s in launcher["subjects"]}


def test_task_pods_meet_restricted_with_a_read_only_root_and_a_bounded_tmp(task_pods) -> None:
    for key, pod in task_pods.items():
        assert restricted_violations(pod) == [], key
        assert base(pod)["securityContext"]["readOnlyRootFilesystem"] is True, key
        tmp = mounted_volume(pod, "/tmp")
        assert quantity(tmp["emptyDir"]["sizeLimit"]) > 0, key


def test_the_ingest_pod_is_sized_from_its_settings_and_the_others_stay_small(task_pods) -> None:
    settings = IngestPodSettings()  # the "kind" scenario sets none: the documented defaults
    for key, pod in task_pods.items():
        resources = base(pod)["resources"]
        requests, limits = resources["requests"], resources.get("limits", {})
        if key in BIG_TASKS:
            assert quantity(requests["cpu"]) == quantity(settings.cpu) >= 2
            # a CPU limit, if any, never throttles the two-stage pipeline below its request
            assert "cpu" not in limits or quantity(limits["cpu"]) >= quantity(requests["cpu"])
            assert requests["memory"] == limits["memory"] == settings.memory
            storage = settings.ephemeral_storage
            assert requests["ephemeral-storage"] == limits["ephemeral-storage"] == storage
            env = {e["name"]: e.get("value") for e in base(pod)["env"]}
            scratch = mounted_volume(pod, env["TMPDIR"])
            assert env["TMPDIR"] == SCRATCH_DIR
            assert scratch["emptyDir"]["sizeLimit"] == settings.tmp_size
            assert quantity(settings.tmp_size) <= quantity(storage)
        else:
            assert quantity(requests["cpu"]) <= SMALL_CPU, key
            assert quantity(limits["memory"]) <= quantity("2Gi"), key
            assert "TMPDIR" not in {e["name"] for e in base(pod)["env"]}, key


def test_install_settings_reach_the_ingest_pod(
    render, airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = chart_render.SCENARIOS["pipeline-settings"]
    pod = final_pods(render("pipeline-settings"), tmp_path, monkeypatch)[
        "produce_data_asset", "ingest"
    ]
    requests = base(pod)["resources"]["requests"]
    assert requests["cpu"] == env["STACKEXCHANGE_INGEST_CPU"]
    assert requests["memory"] == env["STACKEXCHANGE_INGEST_MEMORY"]


def test_bad_ingest_settings_fail_the_dag_with_the_setting_named(
    airflow_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACKEXCHANGE_INGEST_MEMORY", "lots")
    bag = DagBag(str(REPO / "dags" / "produce_data_asset.py"), include_examples=False)
    (error,) = bag.import_errors.values()
    assert "STACKEXCHANGE_INGEST_MEMORY='lots'" in error
    monkeypatch.setenv("STACKEXCHANGE_INGEST_MEMORY", "1Gi")
    monkeypatch.setenv("STACKEXCHANGE_INGEST_TMP_SIZE", "2Gi")
    with pytest.raises(ValueError, match="STACKEXCHANGE_INGEST_EPHEMERAL_STORAGE=512Mi"):
        IngestPodSettings.from_env()


def test_validation_catches_a_broken_pod(task_pods) -> None:
    pod = yaml.safe_load(yaml.safe_dump(task_pods["produce_data_asset", "ingest"]))
    base(pod)["resources"]["limits"]["memory"] = {"value": "1Gi"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pod)
