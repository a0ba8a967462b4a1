"""What a running stack left in its run directory: ``stack.json`` (no secrets) and the login.

``up`` writes it once the stack is ready; ``run`` adds the pipeline's results; ``status`` and
``logs`` read it. The password lives in Airflow's own 0600 passwords file, never in stack.json.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from local.stack import StackError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUN_DIR = REPO / ".run" / "demo"
# As `make` sets it: the DAGs folder (shared code), the bundle's package, the repository root.
PYTHONPATH = ":".join(str(REPO / part) for part in ("dags", "notebooks", ""))
USERNAME = "admin"
# Written into every run directory ``up`` creates: ``up`` deletes only a directory carrying it.
RUN_DIR_MARKER = ".local-stack-run-dir"


@dataclass
class SiteResult:
    """One site's part of a pipeline run: its Databricks run and its rows in each table."""

    databricks_run_id: int
    databricks_run_url: str
    table_rows: dict[str, int]
    top_tags: list[tuple[str, int]]


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
    dumps: dict[str, str]  # site -> the archive the file server serves
    bucket: str
    max_active_sites: int  # the producer's fan-out bound (STACKEXCHANGE_MAX_ACTIVE_SITES)
    producer_run_id: str = ""
    consumer_run_ids: list[str] = field(default_factory=list)
    sites: dict[str, SiteResult] = field(default_factory=dict)  # what the last run produced
    timings: dict[str, float] = field(default_factory=dict)
    memory_pss: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:  # from stack.json: plain dicts
        self.sites = {
            site: result if isinstance(result, SiteResult) else SiteResult(**result)
            for site, result in self.sites.items()
        }


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


def owned_run_dir(run_dir: Path) -> bool:
    """Whether ``up`` created ``run_dir`` (it carries the marker), so ``up`` may delete it."""
    return (run_dir / RUN_DIR_MARKER).is_file()


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory the stack did not create, before anything touches it.

    Missing, empty, or carrying the marker is fine; anything else (``DEMO_RUN_DIR=.``, a home
    directory, a typo pointing at real data) is an error naming the directory and the fix.
    """
    if not run_dir.exists() or owned_run_dir(run_dir):
        return
    if not run_dir.is_dir():
        raise StackError(f"the run directory {run_dir} is a file: choose a directory path")
    if any(run_dir.iterdir()):
        raise StackError(
            f"the run directory {run_dir} is not empty and was not created by the local stack "
            f"(no {RUN_DIR_MARKER} in it), so it is not deleted: choose a new or empty directory "
            "(--run-dir DIR, or make demo DEMO_RUN_DIR=DIR), or remove it yourself if it only "
            "holds an older stack's files"
        )


def fresh_run_dir(run_dir: Path) -> None:
    """Empty ``run_dir`` for a new stack: delete it only if the stack created it, then create it
    with the marker. Raises :class:`StackError` (see :func:`check_run_dir`) otherwise."""
    check_run_dir(run_dir)
    if owned_run_dir(run_dir):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_DIR_MARKER).write_text(
        "Created by python -m local.stack up, which deletes this directory when it starts again.\n"
    )
