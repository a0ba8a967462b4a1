"""
### Produce the raw Stack Exchange assets, one site or many

Ingests the chosen sites of the [Stack Exchange data dump](https://archive.org/details/stackexchange)
into S3, each as its own pair, and announces each site's pair on two Assets,
`stackexchange_raw_posts` and `stackexchange_raw_users` (the site in each event's extra), which
schedule `trigger_databricks_workflow_dag`.

1. **choose_sites**: `sites` is a list of names (checked before any download) or `["all"]`: every
   site of the source's file list, meta sites only with `include_meta`. With `dry_run` it logs
   the plan instead (archives, sizes, what is unchanged, estimated disk, memory and time;
   HEAD requests and the file list only) and nothing else runs.
2. Per site, as mapped tasks named by the site, at most `STACKEXCHANGE_MAX_ACTIVE_SITES` at once;
   a site's failure fails its own tasks only:
   - **check_source**: find the site's archives (`{site}.7z`, or `{site}-Posts.7z` and
     `{site}-Users.7z` as for stackoverflow.com), read its manifest. If the published pair is this
     source version, unchanged since, written by an ingest that succeeded, the site is skipped:
     no download, no asset event. `force` ingests anyway.
   - **ingest**: under the site's lock, one streaming pipeline: download (HTTP Range resume) →
     7z decoding (our bounded 7z header parser, the standard library's lzma) → XML validation,
     sha256 and row count → S3 multipart parts of this ingest's own generation; then the site's
     manifest, written with one PUT, commits the pair; one asset event per file. A site's first
     ingest after the upgrade from the single-site layout adopts the pair that version left
     (README: "Upgrading from the single-site layout").

Connection: `aws_conn` (its `endpoint_url` extra selects any S3-compatible server).
Bucket and prefix: env `STACKEXCHANGE_BUCKET`, `STACKEXCHANGE_PREFIX`. The ingest's pod on
Kubernetes: env `STACKEXCHANGE_INGEST_CPU`, `_MEMORY`, `_EPHEMERAL_STORAGE`, `_TMP_SIZE`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task, task_group

from stackexchange.assets import POSTS, USERS, raw_assets
from stackexchange.pod_resources import IngestPodSettings, ingest_executor_config
from stackexchange.settings import (
    AWS_CONN_ID,
    DEFAULT_SITE,
    DEFAULT_SOURCE_BASE_URL,
    Storage,
    max_active_sites,
)

log = logging.getLogger(__name__)

# Read once, at parse time: the Asset URIs and the bound of the fan-out.
STORAGE = Storage.from_env()
RAW = raw_assets(STORAGE)
MAX_ACTIVE_SITES = max_active_sites()
# ECMA-262 syntax, run with Python's re.search: `(?![\s\S])` is the end of the text (`$` would
# also match before a trailing newline). stackexchange.url_policy.check_site applies the same
# rule in the task.
SITE_PATTERN = r"^(?![\s\S]*\.\.)[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?![\s\S])"


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
        "sites": Param(
            [DEFAULT_SITE],
            type="array",
            minItems=1,
            items={"type": "string", "maxLength": 253, "pattern": SITE_PATTERN},
            title="Sites",
            description="Stack Exchange sites whose dumps to ingest, one per line, e.g. "
            'ai.meta.stackexchange.com; or "all": every site in the source\'s file list.',
        ),
        "include_meta": Param(
            False,
            type="boolean",
            title="Include meta sites",
            description='With sites=["all"]: also the meta sites (meta.*, *.meta.*).',
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
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Only log the plan: archives, sizes, unchanged sites, estimated disk, "
            "memory and time. Nothing is downloaded or written.",
        ),
    },
)
def produce_data_asset() -> None:
    @task(execution_timeout=timedelta(minutes=30))
    def choose_sites() -> list[str]:
        """The sites to fan out over; none on a dry run, which logs its plan instead."""
        from stackexchange import sites
        from stackexchange.ingest import check
        from stackexchange.settings import DownloadPolicy, plan_bytes_per_second
        from stackexchange.source import Dumps

        params = get_current_context()["params"]
        # Read once for the choice and every site's check: the file list, one GET.
        dumps = Dumps(params["source_base_url"], DownloadPolicy.from_env())
        with _fail_fast_on_permanent_errors():
            chosen = sites.choose(params["sites"], dumps, bool(params["include_meta"]))
            if not params["dry_run"]:
                return chosen
            decisions = check(
                chosen, dumps, bool(params["force"]), AWS_CONN_ID, lambda *_: True, STORAGE
            )
        for line in sites.plan_lines(decisions, plan_bytes_per_second()):
            log.info("%s", line)
        return []

    @task_group(group_id="per_site", prefix_group_id=False)
    def per_site(site: str) -> None:
        @task(
            map_index_template="{{ site }}",
            max_active_tis_per_dagrun=MAX_ACTIVE_SITES,
            execution_timeout=timedelta(minutes=10),
        )
        def check_source(site: str) -> None:
            """Is there anything to ingest for ``site``? If not, it is skipped: no download."""
            from airflow.exceptions import AirflowSkipException

            from stackexchange.ingest import check
            from stackexchange.settings import DownloadPolicy
            from stackexchange.source import Dumps

            context = get_current_context()
            context["site"] = site  # type: ignore[typeddict-unknown-key]  # the map index name
            params, ti = context["params"], context["ti"]

            def ingest_succeeded(run_id: str, map_index: int | None) -> bool:
                done = ti.get_ti_count(dag_id=ti.dag_id, task_ids=["ingest"], run_ids=[run_id],
                                       map_index=map_index, states=["success"])  # fmt: skip
                return done > 0

            dumps = Dumps(params["source_base_url"], DownloadPolicy.from_env())
            with _fail_fast_on_permanent_errors():
                (decision,) = check(
                    [site], dumps, bool(params["force"]), AWS_CONN_ID, ingest_succeeded, STORAGE
                )
            if not decision.ingest:
                # Airflow 3.0.2 renders map_index_template only when execute() returns or
                # fails, not on a skip: name the skipped instance here.
                ti.rendered_map_index = site
                raise AirflowSkipException(f"{site} is up to date: {decision.reason}")

        # Its own pod size (CPU, memory, scratch disk; settings STACKEXCHANGE_INGEST_*): on the
        # KubernetesExecutor only; other executors ignore it.
        @task(
            outlets=list(RAW.values()),
            map_index_template="{{ site }}",
            max_active_tis_per_dagrun=MAX_ACTIVE_SITES,
            execution_timeout=timedelta(hours=12),
            executor_config=ingest_executor_config(IngestPodSettings.from_env()),
        )
        def ingest(site: str) -> None:
            """Stream, verify, validate, commit the site's pair; one asset event per object."""
            from stackexchange.ingest import ingest as run_ingest
            from stackexchange.ingest import ingest_id

            context = get_current_context()
            context["site"] = site  # type: ignore[typeddict-unknown-key]  # the map index name
            params, ti = context["params"], context["ti"]
            with _fail_fast_on_permanent_errors():
                extras = run_ingest(
                    site,
                    params["source_base_url"],
                    AWS_CONN_ID,
                    ingest_id=ingest_id(ti.run_id, ti.try_number),
                    storage=STORAGE,
                    map_index=ti.map_index,
                )
            for member, extra in zip((POSTS, USERS), extras, strict=True):
                context["outlet_events"][RAW[member]].extra = extra

        check_source(site) >> ingest(site)

    per_site.expand(site=choose_sites())


produce_data_asset()
