"""Job runs: queued, executed one at a time on the warm Spark session, states as Databricks."""

from __future__ import annotations

import itertools
import queue
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyspark.sql import SparkSession

from local.databricks_standin.bundle import Job, Task
from local.databricks_standin.notebooks import Widgets, run_notebook


def _api_state(life_cycle_state: str, state_message: str, result_state: str) -> dict[str, str]:
    """A run's or task's ``state`` object; ``result_state`` only once there is one."""
    state = {"life_cycle_state": life_cycle_state, "state_message": state_message}
    if result_state:
        state["result_state"] = result_state
    return state


@dataclass
class TaskRun:
    run_id: int
    task: Task
    life_cycle_state: str = "PENDING"
    result_state: str = ""
    state_message: str = ""
    error: str = ""
    error_trace: str = ""
    start_time: int = 0
    end_time: int = 0

    def to_api(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "task_key": self.task.key,
            "notebook_task": {"notebook_path": str(self.task.notebook)},
            "depends_on": [{"task_key": key} for key in self.task.depends_on],
            "state": _api_state(self.life_cycle_state, self.state_message, self.result_state),
            "start_time": self.start_time,
            "end_time": self.end_time,
        }


@dataclass
class JobRun:
    run_id: int
    job_id: int
    job: Job
    parameters: dict[str, str]
    run_page_url: str
    tasks: list[TaskRun]
    life_cycle_state: str = "PENDING"
    result_state: str = ""
    state_message: str = "Waiting for the local Spark session"
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))
    end_time: int = 0
    cancel_requested: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "run_name": self.job.name,
            "number_in_job": self.run_id,
            "run_page_url": self.run_page_url,
            "run_type": "JOB_RUN",
            "state": _api_state(self.life_cycle_state, self.state_message, self.result_state),
            "job_parameters": [
                {"name": name, "default": self.job.parameters[name], "value": value}
                for name, value in self.parameters.items()
            ],
            "tasks": [task.to_api() for task in self.tasks],
            "start_time": self.start_time,
            "end_time": self.end_time,
        }


class S3Inputs:
    """``s3://`` values fetched to a per-run temp dir through the configured endpoint.

    The Parquet-only local Spark has no S3 filesystem (hadoop-aws), so the file is read locally.
    """

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        self.directory = Path(tempfile.mkdtemp(prefix="standin-s3-"))
        self._fetched: dict[str, str] = {}

    def resolve(self, value: str) -> str:
        if not value.startswith("s3://"):
            return value
        if value not in self._fetched:
            self._fetched[value] = self._download(value)
        return self._fetched[value]

    def _download(self, uri: str) -> str:
        if not self.endpoint:
            raise ValueError(
                f"Cannot read {uri}: start the stand-in with --s3-endpoint URL (S3-compatible)."
            )
        import boto3

        parts = urlsplit(uri)
        target = self.directory / parts.netloc / parts.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client = boto3.client("s3", endpoint_url=self.endpoint)
        try:
            client.download_file(parts.netloc, parts.path.lstrip("/"), str(target))
        except Exception as error:
            raise OSError(f"Cannot read {uri} from {self.endpoint}: {error}") from error
        return str(target)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _summary(error: Exception) -> str:
    """One line naming the error, as Databricks shows a failed notebook's error.

    For a JVM error that is the Java exception, not Py4J's "An error occurred while calling".
    """
    java_exception = getattr(error, "java_exception", None)
    text = str(java_exception.toString()) if java_exception is not None else str(error)
    lines = [line for line in text.splitlines() if line.strip()] or [""]
    name = "" if java_exception is not None else f"{type(error).__name__}: "
    return f"{name}{lines[0]}"[:2000]


