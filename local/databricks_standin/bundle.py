"""Read the job definition from the Databricks Asset Bundle (``databricks.yml`` + resources)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

BUNDLE_DIR = Path(__file__).resolve().parents[2] / "notebooks"
_VARIABLE = re.compile(r"\$\{var\.([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Task:
    key: str
    notebook: Path
    depends_on: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    name: str
    parameters: dict[str, str]  # name -> default
    tasks: tuple[Task, ...]
    timeout_seconds: int
    max_concurrent_runs: int = 1  # Databricks' default
    queue_enabled: bool = False  # a run over the limit is queued when set, else skipped

    def task_order(self) -> list[Task]:
        """Tasks in an order that respects ``depends_on``; raises on unknown deps or cycles."""
        by_key = {task.key: task for task in self.tasks}
        for task in self.tasks:
            unknown = set(task.depends_on) - by_key.keys()
            if unknown:
                raise ValueError(f"Task {task.key} depends on unknown task(s) {sorted(unknown)}")
        sorter = TopologicalSorter({task.key: task.depends_on for task in self.tasks})
        try:
            return [by_key[key] for key in sorter.static_order()]
        except CycleError as error:
            cycle = sorted(set(error.args[1]))
            raise ValueError(
                f"Task dependencies of job {self.name} form a cycle among {cycle}"
            ) from None


def _load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _variables(bundle: dict[str, Any], target: str | None) -> tuple[str, dict[str, str]]:
    targets = bundle.get("targets") or {}
    if target is None:
        defaults = [name for name, spec in targets.items() if (spec or {}).get("default")]
        target = defaults[0] if defaults else next(iter(targets), "")
    if targets and target not in targets:
        raise ValueError(f"Bundle has no target {target!r}; targets: {sorted(targets)}")
    values = {
        name: str(spec.get("default", "")) for name, spec in (bundle.get("variables") or {}).items()
    }
    overrides = (targets.get(target) or {}).get("variables") or {}
    values.update({name: str(value) for name, value in overrides.items()})
    return target, values


def _resolve(value: Any, variables: dict[str, str], where: str) -> str:
    def lookup(match: re.Match[str]) -> str:
        if match.group(1) not in variables:
            raise ValueError(f"{where}: undefined bundle variable ${{var.{match.group(1)}}}")
        return variables[match.group(1)]

    return _VARIABLE.sub(lookup, str(value))


def load_jobs(bundle_dir: Path = BUNDLE_DIR, target: str | None = None) -> list[Job]:
    """Every job the bundle defines, with ``${var.*}`` resolved for ``target`` (default target)."""
    bundle = _load_yaml(bundle_dir / "databricks.yml")
    _, variables = _variables(bundle, target)
    jobs: list[Job] = []
    for pattern in bundle.get("include") or []:
        for path in sorted(bundle_dir.glob(pattern)):
            resources = (_load_yaml(path).get("resources") or {}).get("jobs") or {}
            for resource_key, spec in resources.items():
                where = f"{path.name}: job {resource_key}"
                tasks = tuple(
                    Task(
                        key=task["task_key"],
                        notebook=(path.parent / task["notebook_task"]["notebook_path"]).resolve(),
                        depends_on=tuple(dep["task_key"] for dep in task.get("depends_on") or []),
                    )
                    for task in spec.get("tasks") or []
                )
                parameters = {
                    param["name"]: _resolve(param.get("default", ""), variables, where)
                    for param in spec.get("parameters") or []
                }
                jobs.append(
                    Job(
                        name=_resolve(spec.get("name", resource_key), variables, where),
                        parameters=parameters,
                        tasks=tasks,
                        timeout_seconds=int(spec.get("timeout_seconds") or 0),
                        max_concurrent_runs=int(spec.get("max_concurrent_runs") or 1),
                        queue_enabled=bool((spec.get("queue") or {}).get("enabled", False)),
                    )
                )
    return jobs


def target_variables(bundle_dir: Path = BUNDLE_DIR, target: str | None = None) -> dict[str, str]:
    """The bundle variables (``catalog``, ``schema``...) as ``target`` sets them."""
    return _variables(_load_yaml(bundle_dir / "databricks.yml"), target)[1]
