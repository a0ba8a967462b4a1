"""What the demo prints: progress, the gold tables, timings and the stack's memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from local.databricks_standin import read_table
from local.databricks_standin.tables import table_path
from local.stack import processes

GOLD_TAGS = "gold_most_popular_tags"


class Progress:
    """One line per change of a DAG run's state or its tasks' states, with the elapsed time."""

    def __init__(self, log: Callable[[str], None], heartbeat: float = 15.0) -> None:
        self.log = log
        self.heartbeat = heartbeat
        self.started = time.monotonic()
        self.last_line = ""
        self.last_time = 0.0

    def show(self, dag_id: str, state: str, tasks: list[dict[str, Any]]) -> None:
        done = sum(1 for t in tasks if t["state"] == "success")
        active = [
            f"{t['task_id']} ({t['state']})"
            for t in tasks
            if t["state"] in ("scheduled", "queued", "running", "deferred", "up_for_retry")
        ]
        detail = f" {done}/{len(tasks)} tasks done" if tasks else ""
        if active:
            detail += f", now: {', '.join(sorted(active))}"
        line = f"{dag_id}: {state}{detail}"
        now = time.monotonic()
        if line != self.last_line or now - self.last_time >= self.heartbeat:
            self.log(f"  [{now - self.started:5.0f}s] {line}")
            self.last_line, self.last_time = line, now


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_timings(
    producer: dict[str, Any], consumer: dict[str, Any], events: list[dict[str, Any]]
) -> dict[str, float]:
    """Durations of both runs and the asset hop: last asset event -> consumer run start.

    The hop starts at the event, not at the producer run's ``end_date``: the scheduler may
    start the consumer run in the same loop that marks the producer run successful.
    """

    def seconds(start: str, end: str) -> float:
        return round((_time(end) - _time(start)).total_seconds(), 2)

    published = max(events, key=lambda event: _time(event["timestamp"]))["timestamp"]
    return {
        "producer_run_s": seconds(producer["start_date"], producer["end_date"]),
        "asset_hop_s": seconds(published, consumer["start_date"]),
        "consumer_run_s": seconds(consumer["start_date"], consumer["end_date"]),
    }


def table_rows(warehouse: Path) -> dict[str, int]:
    """Row count of every table the job wrote (bronze, silver, gold), by name."""
    schema_dir = table_path(warehouse, GOLD_TAGS).parent
    names = sorted(p.name for p in schema_dir.iterdir() if p.is_dir() and p.name[0] != ".")
    return {name: read_table(warehouse, name).num_rows for name in names}


def top_tags(warehouse: Path, limit: int = 10) -> list[tuple[str, int]]:
    rows = read_table(warehouse, GOLD_TAGS).sort_by("Rank").to_pylist()
    return [(row["Tag"], row["Posts"]) for row in rows[:limit]]


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
