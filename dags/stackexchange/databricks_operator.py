"""The Databricks run-now operator of the consumer DAG (kept apart: it imports the provider)."""

from __future__ import annotations

from typing import Any

from airflow.exceptions import AirflowException
from airflow.providers.databricks.hooks.databricks import RunState
from airflow.providers.databricks.operators.databricks import DatabricksRunNowOperator

# Task result states whose runs/get-output holds the task's error.
_ERRORED_TASK_STATES = ("FAILED", "TIMEDOUT")


class RunJobOnAssetEventsOperator(DatabricksRunNowOperator):
    """``DatabricksRunNowOperator`` for one site's announced pair (its ``job_parameters``, one
    mapped task instance per site, named by the site), which fails on every run that does not
    end in SUCCESS.

    Provider 7.4.0 lets a failed run pass when deferrable: if the run is already terminal at its
    one look after run-now (a run that fails at submission: bad parameter, quota, permissions),
    it returns without deferring and without checking the result. Here every path ends in
    ``_check_run``: success is logged, anything else raises with the run page URL and each
    failed task's error from runs/get-output. Repairing runs is not supported: a failed run
    fails the task, and Airflow's retries start a new run.

    Asset-triggered runs have no logical date, so nothing is templated from dates.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("repair_run"):
            raise ValueError(
                "RunJobOnAssetEventsOperator does not repair runs: a failed run fails the task "
                "and the task's retries start a new run. Remove repair_run."
            )
        super().__init__(**kwargs)

    def execute(self, context: Any) -> None:
        parameters = self.json.get("job_parameters") or {}
        if not parameters.get("site"):
            raise AirflowException(
                "job_parameters has no site: map this operator over the consumer's "
                "check_announced_objects output (one dict of job parameters per site)."
            )
        context["site"] = parameters["site"]  # the mapped instance's name (map_index_template)
        self.log.info("Job parameters: %s", parameters)
        try:
            super().execute(context)  # raises TaskDeferred while the run is not terminal
        except AirflowException:
            # Without deferring, the provider raises on a failed run but without the run page
            # URL; replace that error with ours. Any other error (no run) stays as it is.
            if self.run_id is not None and self.wait_for_termination:
                self._check_run(self.run_id)
            raise
        if self.wait_for_termination:
            self._check_run(self.run_id)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        """After the trigger: the run is terminal. The event's state decides, as in the provider."""
        if not event or "run_id" not in event or "run_state" not in event:
            raise AirflowException(
                f"The Databricks trigger ended without a run state (event: {event!r}); "
                "the run's outcome is unknown. See the triggerer's log."
            )
        self.run_id = event["run_id"]
        context["site"] = (self.json.get("job_parameters") or {}).get("site", "")
        if RunState.from_json(event["run_state"]).is_successful:
            super().execute_complete(context, event)
            return
        self._check_run(event["run_id"])

    def _check_run(self, run_id: int | None) -> None:
        """Log a successful run; raise for a terminal run that did not succeed."""
        if run_id is None:
            raise AirflowException("No Databricks run was started, so there is no result.")
        hook = self._hook
        run = hook.get_run(run_id)
        state = RunState(**run["state"])
        url = run.get("run_page_url", "")
        if not state.is_terminal:
            return  # still running: the provider waits (or raised for another reason)
        if state.is_successful:
            self.log.info("Databricks run %s succeeded: %s", run_id, url)
            return
        errors = []
        for task in run.get("tasks", []):
            if task.get("state", {}).get("result_state") in _ERRORED_TASK_STATES:
                output = hook.get_run_output(task["run_id"])
                error = output.get("error") or task["state"].get("state_message", "")
                errors.append(
                    {"task_key": task["task_key"], "run_id": task["run_id"], "error": error}
                )
                self.log.error("Databricks task %s failed: %s", task["task_key"], error)
        outcome = state.result_state or state.life_cycle_state
        message = (
            f"Databricks run {run_id} ended {state.life_cycle_state} with result {outcome}: "
            f"{state.state_message or 'no message'} Run page: {url}"
        )
        if errors:
            message += f" Failed tasks and their errors: {errors}"
        self.log.error("%s", message)
        raise AirflowException(message)
