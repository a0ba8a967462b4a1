"""Run the Databricks medallion job on the raw Stack Exchange data the producer published."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from stackexchange.assets import RAW_POSTS, RAW_USERS
from stackexchange.databricks_job import CONN_ID, job_lookup
from stackexchange.databricks_operator import RunJobOnAssetEventsOperator

with DAG(
    dag_id="trigger_databricks_workflow_dag",
    schedule=RAW_POSTS & RAW_USERS,
    catchup=False,
    max_active_runs=1,
    tags=["stackexchange", "databricks", "consumer"],
    default_args={
        "owner": "data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
    },
    doc_md="""
### Databricks medallion job

Runs when **both** raw assets (`stackexchange_raw_posts`, `stackexchange_raw_users`) have new
events. Starts the Databricks job `stackexchange_medallion` (or `DATABRICKS_JOB_ID`) on
connection `databricks_conn` with the S3 URIs, site and checksums from the events' `extra`,
and waits for it in the triggerer (deferrable). A failed run fails the task; the log shows
the run page URL and each failed Databricks task's error. Retries start a new job run; the
job is idempotent (bronze is replaced, silver upserted by `PostId`).
""",
) as dag:
    RunJobOnAssetEventsOperator(
        task_id="run_medallion_job",
        databricks_conn_id=CONN_ID,
        **job_lookup(),
        deferrable=True,
        polling_period_seconds=30,
        # The job itself times out after 2 h (timeout_seconds in the bundle); wait a bit longer.
        execution_timeout=timedelta(hours=2, minutes=15),
    )
