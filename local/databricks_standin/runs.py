"""Job runs through Databricks' lifecycle: QUEUED, PENDING, RUNNING, TERMINATING, TERMINATED.

A model of the Jobs service for development, not Databricks. A job admits up to its
``max_concurrent_runs``; further runs wait QUEUED when the job's queue is enabled and are SKIPPED
otherwise. One worker executes admitted runs one at a time (the stand-in has one Spark session).
PENDING, RUNNING and TERMINATING each last at least ``phase_seconds`` so that clients polling the
API can see them. What a task does is the ``TaskExecutor``'s business: the stand-in runs notebooks
(``notebooks.NotebookTasks``), tests plug in scripted bodies.

A run that ended can be repaired: the chosen tasks run again, as new task runs of the same job
run, recorded in its repair history. With a ``StateDir`` every change is saved: after a restart
the runs are still there, ids go on where they stopped, and a run that was active when the
process ended is over with ``INTERNAL_ERROR`` (its outcome is unknown), as Databricks ends a run
whose execution was lost.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from local.databricks_standin.bundle import Job, Task
from local.databricks_standin.store import StateDir

ACTIVE_STATES = ("QUEUED", "PENDING", "RUNNING", "TERMINATING")
TERMINAL_STATES = ("TERMINATED", "SKIPPED", "INTERNAL_ERROR")
# result_state -> (code, type) of the Jobs API 2.2 ``status.termination_details``
_TERMINATION = {
    "SUCCESS": ("SUCCESS", "SUCCESS"),
    "FAILED": ("RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
    "TIMEDOUT": ("CANCELED", "CLIENT_ERROR"),  # "canceled by the platform: max duration exceeded"
    "CANCELED": ("USER_CANCELED", "SUCCESS"),
    "UPSTREAM_FAILED": ("SKIPPED", "SUCCESS"),
    "UPSTREAM_CANCELED": ("SKIPPED", "SUCCESS"),
    "MAXIMUM_CONCURRENT_RUNS_REACHED": ("MAX_CONCURRENT_RUNS_EXCEEDED", "CLIENT_ERROR"),
}


FIRST_RUN_ID = 1001


def lost_message(run_id: int, state: str) -> str:
    return (
        f"Run {run_id} was lost: the Databricks stand-in stopped while the run was {state}, "
        "so its outcome is unknown. Start a new run."
    )


class TaskExecutor(Protocol):
    """What runs a task. ``run`` returns the notebook's exit value (or None); raising fails it."""

    def run(self, task_run_id: int, task: Task, parameters: Mapping[str, str]) -> str | None: ...

    def cancel(self, task_run_id: int) -> None:
        """Interrupt the task run if it is executing (its ``run`` should then raise)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _job_record(job: Job) -> dict[str, Any]:
    return {
        "name": job.name,
        "parameters": job.parameters,
        "tasks": [
            {"key": t.key, "notebook": str(t.notebook), "depends_on": list(t.depends_on)}
            for t in job.tasks
        ],
        "timeout_seconds": job.timeout_seconds,
        "max_concurrent_runs": job.max_concurrent_runs,
        "queue_enabled": job.queue_enabled,
    }


def _job_from(record: dict[str, Any]) -> Job:
    tasks = tuple(
        Task(t["key"], Path(t["notebook"]), tuple(t["depends_on"])) for t in record["tasks"]
    )
    return Job(**{**record, "tasks": tasks})


def _task_from(record: dict[str, Any]) -> Task:
    return Task(record["key"], Path(record["notebook"]), tuple(record["depends_on"]))


class _Lifecycle:
    """The state fields both job runs and task runs carry, as the API shows them."""

    life_cycle_state: str
    result_state: str
    state_message: str
    queue_reason: str

    def state(self) -> dict[str, Any]:
        """The Jobs API 2.1 ``state`` (also in 2.2); ``result_state`` only once there is one."""
        state: dict[str, Any] = {
            "life_cycle_state": self.life_cycle_state,
            "state_message": self.state_message,
            "user_cancelled_or_timedout": self.result_state in ("CANCELED", "TIMEDOUT"),
        }
        if self.result_state:
            state["result_state"] = self.result_state
        if self.queue_reason:
            state["queue_reason"] = self.queue_reason
        return state

    def status(self) -> dict[str, Any]:
        """The Jobs API 2.2 ``status``: the V2 state with termination and queue details."""
        terminal = self.life_cycle_state in TERMINAL_STATES
        status: dict[str, Any] = {"state": "TERMINATED" if terminal else self.life_cycle_state}
        if self.life_cycle_state == "QUEUED":
            status["queue_details"] = {
                "code": "MAX_CONCURRENT_RUNS_REACHED",
                "message": self.queue_reason,
            }
        if self.result_state and (terminal or self.life_cycle_state == "TERMINATING"):
            code, kind = _TERMINATION.get(self.result_state, ("INTERNAL_ERROR", "INTERNAL_ERROR"))
            if self.life_cycle_state == "INTERNAL_ERROR":
                code, kind = "INTERNAL_ERROR", "INTERNAL_ERROR"
            status["termination_details"] = {
                "code": code,
                "type": kind,
                "message": self.state_message,
            }
        return status


@dataclass
class TaskRun(_Lifecycle):
    run_id: int
    task: Task
    life_cycle_state: str = "PENDING"
    result_state: str = ""
    state_message: str = ""
    queue_reason: str = ""
    error: str = ""
    error_trace: str = ""
    notebook_result: str | None = None
    start_time: int = 0
    end_time: int = 0

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "task"}
        task = self.task
        record["task"] = {
            "key": task.key,
            "notebook": str(task.notebook),
            "depends_on": list(task.depends_on),
        }
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TaskRun:
        return cls(**{**record, "task": _task_from(record["task"])})

    def to_api(self, version: str) -> dict[str, Any]:
        api: dict[str, Any] = {
            "run_id": self.run_id,
            "task_key": self.task.key,
            "notebook_task": {"notebook_path": str(self.task.notebook), "source": "WORKSPACE"},
            "depends_on": [{"task_key": key} for key in self.task.depends_on],
            "state": self.state(),
            "start_time": self.start_time,
            "end_time": self.end_time,
            "attempt_number": 0,
        }
        if version == "2.2":
            api["status"] = self.status()
        return api


@dataclass
class Attempt(_Lifecycle):
    """The original run or one repair of it: which task runs it made and how it ended."""

    kind: str  # ORIGINAL or REPAIR
    repair_id: int | None
    task_run_ids: list[int]
    start_time: int = field(default_factory=_now_ms)
    end_time: int = 0
    life_cycle_state: str = "PENDING"
    result_state: str = ""
    state_message: str = ""
    queue_reason: str = ""

    def to_api(self, version: str) -> dict[str, Any]:
        api: dict[str, Any] = {
            "type": self.kind,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "state": self.state(),
            "task_run_ids": self.task_run_ids,
        }
        if self.repair_id is not None:
            api["id"] = self.repair_id
        if version == "2.2":
            api["status"] = self.status()
        return api


@dataclass
class JobRun(_Lifecycle):
    run_id: int
    job_id: int
    job: Job
    parameters: dict[str, str]
    run_page_url: str
    tasks: list[TaskRun]
    life_cycle_state: str = "PENDING"
    result_state: str = ""
    state_message: str = ""
    queue_reason: str = ""
    start_time: int = field(default_factory=_now_ms)
    end_time: int = 0
    idempotency_token: str | None = None
    attempts: list[Attempt] = field(default_factory=list)  # the original run, then each repair
    # (never empty once the Runner made the run)
    started: bool = False  # the worker took it (else a cancel ends it at once)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def is_active(self) -> bool:
        return self.life_cycle_state in ACTIVE_STATES

    @property
    def latest_repair_id(self) -> int | None:
        return self.attempts[-1].repair_id

    def current_tasks(self) -> list[TaskRun]:
        """The task runs the current attempt (the run, or its latest repair) executes."""
        ids = set(self.attempts[-1].task_run_ids)
        return [task for task in self.tasks if task.run_id in ids]

    def to_record(self) -> dict[str, Any]:
        skip = ("job", "tasks", "attempts", "started", "cancelled", "run_page_url")
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        record["job"] = _job_record(self.job)
        record["tasks"] = [task.to_record() for task in self.tasks]
        record["attempts"] = [
            {f.name: getattr(a, f.name) for f in fields(a)} for a in self.attempts
        ]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], base_url: str) -> JobRun:
        return cls(
            **{
                **record,
                "job": _job_from(record["job"]),
                "tasks": [TaskRun.from_record(task) for task in record["tasks"]],
                "attempts": [Attempt(**attempt) for attempt in record["attempts"]],
                "run_page_url": f"{base_url}/runs/{record['run_id']}",
            }
        )

    def to_api(self, version: str, *, tasks: list[TaskRun] | None = None) -> dict[str, Any]:
        """The run as runs/get shows it; ``tasks`` replaces the full task list (a page of it)."""
        api: dict[str, Any] = {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "run_name": self.job.name,
            "number_in_job": self.run_id,
            "original_attempt_run_id": self.run_id,
            "creator_user_name": "standin",
            "run_page_url": self.run_page_url,
            "run_type": "JOB_RUN",
            "format": "MULTI_TASK",
            "state": self.state(),
            "job_parameters": [
                {"name": name, "default": self.job.parameters[name], "value": value}
                for name, value in self.parameters.items()
            ],
            "tasks": [task.to_api(version) for task in (self.tasks if tasks is None else tasks)],
            "start_time": self.start_time,
            "end_time": self.end_time,
            "run_duration": (self.end_time or _now_ms()) - self.start_time,
        }
        if version == "2.2":
            api["status"] = self.status()
        return api


def error_summary(error: BaseException) -> str:
    """One line naming the error, as Databricks shows a failed notebook's error.

    For a JVM error that is the Java exception, not Py4J's "An error occurred while calling".
    """
    java_exception = getattr(error, "java_exception", None)
    text = str(java_exception.toString()) if java_exception is not None else str(error)
    lines = [line for line in text.splitlines() if line.strip()] or [""]
    name = "" if java_exception is not None else f"{type(error).__name__}: "
    return f"{name}{lines[0]}"[:2000]


class Runner:
    """Holds every run and moves it through its lifecycle; one worker thread executes runs.

    Every state change happens under ``lock`` and is saved to ``state`` (when given); readers
    (the HTTP handlers) take the lock too, so a response never shows a half-made transition.
    """

    def __init__(
        self,
        executor: TaskExecutor,
        base_url: str,
        phase_seconds: float = 0.2,
        state: StateDir | None = None,
    ) -> None:
        if phase_seconds < 0:
            raise ValueError(f"phase_seconds must be >= 0, not {phase_seconds}")
        self.executor = executor
        self.base_url = base_url
        self.phase_seconds = phase_seconds
        self.state = state
        self.runs: dict[int, JobRun] = {}
        self.task_runs: dict[int, tuple[JobRun, TaskRun]] = {}
        self.lock = threading.RLock()
        self._next_id = FIRST_RUN_ID
        self._tokens: dict[tuple[int, str], JobRun] = {}
        if state is not None:
            self._restore(state)
        self._ready: queue.Queue[JobRun | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="standin-runner", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """End the worker after the run it is executing (if any); release the state directory."""
        self._ready.put(None)
        self._worker.join()
        if self.state is not None:
            self.state.close()

    def _restore(self, state: StateDir) -> None:
        """Load the saved runs; a run that was active when the last process ended is lost."""
        saved = state.load()
        if saved is None:
            return
        for record in saved["runs"]:
            run = JobRun.from_record(record, self.base_url)
            self.runs[run.run_id] = run
            self.task_runs.update({task.run_id: (run, task) for task in run.tasks})
            if run.idempotency_token:
                self._tokens[(run.job_id, run.idempotency_token)] = run
            if run.is_active:
                self._lose(run)
        highest = max([*self.runs, *self.task_runs, FIRST_RUN_ID - 1])
        self._next_id = max(saved["next_id"], highest + 1)
        self._save()

    def _lose(self, run: JobRun) -> None:
        message = lost_message(run.run_id, run.life_cycle_state)
        for task in run.current_tasks():
            if task.life_cycle_state in ACTIVE_STATES:
                task.error = message
                if task.start_time:
                    task.end_time = _now_ms()
                self._set(task, "INTERNAL_ERROR", "FAILED", message)
        run.end_time = _now_ms()
        run.queue_reason = ""
        self._set(run, "INTERNAL_ERROR", "FAILED", message)

    def _save(self) -> None:
        """Write every run and the next id (caller holds the lock)."""
        if self.state is not None:
            self.state.save(
                {
                    "next_id": self._next_id,
                    "runs": [run.to_record() for run in self.runs.values()],
                }
            )

    def _new_id(self) -> int:
        """A run, task run or repair id: one sequence, never reused (saved before it is shown)."""
        new, self._next_id = self._next_id, self._next_id + 1
        return new

    def submit(
        self,
        job_id: int,
        job: Job,
        parameters: dict[str, str],
        idempotency_token: str | None = None,
    ) -> JobRun:
        """A new run of ``job`` (or the run this idempotency token already started)."""
        with self.lock:
            if idempotency_token and (job_id, idempotency_token) in self._tokens:
                return self._tokens[(job_id, idempotency_token)]
            run_id = self._new_id()
            tasks = [TaskRun(self._new_id(), task) for task in job.task_order()]
            run = JobRun(
                run_id=run_id,
                job_id=job_id,
                job=job,
                parameters={**job.parameters, **parameters},
                run_page_url=f"{self.base_url}/runs/{run_id}",
                tasks=tasks,
                idempotency_token=idempotency_token,
                attempts=[Attempt("ORIGINAL", None, [task.run_id for task in tasks])],
            )
            self.runs[run_id] = run
            self.task_runs.update({task.run_id: (run, task) for task in run.tasks})
            if idempotency_token:
                self._tokens[(job_id, idempotency_token)] = run
            self._enqueue(run)
            self._save()
            return run

    def repair(self, run: JobRun, task_keys: set[str], parameters: dict[str, str]) -> int:
        """Run the tasks ``task_keys`` of the ended ``run`` again, as new task runs of it.

        The caller checked that ``run`` is over and that the keys are its tasks. Returns the
        repair id.
        """
        with self.lock:
            repair_id = self._new_id()
            fresh = []
            for index, task in enumerate(run.tasks):
                if task.task.key in task_keys:
                    run.tasks[index] = TaskRun(self._new_id(), task.task)
                    self.task_runs[run.tasks[index].run_id] = (run, run.tasks[index])
                    fresh.append(run.tasks[index].run_id)
            run.attempts.append(Attempt("REPAIR", repair_id, fresh))
            run.parameters.update(parameters)
            run.started, run.cancelled, run.end_time = False, threading.Event(), 0
            self._enqueue(run)
            self._save()
            return repair_id

    def _enqueue(self, run: JobRun) -> None:
        """Admit the run's current attempt, queue it, or skip it (the job's concurrency)."""
        job = run.job
        if self._has_capacity(run.job_id, run):
            self._admit(run)
        elif job.queue_enabled:
            reason = f"Queued due to reaching maximum concurrent runs of {job.max_concurrent_runs}."
            self._set(run, "QUEUED", message=reason)
            run.queue_reason = reason
            for task in run.current_tasks():
                self._set(task, "QUEUED")
        else:
            message = (
                "Skipping this run because the limit of "
                f"{job.max_concurrent_runs} maximum concurrent runs has been reached."
            )
            run.end_time = _now_ms()
            for task in run.current_tasks():
                self._set(task, "SKIPPED", "MAXIMUM_CONCURRENT_RUNS_REACHED", message)
            self._set(run, "SKIPPED", "MAXIMUM_CONCURRENT_RUNS_REACHED", message)

    def cancel(self, run: JobRun) -> None:
        """Cancel asynchronously, as Databricks does; a run not yet started ends at once."""
        with self.lock:
            if not run.is_active or run.life_cycle_state == "TERMINATING":
                return
            run.cancelled.set()
            if not run.started:
                self._skip_tasks(run)
                run.end_time = _now_ms()
                self._set(run, "TERMINATED", "CANCELED", "Run was cancelled before it started.")
                self._admit_queued(run.job_id)
                return
            executing = [task for task in run.tasks if task.life_cycle_state == "RUNNING"]
        for task in executing:
            self.executor.cancel(task.run_id)

    def _skip_tasks(self, run: JobRun) -> None:
        """A run cancelled before its tasks started ends every task."""
        for task in run.current_tasks():
            self._set(task, "SKIPPED", "CANCELED", "Run was cancelled before it started.")

    def _has_capacity(self, job_id: int, newcomer: JobRun) -> bool:
        others = [r for r in self.runs.values() if r.job_id == job_id and r is not newcomer]
        admitted = [r for r in others if r.is_active and r.life_cycle_state != "QUEUED"]
        waiting = [r for r in others if r.life_cycle_state == "QUEUED"]
        return not waiting and len(admitted) < newcomer.job.max_concurrent_runs

    def _admit(self, run: JobRun) -> None:
        run.queue_reason = ""
        for task in run.current_tasks():
            self._set(task, "PENDING")
        self._set(run, "PENDING", message="Waiting for the local Spark session.")
        self._ready.put(run)

    def _admit_queued(self, job_id: int) -> None:
        """Admit the oldest queued runs of ``job_id`` while the job has room."""
        for run in sorted(self.runs.values(), key=lambda r: r.run_id):
            if run.job_id == job_id and run.life_cycle_state == "QUEUED":
                admitted = [
                    r
                    for r in self.runs.values()
                    if r.job_id == job_id and r.is_active and r.life_cycle_state != "QUEUED"
                ]
                if len(admitted) >= run.job.max_concurrent_runs:
                    return
                self._admit(run)

    def _set(
        self,
        target: TaskRun | JobRun,
        life_cycle_state: str,
        result_state: str = "",
        message: str = "",
    ) -> None:
        with self.lock:
            target.result_state, target.state_message = result_state, message
            target.life_cycle_state = life_cycle_state
            if isinstance(target, JobRun):
                attempt = target.attempts[-1]  # the repair history shows each attempt's state
                attempt.life_cycle_state, attempt.result_state = life_cycle_state, result_state
                attempt.state_message, attempt.end_time = message, target.end_time
            self._save()

    def _work(self) -> None:
        while (run := self._ready.get()) is not None:
            with self.lock:
                if not run.is_active:  # cancelled while it waited for the worker
                    continue
                run.started = True
            try:
                self._execute(run)
            except Exception:  # the worker must survive anything a run does
                run.end_time = _now_ms()
                self._set(run, "INTERNAL_ERROR", "FAILED", traceback.format_exc(limit=3))
            with self.lock:
                self._admit_queued(run.job_id)

    def _execute(self, run: JobRun) -> None:
        if run.cancelled.wait(self.phase_seconds):  # PENDING: "starting the compute"
            self._skip_tasks(run)
            self._terminate(run, "CANCELED", "Run was cancelled before it started.")
            return
        self._set(run, "RUNNING")
        running_since = time.monotonic()
        timeout = run.job.timeout_seconds
        deadline = running_since + timeout if timeout else None
        for task in run.current_tasks():  # in dependency order; earlier attempts' tasks stay
            upstream = [t for t in run.tasks if t.task.key in task.task.depends_on]
            if run.cancelled.is_set():
                self._set(task, "SKIPPED", "CANCELED", "Run was cancelled.")
            elif deadline and time.monotonic() > deadline:
                self._set(task, "SKIPPED", "CANCELED", f"Run timed out after {timeout} s.")
            elif any(t.result_state == "CANCELED" for t in upstream):
                self._set(task, "SKIPPED", "UPSTREAM_CANCELED", "Upstream task(s) were cancelled.")
            elif any(t.result_state != "SUCCESS" for t in upstream):
                self._set(task, "SKIPPED", "UPSTREAM_FAILED", "Upstream task(s) failed.")
            else:
                self._run_task(run, task)
        run.cancelled.wait(max(0.0, running_since + self.phase_seconds - time.monotonic()))
        failed = [task for task in run.tasks if task.result_state == "FAILED"]
        if run.cancelled.is_set():
            self._terminate(run, "CANCELED", "Run was cancelled.")
        elif failed:
            first = failed[0]
            message = f"Task {first.task.key} failed with message: {first.error.rstrip('.')}."
            if len(failed) > 1:
                others = ", ".join(t.task.key for t in failed[1:])
                message += f" Other failed task(s): {others}."
            self._terminate(run, "FAILED", message + " Downstream tasks were skipped.")
        elif deadline and time.monotonic() > deadline:
            self._terminate(run, "TIMEDOUT", f"Run timed out after {timeout} s.")
        elif any(task.result_state != "SUCCESS" for task in run.tasks):
            # A repair that left an earlier attempt's failure in place (its upstream skipped).
            self._terminate(run, "FAILED", "Some tasks did not succeed; repair them to finish.")
        else:
            self._terminate(run, "SUCCESS", "")

    def _run_task(self, run: JobRun, task: TaskRun) -> None:
        task.start_time = _now_ms()
        self._set(task, "RUNNING")
        try:
            result: str | None = self.executor.run(task.run_id, task.task, run.parameters)
            outcome, message = "SUCCESS", ""
        except Exception as error:  # a task body's failure is the task's result
            task.error, task.error_trace = error_summary(error), traceback.format_exc()
            result, outcome, message = None, "FAILED", task.error
        if run.cancelled.is_set():  # a cancelled notebook's outcome is discarded, even a success
            result, outcome, message = None, "CANCELED", "Run was cancelled."
            task.error = task.error_trace = ""
        task.notebook_result = result
        task.end_time = _now_ms()
        self._set(task, "TERMINATED", outcome, message)

    def _terminate(self, run: JobRun, result_state: str, message: str) -> None:
        """TERMINATING (result known, compute being released), then TERMINATED."""
        self._set(run, "TERMINATING", result_state, message)
        time.sleep(self.phase_seconds)  # the simulated clean-up; a cancel cannot shorten it
        run.end_time = _now_ms()
        self._set(run, "TERMINATED", result_state, message)
