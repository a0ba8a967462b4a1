"""How the consumer DAG finds the Databricks job and what it tells the job to process.

The job is defined in the bundle (``notebooks/resources/stackexchange_medallion.job.yml``);
``JOB_NAME`` repeats its name because the DAGs folder is all an Airflow image ships
(``tests/test_job_definition.py`` checks the two agree). ``DATABRICKS_JOB_ID`` overrides the
name lookup with an explicit job id.

The job processes exactly what the asset events announced: each object's URI, ETag, VersionId,
size (``bytes``), ``last_modified`` and sha256 go to the job, which checks them again before and
after reading (by ETag where its compute can read one, else by size and modification time: on
serverless). Events from an older producer lack ``etag``/``version_id`` or ``bytes``/
``last_modified``; those parameters are then empty, and what the job cannot compare it does not
check (sha256 alone cannot be checked cheaply: the objects no longer carry it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from airflow.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk import Asset

from stackexchange.assets import RAW_POSTS, RAW_USERS

log = logging.getLogger(__name__)

CONN_ID = "databricks_conn"
JOB_NAME = "stackexchange_medallion"
# What the job needs from each event's extra, and the identity it also passes when present
# (see above); each becomes a job parameter named by prefix and key: posts_uri, users_bytes, ...
REQUIRED_EXTRA = ("uri", "site", "sha256")
IDENTITY_EXTRA = ("etag", "version_id", "bytes", "last_modified")
# Job parameter prefix per asset.
PREFIXES = ((RAW_POSTS, "posts"), (RAW_USERS, "users"))


def job_lookup() -> dict[str, str]:
    """``{"job_id": ...}`` when ``DATABRICKS_JOB_ID`` is set, else ``{"job_name": JOB_NAME}``."""
    job_id = os.environ.get("DATABRICKS_JOB_ID", "").strip()
    if not job_id:
        return {"job_name": JOB_NAME}
    if not job_id.isdigit():
        raise ValueError(f"DATABRICKS_JOB_ID must be a numeric Databricks job id, not {job_id!r}")
    return {"job_id": job_id}


def _announced(events: Mapping[Asset, Sequence[Any]], asset: Asset) -> dict[str, Any]:
    """The newest event's extra, refused unless it is complete and names the asset's own URI."""
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
    extra = dict(max(asset_events, key=lambda event: event.timestamp).extra or {})
    missing = sorted(set(REQUIRED_EXTRA) - extra.keys())
    if missing:
        raise AirflowFailException(
            f"Asset event of {asset.name} lacks {missing} in its extra: {extra}"
        )
    if extra["uri"] != asset.uri:
        raise AirflowFailException(
            f"Asset event of {asset.name} announces {extra['uri']!r}, but the asset is "
            f"{asset.uri!r}: refusing to process an object the asset does not name (check the "
            "producer's STACKEXCHANGE_BUCKET/STACKEXCHANGE_PREFIX match this deployment's)."
        )
    return extra


def job_parameters(events: Mapping[Asset, Sequence[Any]]) -> dict[str, str]:
    """The job parameters for the objects the triggering asset events announce.

    ``{posts,users}_etag``, ``_bytes`` and ``_last_modified`` are empty when an older producer's
    event lacks them, ``_version_id`` also when the bucket is not versioned.
    """
    announced = {prefix: _announced(events, asset) for asset, prefix in PREFIXES}
    posts, users = announced["posts"], announced["users"]
    if posts["site"] != users["site"]:
        raise AirflowFailException(
            f"Posts ({posts['site']}) and Users ({users['site']}) of the triggering events are "
            "from different sites; re-run produce_data_asset for one site."
        )
    parameters = {"site": str(posts["site"])}
    for prefix, extra in announced.items():
        parameters |= {f"{prefix}_{key}": str(extra[key]) for key in ("uri", "sha256")}
        parameters |= {
            f"{prefix}_{key}": "" if extra.get(key) is None else str(extra[key])
            for key in IDENTITY_EXTRA
        }
    return parameters


def ensure_still_published(parameters: Mapping[str, str], aws_conn_id: str) -> None:
    """Skip the run when a newer ingest replaced an announced object since its event.

    One ``HEAD`` per object: a mixed pair (one object replaced) is never sent to Databricks;
    the newer ingest's own events schedule the run that processes it.
    """
    from stackexchange.s3 import S3ConfigError, explained, s3_hook

    try:
        hook = s3_hook(aws_conn_id)
        for _, prefix in PREFIXES:
            uri, etag = parameters[f"{prefix}_uri"], parameters[f"{prefix}_etag"]
            if not etag:
                log.warning(
                    "%s: its asset event has no etag (older producer), so whether the object "
                    "still holds the announced data cannot be checked; processing it by sha256",
                    uri,
                )
                continue
            location = urlsplit(uri)
            with explained(aws_conn_id, location.netloc, f"checking {uri}"):
                head = hook.head_object(key=location.path.lstrip("/"), bucket_name=location.netloc)
            _ensure_same(uri, etag, parameters[f"{prefix}_version_id"], head)
    except S3ConfigError as error:
        raise AirflowFailException(str(error)) from error


def _ensure_same(uri: str, etag: str, version_id: str, head: Mapping[str, Any] | None) -> None:
    if head is None:
        raise AirflowFailException(
            f"{uri} no longer exists although its asset event announced it: re-run "
            "produce_data_asset (with force=true) to publish the pair again."
        )
    now_etag, now_version = str(head["ETag"]).strip('"'), str(head.get("VersionId") or "")
    if now_etag != etag or (version_id and now_version != version_id):
        announced = f"ETag {etag}" + (f", version {version_id}" if version_id else "")
        now = now_etag + (f", version {now_version}" if version_id else "")
        raise AirflowSkipException(
            f"{uri} was superseded by a newer ingest (announced {announced}, now {now}); "
            "that ingest's own asset events trigger a run"
        )
    log.info("%s still holds the announced object (ETag %s)", uri, etag)
