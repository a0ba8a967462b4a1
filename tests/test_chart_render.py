"""The official chart rendered with exactly the arguments the install script passes (captured
from a stub run), asserted on the rendered objects: every pod meets Pod Security "restricted",
task pods get no token, no DB or signing secrets and no way into Postgres, the log servers are
reachable from the API server, and the overlays do what they say.

Needs the chart (AIRFLOW_CHART_DIR: the unpacked apache-airflow chart at AIRFLOW_CHART_VERSION)
and Helm 3 (HELM_BIN); skipped without them (CI has neither).
"""

from __future__ import annotations

import configparser
import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.script_sandbox import METADATA_DB_URI, PRODUCTION, VERSIONS, Sandbox, helm_install_args

pytestmark = pytest.mark.k8s

CHART = os.environ.get("AIRFLOW_CHART_DIR", "")
HELM = os.environ.get("HELM_BIN", "")
REPO = Path(__file__).resolve().parents[1]
KIND_NODE = yaml.safe_load((REPO / "kind-config.yaml").read_text())["nodes"][0]["image"]
KUBERNETES_VERSION = re.search(r":v(\d+\.\d+)\.", KIND_NODE).group(1)
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
SCENARIOS = {
    "kind": {},
    "remote-logs": {"PERSISTENCE": "false", "REMOTE_LOG_BUCKET": "logs", "REMOTE_LOG_PREFIX": "p"},
    "dags-from-host": {"DAGS_FROM_HOST": "true"},
    "git-https": {
        "GIT_SYNC_REPO": "https://example.com/org/dags.git",
        "GIT_SYNC_USERNAME": "bot",
        "GIT_SYNC_PASSWORD": "testing",
    },
    # a setting that would inject a key if passed with --set (#17)
    "evil": {"STACKEXCHANGE_PREFIX": "raw/se,images.airflow.tag=evil"},
    # PROFILE=production from a release tag, DAGs from git at that tag (README "Production")
    "production": PRODUCTION
    | {"METADATA_DB_URI": METADATA_DB_URI, "GIT_SYNC_REPO": "https://example.com/org/dags.git"},
}
# The install command of a scenario (default: scripts/install-airflow.sh).
COMMANDS = {"production": ("scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0")}


@functools.cache
def rendered(scenario: str, tmp: Path) -> tuple[dict[str, Any], ...]:
    """helm template with the helm upgrade arguments the install script used in `scenario`: the
    Airflow chart, then the repository's own chart (chart/platform) of the second release."""
    root = tmp / scenario
    root.mkdir()
    sandbox = Sandbox(root)
    env = SCENARIOS[scenario]
    result = sandbox.run(*COMMANDS.get(scenario, ("scripts/install-airflow.sh",)), **env)
    assert result.code == 0, result.err
    args = helm_install_args(result)
    assert args[args.index("--version") + 1] == VERSIONS["AIRFLOW_CHART_VERSION"]
    chart = yaml.safe_load((Path(CHART) / "Chart.yaml").read_text())
    assert chart["version"] == VERSIONS["AIRFLOW_CHART_VERSION"], "AIRFLOW_CHART_DIR version"
    platform = helm_install_args(result, "platform")
    return template(args, CHART) + template(platform, platform[platform.index("--install") + 2])


def template(args: list[str], chart: str) -> tuple[dict[str, Any], ...]:
    keep, skip = [], {"--repo", "--version", "--timeout", "--kube-context"}
    rest = args[args.index("--install") + 3 :]
    i = 0
    while i < len(rest):
        if rest[i] in skip:
            i += 2
            continue
        keep.append(rest[i])
        i += 1
    name = args[args.index("--install") + 1]
    out = subprocess.run(
        [HELM, "template", name, chart, *keep],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory):
    if not (CHART and HELM):
        pytest.skip("set AIRFLOW_CHART_DIR and HELM_BIN to render the chart")
    tmp = tmp_path_factory.mktemp("render")
    return lambda scenario: rendered(scenario, tmp)


