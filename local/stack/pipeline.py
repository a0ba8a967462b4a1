"""One pipeline run on a running stack: trigger the producer, follow the asset hop to the
consumer, wait for the gold tables and collect the figures the demo prints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.stack import processes, report
from local.stack.airflow_api import AirflowApi
from local.stack.processes import StackError
from local.stack.state import StackInfo, load_info, read_password, save_info

Log = Callable[[str], None]

PRODUCER = "produce_data_asset"
CONSUMER = "trigger_databricks_workflow_dag"
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")


def api_for(info: StackInfo) -> AirflowApi:
    return AirflowApi(info.ui_url, info.username, read_password(info))


def prepare_dags(api: AirflowApi, timeout: float = 180) -> None:
    """Wait until the DAG processor has parsed both DAGs (fail on import errors); unpause both."""

    def dags_parsed() -> bool:
        if errors := api.import_errors():
            text = "\n".join(f"  {e['filename']}:\n{e['stack_trace']}" for e in errors)
            raise StackError(
                f"the DAG processor reports import errors (make parse shows them too):\n{text}"
            )
        return {PRODUCER, CONSUMER} <= api.dag_ids()

    processes.wait_for("both DAGs to be parsed", dags_parsed, timeout=timeout, interval=1.0)
    for dag_id in (PRODUCER, CONSUMER):
        api.unpause(dag_id)


def run(run_dir: Path, timeout: float, log: Log) -> StackInfo:
    """The pipeline once more on the stack ``up`` left running in ``run_dir``."""
    info = load_info(run_dir)
    running = processes.running(run_dir)
    if missing := [name for name in AIRFLOW_SERVICES if name not in running]:
        raise StackError(
            f"the stack in {run_dir} is not running ({', '.join(missing)} stopped): "
            "start it with make demo-up, or run make demo"
        )
    api = api_for(info)
    prepare_dags(api)
    run_pipeline(info, api, timeout, log)
    return info


def run_pipeline(info: StackInfo, api: AirflowApi, timeout: float, log: Log) -> None:
    """Trigger the producer on the sample dump and wait for the consumer's gold tables.

    ``force`` makes every run ingest and emit asset events, even when S3 already holds this
    dump (a second ``make demo-run`` would otherwise stop at ``check_source``).
    """
    started = time.monotonic()
    deadline = started + timeout
    run_dir = Path(info.run_dir)
    conf = {"source_base_url": info.files_url, "sites": [info.site], "force": True}
    info.producer_run_id = api.trigger(PRODUCER, conf)["dag_run_id"]
    log(f"Triggered {PRODUCER} run {info.producer_run_id} with conf {json.dumps(conf)}")

    progress = report.Progress(log)
    producer = _wait_run(api, PRODUCER, info.producer_run_id, deadline, progress, run_dir)
    info.consumer_run_id = _wait_consumer_created(api, info.producer_run_id, deadline, progress)
    consumer = _wait_run(api, CONSUMER, info.consumer_run_id, deadline, progress, run_dir)
    events = api.asset_events(PRODUCER, info.producer_run_id)
    info.timings.update(report.run_timings(producer, consumer, events))
    info.databricks_run_id = int(api.xcom(CONSUMER, info.consumer_run_id, "run_id"))
    info.databricks_run_url = str(api.xcom(CONSUMER, info.consumer_run_id, "run_page_url"))
    warehouse = Path(info.warehouse)
    info.table_rows = report.table_rows(warehouse)
    info.top_tags = report.top_tags(warehouse)
    info.timings["gold_after_trigger_s"] = round(time.monotonic() - started, 1)
    info.memory_pss = report.memory(run_dir)
    save_info(info)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _wait_run(
    api: AirflowApi,
    dag_id: str,
    run_id: str,
    deadline: float,
    progress: report.Progress,
    run_dir: Path,
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run = api.dag_run(dag_id, run_id)
        tasks = api.task_instances(dag_id, run_id)
        progress.show(dag_id, run["state"], tasks)
        if run["state"] == "failed":
            failed = [t["task_id"] for t in tasks if t["state"] in ("failed", "upstream_failed")]
            logs = run_dir / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
            raise StackError(f"{dag_id} run {run_id} failed (tasks {failed}); task logs: {logs}")
        return run if run["state"] == "success" else None

    what = f"{dag_id} run {run_id} to finish (raise the limit with --timeout)"
    return processes.wait_for(what, finished, timeout=_left(deadline), interval=1.0)


def _wait_consumer_created(
    api: AirflowApi, producer_run_id: str, deadline: float, progress: report.Progress
) -> str:
    """The consumer run the producer's asset events created (the asset hop)."""

    def created() -> str | None:
        events = api.asset_events(PRODUCER, producer_run_id)
        runs = {
            run["run_id"]
            for event in events
            for run in event["created_dagruns"]
            if run["dag_id"] == CONSUMER
        }
        if not runs:
            progress.show(CONSUMER, "waiting for the asset events", [])
        return min(runs, default=None)

    what = f"the asset events of {producer_run_id} to trigger {CONSUMER} (raise it with --timeout)"
    return processes.wait_for(what, created, timeout=_left(deadline), interval=0.5)
