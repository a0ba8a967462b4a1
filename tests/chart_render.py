"""The official chart rendered by real Helm with exactly the arguments the install script passes,
once per scenario and test session (shared by the pytest-xdist workers), and readers for the
rendered objects.

A scenario is the environment of one stub run of scripts/install-airflow.sh
(tests/script_sandbox.py): its `helm upgrade --install` arguments are captured and given to
`helm template`, for the Kind cluster's Kubernetes version. Helm and the chart come from
`make k8s-tools` (local/k8s_tools.py); without them the tests fail saying so, never skip.
"""

from __future__ import annotations

import configparser
import fcntl
import functools
import os
import pickle
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from kubernetes.utils import parse_quantity
from kubernetes_validate import utils as schemas

from local import k8s_tools
from tests.script_sandbox import METADATA_DB_URI, PRODUCTION, VERSIONS, Sandbox, helm_install_args

REPO = Path(__file__).resolve().parents[1]
KIND = yaml.safe_load((REPO / "kind-config.yaml").read_text())
KUBERNETES_PATCH = re.search(r":v(\d+\.\d+\.\d+)@", KIND["nodes"][0]["image"]).group(1)
KUBERNETES_VERSION = KUBERNETES_PATCH.rsplit(".", 1)[0]  # kubernetes-validate's schema version
RELEASE = "airflow"
TASK_SERVICE_ACCOUNT = f"{RELEASE}-task"
Docs = tuple[dict[str, Any], ...]

# name -> environment of the install script's stub run: every profile and overlay it supports.
SCENARIOS: dict[str, dict[str, str]] = {
    "kind": {},
    "remote-logs": {"PERSISTENCE": "false", "REMOTE_LOG_BUCKET": "logs", "REMOTE_LOG_PREFIX": "p"},
    "dags-from-host": {"DAGS_FROM_HOST": "true"},
    "git-https": {
        "GIT_SYNC_REPO": "https://example.com/org/dags.git",
        "GIT_SYNC_USERNAME": "bot",
        "GIT_SYNC_PASSWORD": "testing",
    },
    "git-ssh": {
        "GIT_SYNC_REPO": "git@example.com:org/dags.git",
        "GIT_SYNC_SSH_KEY_FILE": "{root}/id_test",
        "GIT_SYNC_KNOWN_HOSTS_FILE": "{root}/known_hosts",
    },
    "pipeline-settings": {
        "STACKEXCHANGE_BUCKET": "lake",
        "STACKEXCHANGE_PREFIX": "raw/se",
        "DATABRICKS_JOB_ID": "42",
        "STACKEXCHANGE_INGEST_CPU": "3",
        "STACKEXCHANGE_INGEST_MEMORY": "1536Mi",
    },
    # a setting that would inject a key if passed with --set (#17)
    "evil": {"STACKEXCHANGE_PREFIX": "raw/se,images.airflow.tag=evil"},
    # PROFILE=production from a release tag, DAGs from git at that tag (README "Production")
    "production": PRODUCTION
    | {
        "METADATA_DB_URI": METADATA_DB_URI,
        "GIT_SYNC_REPO": "https://example.com/org/dags.git",
        "BACKUP_S3_PREFIX": "s3://backups/airflow/",
    },
}
# The install command of a scenario (default: scripts/install-airflow.sh).
COMMANDS = {"production": ("scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0")}
# Files a scenario's environment names ({root}: the scenario's own directory).
SCENARIO_FILES = {
    "id_test": "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key\n-----END OPENSSH PRIVATE KEY-----\n",  # noqa: E501
    "known_hosts": "example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE\n",
}


@functools.cache
def tools() -> k8s_tools.Tools:
    return k8s_tools.locate()


