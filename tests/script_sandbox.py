"""A sandbox that runs scripts/*.sh and cicd/*.sh against the stub CLIs of tests/cli_stubs.py.

The scripts run from a copy of the repository files they use, with a PATH holding only the stubs
and the system utilities listed in UTILITIES, so a real docker or kubectl on this machine is
never reached and a tool the scripts need but nobody listed shows up in the tests.
"""

from __future__ import annotations

import json
import py_compile
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
STUBBED = ("kind", "kubectl", "helm", "docker", "aws", "git", "crane")
UTILITIES = (
    "awk", "bash", "base64", "cat", "chmod", "cut", "date", "dirname", "grep", "head",
    "mkdir", "mktemp", "mv", "rm", "sed", "sha256sum", "tr", "curl",
)  # fmt: skip
COPIED = (
    "scripts", "cicd", "chart", ".github", "kind-config.yaml", "versions.env", "requirements.txt",
    "constraints.txt",
)  # fmt: skip
VERSIONS = dict(
    line.split("=", 1)
    for line in (REPO / "versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)
VALUES = yaml.safe_load((REPO / "chart/values.yaml").read_text())

NEWEST_MAIN = "main-20250101T000000Z-aaaaaaaaaaaa"


def ecr_image(tag: str | None, pushed: str) -> dict[str, Any]:
    return ({"imageTags": [tag]} if tag else {}) | {"imagePushedAt": f"{pushed}T10:00:00+00:00"}


ECR_IMAGES = [  # lexical order of the main tags is the opposite of the push order
    ecr_image("main-20250301T000000Z-zzzzzzzzzzzz", "2025-01-01"),
    ecr_image("v1.0.0", "2025-02-01"),
    ecr_image(NEWEST_MAIN, "2025-03-01"),
    # pushed later, never picked by default: a branch build, an uncommitted build, no tag
    ecr_image("feature-x-20250401T000000Z-bbbbbbbbbbbb", "2025-04-01"),
    ecr_image("main-20250501T000000Z-cccccccccccc-dirty", "2025-05-01"),
    ecr_image(None, "2025-06-01"),
]
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
PRODUCTION_CONTEXT = "prod-cluster"
# PROFILE=production settings of the tests (the database URI is given per test).
PRODUCTION = {
    "PROFILE": "production",
    "KUBE_CONTEXT": PRODUCTION_CONTEXT,
    "REMOTE_LOG_BUCKET": "logs",
    "INGRESS_HOST": "airflow.example.com",
    "INGRESS_CLASS": "nginx",
    "METADATA_DB_CIDR": "10.0.32.0/20",
}
# A URI whose password needs URL-encoding, to the external database over TLS.
DB_PASSWORD = 'pa:ss@w"rd'
METADATA_DB_URI = "postgresql://airflow_user:pa%3Ass%40w%22rd@db.example.internal:5433/airflow_meta?sslmode=require"


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
        # The tests make ~2,000 stub calls: each starts as cheaply as Python can. cli_stubs is
        # compiled once (with -B each call would compile it again; a .pyc alone is importable),
        # and -IS skips the site module and its .pth files (a fifth of the start-up): the
        # stubs need only the standard library and jmespath (aws --query), from this venv.
        stub_lib = root / "stub-lib"
        source = REPO / "tests" / "cli_stubs.py"
        py_compile.compile(str(source), cfile=str(stub_lib / "cli_stubs.pyc"), doraise=True)
        venv = sysconfig.get_path("purelib")
        for tool in STUBBED:
            code = (
                f"import sys; sys.path.insert(0, {str(stub_lib)!r}); sys.path.append({venv!r}); "
                f"from cli_stubs import main; main({tool!r})"
            )
            stub = self.bin / tool
            if tool == "git":  # the real one on the local checkout, not recorded: only
                # ls-remote, which reaches the network, is stubbed; the others start no Python
                stub.write_text(
                    '#!/bin/bash\n[ "${1:-}" = ls-remote ] || exec "$STUB_REAL_GIT" "$@"\n'
                    f'exec {sys.executable} -ISB -c "{code}" "$@"\n'
                )
            else:
                stub.write_text(f"#!{sys.executable} -ISB\n{code}\n")
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
            "image_labels": {},
            "applied": [],
            "pvs": {},
            "namespace_labels": {},
            "rolled_out": [],
            "ecr_images": [dict(i) for i in ECR_IMAGES],
            "ecr_repositories": ["airflow-stackexchange"],
            "docker_daemon": True,
            "aws_identity": True,
            "contexts": ["kind-airflow", PRODUCTION_CONTEXT],
            "platform_releases": {},
        }
        self.save()
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "STUB_STATE": str(self.state_file),
            "STUB_LOG": str(self.log_file),
            "STUB_REAL_GIT": shutil.which("git") or "git",
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


def commands(result: Result) -> list[str]:
    """Calls as strings without the kube context flags, e.g. 'kubectl create namespace airflow'."""
    out = []
    for call in result.calls:
        args = list(call["args"])
        if args[:1] in (["--context"], ["--kube-context"]):
            del args[:2]
        out.append(" ".join([call["tool"], *args]))
    return out


def first(result: Result, prefix: str) -> int:
    for i, command in enumerate(commands(result)):
        if command.startswith(prefix):
            return i
    raise AssertionError(f"no call starting with {prefix!r} in:\n" + "\n".join(commands(result)))


def helm_install_args(result: Result, chart: str = "airflow") -> list[str]:
    """The helm upgrade arguments of the release of `chart` ("airflow" or "platform"), the
    generated values file replaced by the stub's copy (the script removes it on exit)."""
    calls = [
        c for c in result.calls if c["tool"] == "helm" and "upgrade" in c["args"]
        and Path(c["args"][c["args"].index("--install") + 2]).name == chart
    ]  # fmt: skip
    assert len(calls) == 1, calls
    kept = calls[0]["files"]
    return [kept[a]["copy"] if a in kept else a for a in calls[0]["args"]]


def settings_file(args: list[str]) -> Path:
    """The generated values file (scripts/lib.sh write_settings_values) among the --values."""
    (path,) = [args[i + 1] for i, a in enumerate(args) if a == "--values"
               and Path(args[i + 1]).name == "settings.yaml"]  # fmt: skip
    return Path(path)


def set_values(args: list[str]) -> dict[str, str]:
    """The generated values file flattened to helm --set keys: images.airflow.tag, env[0].name."""
    flat: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        else:
            flat[key] = str(value).lower() if isinstance(value, bool) else str(value)

    walk(yaml.safe_load(settings_file(args).read_text()), "")
    return flat


def values_files(args: list[str]) -> list[str]:
    return [Path(args[i + 1]).name for i, a in enumerate(args) if a == "--values"]
