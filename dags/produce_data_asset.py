"""
### Produce the raw Stack Exchange assets

Ingests one site of the [Stack Exchange data dump](https://archive.org/details/stackexchange)
into S3 as two Assets, `stackexchange_raw_posts` and `stackexchange_raw_users`, which schedule
`trigger_databricks_workflow_dag`.

1. **check_source**: find the site's archives (`{site}.7z`, or `{site}-Posts.7z` and
   `{site}-Users.7z` as for stackoverflow.com) from the source's file list or by probing; repair
   what a dead run left in S3; read the pair's manifest. If the published pair is this source
   version, unchanged since, written by a run whose `ingest` succeeded, the run stops here: no
   download, no asset event. `force` ingests anyway.
2. **ingest**: one forward-only streaming pipeline: download (7z headers by HTTP Range, then the
   archive once, resumed by Range) → the standard library's decoders (each member's CRC32) → XML
   validation, sha256 and row count → S3 multipart upload parts, stages overlapped; neither the
   archive nor the XML touches the local disk.
   Only when both files validated and every checksum matched is the pair published (the
   previous pair stays whole until then), then one asset event per file, with its ETag.

Connection: `aws_conn` (its `endpoint_url` extra selects any S3-compatible server).
Bucket and prefix: env `STACKEXCHANGE_BUCKET`, `STACKEXCHANGE_PREFIX`. The ingest's pod on
Kubernetes: env `STACKEXCHANGE_INGEST_CPU`, `_MEMORY`, `_EPHEMERAL_STORAGE`, `_TMP_SIZE`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from stackexchange.assets import RAW_POSTS, RAW_USERS
from stackexchange.pod_resources import IngestPodSettings, ingest_executor_config
from stackexchange.settings import AWS_CONN_ID, DEFAULT_SITE, DEFAULT_SOURCE_BASE_URL


@contextmanager
def _fail_fast_on_permanent_errors() -> Iterator[None]:
    """Errors a retry cannot fix fail the task at once; the rest go through the retries."""
    from airflow.exceptions import AirflowFailException

    from stackexchange.ingest import PERMANENT_ERRORS

    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id="produce_data_asset",
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["stackexchange", "ingest", "producer"],
    default_args={
        "owner": "data-platform",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    },
    params={
        "site": Param(
            DEFAULT_SITE,
            type="string",
            maxLength=253,
            # ECMA-262 syntax, run with Python's re.search: `(?![\s\S])` is the end of the text
            # (`$` would also match before a trailing newline). stackexchange.url_policy.check_site
            # applies the same rule in the task.
            pattern=r"^(?![\s\S]*\.\.)[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?![\s\S])",
            title="Site",
            description="Stack Exchange site whose dump to ingest, e.g. ai.meta.stackexchange.com",
        ),
        "source_base_url": Param(
            DEFAULT_SOURCE_BASE_URL,
            type="string",
            maxLength=2048,
            # Printable ASCII only; http(s) without credentials, or file://; no query or fragment.
            # stackexchange.url_policy checks the rest (ports, addresses, the file root).
            pattern=r"^(?![\s\S]*[^!-~])(?:https?://[^/?#@\\]+|file://)(?:/[^?#\\]*)?(?![\s\S])",
            title="Source base URL",
            description="Where the dumps live; the archive is {source_base_url}/{site}.7z. "
            "https:// or http:// (internal addresses only if STACKEXCHANGE_ALLOWED_HOSTS lists "
            "them); file:// only under STACKEXCHANGE_FILE_ROOT. No query, fragment or credentials.",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Ingest and emit asset events even if S3 already holds this version.",
        ),
    },
)
def produce_data_asset() -> None:
    @task.short_circuit(execution_timeout=timedelta(minutes=10))
    def check_source() -> bool:
        """Is there anything to ingest? False skips the ingest: no download, no asset event."""
        from stackexchange.ingest import check

        context = get_current_context()
        params, ti = context["params"], context["ti"]

        def ingest_succeeded(run_id: str) -> bool:
            done = ti.get_ti_count(dag_id=ti.dag_id, task_ids=["ingest"], run_ids=[run_id],
                                   states=["success"])  # fmt: skip
            return done > 0

        with _fail_fast_on_permanent_errors():
            return check(
                params["site"],
                params["source_base_url"],
                bool(params["force"]),
                AWS_CONN_ID,
                ingest_succeeded,
            )

    # Its own pod size (CPU, memory, scratch disk; settings STACKEXCHANGE_INGEST_*): on the
    # KubernetesExecutor only; other executors ignore it.
    @task(
        outlets=[RAW_POSTS, RAW_USERS],
        execution_timeout=timedelta(hours=12),
        executor_config=ingest_executor_config(IngestPodSettings.from_env()),
    )
    def ingest() -> None:
        """Stream, verify, validate, publish the pair atomically; one asset event per object."""
        from stackexchange.ingest import ingest as run_ingest
        from stackexchange.ingest import ingest_id

        context = get_current_context()
        params, ti = context["params"], context["ti"]
        with _fail_fast_on_permanent_errors():
            extras = run_ingest(
                params["site"],
                params["source_base_url"],
                AWS_CONN_ID,
                ingest_id=ingest_id(ti.run_id, ti.try_number),
            )
        assets = {RAW_POSTS.uri: RAW_POSTS, RAW_USERS.uri: RAW_USERS}
        for extra in extras:
            context["outlet_events"][assets[str(extra["uri"])]].extra = extra

    check_source() >> ingest()


produce_data_asset()
