"""Behaviour of scripts/*.sh and cicd/build-and-push.sh against stub kind/kubectl/helm/docker/aws.

The scripts run from a copy of the repository files they use, with a PATH holding only the stubs
(tests/cli_stubs.py) and the system utilities listed in UTILITIES, so a real docker or kubectl
on this machine is never reached and a tool the scripts need but nobody listed shows up here.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parents[1]
STUBBED = ("kind", "kubectl", "helm", "docker", "aws")
UTILITIES = (
    "bash", "base64", "cat", "chmod", "cut", "date", "dirname", "git", "grep", "head",
    "mkdir", "mktemp", "rm", "sed", "tr", "curl",
)  # fmt: skip
COPIED = ("scripts", "cicd", "chart", "kind-config.yaml", "versions.env")
VERSIONS = dict(
    line.split("=", 1)
    for line in (REPO / "versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)
VALUES = yaml.safe_load((REPO / "chart/values.yaml").read_text())

ECR_IMAGES = [  # lexical order of the tags is the opposite of the push order
    {"imageTags": ["zz-oldest"], "imagePushedAt": "2025-01-01T10:00:00+00:00"},
    {"imageTags": ["mm-middle"], "imagePushedAt": "2025-02-01T10:00:00+00:00"},
    {"imageTags": ["aa-newest"], "imagePushedAt": "2025-03-01T10:00:00+00:00"},
    {"imagePushedAt": "2025-04-01T10:00:00+00:00"},  # untagged layer push
]
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


@dataclass
class Result:
    code: int
    out: str
    err: str
    calls: list[dict[str, Any]]


class Sandbox:
    """A repository copy, stub state and PATH; `run` executes one script and returns its calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.bin = root / "bin"
        self.state_file = root / "state.json"
        self.log_file = root / "calls.jsonl"
        self.repo.mkdir()
        for name in COPIED:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, self.repo / name)
            else:
                shutil.copy2(src, self.repo / name)
        self.bin.mkdir()
        for tool in STUBBED:
            stub = self.bin / tool
            stub.write_text(
                f"#!{sys.executable} -B\nimport sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n"
                f"from cli_stubs import main\nmain({tool!r})\n"
            )
            stub.chmod(0o755)
        for tool in UTILITIES:
            found = shutil.which(tool)
            assert found, f"{tool} is needed by the scripts and the tests"
            (self.bin / tool).symlink_to(found)
        self.state: dict[str, Any] = {
            "clusters": [],
            "namespaces": ["default"],
            "secrets": {},
            "releases": {},
            "docker_images": [],
            "loaded_images": [],
            "logged_in": [],
            "builds": [],
            "image_revisions": {},
            "applied": [],
            "rolled_out": [],
            "ecr_images": [dict(i) for i in ECR_IMAGES],
            "ecr_repositories": ["airflow-stackexchange"],
            "docker_daemon": True,
            "aws_identity": True,
        }
        self.save()
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "STUB_STATE": str(self.state_file),
            "STUB_LOG": str(self.log_file),
        }

    def save(self) -> None:
        self.state_file.write_text(json.dumps(self.state))

    def load(self) -> dict[str, Any]:
        self.state = json.loads(self.state_file.read_text())
        return self.state

    def run(self, script: str, *args: str, stdin: Any = subprocess.DEVNULL, **env: str) -> Result:
        self.log_file.write_text("")
        proc = subprocess.run(
            [str(self.repo / script), *args],
            env=self.env | env,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        calls = [json.loads(line) for line in self.log_file.read_text().splitlines()]
        self.load()
        return Result(proc.returncode, proc.stdout, proc.stderr, calls)

    def secret(self, name: str, namespace: str = "airflow") -> dict[str, str]:
        return self.state["secrets"][f"{namespace}/{name}"]


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def commands(result: Result) -> list[str]:
    """Calls as strings without the kube context flags, e.g. 'kubectl create namespace airflow'."""
    out = []
    for call in result.calls:
        args = [a for a in call["args"] if a != "kind-airflow"]
        args = [a for a in args if a not in ("--context", "--kube-context")]
        out.append(" ".join([call["tool"], *args]))
    return out


def first(result: Result, prefix: str) -> int:
    for i, command in enumerate(commands(result)):
        if command.startswith(prefix):
            return i
    raise AssertionError(f"no call starting with {prefix!r} in:\n" + "\n".join(commands(result)))


def helm_install_args(result: Result) -> list[str]:
    calls = [c["args"] for c in result.calls if c["tool"] == "helm" and "upgrade" in c["args"]]
    assert len(calls) == 1, calls
    return calls[0]


def set_values(args: list[str]) -> dict[str, str]:
    return dict(
        args[i + 1].split("=", 1) for i, a in enumerate(args) if a in ("--set", "--set-string")
    )


def values_files(args: list[str]) -> list[str]:
    return [Path(args[i + 1]).name for i, a in enumerate(args) if a == "--values"]


# --- install from ECR -----------------------------------------------------------------------


def test_fresh_ecr_install_runs_every_step_in_order(sandbox: Sandbox) -> None:
    aws_conn = '{"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}'
    result = sandbox.run(
        "scripts/install-airflow-2-ecr.sh",
        AIRFLOW_CONN_AWS_CONN=aws_conn,
        AIRFLOW_CONN_DATABRICKS_CONN="databricks://:testing@example.cloud.databricks.com",
    )
    assert result.code == 0, result.err
    steps = [
        "aws sts get-caller-identity",
        "kind create cluster --name airflow",
        "docker login --username AWS --password-stdin " + REGISTRY,
        "aws ecr describe-images",
        f"docker pull {REGISTRY}/airflow-stackexchange:aa-newest",
        f"kind load docker-image {REGISTRY}/airflow-stackexchange:aa-newest",
        "kubectl create namespace airflow",
        "kubectl --namespace airflow create secret generic airflow-fernet-key",
        "kubectl --namespace airflow apply -f",
        "helm upgrade --install airflow airflow",
        "kubectl --namespace airflow rollout status",
    ]
    positions = [first(result, step) for step in steps]
    assert positions == sorted(positions), "\n".join(commands(result))
    first(result, "aws ecr get-login-password")  # piped into docker login (order not defined)

    args = helm_install_args(result)
    assert args[args.index("--version") + 1] == VERSIONS["AIRFLOW_CHART_VERSION"]
    assert values_files(args) == ["values.yaml", "values-override-with-persistence.yaml"]
    assert "--reuse-values" not in args and "--wait" not in args
    assert set_values(args)["images.airflow.repository"] == f"{REGISTRY}/airflow-stackexchange"
    assert set_values(args)["images.airflow.tag"] == "aa-newest"
    # every Deployment/StatefulSet of the release was waited for
    assert len(sandbox.state["rolled_out"]) == 6
    assert sandbox.state["applied"] == [
        "airflow/PersistentVolume/airflow-logs-pv",
        "airflow/PersistentVolumeClaim/airflow-logs-pvc",
    ]
    # generated secrets are usable and consistent; connections come from the environment
    Fernet(sandbox.secret("airflow-fernet-key")["fernet-key"].encode())
    password = sandbox.secret("airflow-postgresql-credentials")["postgres-password"]
    assert len(password) == 32 and password.isalnum()
    assert sandbox.secret("airflow-metadata-connection")["connection"] == (
        f"postgresql://postgres:{password}@airflow-postgresql.airflow:5432/postgres?sslmode=disable"
    )
    admin = sandbox.secret("airflow-admin-user")["password"]
    assert len(admin) == 24 and admin != "admin"
    assert sandbox.secret("airflow-connections")["AIRFLOW_CONN_AWS_CONN"] == aws_conn
    # no secret value ever appears in the output or on a command line
    assert password not in result.out + result.err
    assert not any(password in " ".join(c["args"]) for c in result.calls)
    assert "http://localhost:8080" in result.out and "scripts/upgrade-dags.sh" in result.out


def test_every_secret_the_values_reference_is_created(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "scripts/install-airflow-2-ecr.sh",
        GIT_SYNC_REPO="https://example.com/org/dags.git",
        GIT_SYNC_USERNAME="bot",
        GIT_SYNC_PASSWORD="testing",
    )
    assert result.code == 0, result.err
    created = {key.split("/", 1)[1] for key in sandbox.state["secrets"]}
    referenced = set(referenced_secrets(VALUES))
    referenced.add(set_values(helm_install_args(result))["dags.gitSync.credentialsSecret"])
    assert referenced <= created, referenced - created
    # the keys the chart reads from each of them exist too
    for name, keys in {
        VALUES["fernetKeySecretName"]: ["fernet-key"],
        VALUES["apiSecretKeySecretName"]: ["api-secret-key"],
        VALUES["jwtSecretName"]: ["jwt-secret"],
        VALUES["data"]["metadataSecretName"]: ["connection"],
        VALUES["postgresql"]["auth"]["existingSecret"]: ["postgres-password"],
        "airflow-git-credentials": [
            "GIT_SYNC_USERNAME",
            "GIT_SYNC_PASSWORD",
            "GITSYNC_USERNAME",
            "GITSYNC_PASSWORD",
        ],  # fmt: skip
    }.items():
        assert sorted(sandbox.secret(name)) == sorted(keys), name
    assert sandbox.secret("airflow-git-credentials")["GITSYNC_PASSWORD"] == "testing"


def referenced_secrets(values: Any) -> Iterator[str]:
    """Secret names in the values: *SecretName/*Secret keys, secretKeyRef and secretRef."""
    if isinstance(values, dict):
        for key, value in values.items():
            if isinstance(value, str) and (
                key.endswith("SecretName") or key in ("existingSecret", "jwtSecretName")
            ):
                yield value
            elif key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                yield value["name"]
            else:
                yield from referenced_secrets(value)
    elif isinstance(values, list):
        for item in values:
            yield from referenced_secrets(item)
    elif isinstance(values, str) and "secretRef" in values:  # templated extraEnvFrom
        yield from referenced_secrets(yaml.safe_load(values))


def test_second_run_creates_nothing_twice(sandbox: Sandbox) -> None:
    assert sandbox.run("scripts/install-airflow-2-ecr.sh").code == 0
    secrets_before = json.loads(json.dumps(sandbox.state["secrets"]))
    again = sandbox.run("scripts/install-airflow-2-ecr.sh")
    assert again.code == 0, again.err
    created = [c for c in commands(again) if " create " in f" {c} " or c.startswith("kind create")]
    assert created == []
    assert sandbox.state["secrets"] == secrets_before  # nothing regenerated
    assert sandbox.state["clusters"] == ["airflow"]
    assert sandbox.state["releases"]["airflow"]["revision"] == 2  # upgraded in place
    assert "Kind cluster 'airflow' exists: using it" in again.out


def test_a_released_logs_volume_is_freed_for_the_new_claim(sandbox: Sandbox) -> None:
    assert sandbox.run("scripts/install-airflow.sh").code == 0
    assert not any(
        c["args"][2:3] == ["patch"] for c in sandbox.run("scripts/install-airflow.sh").calls
    )
    sandbox.state["pv_phase"] = "Released"  # the namespace was deleted by hand, the PV kept
    sandbox.save()
    result = sandbox.run("scripts/install-airflow.sh")
    assert result.code == 0, result.err
    assert first(result, "kubectl patch persistentvolume airflow-logs-pv") < first(
        result, "kubectl --namespace airflow apply -f"
    )


def test_a_given_tag_is_used_and_an_unknown_one_refused(sandbox: Sandbox) -> None:
    result = sandbox.run("scripts/install-airflow-2-ecr.sh", "--tag", "zz-oldest")
    assert result.code == 0, result.err
    assert set_values(helm_install_args(result))["images.airflow.tag"] == "zz-oldest"

    missing = sandbox.run("scripts/install-airflow-2-ecr.sh", "--tag", "nope")
    assert missing.code == 1
    assert "tag 'nope' not found in ECR repository airflow-stackexchange" in missing.err
    assert not any(c.startswith("helm upgrade") for c in commands(missing))


def test_empty_ecr_repository_is_a_clear_error(sandbox: Sandbox) -> None:
    sandbox.state["ecr_images"] = []
    sandbox.save()
    result = sandbox.run("scripts/install-airflow-2-ecr.sh")
    assert result.code == 1
    assert "no tagged image in ECR repository airflow-stackexchange" in result.err
    assert "cicd/build-and-push.sh" in result.err


@pytest.mark.parametrize("tool", STUBBED)
def test_a_missing_tool_is_named_with_where_to_get_it(sandbox: Sandbox, tool: str) -> None:
    (sandbox.bin / tool).unlink()
    result = sandbox.run("scripts/install-airflow-2-ecr.sh")
    assert result.code == 1
    assert f"ERROR: {tool} not found on PATH. Install it: https://" in result.err
    assert sandbox.state["clusters"] == [] and sandbox.state["namespaces"] == ["default"]


def test_no_aws_credentials_stops_before_anything_changes(sandbox: Sandbox) -> None:
    sandbox.state["aws_identity"] = False
    sandbox.save()
    result = sandbox.run("scripts/install-airflow-2-ecr.sh")
    assert result.code == 1
    assert "no usable AWS credentials: run 'aws configure' or 'aws sso login'" in result.err
    assert sandbox.state["clusters"] == []


def test_docker_daemon_down_is_a_clear_error(sandbox: Sandbox) -> None:
    sandbox.state["docker_daemon"] = False
    sandbox.save()
    result = sandbox.run("scripts/install-airflow.sh")
    assert result.code == 1
    assert "the Docker daemon is not reachable" in result.err
    assert sandbox.state["clusters"] == []


# --- dry run --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("scripts/install-airflow-2-ecr.sh", (), "helm --kube-context kind-airflow upgrade"),
        ("scripts/install-airflow.sh", (), "kind create cluster --name airflow"),
        ("scripts/upgrade-dags.sh", (), "docker build --file"),
        ("scripts/check-airflow-status.sh", (), "curl -fsS"),
        ("scripts/complete-cleanup.sh", ("--yes",), "kind get clusters"),
        ("cicd/build-and-push.sh", (), "docker push"),
    ],
)
def test_dry_run_prints_the_commands_and_runs_none(
    sandbox: Sandbox, script: str, args: tuple[str, ...], expected: str
) -> None:
    before = sandbox.state_file.read_text()
    result = sandbox.run(script, "--dry-run", *args)
    assert result.code == 0, result.err
    assert f"+ {expected}" in result.err  # commands are shown on stderr, like set -x
    # only the preflight's version/daemon checks ran; no query, no change
    assert all(c.split()[1] in ("version", "--version", "info") for c in commands(result)), (
        commands(result)
    )
    assert sandbox.state_file.read_text() == before
    assert not (sandbox.repo / "logs").exists()


