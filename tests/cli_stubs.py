"""Stand-ins for kind, kubectl, helm, docker, aws, crane and git's network calls, for the behaviour
tests of scripts/*.sh (run through tests/script_sandbox.py).

Each stub records its call (one JSON line in $STUB_LOG) and answers from a JSON state file
($STUB_STATE) that it also updates, like the real tool would change the world: creating
something that exists fails with the real tool's AlreadyExists error, so a script that creates
anything twice fails its test.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

# Every stub call is a new process (~2,000 in the tests): re, base64, pathlib and typing cost a
# third of its start-up, so they are imported where needed, or only for the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEPS_LABEL = "io.github.airflow-stackexchange.deps-sha256"  # cicd/Dockerfile
WORKLOADS = [
    "deployment.apps/{r}-api-server",
    "deployment.apps/{r}-dag-processor",
    "deployment.apps/{r}-scheduler",
    "deployment.apps/{r}-statsd",
    "statefulset.apps/{r}-postgresql",
    "statefulset.apps/{r}-triggerer",
]


class Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        self.message = message


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def b64encode(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def b64decode(text: str) -> str:
    import base64

    return base64.b64decode(text).decode()


def load_state() -> dict[str, Any]:
    with open(os.environ["STUB_STATE"]) as f:
        return json.load(f)


def save_state(state: dict[str, Any]) -> None:
    with open(os.environ["STUB_STATE"], "w") as f:
        f.write(json.dumps(state, indent=1))


def pop_option(args: list[str], *names: str) -> str | None:
    """Remove `--name value` / `--name=value` from args; return the value."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
                del args[i : i + 2]
                return value
            if arg.startswith(name + "="):
                del args[i]
                return arg.split("=", 1)[1]
    return None


def flag(args: list[str], name: str) -> bool:
    if name in args:
        args.remove(name)
        return True
    return False


def kind(args: list[str], state: dict[str, Any]) -> str:
    name = pop_option(args, "--name") or "kind"
    match args:
        case ["version"]:
            return "kind v0.27.0 go1.23.6 linux/amd64"
        case ["get", "clusters"]:
            return "\n".join(state["clusters"])
        case ["create", "cluster", *_]:
            if name in state["clusters"]:
                raise Exit(1, f'ERROR: node(s) already exist for a cluster with the name "{name}"')
            state["clusters"].append(name)
            return f'Creating cluster "{name}" ...'
        case ["load", "docker-image", image]:
            if name not in state["clusters"]:
                raise Exit(1, f"ERROR: unknown cluster {name!r}")
            if image not in state["docker_images"]:
                raise Exit(1, f"ERROR: image: {image!r} not present locally")
            state["loaded_images"].append(image)
            return ""
        case ["delete", "cluster"]:
            if name in state["clusters"]:
                state["clusters"].remove(name)
            return f'Deleting cluster "{name}" ...'
    raise Exit(2, f"kind stub: unexpected {args}")


