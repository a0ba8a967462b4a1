"""The official chart rendered with exactly the arguments the install script passes (captured
from a stub run, tests/chart_render.py), asserted on the rendered objects: every manifest is valid
Kubernetes for the Kind cluster's version, every pod meets Pod Security "restricted", task pods
get no token, no DB or signing secrets and no way into Postgres, the log servers are reachable
from the API server, and the overlays do what they say. Helm and the chart: `make k8s-tools`.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import chart_render
from tests.chart_render import (
    SCENARIOS,
    airflow_cfg,
    containers,
    of_kind,
    pods,
    restricted_violations,
    validate,
)
from tests.script_sandbox import REGISTRY

pytestmark = pytest.mark.k8s

SECRET_ENV = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD",
    "AIRFLOW__CORE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_AIRFLOW_DB", "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
}  # fmt: skip
DB_COMPONENTS = {
    "scheduler", "api-server", "dag-processor", "triggerer", "run-airflow-migrations",
    "create-user-job",
}  # fmt: skip
# the main containers of those pods (their log groomers need no DB)
DB_CONTAINERS = DB_COMPONENTS - {"create-user-job"} | {"create-user"}


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory):
    return chart_render.renderer(tmp_path_factory)


def test_the_checker_flags_what_restricted_forbids() -> None:
    pod = {"spec": {"containers": [{"name": "c", "securityContext": {"runAsNonRoot": True}}],
                    "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}  # fmt: skip
    problems = restricted_violations(pod)
    assert any("hostPath" in p for p in problems)
    assert {"c: allowPrivilegeEscalation not false", "c: seccompProfile None",
            "c: capabilities not dropped"} <= set(problems)  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_meets_restricted_and_every_object_is_valid(render, scenario: str) -> None:
    docs = render(scenario)
    found = pods(docs)
    assert {"pod-template", "airflow-scheduler"} <= set(found)
    assert ("airflow-postgresql" in found) is (scenario != "production")
    for name, pod in found.items():
        assert restricted_violations(pod) == [], name
    for doc in docs:
        validate(doc)
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}} | found["pod-template"])


def test_validation_rejects_a_broken_rendered_object(render) -> None:
    (service,) = [d for d in render("kind") if d["metadata"]["name"] == "airflow-api-server"
                  and d["kind"] == "Service"]  # fmt: skip
    broken = yaml.safe_load(yaml.safe_dump(service))
    broken["spec"]["ports"][0]["nodePort"] = "30080"  # a string where an integer belongs
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    broken = yaml.safe_load(yaml.safe_dump(service))
    broken["spec"]["portz"] = broken["spec"].pop("ports")  # strict: an unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    validate(service)


def env_names(pod: dict[str, Any]) -> set[str]:
    return {e["name"] for c in containers(pod) for e in c.get("env") or []}


def test_task_pods_get_no_token_no_db_and_no_signing_secrets(render) -> None:
    docs = render("kind")
    template = pods(docs)["pod-template"]
    assert not env_names(template) & SECRET_ENV
    assert "metadata-db" not in {v["name"] for v in template["spec"]["volumes"]}
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"
                  and d["metadata"]["name"] == template["spec"]["serviceAccountName"]]  # fmt: skip
    assert account["automountServiceAccountToken"] is False
    assert template["spec"]["automountServiceAccountToken"] is False
    # every component that uses the DB gets it, also in its wait-for-migrations init container
    for name, pod in pods(docs).items():
        component = pod["metadata"]["labels"].get("component")
        if component in DB_COMPONENTS:
            for c in containers(pod):
                if c["name"] in DB_CONTAINERS or c["name"].startswith("wait-for"):
                    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD" in env_names(
                        {"spec": {"containers": [c]}}
                    ), (name, c["name"])
    # no Airflow pod reads the Postgres superuser password
    text = yaml.safe_dump([d for d in docs if "postgresql" not in d["metadata"]["name"]])
    assert "postgres-password" not in text


def admits(policy: dict[str, Any], source: dict[str, str], port: int) -> bool:
    for rule in policy["spec"].get("ingress", []):
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get("from", []):
            selector = peer.get("podSelector")
            if selector is not None and selects(selector, source):
                return True
    return False


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
    return True


def allowed(docs: chart_render.Docs, target: dict[str, str], source: dict[str, str],
            port: int) -> bool:  # fmt: skip
    """NetworkPolicy semantics: isolated when some policy selects the target; then the union."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and selects(d["spec"]["podSelector"], target)]  # fmt: skip
    return not policies or any(admits(p, source, port) for p in policies)