def test_dry_run_shows_the_whole_install_plan(sandbox: Sandbox) -> None:
    shown = sandbox.run("scripts/install-airflow.sh", "--dry-run").err
    plan = [line.replace("--context kind-airflow ", "") for line in shown.splitlines()]
    order = [
        "+ kind create cluster",
        "+ docker build",
        "+ kind load docker-image",
        "+ kubectl create namespace airflow",
        "+ kubectl --namespace airflow create secret generic airflow-fernet-key",
        "+ kubectl --namespace airflow apply -f",
        "+ helm --kube-context kind-airflow upgrade --install airflow airflow",
        "+ kubectl --namespace airflow rollout status",
    ]
    positions = [next(i for i, p in enumerate(plan) if p.startswith(o)) for o in order]
    assert positions == sorted(positions), "\n".join(plan)


# --- local image, upgrade, git-sync ----------------------------------------------------------


def test_local_install_builds_a_unique_tag_with_the_pinned_versions(sandbox: Sandbox) -> None:
    result = sandbox.run("scripts/install-airflow.sh")
    assert result.code == 0, result.err
    build = sandbox.state["builds"][0]
    assert f"AIRFLOW_VERSION={VERSIONS['AIRFLOW_VERSION']}" in build
    assert f"PYTHON_VERSION={VERSIONS['PYTHON_VERSION']}" in build
    tag = set_values(helm_install_args(result))["images.airflow.tag"]
    assert tag != "latest" and tag.endswith("Z-nogit")  # UTC time + commit (no git here)
    assert sandbox.state["loaded_images"] == [f"airflow-stackexchange:{tag}"]
    assert not any(c.startswith("aws") for c in commands(result))