def kubectl(args: list[str], state: dict[str, Any]) -> str:
    pop_option(args, "--context")
    ns = pop_option(args, "--namespace", "-n") or "default"
    output = pop_option(args, "-o", "--output")
    dry_run = pop_option(args, "--dry-run")
    secrets = state["secrets"]
    match args:
        case ["version", "--client"]:
            return "Client Version: v1.29.14"
        case ["config", "get-contexts"] if output == "name":
            return "\n".join(state["contexts"])
        case ["get", "namespace", name]:
            if name not in state["namespaces"]:
                raise Exit(1, f'Error from server (NotFound): namespaces "{name}" not found')
            return f"{name}   Active"
        case ["create", "namespace", name]:
            if name in state["namespaces"]:
                raise Exit(1, f'Error from server (AlreadyExists): namespaces "{name}" exists')
            state["namespaces"].append(name)
            return f"namespace/{name} created"
        case ["label", "namespace", name, "--overwrite", *labels]:
            if name not in state["namespaces"]:
                raise Exit(1, f'Error from server (NotFound): namespaces "{name}" not found')
            state["namespace_labels"][name] = dict(label.split("=", 1) for label in labels)
            return f"namespace/{name} labeled"
        case ["get", "secret", name]:
            key = f"{ns}/{name}"
            if key not in secrets:
                raise Exit(1, f'Error from server (NotFound): secrets "{name}" not found')
            if output and output.startswith("jsonpath={.data."):
                field = output.removeprefix("jsonpath={.data.").removesuffix("}")
                return b64encode(secrets[key][field])
            return name
        case ["create", "secret", "generic", name, *sources]:
            data = {}
            for source in sources:
                field, path = source.removeprefix("--from-file=").split("=", 1)
                data[field] = read(path)
            if dry_run == "client":
                encoded = {k: b64encode(v) for k, v in data.items()}
                manifest = {"kind": "Secret", "metadata": {"name": name, "namespace": ns}}
                return json.dumps(manifest | {"data": encoded})
            if ns not in state["namespaces"]:
                raise Exit(1, f'Error from server (NotFound): namespaces "{ns}" not found')
            if f"{ns}/{name}" in secrets:
                raise Exit(1, f'Error from server (AlreadyExists): secrets "{name}" already exists')
            secrets[f"{ns}/{name}"] = data
            return f"secret/{name} created"
        case ["apply", "-f", "-"]:
            doc = json.loads(sys.stdin.read())
            meta = doc["metadata"]
            data = {k: b64decode(v) for k, v in doc.get("data", {}).items()}
            secrets[f"{meta['namespace']}/{meta['name']}"] = data
            return f"secret/{meta['name']} configured"
        case ["apply", "-f", path]:
            import yaml  # imported where needed: every stub call is a new process

            for doc in yaml.safe_load_all(read(path)):
                state["applied"].append(f"{ns}/{doc['kind']}/{doc['metadata']['name']}")
                if doc["kind"] == "PersistentVolume":
                    state["pvs"].setdefault(doc["metadata"]["name"], "Bound")
            return "applied"
        case ["get", "deployments,statefulsets"]:
            release = state["releases"].get(ns)
            return "\n".join(w.format(r=release["name"]) for w in WORKLOADS) if release else ""
        case ["get", "deployment", _]:
            return state["releases"][ns]["image"]
        case ["rollout", "status", workload, *_]:
            state["rolled_out"].append(workload)
            return f"{workload} successfully rolled out"
        case ["get", "pods", *_]:
            if output and output.startswith("jsonpath="):
                return state.get("pod_readiness", "")
            return state.get("pods_output", "")
        case ["exec", *_]:
            return state.get("import_errors", "No data found")
        case ["delete", "namespace", name, *_]:
            if name in state["namespaces"]:
                state["namespaces"].remove(name)
            for key in [k for k in secrets if k.startswith(f"{name}/")]:
                del secrets[key]
            return ""
        case ["get", "persistentvolume", name]:
            if name not in state["pvs"]:
                raise Exit(1, f'Error from server (NotFound): persistentvolumes "{name}" not found')
            return state["pvs"][name]
        case ["patch", "persistentvolume", name, "--type", "json", "-p", patch]:
            assert json.loads(patch) == [{"op": "remove", "path": "/spec/claimRef"}]
            state["pvs"][name] = "Available"
            return "persistentvolume patched"
        case ["delete", "persistentvolume", name, *_]:
            state["pvs"].pop(name, None)
            return ""
    raise Exit(2, f"kubectl stub: unexpected {args}")


def merged_values(args: list[str]) -> dict[str, Any]:
    """The --values files merged as helm merges them (maps deeply, the last file wins)."""
    import yaml

    def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    merged: dict[str, Any] = {}
    for i, arg in enumerate(args):
        if arg in ("--values", "-f"):
            merge(merged, yaml.safe_load(read(args[i + 1])) or {})
    return merged


