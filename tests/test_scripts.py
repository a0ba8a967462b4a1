"""Behaviour of scripts/*.sh and cicd/build-and-push.sh against stub kind/kubectl/helm/docker/aws
(tests/cli_stubs.py), each run in a sandbox copy of the repository (tests/script_sandbox.py)."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from tests.script_sandbox import (
    DB_PASSWORD,
    METADATA_DB_URI,
    NEWEST_MAIN,
    PRODUCTION,
    REGISTRY,
    REPO,
    VALUES,
    VERSIONS,
    Result,
    Sandbox,
    commands,
    first,
    helm_install_args,
    set_values,
    settings_file,
    values_files,
)

pytestmark = pytest.mark.k8s


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def pin_digests(sandbox: Sandbox) -> None:
    """What `make k8s-refresh-digests` writes (a registry build refuses to run without it)."""
    digests = sandbox.repo / "cicd/image-digests.env"
    digests.write_text(
        digests.read_text().replace("AIRFLOW_BASE_DIGEST=\n", f"AIRFLOW_BASE_DIGEST={DIGEST}\n")
    )
    values = sandbox.repo / "chart/values.yaml"
    values.write_text(values.read_text().replace('    digest: ""', f'    digest: "{DIGEST}"'))


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
        f"docker pull {REGISTRY}/airflow-stackexchange:{NEWEST_MAIN}",
        f"kind load docker-image {REGISTRY}/airflow-stackexchange:{NEWEST_MAIN}",
        "kubectl create namespace airflow",
        "kubectl label namespace airflow --overwrite pod-security.kubernetes.io/enforce=restricted",
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
    assert values_files(args) == [
        "values.yaml", "values-metrics.yaml", "values-override-with-persistence.yaml",
        "settings.yaml",
    ]  # fmt: skip
    # the repository's own chart, after the Airflow release, with the same values files
    platform = helm_install_args(result, "platform")
    assert platform[platform.index("--install") + 1] == "airflow-platform"
    assert values_files(platform) == values_files(args)
    assert first(result, "helm upgrade --install airflow airflow") < first(
        result, "helm upgrade --install airflow-platform"
    )
    assert "--reuse-values" not in args and "--wait" not in args
    assert set_values(args)["images.airflow.repository"] == f"{REGISTRY}/airflow-stackexchange"
    # the newest image built from main: not a newer branch or -dirty build, not the newest name
    assert set_values(args)["images.airflow.tag"] == NEWEST_MAIN
    # every Deployment/StatefulSet of the release was waited for
    assert len(sandbox.state["rolled_out"]) == 6
    assert sandbox.state["applied"] == [
        "airflow/PersistentVolume/airflow-logs-pv",
        "airflow/PersistentVolumeClaim/airflow-logs-pvc",
    ]
    # generated secrets are usable and consistent; connections come from the environment
    Fernet(sandbox.secret("airflow-fernet-key")["fernet-key"].encode())
    postgres = sandbox.secret("airflow-postgresql-credentials")
    password, superuser = postgres["password"], postgres["postgres-password"]
    assert len(password) == len(superuser) == 32 and password.isalnum() and password != superuser
    # Airflow connects as the database owner `airflow`; the superuser password is not in its URI
    assert sandbox.secret("airflow-metadata-connection")["connection"] == (
        f"postgresql://airflow:{password}@airflow-postgresql.airflow:5432/airflow?sslmode=disable"
    )
    assert sandbox.state["namespace_labels"]["airflow"] == {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
    }
    # the host's logs directory is not world-writable: 0770, owned by the pods' uid:gid (50000:0)
    assert (sandbox.repo / "logs").stat().st_mode & 0o777 == 0o770
    assert [
        "sh", "-c", "chown 50000:0 /var/local/airflow/logs && chmod 0770 /var/local/airflow/logs"
    ] in sandbox.state["node_commands"]  # fmt: skip
    admin = sandbox.secret("airflow-admin-user")["password"]
    assert len(admin) == 24 and admin != "admin"
    assert sandbox.secret("airflow-connections")["AIRFLOW_CONN_AWS_CONN"] == aws_conn
    # no secret value ever appears in the output or on a command line
    for value in (password, superuser):
        assert value not in result.out + result.err
        assert not any(value in " ".join(c["args"]) for c in result.calls)
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
        VALUES["postgresql"]["auth"]["existingSecret"]: ["password", "postgres-password"],
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
    sandbox.state["pvs"]["airflow-logs-pv"] = "Released"  # namespace deleted by hand, PV kept
    sandbox.save()
    result = sandbox.run("scripts/install-airflow.sh")
    assert result.code == 0, result.err
    assert first(result, "kubectl patch persistentvolume airflow-logs-pv") < first(
        result, "kubectl --namespace airflow apply -f"
    )


def test_a_given_tag_is_used_and_an_unknown_one_refused(sandbox: Sandbox) -> None:
    result = sandbox.run("scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0")
    assert result.code == 0, result.err
    assert set_values(helm_install_args(result))["images.airflow.tag"] == "v1.0.0"

    missing = sandbox.run("scripts/install-airflow-2-ecr.sh", "--tag", "nope")
    assert missing.code == 1
    assert "tag 'nope' not found in ECR repository airflow-stackexchange" in missing.err
    assert not any(c.startswith("helm upgrade") for c in commands(missing))


def test_no_main_image_in_ecr_is_a_clear_error(sandbox: Sandbox) -> None:
    sandbox.state["ecr_images"] = [i for i in sandbox.state["ecr_images"] if i is not None][3:]
    sandbox.save()  # only the branch, -dirty and untagged images are left
    result = sandbox.run("scripts/install-airflow-2-ecr.sh")
    assert result.code == 1
    assert "no image built from main in ECR repository airflow-stackexchange" in result.err
    assert "--tag" in result.err
    assert not any(c.startswith("helm upgrade") for c in commands(result))


@pytest.mark.parametrize("tool", ["kind", "kubectl", "helm", "docker", "aws"])
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


# What a dry run may run: the preflight's version/daemon checks and read-only queries.
READ_ONLY = (
    "version", "--version", "info", "get", "status", "config", "sts get-caller-identity",
    "ecr describe-images", "ecr describe-repositories", "image inspect",
)  # fmt: skip


def read_only(command: str) -> bool:
    words = command.split()[1:]
    if words[:1] == ["--namespace"]:
        words = words[2:]
    return " ".join(words).startswith(READ_ONLY)


def only_read_only(result: Result) -> bool:
    return all(read_only(c) for c in commands(result))


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("scripts/install-airflow-2-ecr.sh", (), "helm --kube-context kind-airflow upgrade"),
        ("scripts/install-airflow.sh", (), "kind create cluster --name airflow"),
        ("cicd/build-and-push.sh", (), "docker push"),
    ],
)
def test_dry_run_prints_the_commands_and_changes_nothing(
    sandbox: Sandbox, script: str, args: tuple[str, ...], expected: str
) -> None:
    pin_digests(sandbox)
    before = sandbox.state_file.read_text()
    result = sandbox.run(script, "--dry-run", *args)
    assert result.code == 0, result.err
    assert f"+ {expected}" in result.err  # commands are shown on stderr, like set -x
    assert only_read_only(result), commands(result)
    assert sandbox.state_file.read_text() == before
    assert not (sandbox.repo / "logs").exists()


def test_dry_run_after_an_install_prints_what_a_real_run_would_do(sandbox: Sandbox) -> None:
    assert sandbox.run("scripts/install-airflow.sh").code == 0
    before = sandbox.state_file.read_text()
    dry = sandbox.run("scripts/install-airflow.sh", "--dry-run")
    assert dry.code == 0, dry.err
    assert only_read_only(dry), commands(dry)
    assert sandbox.state_file.read_text() == before
    real = sandbox.run("scripts/install-airflow.sh")
    changed = [c for c in commands(real) if not read_only(c)]
    shown = [line[2:] for line in dry.err.splitlines() if line.startswith("+ ")]
    # the existing cluster and Secrets: neither run creates them; both say so
    for step in ("kind create cluster", "create secret generic airflow-fernet-key"):
        assert not any(step in line for line in shown), step
        assert not any(step in c for c in changed), step
    assert "Kind cluster 'airflow' exists: using it" in dry.out
    assert "Secret airflow-fernet-key exists: kept" in dry.out
    # every changing command of the real run was in the plan, in the same order (the image tag
    # holds the time: compared without it)
    plan = [line.replace("--context kind-airflow ", "").replace("--kube-context kind-airflow ", "")
            for line in shown]  # fmt: skip

    def words(command: str) -> list[str]:
        return re.sub(r"\d{8}T\d{6}Z", "<time>", command).split()[:5]

    positions = [
        next(i for i, line in enumerate(plan) if words(line) == words(command))
        for command in changed
    ]
    assert positions == sorted(positions), "\n".join(plan)

    installed = sandbox.state_file.read_text()
    upgrade = sandbox.run("scripts/upgrade-dags.sh", "--dry-run")
    assert upgrade.code == 0, upgrade.err
    assert "+ docker build --file" in upgrade.err and only_read_only(upgrade)
    assert sandbox.state_file.read_text() == installed


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
    # where it came from (no git here: local) + UTC time + commit
    assert tag.startswith("local-") and tag.endswith("Z-nogit")
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
    sandbox.state["image_labels"][old_image] = {"org.opencontainers.image.revision": old_revision}
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
    env_file.write_text(
        "NAMESPACE=data-platform\nPERSISTENCE=false\nSTACKEXCHANGE_BUCKET=b1\n"
        "REMOTE_LOG_BUCKET=logs-bucket\nREMOTE_LOG_PREFIX=airflow/dev/\n"
    )
    result = sandbox.run("scripts/install-airflow.sh", "--env-file", str(env_file))
    assert result.code == 0, result.err
    args = helm_install_args(result)
    assert args[args.index("--namespace") + 1] == "data-platform"
    # without the hostPath volume, task logs go to S3
    assert values_files(args) == [
        "values.yaml",
        "values-metrics.yaml",
        "values-remote-logging.yaml",
        "settings.yaml",
    ]
    assert set_values(args)["config.logging.remote_base_log_folder"] == (
        "s3://logs-bucket/airflow/dev"
    )
    assert sandbox.state["applied"] == []  # no logs volume without persistence
    assert set_values(args)["env[0].name"] == "STACKEXCHANGE_BUCKET"
    assert set_values(args)["env[0].value"] == "b1"

    env_file.write_text("PERSISTENCE=maybe\n")
    bad = sandbox.run("scripts/install-airflow.sh", "--env-file", str(env_file))
    assert bad.code == 1 and "PERSISTENCE must be true or false" in bad.err

    env_file.write_text("PERSISTENCE=false\n")
    no_bucket = sandbox.run("scripts/install-airflow.sh", "--env-file", str(env_file))
    assert no_bucket.code == 1 and "set REMOTE_LOG_BUCKET" in no_bucket.err
    assert sandbox.state["releases"]["data-platform"]["revision"] == 1  # nothing ran


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
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
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
    assert "Nothing to delete" in again.out


# --- image pipeline ------------------------------------------------------------------------------


def test_build_and_push_pushes_once_and_refuses_latest(sandbox: Sandbox) -> None:
    pin_digests(sandbox)
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


# --- hardening and the dev loop ----------------------------------------------------------------


def test_credentials_in_the_git_sync_url_are_refused_without_showing_them(
    sandbox: Sandbox,
) -> None:
    result = sandbox.run(
        "scripts/install-airflow.sh", GIT_SYNC_REPO="https://bot:s3cr3t-token@example.com/d.git"
    )
    assert result.code == 1
    assert "GIT_SYNC_USERNAME and GIT_SYNC_PASSWORD" in result.err and "SSH" in result.err
    assert "s3cr3t-token" not in result.out + result.err
    assert result.calls == [] or not any("s3cr3t" in " ".join(c["args"]) for c in result.calls)
    assert sandbox.state["clusters"] == []


def test_git_sync_over_ssh_stores_the_key_in_a_secret(sandbox: Sandbox) -> None:
    key = sandbox.root / "id_ed25519"
    key.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\ntesting\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    known_hosts = sandbox.root / "known_hosts"
    known_hosts.write_text("example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItesting\n")
    repo = "git@example.com:org/dags.git"
    missing = sandbox.run(
        "scripts/install-airflow.sh", GIT_SYNC_REPO=repo, GIT_SYNC_SSH_KEY_FILE=str(key)
    )
    assert missing.code == 1 and "GIT_SYNC_KNOWN_HOSTS_FILE" in missing.err
    result = sandbox.run(
        "scripts/install-airflow.sh",
        GIT_SYNC_REPO=repo,
        GIT_SYNC_SSH_KEY_FILE=str(key),
        GIT_SYNC_KNOWN_HOSTS_FILE=str(known_hosts),
    )
    assert result.code == 0, result.err
    args = helm_install_args(result)
    values = set_values(args)
    assert values["dags.gitSync.sshKeySecret"] == "airflow-git-ssh-key"
    assert "dags.gitSync.credentialsSecret" not in values
    assert values["dags.gitSync.knownHosts"] == known_hosts.read_text()
    assert sandbox.secret("airflow-git-ssh-key") == {"gitSshKey": key.read_text()}
    assert "testing" not in result.out + result.err


def test_dags_from_the_host_add_the_overlay_and_volume(sandbox: Sandbox) -> None:
    result = sandbox.run("scripts/install-airflow.sh", DAGS_FROM_HOST="true")
    assert result.code == 0, result.err
    assert values_files(helm_install_args(result)) == [
        "values.yaml", "values-metrics.yaml", "values-override-with-persistence.yaml",
        "values-dags-from-host.yaml", "settings.yaml",
    ]  # fmt: skip
    assert "airflow/PersistentVolumeClaim/airflow-dags-pvc" in sandbox.state["applied"]
    both = sandbox.run("scripts/install-airflow.sh", DAGS_FROM_HOST="true", GIT_SYNC_REPO="x")
    assert both.code == 1 and "set one of them" in both.err
    sandbox.state["missing_node_dirs"] = ["/var/local/airflow/dags"]  # a cluster from before
    sandbox.save()
    old = sandbox.run("scripts/install-airflow.sh", DAGS_FROM_HOST="true")
    assert old.code == 1 and "created without the ./dags mount" in old.err


def test_upgrade_dags_rebuilds_only_when_dependencies_change(sandbox: Sandbox) -> None:
    assert sandbox.run("scripts/install-airflow.sh", DAGS_FROM_HOST="true").code == 0
    builds = len(sandbox.state["builds"])
    quick = sandbox.run("scripts/upgrade-dags.sh", DAGS_FROM_HOST="true")
    assert quick.code == 0, quick.err
    assert "Path: no image build (dependencies unchanged)" in quick.out
    assert len(sandbox.state["builds"]) == builds
    assert not any(c.startswith("helm upgrade") for c in commands(quick))
    assert "deployment/airflow-dag-processor" in sandbox.state["rolled_out"]

    with (sandbox.repo / "requirements.txt").open("a") as requirements:
        requirements.write("# a new dependency\n")
    rebuilt = sandbox.run("scripts/upgrade-dags.sh", DAGS_FROM_HOST="true")
    assert rebuilt.code == 0, rebuilt.err
    assert "Path: image rebuild (dependencies changed" in rebuilt.out
    assert len(sandbox.state["builds"]) == builds + 1
    assert sandbox.state["releases"]["airflow"]["revision"] == 2

    baked = sandbox.run("scripts/upgrade-dags.sh")  # DAGs in the image: always a new image
    assert "Path: image rebuild (the DAGs are baked into the image" in baked.out
    assert len(sandbox.state["builds"]) == builds + 2


def test_cleanup_dry_run_prints_the_plan_for_what_is_installed(sandbox: Sandbox) -> None:
    assert sandbox.run("scripts/install-airflow.sh", DAGS_FROM_HOST="true").code == 0
    before = sandbox.state_file.read_text()
    result = sandbox.run("scripts/complete-cleanup.sh", "--dry-run")
    assert result.code == 0, result.err
    assert sandbox.state_file.read_text() == before and (sandbox.repo / "logs").exists()
    for step in (
        "helm --kube-context kind-airflow uninstall airflow",
        "kubectl --context kind-airflow delete namespace airflow",
        "kubectl --context kind-airflow delete persistentvolume airflow-logs-pv",
        "kubectl --context kind-airflow delete persistentvolume airflow-dags-pv",
        "kind delete cluster --name airflow",
        "rm -rf",
    ):
        assert f"+ {step}" in result.err, step
    assert "PersistentVolume airflow-dags-pv" in result.out
    # only read-only queries ran
    assert all(c.split()[1] in ("version", "--version", "info", "get", "status") for c in
               commands(result)), commands(result)  # fmt: skip


def test_ci_builds_are_tagged_with_where_they_came_from(sandbox: Sandbox) -> None:
    pin_digests(sandbox)
    main = sandbox.run("cicd/build-and-push.sh", GITHUB_REF_NAME="main", GITHUB_REF_TYPE="branch")
    assert main.code == 0, main.err
    assert sandbox.state["ecr_images"][-1]["imageTags"][0].startswith("main-")
    release = sandbox.run("cicd/build-and-push.sh", GITHUB_REF_NAME="v1.2.0", GITHUB_REF_TYPE="tag")
    assert release.code == 0, release.err
    assert sandbox.state["ecr_images"][-1]["imageTags"] == ["v1.2.0"]
    build = sandbox.state["builds"][-1]
    assert (
        f"BASE_IMAGE=apache/airflow:{VERSIONS['AIRFLOW_VERSION']}-python3.11@{DIGEST}"
        in " ".join(build)
    )


def test_a_registry_build_refuses_empty_image_pins(sandbox: Sandbox) -> None:
    result = sandbox.run("cicd/build-and-push.sh", "--tag", "v1.0.1")
    assert result.code == 1
    assert "AIRFLOW_BASE_DIGEST in cicd/image-digests.env" in result.err
    assert "postgresql.image.digest in chart/values.yaml" in result.err
    assert "make k8s-refresh-digests" in result.err
    assert result.calls == [] and sandbox.state["builds"] == []
    # a local Kind build only warns
    local = sandbox.run("scripts/install-airflow.sh")
    assert local.code == 0 and "make k8s-refresh-digests" in local.err


DIGEST = "sha256:" + "ab" * 32
CHECKOUT = "https://github.com/actions/checkout"


def test_refresh_digests_pins_images_and_actions(sandbox: Sandbox) -> None:
    airflow = f"apache/airflow:{VERSIONS['AIRFLOW_VERSION']}-python{VERSIONS['PYTHON_VERSION']}"
    sandbox.state["registry_digests"] = {
        airflow: DIGEST,
        "bitnamilegacy/postgresql:14.10.0": "sha256:" + "cd" * 32,
    }
    sandbox.state["remote_tags"] = {
        url: {"refs/tags/v4.2.2": "1" * 40, "refs/tags/v4.2.2^{}": "2" * 40,
              "refs/tags/v5.6.0": "3" * 40, "refs/tags/v4.3.1": "4" * 40}
        for url in (CHECKOUT, "https://github.com/actions/setup-python",
                    "https://github.com/aws-actions/configure-aws-credentials")
    }  # fmt: skip
    sandbox.save()
    workflow = sandbox.repo / ".github/workflows/ci.yml"
    before = workflow.read_text()
    dry = sandbox.run("scripts/refresh-digests.sh", "--dry-run")
    assert dry.code == 0, dry.err
    assert "pin(s) would change; no file written" in dry.out
    assert workflow.read_text() == before

    result = sandbox.run("scripts/refresh-digests.sh")
    assert result.code == 0, result.err
    assert f"AIRFLOW_BASE_DIGEST={DIGEST}" in (sandbox.repo / "cicd/image-digests.env").read_text()
    values = yaml.safe_load((sandbox.repo / "chart/values.yaml").read_text())
    assert values["postgresql"]["image"]["digest"] == "sha256:" + "cd" * 32
    text = workflow.read_text()
    assert f"actions/checkout@{'2' * 40} # v4.2.2" in text  # the annotated tag's commit
    assert f"actions/setup-python@{'3' * 40} # v5.6.0" in text
    again = sandbox.run("scripts/refresh-digests.sh")
    assert "Every pin is current." in again.out

    sandbox.state["registry_digests"] = {}
    sandbox.save()
    gone = sandbox.run("scripts/refresh-digests.sh")
    assert gone.code == 1 and f"no digest for {airflow}" in gone.err


# --- production profile and release pinning ------------------------------------------------------

ENCODED_PASSWORD = METADATA_DB_URI.split(":")[2].split("@")[0]


def secret_leaks(result: Result, sandbox: Sandbox) -> list[str]:
    """Where the database URI or its password shows: output, argv, the generated values."""
    found = []
    for needle in (METADATA_DB_URI, DB_PASSWORD, ENCODED_PASSWORD):
        if needle in result.out + result.err:
            found.append(f"output: {needle}")
        for call in result.calls:
            if needle in " ".join(call["args"]):
                found.append(f"argv of {call['tool']}: {needle}")
            for kept in call.get("files", {}).values():
                if needle in Path(kept["copy"]).read_text():
                    found.append(f"values file: {needle}")
    return found


def test_production_without_a_database_fails_before_any_call(sandbox: Sandbox) -> None:
    result = sandbox.run("scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0", **PRODUCTION)
    assert result.code == 1
    assert "PROFILE=production uses an external PostgreSQL" in result.err
    assert "METADATA_DB_URI" in result.err and "METADATA_DB_SECRET" in result.err
    assert result.calls == []  # no helm, no kubectl, not even a version check


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (METADATA_DB_URI.replace("sslmode=require", "sslmode=disable"), "has sslmode=disable"),
        (
            METADATA_DB_URI.replace("sslmode=require", "sslmode=prefer"),
            "has sslmode=prefer: TLS is required",
        ),
        (METADATA_DB_URI.split("?")[0], "has no sslmode"),
        (METADATA_DB_URI.replace("postgresql://", "mysql://"), "is not postgresql://USER"),
    ],
)
def test_production_refuses_a_database_uri_without_tls(
    sandbox: Sandbox, uri: str, message: str
) -> None:
    result = sandbox.run(
        "scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0", **PRODUCTION, METADATA_DB_URI=uri
    )
    assert result.code == 1
    assert f"METADATA_DB_URI {message}" in result.err
    assert result.calls == [] and ENCODED_PASSWORD not in result.out + result.err


def test_production_dry_run_prints_the_production_plan(sandbox: Sandbox) -> None:
    before = sandbox.state_file.read_text()
    result = sandbox.run(
        "scripts/install-airflow-2-ecr.sh", "--dry-run", "--tag", "v1.0.0",
        **PRODUCTION, METADATA_DB_URI=METADATA_DB_URI, GIT_SYNC_REPO="https://example.com/d.git",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert sandbox.state_file.read_text() == before and only_read_only(result)
    plan = result.err
    for step in (
        "kubectl --context prod-cluster create namespace airflow",
        "kubectl --context prod-cluster --namespace airflow create secret generic airflow-jwt",
        "create secret generic airflow-metadata-db-external",  # applied: follows the URI
        "create secret generic airflow-metadata-connection",
        "create secret generic airflow-pgbouncer-config",
        "create secret generic airflow-pgbouncer-stats",
        "helm --kube-context prod-cluster upgrade --install airflow airflow",
        "chart/values-production.yaml",
        "helm --kube-context prod-cluster upgrade --install airflow-platform",
    ):
        assert step in plan, step
    for kind_step in (
        "kind ",
        "docker pull",
        "docker login",
        "persistent-volume",
        "postgresql-credentials",
    ):
        assert f"+ {kind_step}" not in plan and kind_step not in " ".join(commands(result))
    # the generated values are shown: the release tag pins the image and the DAGs
    assert 'tag: "v1.0.0"' in result.out and 'ref: "v1.0.0"' in result.out
    assert 'name: "airflow.example.com"' in result.out
    assert secret_leaks(result, sandbox) == []


def test_production_install_from_a_database_uri(sandbox: Sandbox) -> None:
    env = PRODUCTION | {"GIT_SYNC_REPO": "https://example.com/org/dags.git", "GIT_SYNC_REF": "main"}
    result = sandbox.run(
        "scripts/install-airflow-2-ecr.sh",
        "--tag",
        "v1.0.0",
        **env,
        METADATA_DB_URI=METADATA_DB_URI,
    )
    assert result.code == 0, result.err
    assert not any(c.startswith(("kind", "docker")) for c in commands(result))
    assert all(
        c["args"][:2] in (["--context", "prod-cluster"], ["--kube-context", "prod-cluster"])
        for c in result.calls if c["tool"] in ("kubectl", "helm") and "version" not in c["args"]
        and c["args"][:1] != ["config"]
    )  # fmt: skip
    # the external URI kept as given; Airflow goes through PgBouncer, PgBouncer to the database
    # over TLS with the decoded password
    assert sandbox.secret("airflow-metadata-db-external") == {"connection": METADATA_DB_URI}
    assert sandbox.secret("airflow-metadata-connection")["connection"] == (
        f"postgresql://airflow_user:{ENCODED_PASSWORD}@airflow-pgbouncer.airflow:6543"
        "/airflow-metadata?sslmode=disable"
    )
    pgbouncer = sandbox.secret("airflow-pgbouncer-config")
    ini = pgbouncer["pgbouncer.ini"]
    assert (
        "airflow-metadata = host=db.example.internal dbname=airflow_meta port=5433 pool_size=20"
        in ini.splitlines()
    )
    assert "server_tls_sslmode = require" in ini.splitlines()
    assert "listen_port = 6543" in ini.splitlines()
    assert pgbouncer["users.txt"] == '"airflow_user" "pa:ss@w""rd"'
    assert sandbox.secret("airflow-pgbouncer-stats")["connection"].startswith(
        f"postgresql://airflow_user:{ENCODED_PASSWORD}@127.0.0.1:6543/pgbouncer"
    )
    assert "airflow/airflow-postgresql-credentials" not in sandbox.state["secrets"]
    assert secret_leaks(result, sandbox) == []
    # one tag pins the image and the synced DAGs; the profile's overlay after the base values
    args = helm_install_args(result)
    values = set_values(args)
    assert values["images.airflow.repository"] == f"{REGISTRY}/airflow-stackexchange"
    assert values["images.airflow.tag"] == values["dags.gitSync.ref"] == "v1.0.0"
    assert "git-sync ref: v1.0.0" in result.out
    assert values_files(args) == [
        "values.yaml", "values-metrics.yaml", "values-remote-logging.yaml",
        "values-production.yaml", "settings.yaml",
    ]  # fmt: skip
    assert values["ingress.apiServer.hosts[0].name"] == "airflow.example.com"
    assert values["platform.externalDatabase.cidr"] == "10.0.32.0/20"
    assert values["platform.externalDatabase.port"] == "5433"
    kept = next(c["files"] for c in result.calls if c["tool"] == "helm" and c.get("files"))
    assert {k["mode"] for p, k in kept.items() if p.endswith("settings.yaml")} == {"0o600"}
    assert not list(Path(settings_file(args)).parent.parent.glob("tmp.*"))
    assert values_files(helm_install_args(result, "platform")) == values_files(args)
    assert sandbox.state["platform_releases"]["airflow"]["revision"] == 1
    assert "https://airflow.example.com" in result.out

    # later runs name the stored Secret instead of the URI; rollback = the previous tag
    again = sandbox.run(
        "scripts/install-airflow-2-ecr.sh", "--tag", "main-20250301T000000Z-zzzzzzzzzzzz",
        **env, METADATA_DB_SECRET="airflow-metadata-db-external",
    )  # fmt: skip
    assert again.code == 0, again.err
    assert sandbox.secret("airflow-pgbouncer-config") == pgbouncer
    assert set_values(helm_install_args(again))["dags.gitSync.ref"] == (
        "main-20250301T000000Z-zzzzzzzzzzzz"
    )
    assert secret_leaks(again, sandbox) == []
    assert sandbox.state["releases"]["airflow"]["revision"] == 2


def test_production_needs_a_release_tag_and_an_existing_secret(sandbox: Sandbox) -> None:
    env = PRODUCTION | {"METADATA_DB_URI": METADATA_DB_URI}
    untagged = sandbox.run("scripts/install-airflow-2-ecr.sh", **env)
    assert untagged.code == 1 and "name its tag with --tag" in untagged.err
    missing = sandbox.run(
        "scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0",
        **PRODUCTION, METADATA_DB_SECRET="nope",
    )  # fmt: skip
    assert missing.code == 1 and "Secret 'nope' with key 'connection' not found" in missing.err
    assert sandbox.state["releases"] == {} and sandbox.state["namespaces"] == ["default"]
    no_context = sandbox.run(
        "scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0", **env | {"KUBE_CONTEXT": "other"}
    )
    assert no_context.code == 1 and "context 'other' (KUBE_CONTEXT) not found" in no_context.err
    for script in (
        "scripts/install-airflow.sh",
        "scripts/upgrade-dags.sh",
        "scripts/complete-cleanup.sh",
    ):
        refused = sandbox.run(script, **env)
        assert refused.code == 1 and "PROFILE=production" in refused.err, script
        assert refused.calls == [], script


def test_evil_settings_stay_literal_strings(sandbox: Sandbox) -> None:
    evil = 'raw/se,images.airflow.tag=evil\n  tag: "x" # {{ .Values }}'
    result = sandbox.run(
        "scripts/install-airflow.sh", STACKEXCHANGE_PREFIX=evil, DATABRICKS_JOB_ID="1}\t'\x01"
    )
    assert result.code == 0, result.err
    args = helm_install_args(result)
    values = yaml.safe_load(settings_file(args).read_text())
    assert values["env"] == [
        {"name": "STACKEXCHANGE_PREFIX", "value": evil},
        {"name": "DATABRICKS_JOB_ID", "value": "1}\t'\x01"},
    ]
    assert values["images"]["airflow"]["tag"].startswith("local-")
    assert not any(a.startswith("--set") for a in args)


def test_upgrade_dags_ref_moves_git_sync_without_a_build(sandbox: Sandbox) -> None:
    git = {"GIT_SYNC_REPO": "https://example.com/org/dags.git"}
    assert sandbox.run("scripts/install-airflow.sh", "--ref", "v1.0.0", **git).code == 0
    image = sandbox.state["releases"]["airflow"]["image"]
    builds = len(sandbox.state["builds"])
    moved = sandbox.run("scripts/upgrade-dags.sh", "--ref", "v1.1.0", **git)
    assert moved.code == 0, moved.err
    assert "git-sync moves to v1.1.0" in moved.out
    values = set_values(helm_install_args(moved))
    assert values["dags.gitSync.ref"] == "v1.1.0"
    assert f"{values['images.airflow.repository']}:{values['images.airflow.tag']}" == image
    assert len(sandbox.state["builds"]) == builds
    bad = sandbox.run("scripts/upgrade-dags.sh", "--ref", "--oops", **git)
    assert bad.code == 1 and "--ref must be a git tag, commit or branch" in bad.err


def test_production_status_checks_the_ingress_host(sandbox: Sandbox) -> None:
    env = PRODUCTION | {"METADATA_DB_URI": METADATA_DB_URI}
    assert sandbox.run("scripts/install-airflow-2-ecr.sh", "--tag", "v1.0.0", **env).code == 0
    result = sandbox.run("scripts/check-airflow-status.sh", "--dry-run", **PRODUCTION)
    assert (
        "+ curl -fsS --max-time 10 https://airflow.example.com/api/v2/monitor/health" in result.err
    )
    assert not any(c.startswith("kind") for c in commands(result))