def test_upgrade_dags_rolls_out_a_new_image_with_the_same_values(sandbox: Sandbox) -> None:
    missing = sandbox.run("scripts/upgrade-dags.sh")
    assert missing.code == 1 and "run scripts/install-airflow.sh" in missing.err

    installed = sandbox.run("scripts/install-airflow.sh")
    # the running image was built from an earlier commit; since then one DAG changed
    git = ["git", "-C", str(sandbox.repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    (sandbox.repo / "dags").mkdir()
    (sandbox.repo / "dags/kept.py").write_text("# unchanged\n")
    (sandbox.repo / "dags/edited.py").write_text("# v1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    old_revision = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    (sandbox.repo / "dags/edited.py").write_text("# v2\n")
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)
    old_image = f"airflow-stackexchange:20250101T000000Z-{old_revision[:12]}"
    sandbox.state["image_revisions"][old_image] = old_revision
    sandbox.state["releases"]["airflow"]["image"] = old_image
    sandbox.state["rolled_out"] = []
    sandbox.save()
    upgraded = sandbox.run("scripts/upgrade-dags.sh")
    assert upgraded.code == 0, upgraded.err
    new_image = sandbox.state["releases"]["airflow"]["image"]
    assert sandbox.state["releases"]["airflow"]["revision"] == 2
    args = helm_install_args(upgraded)
    assert values_files(args) == values_files(helm_install_args(installed))
    assert "--reuse-values" not in args
    assert len(sandbox.state["rolled_out"]) == 6
    assert f"Image: {old_image} -> {new_image}" in upgraded.out
    assert f"DAG changes since {old_revision[:12]}" in upgraded.out
    assert "dags/edited.py" in upgraded.out and "kept.py" not in upgraded.out
    assert not any(" create " in c for c in commands(upgraded))


def test_git_sync_is_off_without_a_repository_and_on_with_one(sandbox: Sandbox) -> None:
    off = sandbox.run("scripts/install-airflow.sh")
    assert not any(k.startswith("dags.gitSync") for k in set_values(helm_install_args(off)))
    assert "airflow/airflow-git-credentials" not in sandbox.state["secrets"]

    on = sandbox.run(
        "scripts/install-airflow.sh",
        GIT_SYNC_REPO="https://example.com/org/dags.git",
        GIT_SYNC_BRANCH="release",
        GIT_SYNC_SUBPATH="airflow/dags",
    )
    values = set_values(helm_install_args(on))
    assert values["dags.gitSync.enabled"] == "true"
    assert values["dags.gitSync.repo"] == "https://example.com/org/dags.git"
    assert values["dags.gitSync.branch"] == values["dags.gitSync.ref"] == "release"
    assert values["dags.gitSync.subPath"] == "airflow/dags"
    assert "dags.gitSync.credentialsSecret" not in values  # public repository: no credentials


def test_env_file_configures_the_scripts(sandbox: Sandbox) -> None:
    env_file = sandbox.root / "my.env"
    env_file.write_text("NAMESPACE=data-platform\nPERSISTENCE=false\nSTACKEXCHANGE_BUCKET=b1\n")
    result = sandbox.run("scripts/install-airflow.sh", "--env-file", str(env_file))
    assert result.code == 0, result.err
    args = helm_install_args(result)
    assert args[args.index("--namespace") + 1] == "data-platform"
    assert values_files(args) == ["values.yaml"]
    assert sandbox.state["applied"] == []  # no logs volume without persistence
    assert set_values(args)["env[0].name"] == "STACKEXCHANGE_BUCKET"
    assert set_values(args)["env[0].value"] == "b1"

    env_file.write_text("PERSISTENCE=maybe\n")
    bad = sandbox.run("scripts/install-airflow.sh", "--env-file", str(env_file))
    assert bad.code == 1 and "PERSISTENCE must be true or false" in bad.err


# --- status -----------------------------------------------------------------------------------


class HealthHandler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        status = 200 if self.path == "/api/v2/monitor/health" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[type[HealthHandler]]:
    handler = type("Handler", (HealthHandler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield handler
    server.shutdown()
    server.server_close()


def test_status_reports_healthy_and_unhealthy(
    sandbox: Sandbox, api_server: type[HealthHandler]
) -> None:
    assert sandbox.run("scripts/install-airflow.sh").code == 0
    url = api_server.url  # type: ignore[attr-defined]
    api_server.body = b'{"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy"}}'
    healthy = sandbox.run("scripts/check-airflow-status.sh", AIRFLOW_URL=url)
    assert healthy.code == 0, healthy.out + healthy.err
    assert "Healthy." in healthy.out

    api_server.body = (
        b'{"metadatabase": {"status": "healthy"}, "scheduler": {"status": "unhealthy"}}'
    )
    sandbox.state["import_errors"] = "bundle_name | filename | error\ndags-folder | bad.py | boom"
    sandbox.state["pod_readiness"] = "airflow-scheduler-1 false true\nairflow-statsd-1 true\n"
    sandbox.save()
    sick = sandbox.run("scripts/check-airflow-status.sh", AIRFLOW_URL=url)
    assert sick.code == 1
    assert "API reports an unhealthy component" in sick.out
    assert "DAG import errors" in sick.out and "bad.py" in sick.out
    assert "pods not ready: airflow-scheduler-1" in sick.out

    down = sandbox.run("scripts/check-airflow-status.sh", AIRFLOW_URL="http://127.0.0.1:9")
    assert down.code == 1 and "API not reachable" in down.out


# --- cleanup -----------------------------------------------------------------------------------


def test_cleanup_without_yes_and_without_a_terminal_deletes_nothing(sandbox: Sandbox) -> None:
    assert sandbox.run("scripts/install-airflow.sh").code == 0
    (sandbox.repo / "logs" / "task.log").write_text("log line")
    before = sandbox.state_file.read_text()
    result = sandbox.run("scripts/complete-cleanup.sh")
    assert result.code == 1
    assert "No terminal to confirm and --yes not given: nothing deleted." in result.err
    assert sandbox.state_file.read_text() == before
    assert not any({"uninstall", "delete"} & set(c["args"]) for c in result.calls)
    assert (sandbox.repo / "logs" / "task.log").exists()


@pytest.mark.parametrize(("answer", "deleted"), [("no", False), ("yes", True)])
def test_cleanup_asks_on_a_terminal(sandbox: Sandbox, answer: str, deleted: bool) -> None:
    assert sandbox.run("scripts/install-airflow.sh").code == 0
    controller, terminal = pty.openpty()
    os.write(controller, f"{answer}\n".encode())
    try:
        result = sandbox.run("scripts/complete-cleanup.sh", stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert "Type 'yes' to delete all of it:" in result.err
    assert (result.code == 0) is deleted
    assert (sandbox.state["clusters"] == []) is deleted
    if not deleted:
        assert "Not confirmed: nothing deleted." in result.out


def test_cleanup_with_yes_removes_everything_and_is_safe_to_repeat(sandbox: Sandbox) -> None:
    assert sandbox.run("scripts/install-airflow.sh").code == 0
    result = sandbox.run("scripts/complete-cleanup.sh", "--yes")
    assert result.code == 0, result.err
    order = [
        "helm uninstall airflow",
        "kubectl delete namespace airflow",
        "kubectl delete persistentvolume airflow-logs-pv",
        "kind delete cluster --name airflow",
    ]
    positions = [first(result, o) for o in order]
    assert positions == sorted(positions)
    assert sandbox.state["clusters"] == [] and sandbox.state["releases"] == {}
    assert not (sandbox.repo / "logs").exists()

    again = sandbox.run("scripts/complete-cleanup.sh", "--yes")
    assert again.code == 0, again.err
    assert "does not exist: nothing to delete there" in again.out


# --- image pipeline ------------------------------------------------------------------------------


def test_build_and_push_pushes_once_and_refuses_latest(sandbox: Sandbox) -> None:
    sandbox.state["ecr_repositories"] = []
    sandbox.save()
    pushed = sandbox.run("cicd/build-and-push.sh", "--tag", "0123abc")
    assert pushed.code == 0, pushed.err
    assert first(pushed, "aws ecr create-repository") < first(pushed, "docker build")
    assert first(pushed, "docker login") < first(pushed, "docker push")
    assert "0123abc" in sandbox.state["ecr_images"][-1]["imageTags"]

    again = sandbox.run("cicd/build-and-push.sh", "--tag", "0123abc")
    assert again.code == 0 and "already in ECR: nothing to push" in again.out
    assert not any(c.startswith(("docker build", "docker push")) for c in commands(again))

    latest = sandbox.run("cicd/build-and-push.sh", "--tag", "latest")
    assert latest.code == 1 and "refusing the tag 'latest'" in latest.err


def test_every_script_has_help(sandbox: Sandbox) -> None:
    for script in [*sorted((REPO / "scripts").glob("*.sh")), REPO / "cicd/build-and-push.sh"]:
        if script.name == "lib.sh":
            continue
        rel = script.relative_to(REPO)
        result = sandbox.run(str(rel), "--help")
        assert result.code == 0 and result.out.startswith(f"Usage: {rel}"), rel
        assert result.calls == []
        unknown = sandbox.run(str(rel), "--bogus")
        assert unknown.code == 1 and "unknown argument '--bogus'" in unknown.err, rel