def helm(args: list[str], state: dict[str, Any]) -> str:
    context = pop_option(args, "--kube-context") or ""
    ns = pop_option(args, "--namespace") or "default"
    match args:
        case ["version", "--short"]:
            return "v3.17.3+ge4da497"
        case ["status", name, *_]:
            if state["releases"].get(ns, {}).get("name") != name:
                raise Exit(1, "Error: release: not found")
            return f"NAME: {name}\nSTATUS: deployed"
        case ["upgrade", "--install", name, chart, *rest]:
            if ns not in state["namespaces"]:
                raise Exit(1, f'Error: create: failed to create: namespaces "{ns}" not found')
            values = merged_values(rest)
            if chart.endswith("chart/platform"):  # the repository's own chart
                revision = state["platform_releases"].get(ns, {"revision": 0})["revision"] + 1
                state["platform_releases"][ns] = {"name": name, "revision": revision}
                return f'Release "{name}" has been upgraded. Happy Helming!'
            image = "{repository}:{tag}".format(**values["images"]["airflow"])
            if context.startswith("kind-") and image not in state["loaded_images"]:
                raise Exit(1, f"image {image} was not loaded into the Kind nodes")
            revision = state["releases"].get(ns, {"revision": 0})["revision"] + 1
            state["releases"][ns] = {"name": name, "image": image, "revision": revision}
            return f'Release "{name}" has been upgraded. Happy Helming!'
        case ["uninstall", name, *_]:
            state["releases"].pop(ns, None)
            return f'release "{name}" uninstalled'
    raise Exit(2, f"helm stub: unexpected {args}")


def docker(args: list[str], state: dict[str, Any]) -> str:
    match args:
        case ["version", "--format", _]:
            return "27.5.1"
        case ["info"]:
            if not state["docker_daemon"]:
                raise Exit(1, "Cannot connect to the Docker daemon")
            return "Server Version: 27.5.1"
        case ["build", *rest]:
            tag = pop_option(rest, "--tag")
            build_args = dict(a.split("=", 1) for a in args if "=" in a)
            state["docker_images"].append(tag)
            state["builds"].append(args)
            # the labels cicd/Dockerfile sets from its build args
            state["image_labels"][tag] = {
                "org.opencontainers.image.revision": build_args.get("GIT_REVISION", ""),
                DEPS_LABEL: build_args.get("DEPS_HASH", ""),
            }
            return ""
        case ["pull", image]:
            tag = image.rsplit(":", 1)[1]
            if not any(tag in i.get("imageTags", []) for i in state["ecr_images"]):
                raise Exit(1, f"Error response from daemon: manifest for {image} not found")
            state["docker_images"].append(image)
            return ""
        case ["login", "--username", "AWS", "--password-stdin", registry]:
            if not sys.stdin.read().strip():
                raise Exit(1, "Error: Cannot perform an interactive login from a non TTY device")
            state["logged_in"].append(registry)
            return "Login Succeeded"
        case ["push", image]:
            if image.split("/", 1)[0] not in state["logged_in"]:
                raise Exit(1, "no basic auth credentials")
            tag = image.rsplit(":", 1)[1]
            pushed = {"imageTags": [tag], "imagePushedAt": "2099-01-01T00:00:00+00:00"}
            state["ecr_images"].append(pushed)
            return ""
        case ["image", "inspect", image, "--format", template]:
            if image not in state["image_labels"]:
                raise Exit(1, f"Error: No such image: {image}")
            import re

            label = re.fullmatch(r'\{\{ index \.Config\.Labels "([^"]+)" \}\}', template)
            assert label, template
            return state["image_labels"][image].get(label.group(1), "<no value>")
        case ["buildx", "imagetools", "inspect", image, "--format", _]:
            return json.dumps(registry_digest(image, state))
        case ["exec", _node, "test", "-d", path]:
            if path in state.get("missing_node_dirs", []):
                raise Exit(1)
            return ""
        case ["exec", *_]:
            state.setdefault("node_commands", []).append(args[2:])
            return ""
    raise Exit(2, f"docker stub: unexpected {args}")


