"""What a running stack left in its run directory: ``stack.json`` (no secrets) and the login.

``up`` writes it once the stack is ready; ``run`` adds the pipeline's results; ``status`` and
``logs`` read it. The password lives in Airflow's own 0600 passwords file, never in stack.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from local.stack.processes import StackError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUN_DIR = REPO / ".run" / "demo"
# As `make` sets it: the DAGs folder (shared code), the bundle's package, the repository root.
PYTHONPATH = ":".join(str(REPO / part) for part in ("dags", "notebooks", ""))
USERNAME = "admin"


@dataclass
class StackInfo:
    """What ``up`` started and what the last ``run`` produced (``<run>/stack.json``)."""

    run_dir: str
    ui_url: str
    username: str
    password_file: str
    database: str
    s3_endpoint: str
    files_url: str
    databricks_url: str
    databricks_token_file: str
    warehouse: str
    site: str
    dump: str
    bucket: str
    producer_run_id: str = ""
    consumer_run_id: str = ""
    databricks_run_id: int = 0
    databricks_run_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    table_rows: dict[str, int] = field(default_factory=dict)
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    memory_pss: dict[str, int] = field(default_factory=dict)


def info_path(run_dir: Path) -> Path:
    return run_dir / "stack.json"


def save_info(info: StackInfo) -> None:
    info_path(Path(info.run_dir)).write_text(json.dumps(asdict(info), indent=2) + "\n")


def load_info(run_dir: Path) -> StackInfo:
    """The stack ``up`` started in ``run_dir``; a clear error if it never got that far."""
    try:
        return StackInfo(**json.loads(info_path(run_dir).read_text()))
    except FileNotFoundError:
        raise StackError(
            f"no stack was started in {run_dir} (no {info_path(run_dir).name}): "
            "start one with make demo-up (python -m local.stack up)"
        ) from None


def read_password(info: StackInfo) -> str:
    return json.loads(Path(info.password_file).read_text())[info.username]