@functools.cache
def rendered(scenario: str, tmp: Path) -> Docs:
    """`render(scenario)` once per session: the first worker to ask renders it under a lock and
    leaves the objects in `tmp` (shared by the workers) for the others."""
    tmp.mkdir(parents=True, exist_ok=True)
    cache = tmp / f"{scenario}.pickle"
    with open(tmp / f"{scenario}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.exists():
            return pickle.loads(cache.read_bytes())
        docs = render(scenario, tmp)
        cache.write_bytes(pickle.dumps(docs))
    return docs


def render(scenario: str, tmp: Path) -> Docs:
    """helm template with the helm upgrade arguments the install script used in `scenario`: the
    Airflow chart, then the repository's own chart (chart/platform) of the second release."""
    root = tmp / scenario
    root.mkdir(parents=True)
    for name, text in SCENARIO_FILES.items():
        (root / name).write_text(text)
    sandbox = Sandbox(root)
    env = {k: v.format(root=root) for k, v in SCENARIOS[scenario].items()}
    result = sandbox.run(*COMMANDS.get(scenario, ("scripts/install-airflow.sh",)), **env)
    assert result.code == 0, result.err
    args = helm_install_args(result)
    assert args[args.index("--version") + 1] == VERSIONS["AIRFLOW_CHART_VERSION"]
    platform = helm_install_args(result, "platform")
    return template(args, str(tools().chart)) + template(
        platform, platform[platform.index("--install") + 2]
    )


def template(args: list[str], chart: str) -> Docs:
    """`helm template` of one release from its `helm upgrade --install` arguments."""
    start = args.index("--install")
    name, rest = args[start + 1], args[start + 3 :]
    skip = {"--repo", "--version", "--timeout", "--kube-context"}  # each with a value
    keep, i = [], 0
    while i < len(rest):
        if rest[i] in skip:
            i += 2
            continue
        keep.append(rest[i])
        i += 1
    out = subprocess.run(
        [str(tools().helm), "template", name, chart, *keep, "--kube-version", KUBERNETES_PATCH],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # libyaml's parser: the same objects as yaml.safe_load_all, ~10x faster on a whole release
    return tuple(d for d in yaml.load_all(out.stdout, Loader=yaml.CSafeLoader) if d)


def renderer(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Docs]:
    """scenario -> rendered objects, for a test module's fixture; fails (never skips) without
    Helm or the chart. One render per scenario per session, whichever module asks first."""
    try:
        tools()
    except k8s_tools.ToolError as error:
        pytest.fail(str(error), pytrace=False)
    tmp = render_dir(tmp_path_factory)
    return lambda scenario: rendered(scenario, tmp)


def render_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's renders (and each scenario's stub-cluster state) are kept: pytest-xdist
    gives each worker a directory inside the session's own."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "chart-render"


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.Validator:
    """kubernetes-validate's strict schema for the Kind cluster's version, loaded once (its
    validate() reads the whole definitions file for every object)."""
    version = [v for v in schemas.all_versions() if schemas.major_minor(v) == KUBERNETES_VERSION]
    assert version, f"kubernetes-validate has no schemas for Kubernetes {KUBERNETES_VERSION}"
    folder = f"kubernetes-json-schema/v{version[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schemas.schema_contents(f"{folder}/{kind.lower()}-{group}.json", version[-1])
    except FileNotFoundError:
        missing = kubernetes_validate.SchemaNotFoundError(kind, KUBERNETES_VERSION, api_version)
        raise missing from None
    definitions = schemas.schema_contents(f"{folder}/_definitions.json", version[-1])
    registry = referencing.Resource.from_contents(definitions) @ (
        referencing.Resource.from_contents(schema) @ referencing.Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any]) -> None:
    """Validate one object against the Kubernetes schemas (strict: no unknown fields)."""
    try:
        _validator(doc["kind"], doc["apiVersion"]).validate(doc)
    except jsonschema.ValidationError as error:
        raise kubernetes_validate.ValidationError(error, KUBERNETES_VERSION) from None


def pods(docs: Docs) -> dict[str, dict[str, Any]]:
    """name -> pod template of every workload, plus "pod-template": the KubernetesExecutor's."""
    found = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            found[doc["metadata"]["name"]] = doc["spec"]["template"]
        if doc["kind"] == "ConfigMap" and "pod_template_file.yaml" in doc.get("data", {}):
            found["pod-template"] = yaml.safe_load(doc["data"]["pod_template_file.yaml"])
    return found


def of_kind(docs: Docs, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def airflow_cfg(docs: Docs) -> configparser.ConfigParser:
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and "airflow.cfg" in d["data"]]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(config["data"]["airflow.cfg"])
    return parser


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Pod Security Standards "restricted" (v1.29) checks on a pod (template)."""
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
    for container in containers(pod):
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


def quantity(value: str | int | float) -> float:
    return float(parse_quantity(value))


def subjects_bound(docs: Docs) -> set[str]:
    """Service accounts named by any RoleBinding or ClusterRoleBinding in the release."""
    return {
        s["name"]
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in d.get("subjects") or []
        if s["kind"] == "ServiceAccount"
    }