def aws(args: list[str], state: dict[str, Any]) -> str:
    import jmespath  # what the aws CLI applies --query with

    pop_option(args, "--region")
    query = pop_option(args, "--query")
    pop_option(args, "--output")
    match args:
        case ["--version"]:
            return "aws-cli/2.22.0 Python/3.12.6 Linux/6.8 exe/x86_64"
        case ["sts", "get-caller-identity"]:
            if not state["aws_identity"]:
                raise Exit(255, "Unable to locate credentials.")
            return jmespath.search(query, {"Account": "123456789012"}) if query else "{}"
        case ["ecr", "get-login-password"]:
            return "testing"
        case ["ecr", "describe-repositories", "--repository-names", name]:
            if name not in state["ecr_repositories"]:
                raise Exit(254, "RepositoryNotFoundException")
            return name
        case ["ecr", "create-repository", "--repository-name", name, *_]:
            if name in state["ecr_repositories"]:
                raise Exit(254, "RepositoryAlreadyExistsException")
            state["ecr_repositories"].append(name)
            return name
        case ["ecr", "describe-images", "--repository-name", _, "--image-ids", image_id]:
            tag = image_id.removeprefix("imageTag=")
            if not any(tag in i.get("imageTags", []) for i in state["ecr_images"]):
                raise Exit(254, "ImageNotFoundException")
            return tag
        case ["ecr", "describe-images", "--repository-name", _]:
            result = jmespath.search(query, {"imageDetails": state["ecr_images"]})
            return "None" if result is None else str(result)
    raise Exit(2, f"aws stub: unexpected {args}")


def registry_digest(image: str, state: dict[str, Any]) -> str:
    if image not in state.get("registry_digests", {}):
        raise Exit(1, f"MANIFEST_UNKNOWN: {image}")
    return state["registry_digests"][image]


def crane(args: list[str], state: dict[str, Any]) -> str:
    match args:
        case ["digest", image]:
            return registry_digest(image, state)
    raise Exit(2, f"crane stub: unexpected {args}")


def git(args: list[str], state: dict[str, Any]) -> str:
    """`git ls-remote` (the network), answered from state. The sandbox's git stub runs the real
    git for every other call, so they never reach this."""
    match args:
        case ["ls-remote", url, *refs]:
            tags = state.get("remote_tags", {}).get(url, {})
            return "\n".join(f"{tags[r]}\t{r}" for r in refs if r in tags)
    raise Exit(2, f"git stub: unexpected {args}")


TOOLS: dict[str, Callable[[list[str], dict[str, Any]], str]] = {
    "kind": kind,
    "kubectl": kubectl,
    "helm": helm,
    "docker": docker,
    "aws": aws,
    "crane": crane,
    "git": git,
}


def keep_values_files(args: list[str]) -> dict[str, dict[str, str]]:
    """A copy of each --values file (path -> {copy, mode}), next to the call log."""
    import shutil  # imported where needed, as yaml: every stub call is a new process
    import uuid
    from pathlib import Path

    kept = {}
    for i, arg in enumerate(args[:-1]):
        source = Path(args[i + 1])
        if arg in ("--values", "-f") and source.is_file():
            copy = (
                Path(os.environ["STUB_LOG"]).parent / "helm-values" / uuid.uuid4().hex / source.name
            )
            copy.parent.mkdir(parents=True)
            shutil.copyfile(source, copy)
            kept[str(source)] = {"copy": str(copy), "mode": oct(source.stat().st_mode & 0o777)}
    return kept


def main(tool: str) -> None:
    args = sys.argv[1:]
    record: dict[str, Any] = {"tool": tool, "args": args}
    if tool == "helm":  # values files the script removes when it exits: kept for the tests
        record["files"] = keep_values_files(args)
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps(record) + "\n")
    state = load_state()
    before = json.dumps(state)
    try:
        out = TOOLS[tool](list(args), state)
    except Exit as exc:
        print(exc.message, file=sys.stderr)
        sys.exit(exc.code)
    if json.dumps(state) != before:  # pipelines run two stubs at once: only writers write
        save_state(state)
    if out:
        print(out)