def labels(component: str) -> dict[str, str]:
    return {"tier": "airflow", "component": component, "release": "airflow"}


def test_network_policies(render) -> None:
    docs = render("kind")
    postgres = pods(docs)["airflow-postgresql"]["metadata"]["labels"]
    for component in DB_COMPONENTS:
        assert allowed(docs, postgres, labels(component), 5432), component
    assert not allowed(docs, postgres, labels("worker"), 5432)
    # task pods carry the labels the policies select
    assert labels("worker").items() <= pods(docs)["pod-template"]["metadata"]["labels"].items()
    # task pods reach the execution API; the API server reads the log servers
    assert allowed(docs, labels("api-server"), labels("worker"), 8080)
    assert allowed(docs, labels("triggerer"), labels("api-server"), 8794)
    assert allowed(docs, labels("worker"), labels("api-server"), 8793)
    assert not allowed(docs, labels("worker"), labels("scheduler"), 8793)
    assert not allowed(docs, labels("triggerer"), labels("worker"), 8794)


def test_remote_logging_overlay_sends_task_logs_to_s3(render) -> None:
    cfg = airflow_cfg(render("remote-logs"))
    assert cfg["logging"]["remote_logging"] == "True"
    assert cfg["logging"]["remote_base_log_folder"] == "s3://logs/p"
    assert cfg["logging"]["remote_log_conn_id"] == "aws_conn"
    assert airflow_cfg(render("kind"))["logging"]["remote_logging"] == "False"


def git_sync(pod: dict[str, Any]) -> dict[str, Any]:
    (sync,) = [c for c in pod["spec"]["containers"] if c["name"] == "git-sync"]
    return sync


def test_git_sync_https_credentials_come_from_the_secret(render) -> None:
    found = pods(render("git-https"))
    refs = {
        e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        for e in git_sync(found["airflow-dag-processor"])["env"]
    }
    assert refs["GITSYNC_PASSWORD"] == "airflow-git-credentials"
    assert "testing" not in yaml.safe_dump(render("git-https"))


def test_git_sync_ssh_key_comes_from_the_secret_and_hosts_are_checked(render) -> None:
    docs = render("git-ssh")
    processor = pods(docs)["airflow-dag-processor"]
    env = {e["name"]: e.get("value") for e in git_sync(processor)["env"]}
    assert env["GITSYNC_REPO"] == SCENARIOS["git-ssh"]["GIT_SYNC_REPO"]
    assert env["GITSYNC_SSH_KNOWN_HOSTS"] == "true"
    secrets = {v.get("secret", {}).get("secretName") for v in processor["spec"]["volumes"]}
    assert "airflow-git-ssh-key" in secrets
    assert "not-a-key" not in yaml.safe_dump(docs)  # the key stays out of the release


def test_git_sync_follows_the_configured_branch_into_the_dags_folder(render) -> None:
    docs = render("git-https")
    env = {e["name"]: e.get("value") for e in git_sync(pods(docs)["airflow-dag-processor"])["env"]}
    assert env["GITSYNC_REF"] == "main"
    assert airflow_cfg(docs)["core"]["dags_folder"] == "/opt/airflow/dags/repo/dags"
    assert not [c for p in pods(render("kind")).values() for c in containers(p)
                if c["name"].startswith("git-sync")]  # fmt: skip


def test_pipeline_settings_reach_every_airflow_container(render) -> None:
    docs = render("pipeline-settings")
    wanted = SCENARIOS["pipeline-settings"]
    for name, pod in pods(docs).items():
        if "postgresql" in name or "statsd" in name:
            continue
        for c in pod["spec"]["containers"]:
            if c["name"] == "git-sync" or c["name"].endswith("log-groomer"):
                continue
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            assert wanted.items() <= env.items(), (name, c["name"])


def test_no_secret_material_in_any_rendered_object(render) -> None:
    installed = {"airflow-fernet-key", "airflow-api-secret-key", "airflow-jwt-secret",
                 "airflow-metadata-connection", "airflow-postgresql-credentials",
                 "airflow-admin-user", "airflow-connections"}  # fmt: skip
    for scenario in SCENARIOS:
        docs = render(scenario)
        # no AWS account id, but the image's ECR registry the install looked up (production)
        text = yaml.safe_dump(docs).replace(REGISTRY, "")
        assert not re.search(r"\b\d{12}\b", text), scenario
        # the install creates these once; the chart would regenerate them on every upgrade
        rendered = {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
        assert not rendered & installed, scenario
