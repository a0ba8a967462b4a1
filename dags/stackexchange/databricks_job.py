"""How the consumer DAG finds the Databricks job and what it tells the job to process.

The job is defined in the bundle (``notebooks/resources/stackexchange_medallion.job.yml``);
``JOB_NAME`` repeats its name because the DAGs folder is all an Airflow image ships
(``tests/test_job_definition.py`` checks the two agree). ``DATABRICKS_JOB_ID`` overrides the
name lookup with an explicit job id.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.exceptions import AirflowFailException
from airflow.sdk import Asset

from stackexchange.assets import RAW_POSTS, RAW_USERS

CONN_ID = "databricks_conn"
JOB_NAME = "stackexchange_medallion"


def job_lookup() -> dict[str, str]:
    """``{"job_id": ...}`` when ``DATABRICKS_JOB_ID`` is set, else ``{"job_name": JOB_NAME}``."""
    job_id = os.environ.get("DATABRICKS_JOB_ID", "").strip()
    if not job_id:
        return {"job_name": JOB_NAME}
    if not job_id.isdigit():
        raise ValueError(f"DATABRICKS_JOB_ID must be a numeric Databricks job id, not {job_id!r}")
    return {"job_id": job_id}


def _latest_extra(events: Mapping[Asset, Sequence[Any]], asset: Asset) -> dict[str, Any]:
    try:
        asset_events = events[asset]
    except KeyError:
        asset_events = []
    if not asset_events:
        raise AirflowFailException(
            f"No triggering event for asset {asset.name}: this DAG runs on the producer's "
            "asset events; trigger produce_data_asset instead of running this DAG by hand."
        )
    # Several producer runs may have queued up: process the newest data.
    return dict(max(asset_events, key=lambda event: event.timestamp).extra or {})


def job_parameters(events: Mapping[Asset, Sequence[Any]]) -> dict[str, str]:
    """The job parameters for the data the triggering asset events announce."""
    posts, users = _latest_extra(events, RAW_POSTS), _latest_extra(events, RAW_USERS)
    for asset, extra in ((RAW_POSTS, posts), (RAW_USERS, users)):
        missing = sorted({"uri", "site", "sha256"} - extra.keys())
        if missing:
            raise AirflowFailException(
                f"Asset event of {asset.name} lacks {missing} in its extra: {extra}"
            )
    if posts["site"] != users["site"]:
        raise AirflowFailException(
            f"Posts ({posts['site']}) and Users ({users['site']}) of the triggering events are "
            "from different sites; re-run produce_data_asset for one site."
        )
    return {
        "posts_uri": str(posts["uri"]),
        "users_uri": str(users["uri"]),
        "site": str(posts["site"]),
        "posts_sha256": str(posts["sha256"]),
        "users_sha256": str(users["sha256"]),
    }
