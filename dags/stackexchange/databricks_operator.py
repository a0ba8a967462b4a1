"""The Databricks run-now operator of the consumer DAG (kept apart: it imports the provider)."""

from __future__ import annotations

from typing import Any

from airflow.providers.databricks.operators.databricks import DatabricksRunNowOperator

from stackexchange.databricks_job import job_parameters


class RunJobOnAssetEventsOperator(DatabricksRunNowOperator):
    """``DatabricksRunNowOperator`` whose job parameters come from the triggering asset events.

    Asset-triggered runs have no logical date, so nothing is templated from dates.
    """

    def execute(self, context: Any) -> None:
        self.json["job_parameters"] = job_parameters(context["triggering_asset_events"])
        self.log.info("Job parameters: %s", self.json["job_parameters"])
        super().execute(context)