def pods(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """name -> pod spec for every workload, plus the KubernetesExecutor pod template."""
    found = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            found[doc["metadata"]["name"]] = doc["spec"]["template"]
        if doc["kind"] == "ConfigMap" and "pod_template_file.yaml" in doc.get("data", {}):
            found["pod-template"] = yaml.safe_load(doc["data"]["pod_template_file.yaml"])
    return found


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Pod Security Standards "restricted" (v1.29) checks on a pod template."""
    spec, problems = pod["spec"], []
    pod_ctx = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(field)
    allowed_volumes = {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
        "projected", "secret",
    }  # fmt: skip
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']}: {kinds}")
    if (pod_ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("pod seccompProfile Unconfined")
    for container in (spec.get("initContainers") or []) + spec["containers"]:
        ctx, name = container.get("securityContext") or {}, container["name"]
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation not false")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities added")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


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
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}} | found["pod-template"],
        KUBERNETES_VERSION, strict=True,
    )  # fmt: skip


def env_names(pod: dict[str, Any]) -> set[str]:
    containers = (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]
    return {e["name"] for c in containers for e in c.get("env") or []}


def test_task_pods_get_no_token_no_db_and_no_signing_secrets(render) -> None:
    docs = render("kind")
    template = pods(docs)["pod-template"]
    assert not env_names(template) & SECRET_ENV
    assert "metadata-db" not in {v["name"] for v in template["spec"]["volumes"]}
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"
                  and d["metadata"]["name"] == template["spec"]["serviceAccountName"]]  # fmt: skip
    assert account["automountServiceAccountToken"] is False
    assert template["spec"].get("automountServiceAccountToken") is not True
    # every component that uses the DB gets it, also in its wait-for-migrations init container
    for name, pod in pods(docs).items():
        component = pod["metadata"]["labels"].get("component")
        if component in DB_COMPONENTS:
            for c in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]:
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


def allowed(docs: tuple[dict[str, Any], ...], target: dict[str, str], source: dict[str, str],
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
    # task pods reach the execution API; the API server reads the log servers
    assert allowed(docs, labels("api-server"), labels("worker"), 8080)
    assert allowed(docs, labels("triggerer"), labels("api-server"), 8794)
    assert allowed(docs, labels("worker"), labels("api-server"), 8793)
    assert not allowed(docs, labels("worker"), labels("scheduler"), 8793)
    assert not allowed(docs, labels("triggerer"), labels("worker"), 8794)


def airflow_cfg(docs: tuple[dict[str, Any], ...]) -> configparser.ConfigParser:
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and "airflow.cfg" in d["data"]]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(config["data"]["airflow.cfg"])
    return parser


def test_remote_logging_overlay_sends_task_logs_to_s3(render) -> None:
    cfg = airflow_cfg(render("remote-logs"))
    assert cfg["logging"]["remote_logging"] == "True"
    assert cfg["logging"]["remote_base_log_folder"] == "s3://logs/p"
    assert cfg["logging"]["remote_log_conn_id"] == "aws_conn"
    assert airflow_cfg(render("kind"))["logging"]["remote_logging"] == "False"


def test_dags_from_host_mount_the_claim_in_every_dag_reader(render) -> None:
    found = pods(render("dags-from-host"))
    for name in ("pod-template", "airflow-dag-processor", "airflow-triggerer"):
        claims = {v.get("persistentVolumeClaim", {}).get("claimName")
                  for v in found[name]["spec"]["volumes"]}  # fmt: skip
        assert "airflow-dags-pvc" in claims, name


def test_git_sync_https_credentials_come_from_the_secret(render) -> None:
    found = pods(render("git-https"))
    (sync,) = [c for c in found["airflow-dag-processor"]["spec"]["containers"]
               if c["name"] == "git-sync"]  # fmt: skip
    refs = {
        e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in sync["env"]
    }
    assert refs["GITSYNC_PASSWORD"] == "airflow-git-credentials"
    assert "testing" not in yaml.safe_dump(found)
