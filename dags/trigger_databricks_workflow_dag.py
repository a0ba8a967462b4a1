"""
### Databricks medallion job

Runs when **both** raw assets (`stackexchange_raw_posts`, `stackexchange_raw_users`) have new
events, on exactly the objects those events announce.

1. **check_announced_objects**: refuse an event whose `uri` is not its asset's URI, then HEAD
   both objects through `aws_conn`. If a newer ingest replaced either since its event (ETag or
   VersionId changed), the run is skipped: that ingest's own events trigger a run, so a mixed
   pair is never processed.
2. **run_medallion_job**: start the Databricks job `stackexchange_medallion` (or
   `DATABRICKS_JOB_ID`) on connection `databricks_conn` with the objects' identity from the
   events (URI, ETag, VersionId, size, LastModified, sha256) and the site, and wait for it in
   the triggerer (deferrable). Any run that does not succeed fails the task; the log shows the
   run page URL and each failed Databricks task's error. Retries start a new job run; the job
   is idempotent (bronze is replaced, silver upserted by `PostId`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

from stackexchange.assets import RAW_POSTS, RAW_USERS
from stackexchange.databricks_job import CONN_ID, job_lookup
from stackexchange.databricks_operator import RunJobOnAssetEventsOperator
from stackexchange.settings import AWS_CONN_ID


@dag(
    dag_id="trigger_databricks_workflow_dag",
    schedule=RAW_POSTS & RAW_USERS,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["stackexchange", "databricks", "consumer"],
    default_args={
        "owner": "data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
    },
)
def trigger_databricks_workflow_dag() -> None:
    @task(execution_timeout=timedelta(minutes=5))
    def check_announced_objects() -> None:
        """Fail on a foreign event; skip the run if a newer ingest replaced an object."""
        from stackexchange.databricks_job import ensure_still_published, job_parameters

        events = get_current_context()["triggering_asset_events"]
        ensure_still_published(job_parameters(events), AWS_CONN_ID)

    check_announced_objects() >> RunJobOnAssetEventsOperator(
        task_id="run_medallion_job",
        databricks_conn_id=CONN_ID,
        **job_lookup(),
        deferrable=True,
        polling_period_seconds=30,
        # The job itself times out after 2 h (timeout_seconds in the bundle); wait a bit longer.
        execution_timeout=timedelta(hours=2, minutes=15),
    )


trigger_databricks_workflow_dag()
