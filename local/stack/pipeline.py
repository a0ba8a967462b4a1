"""One pipeline run on a running stack: trigger the producer for every sample site, follow the
asset hop to the consumer runs, wait for each site's gold tables and collect the figures the demo
prints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.stack import StackError, processes, report
from local.stack.airflow_api import AirflowApi
from local.stack.state import SiteResult, StackInfo, load_info, read_password, save_info

Log = Callable[[str], None]

PRODUCER = "produce_data_asset"
CONSUMER = "trigger_databricks_workflow_dag"
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
JOB_TASK = "run_medallion_job"  # the consumer's task mapped per site


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
    """Trigger the producer on every sample site and wait for each site's gold tables.

    One producer run fans out over the sites (at most ``max_active_sites`` at once). Each site's
    ingest emits its own asset events, so the consumer may run once for all sites or once per
    site (it runs one Databricks job run per site either way): every consumer run the events
    created is followed to its end. ``force`` makes every run ingest and emit asset events, even
    when S3 already holds the dumps (a second ``make demo-run`` would otherwise stop at
    ``check_source``).
    """
    started = time.monotonic()
    deadline = started + timeout
    run_dir = Path(info.run_dir)
    sites = list(info.dumps)
    conf = {"source_base_url": info.files_url, "sites": sites, "force": True}
    info.producer_run_id = api.trigger(PRODUCER, conf)["dag_run_id"]
    log(f"Triggered {PRODUCER} run {info.producer_run_id} with conf {json.dumps(conf)}")

    progress = report.Progress(log)
    producer = processes.wait_for(
        f"{PRODUCER} run {info.producer_run_id} to finish (raise the limit with --timeout)",
        lambda: _finished(api, PRODUCER, info.producer_run_id, progress, run_dir),
        timeout=_left(deadline),
        interval=1.0,
    )
    stall = _Stall()
    events, consumers = processes.wait_for(
        f"the consumer runs of {info.producer_run_id}'s asset events to finish "
        "(raise the limit with --timeout)",
        lambda: _consumers_finished(api, info.producer_run_id, progress, run_dir, stall),
        timeout=_left(deadline),
        interval=1.0,
    )
    info.consumer_run_ids = [run["dag_run_id"] for run in consumers]
    info.timings.update(report.run_timings(producer, consumers, events))
    jobs = _databricks_runs(api, info.consumer_run_ids)
    if missing := [site for site in sites if site not in jobs]:
        raise StackError(
            f"no Databricks job run for {', '.join(missing)} in the consumer runs "
            f"{', '.join(info.consumer_run_ids)}; see their task logs under {run_dir}/airflow/logs"
        )
    warehouse = Path(info.warehouse)
    info.sites = {
        site: SiteResult(
            databricks_run_id=jobs[site][0],
            databricks_run_url=jobs[site][1],
            table_rows=report.table_rows(warehouse, site),
            top_tags=report.top_tags(warehouse, site),
        )
        for site in sites
    }
    info.timings["gold_after_trigger_s"] = round(time.monotonic() - started, 1)
    info.memory_pss = report.memory(run_dir)
    save_info(info)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _finished(
    api: AirflowApi, dag_id: str, run_id: str, progress: report.Progress, run_dir: Path
) -> dict[str, Any] | None:
    """The run once it succeeded; None while it runs; an error naming its failed tasks."""
    run = api.dag_run(dag_id, run_id)
    tasks = api.task_instances(dag_id, run_id)
    progress.show(f"{dag_id} {run_id}", run["state"], tasks)
    if run["state"] == "failed":
        failed = [report.task_name(t) for t in tasks if t["state"] in ("failed", "upstream_failed")]
        logs = run_dir / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        raise StackError(f"{dag_id} run {run_id} failed (tasks {failed}); task logs: {logs}")
    return run if run["state"] == "success" else None


class _Stall:
    """How long asset events have waited for a consumer run while none was queued or running."""

    LIMIT = 90.0  # seconds: several scheduler loops, far above the asset hop

    def __init__(self) -> None:
        self.since: float | None = None

    def check(self, api: AirflowApi, waiting: list[dict[str, Any]]) -> None:
        active = [r for r in api.dag_runs(CONSUMER) if r["state"] in ("queued", "running")]
        if not waiting or active:
            self.since = None
            return
        self.since = self.since or time.monotonic()
        if time.monotonic() - self.since >= self.LIMIT:
            sites = sorted({event["extra"].get("site", "?") for event in waiting})
            raise StackError(
                f"the asset events of {', '.join(sites)} got no {CONSUMER} run within "
                f"{self.LIMIT:.0f}s: Airflow 3.0.2's scheduler leaves events that arrive while it "
                "creates the consumer's run without a run of their own (apache/airflow#56050, "
                "#62501) until another event comes. Run the pipeline again (make demo-run); "
                "with --max-active-sites above 1, sites ending together make this likely."
            )


def _consumers_finished(
    api: AirflowApi,
    producer_run_id: str,
    progress: report.Progress,
    run_dir: Path,
    stall: _Stall,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The producer run's asset events and the consumer runs they created (the asset hop), once
    every event has its run and every such run succeeded."""
    events = api.asset_events(PRODUCER, producer_run_id)
    run_ids = sorted(
        {run["run_id"] for e in events for run in e["created_dagruns"] if run["dag_id"] == CONSUMER}
    )
    runs = [_finished(api, CONSUMER, run_id, progress, run_dir) for run_id in run_ids]
    waiting = [e for e in events if not any(r["dag_id"] == CONSUMER for r in e["created_dagruns"])]
    if waiting:
        progress.show(CONSUMER, f"{len(waiting)} asset event(s) not consumed yet", [])
    stall.check(api, waiting)
    if waiting or not events or None in runs:
        return None
    return events, [run for run in runs if run is not None]


def _databricks_runs(api: AirflowApi, consumer_run_ids: list[str]) -> dict[str, tuple[int, str]]:
    """Per site, the Databricks run (id, page URL) its mapped job task started."""
    runs: dict[str, tuple[int, str]] = {}
    for run_id in consumer_run_ids:
        for ti in api.task_instances(CONSUMER, run_id):
            if ti["task_id"] != JOB_TASK or ti["state"] != "success":
                continue
            job_run_id, url = (
                api.xcom(CONSUMER, run_id, JOB_TASK, key, ti["map_index"])
                for key in ("run_id", "run_page_url")
            )
            runs[ti["rendered_map_index"]] = (int(job_run_id), str(url))
    return runs
