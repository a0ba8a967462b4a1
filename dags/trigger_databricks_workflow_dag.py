"""
### Databricks medallion job, one run per site

Runs when **both** raw assets (`stackexchange_raw_posts`, `stackexchange_raw_users`) have new
events, on exactly the objects those events announce, site by site.

1. **check_announced_objects**: group the triggering events by their `site`; per site, the
   newest ingest that announced both files. Refuse an event whose `uri` is not an object of its
   own site under this deployment's bucket and prefix. A site whose manifest names a newer pair
   since is left out (that ingest's own events trigger a run); if none is left, the run skips.
   An announced object that is missing, or not the one its manifest records, fails the task.
2. **run_medallion_job**, mapped, one task instance per site named by it: start the Databricks
   job `stackexchange_medallion` (or `DATABRICKS_JOB_ID`) on connection `databricks_conn` with
   that site's objects' identity (URI, ETag, VersionId, size, LastModified, sha256) and the site,
   and wait in the triggerer (deferrable). A run that does not succeed fails that site's task
   only; the log shows the run page URL and each failed Databricks task's error. Retries start a
   new job run; the job is idempotent per site (bronze and gold replace the site's rows, silver
   upserts by `(site, PostId)`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

from stackexchange.assets import POSTS, USERS, raw_assets
from stackexchange.databricks_job import CONN_ID, job_lookup, poll_seconds
from stackexchange.databricks_operator import RunJobOnAssetEventsOperator
from stackexchange.settings import AWS_CONN_ID, Storage

# Read once, at parse time: the Asset URIs, and what the events must name.
STORAGE = Storage.from_env()
RAW = raw_assets(STORAGE)


@dag(
    dag_id="trigger_databricks_workflow_dag",
    schedule=RAW[POSTS] & RAW[USERS],
    catchup=False,
    # Runs may overlap: the job's own queue (max_concurrent_runs 1, queue enabled, in the bundle)
    # runs one job at a time. With max_active_runs=1, Airflow 3.0.2 can leave the events that
    # arrive during a run without a run of their own until another event comes
    # (apache/airflow#56050): a site finishing while another site's run works would wait.
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
    def check_announced_objects() -> list[dict[str, str]]:
        """Per site, the job parameters of its newest announced pair that is still current."""
        from stackexchange.databricks_job import job_parameters, still_published

        events = get_current_context()["triggering_asset_events"]
        return [dict(p) for p in still_published(job_parameters(events, STORAGE), AWS_CONN_ID,
                                                 STORAGE)]  # fmt: skip

    RunJobOnAssetEventsOperator.partial(
        task_id="run_medallion_job",
        databricks_conn_id=CONN_ID,
        **job_lookup(),
        deferrable=True,
        polling_period_seconds=poll_seconds(),
        map_index_template="{{ site }}",
        # The job itself times out after 2 h (timeout_seconds in the bundle); wait a bit longer.
        execution_timeout=timedelta(hours=2, minutes=15),
    ).expand(job_parameters=check_announced_objects())


trigger_databricks_workflow_dag()
