"""What the demo prints: progress, each site's gold tables, timings and the stack's memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.compute as pc

from local.databricks_standin import read_table
from local.databricks_standin.tables import table_path
from local.stack import processes

GOLD_TAGS = "gold_most_popular_tags"


def task_name(ti: dict[str, Any]) -> str:
    """``task_id``, with the site (the rendered map index) of a mapped task instance."""
    if ti["map_index"] < 0:
        return ti["task_id"]
    return f"{ti['task_id']}[{ti.get('rendered_map_index') or ti['map_index']}]"


class Progress:
    """One line per change of a DAG run's state or its tasks' states, with the elapsed time
    (repeated every ``heartbeat`` seconds while it runs); each run (``what``) has its own line."""

    def __init__(self, log: Callable[[str], None], heartbeat: float = 15.0) -> None:
        self.log = log
        self.heartbeat = heartbeat
        self.started = time.monotonic()
        self.last: dict[str, tuple[str, float]] = {}  # what -> (line, when)

    def show(self, what: str, state: str, tasks: list[dict[str, Any]]) -> None:
        done = sum(1 for t in tasks if t["state"] == "success")
        active = [
            f"{task_name(t)} ({t['state']})"
            for t in tasks
            if t["state"] in ("scheduled", "queued", "running", "deferred", "up_for_retry")
        ]
        detail = f" {done}/{len(tasks)} tasks done" if tasks else ""
        if active:
            detail += f", now: {', '.join(sorted(active))}"
        line = f"{what}: {state}{detail}"
        now = time.monotonic()
        last_line, last_time = self.last.get(what, ("", 0.0))
        beat = state not in ("success", "failed") and now - last_time >= self.heartbeat
        if line != last_line or beat:
            self.log(f"  [{now - self.started:5.0f}s] {line}")
            self.last[what] = (line, now)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_timings(
    producer: dict[str, Any], consumers: list[dict[str, Any]], events: list[dict[str, Any]]
) -> dict[str, float]:
    """Durations of the producer run, the asset hop and the consumer runs.

    The hop is measured for the first consumer run: from the newest asset event that created it
    to its start (not from the producer run's ``end_date``: the scheduler may start the consumer
    run in the same loop that marks the producer run successful). A later consumer run (another
    site's events, while the first ran) waits for the first, as the DAG allows one active run.
    The consumer figure spans from the first consumer run's start to the last one's end.
    """

    def seconds(start: str, end: str) -> float:
        return round((_time(end) - _time(start)).total_seconds(), 2)

    first = min(consumers, key=lambda run: _time(run["start_date"]))
    created_first = [
        event
        for event in events
        if any(run["run_id"] == first["dag_run_id"] for run in event["created_dagruns"])
    ]
    published = max(created_first, key=lambda event: _time(event["timestamp"]))["timestamp"]
    last_end = max(run["end_date"] for run in consumers)
    return {
        "producer_run_s": seconds(producer["start_date"], producer["end_date"]),
        "asset_hop_s": seconds(published, first["start_date"]),
        "consumer_run_s": seconds(first["start_date"], last_end),
    }


def table_rows(warehouse: Path, site: str) -> dict[str, int]:
    """Row count of ``site`` in every table the job wrote (bronze, silver, gold), by name."""
    schema_dir = table_path(warehouse, GOLD_TAGS).parent
    names = sorted(p.name for p in schema_dir.iterdir() if p.is_dir() and p.name[0] != ".")
    return {name: _site_rows(warehouse, name, site).num_rows for name in names}


def top_tags(warehouse: Path, site: str, limit: int = 10) -> list[tuple[str, int]]:
    rows = _site_rows(warehouse, GOLD_TAGS, site).sort_by("Rank").to_pylist()
    return [(row["Tag"], row["Posts"]) for row in rows[:limit]]


def _site_rows(warehouse: Path, name: str, site: str) -> pa.Table:
    """``site``'s rows of a table (every table holds all sites, told apart by ``site``)."""
    table = read_table(warehouse, name)
    return table.filter(pc.equal(table["site"], site))


def memory(run_dir: Path) -> dict[str, int]:
    """Proportional set size (bytes) of each service with all its descendants."""
    sizes = {}
    for name, process in processes.running(run_dir).items():
        total = 0
        for member in processes.tree(process):
            try:
                total += member.memory_full_info().pss
            except psutil.Error:
                continue
        sizes[name] = total
    return sizes
