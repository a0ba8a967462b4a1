"""Linters on what we ship for Kubernetes: our own manifests (kubernetes-validate, strict, the
Kind cluster's Kubernetes version), the Dockerfile (hadolint) and every script (shellcheck)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KIND_NODE = yaml.safe_load((REPO / "kind-config.yaml").read_text())["nodes"][0]["image"]
KUBERNETES_VERSION = re.search(r":v(\d+\.\d+)\.", KIND_NODE).group(1)
MANIFESTS = sorted((REPO / "chart").glob("*.yaml"))
OUR_MANIFESTS = [m for m in MANIFESTS if not m.name.startswith("values")]
SCRIPTS = sorted([*(REPO / "scripts").glob("*.sh"), *(REPO / "cicd").glob("*.sh")])


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", OUR_MANIFESTS, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc)
        assert "namespace" not in doc["metadata"]  # applied with the configured --namespace


def test_validation_rejects_a_broken_manifest() -> None:
    pv, _ = yaml.safe_load_all((REPO / "chart/logs-persistent-volume.yaml").read_text())
    pv["spec"]["accessModes"] = "ReadWriteMany"  # a string where a list belongs
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pv)


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "hadolint", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )


def test_dockerfile_is_hadolint_clean() -> None:
    result = hadolint(REPO / "cicd/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM apache/airflow:latest\nRUN pip install py7zr\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_dockerfile_builds_what_the_scripts_describe() -> None:
    text = (REPO / "cicd/Dockerfile").read_text()
    assert "ARG BASE_IMAGE\n# hadolint ignore=DL3006\nFROM ${BASE_IMAGE}\n" in text
    assert "COPY --chown=airflow:0 cicd/requirements.lock /opt/airflow/build/\n" in text
    assert (
        "pip install --no-cache-dir --require-hashes -r /opt/airflow/build/requirements.lock"
        in text
    )
    assert "COPY --chown=airflow:0 dags/ /opt/airflow/dags/" in text
    assert "ENV PYTHONPATH=/opt/airflow/dags" in text
    assert re.findall(r"^USER (\S+)", text, re.M) == ["airflow"]
    # the build args the Dockerfile reads are the ones scripts/lib.sh passes
    lib = (REPO / "scripts/lib.sh").read_text()
    for arg in re.findall(r"^ARG (\w+)", text, re.M):
        assert f'--build-arg "{arg}=' in lib, arg
    # the dependency label upgrade-dags.sh compares is the one the Dockerfile sets
    label = re.search(r"^DEPS_LABEL=(\S+)", lib, re.M).group(1)
    assert f'{label}="${{DEPS_HASH}}"' in text


def test_pins_are_digests_and_commits() -> None:
    digests = dict(
        line.split("=", 1)
        for line in (REPO / "cicd/image-digests.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name, digest in digests.items():
        assert digest == "" or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), name
    workflow = (REPO / ".github/workflows/ci.yml").read_text()
    uses = re.findall(r"uses: (\S+)(.*)", workflow)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r" # v\d+(\.\d+)*", comment), action  # the tag, for people


def test_images_are_pushed_only_from_main_and_release_tags() -> None:
    workflow = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())
    condition = workflow["jobs"]["image"]["if"]
    assert "github.ref == 'refs/heads/main'" in condition
    assert "startsWith(github.ref, 'refs/tags/v')" in condition
    assert "github.event_name == 'push'" in condition  # never from a pull request


def test_docker_context_holds_only_what_the_image_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:3] == ["*", "!cicd/requirements.lock", "!dags/"]


def pins(text: str) -> dict[str, str]:
    """name -> version of the `name==version` lines (names normalised as pip does)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\[\]-]+)==([^\s;\\]+)", line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1).split("[")[0]).lower()
            found[name] = match.group(2)
    return found


def lock_problems(lock: str, requirements: str, constraints: str, airflow: str) -> list[str]:
    """How the hashed lock disagrees with requirements.txt + constraints.txt + Airflow's pin."""
    problems, locked = [], pins(lock)
    wanted = pins(requirements) | {"apache-airflow": airflow}
    for name, version in wanted.items():
        if locked.get(name) != version:
            problems.append(f"{name}: lock {locked.get(name)}, wanted {version}")
    for name, version in pins(constraints).items():
        if name in locked and locked[name] != version:
            problems.append(f"{name}: lock {locked[name]}, constraints {version}")
    # every requirement carries at least one sha256 (pip --require-hashes needs them all)
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[-1]):
        if "==" in block and "--hash=sha256:" not in block:
            problems.append(f"no hash: {block.splitlines()[0]}")
    return problems


def test_the_image_lock_matches_requirements_and_constraints() -> None:
    """cicd/requirements.lock is `make image-lock` of today's requirements and constraints."""
    read = (REPO / "cicd/requirements.lock").read_text
    requirements = (REPO / "requirements.txt").read_text()
    constraints = (REPO / "constraints.txt").read_text()
    airflow = dict(
        line.split("=", 1) for line in (REPO / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )["AIRFLOW_VERSION"]  # fmt: skip
    assert lock_problems(read(), requirements, constraints, airflow) == []
    assert len(pins(read())) > len(pins(requirements))  # the whole closure, not just ours
    # and it notices a moved pin or a missing hash
    moved = requirements.replace("urllib3==2.8.0", "urllib3==2.7.0")
    assert lock_problems(read(), moved, constraints, airflow) == [
        "urllib3: lock 2.8.0, wanted 2.7.0"
    ]
    unhashed = re.sub(r"(urllib3==2\.8\.0) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", read())
    assert lock_problems(unhashed, requirements, constraints, airflow) == [
        "no hash: urllib3==2.8.0"
    ]


def shellcheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "shellcheck", "--external-sources", *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_shellcheck_clean(script: Path) -> None:
    result = shellcheck(script)
    assert result.returncode == 0, result.stdout
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    if script.name != "lib.sh":  # sourced by the others
        assert "set -euo pipefail" in text


def test_shellcheck_flags_a_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    result = shellcheck(bad)
    assert result.returncode != 0 and "SC2086" in result.stdout