class Runner:
    """Holds every run; one worker thread executes them in submission order."""

    def __init__(self, spark: SparkSession, s3_endpoint: str | None, base_url: str) -> None:
        self.spark = spark
        self.s3_endpoint = s3_endpoint
        self.base_url = base_url
        self.runs: dict[int, JobRun] = {}
        self.task_runs: dict[int, tuple[JobRun, TaskRun]] = {}
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._queue: queue.Queue[JobRun] = queue.Queue()
        threading.Thread(target=self._work, name="standin-runner", daemon=True).start()

    def submit(self, job_id: int, job: Job, parameters: dict[str, str]) -> JobRun:
        with self._lock:
            run_id = next(self._ids)
            tasks = [TaskRun(next(self._ids), task) for task in job.task_order()]
            run = JobRun(
                run_id=run_id,
                job_id=job_id,
                job=job,
                parameters={**job.parameters, **parameters},
                run_page_url=f"{self.base_url}/runs/{run_id}",
                tasks=tasks,
            )
            self.runs[run_id] = run
            self.task_runs.update({task.run_id: (run, task) for task in tasks})
        self._queue.put(run)
        return run

    def cancel(self, run: JobRun) -> None:
        run.cancel_requested = True
        for task in run.tasks:
            if task.life_cycle_state == "RUNNING":
                self.spark.sparkContext.cancelJobGroup(f"task-{task.run_id}")

    def _work(self) -> None:
        while True:
            run = self._queue.get()
            try:
                self._execute(run)
            except Exception:  # the worker must survive anything a run does
                run.life_cycle_state, run.result_state = "INTERNAL_ERROR", "FAILED"
                run.state_message = traceback.format_exc(limit=3)
                run.end_time = int(time.time() * 1000)

    def _execute(self, run: JobRun) -> None:
        if run.cancel_requested:
            self._finish(run, "CANCELED", "Run was cancelled before it started")
            return
        run.life_cycle_state, run.state_message = "RUNNING", ""
        inputs = S3Inputs(self.s3_endpoint)
        deadline = time.monotonic() + run.job.timeout_seconds if run.job.timeout_seconds else None
        failed: list[TaskRun] = []
        try:
            for task in run.tasks:
                blocked = [t for t in run.tasks if t.task.key in task.task.depends_on]
                if run.cancel_requested or (deadline and time.monotonic() > deadline):
                    task.life_cycle_state, task.result_state = "SKIPPED", "CANCELED"
                elif any(t.result_state != "SUCCESS" for t in blocked):
                    task.life_cycle_state, task.result_state = "SKIPPED", "UPSTREAM_FAILED"
                    task.state_message = "Upstream task(s) failed"
                else:
                    self._run_task(run, task, inputs)
                    if task.result_state == "FAILED":
                        failed.append(task)
        finally:
            inputs.cleanup()
        if run.cancel_requested:
            self._finish(run, "CANCELED", "Run was cancelled")
        elif failed:
            first = failed[0]
            message = f"Task {first.task.key} failed with message: {first.error.rstrip('.')}."
            if len(failed) > 1:
                others = ", ".join(t.task.key for t in failed[1:])
                message += f" Other failed task(s): {others}."
            self._finish(run, "FAILED", message + " Downstream tasks were skipped.")
        elif deadline and time.monotonic() > deadline:
            self._finish(run, "TIMEDOUT", f"Run timed out after {run.job.timeout_seconds} s")
        else:
            self._finish(run, "SUCCESS", "")

    def _run_task(self, run: JobRun, task: TaskRun, inputs: S3Inputs) -> None:
        task.life_cycle_state, task.start_time = "RUNNING", int(time.time() * 1000)
        context = self.spark.sparkContext
        context.setJobGroup(f"task-{task.run_id}", f"{run.job.name}/{task.task.key}", True)
        try:
            run_notebook(task.task.notebook, self.spark, Widgets(run.parameters), inputs.resolve)
            task.result_state = "SUCCESS"
        except Exception as error:  # a notebook's failure is the task's result
            task.result_state = "CANCELED" if run.cancel_requested else "FAILED"
            task.error = _summary(error)
            task.error_trace = traceback.format_exc()
            task.state_message = task.error
        finally:
            task.life_cycle_state, task.end_time = "TERMINATED", int(time.time() * 1000)

    @staticmethod
    def _finish(run: JobRun, result_state: str, message: str) -> None:
        run.result_state, run.state_message = result_state, message
        run.life_cycle_state, run.end_time = "TERMINATED", int(time.time() * 1000)
