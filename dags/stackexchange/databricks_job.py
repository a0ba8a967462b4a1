"""How the consumer DAG finds the Databricks job and what it tells each job run to process.

The job is defined in the bundle (``notebooks/resources/stackexchange_medallion.job.yml``);
``JOB_NAME`` repeats its name because the DAGs folder is all an Airflow image ships
(``tests/test_job_definition.py`` checks the two agree). ``DATABRICKS_JOB_ID`` overrides the
name lookup with an explicit job id.

One consumer run may be triggered by the events of several sites (all events since its last
run). They are grouped by the ``site`` of their extra: per site, the newest ingest that
announced both files, each object's URI, ETag, VersionId, size (``bytes``), ``last_modified``
and sha256, becomes one job run's parameters, so two sites never mix. Before the run, the
site's manifest must still name that pair (a site whose pair a newer ingest replaced is left
out: that ingest's own events trigger a run), and both objects must still be the ones it
records (ETag, VersionId), whatever the events carry. Events from an older producer lack
``etag``/``version_id`` or ``bytes``/``last_modified``; those parameters are then empty.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk import Asset

from stackexchange.assets import POSTS, USERS, raw_assets
from stackexchange.settings import Storage

log = logging.getLogger(__name__)

CONN_ID = "databricks_conn"
JOB_NAME = "stackexchange_medallion"
# What the job needs from each event's extra, and the identity it also passes when present
# (see above); each becomes a job parameter named by prefix and key: posts_uri, users_bytes, ...
REQUIRED_EXTRA = ("uri", "site", "sha256")
IDENTITY_EXTRA = ("etag", "version_id", "bytes", "last_modified")
# Job parameter prefix per member.
PREFIXES = ((POSTS, "posts"), (USERS, "users"))


def job_lookup() -> dict[str, str]:
    """``{"job_id": ...}`` when ``DATABRICKS_JOB_ID`` is set, else ``{"job_name": JOB_NAME}``."""
    job_id = os.environ.get("DATABRICKS_JOB_ID", "").strip()
    if not job_id:
        return {"job_name": JOB_NAME}
    if not job_id.isdigit():
        raise ValueError(f"DATABRICKS_JOB_ID must be a numeric Databricks job id, not {job_id!r}")
    return {"job_id": job_id}


def poll_seconds() -> int:
    """How often the triggerer asks Databricks about a run: ``DATABRICKS_POLL_SECONDS``, else 30."""
    raw = os.environ.get("DATABRICKS_POLL_SECONDS", "").strip() or "30"
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            f"DATABRICKS_POLL_SECONDS must be a whole number of seconds >= 1, not {raw!r}"
        )
    return int(raw)


def _checked(asset: Asset, extra: dict[str, Any], storage: Storage, member: str) -> dict:
    """``extra``, refused unless complete and naming an object of its own site under the
    deployment's bucket and prefix."""
    missing = sorted(set(REQUIRED_EXTRA) - extra.keys())
    if missing:
        raise AirflowFailException(
            f"Asset event of {asset.name} lacks {missing} in its extra: {extra}"
        )
    from stackexchange.publish import SiteKeys

    keys = SiteKeys.of(storage, str(extra["site"]))
    site_prefix = keys.uri(keys.site_prefix)
    uri = str(extra["uri"])
    parts = uri.removeprefix(site_prefix).split("/") if uri.startswith(site_prefix) else []
    if len(parts) != 2 or not parts[0] or parts[1] != member:  # <generation>/<member>
        raise AirflowFailException(
            f"Asset event of {asset.name} announces {uri!r}, which is not a {member} of site "
            f"{extra['site']!r} under {site_prefix!r}: refusing to process an object the asset "
            "does not name (check the producer's STACKEXCHANGE_BUCKET/STACKEXCHANGE_PREFIX "
            "match this deployment's)."
        )
    return extra


def _parameters(site: str, announced: dict[str, dict[str, Any]]) -> dict[str, str]:
    parameters = {"site": site}
    for member, prefix in PREFIXES:
        extra = announced[member]
        parameters |= {f"{prefix}_{key}": str(extra[key]) for key in ("uri", "sha256")}
        parameters |= {
            f"{prefix}_{key}": "" if extra.get(key) is None else str(extra[key])
            for key in IDENTITY_EXTRA
        }
    return parameters


def job_parameters(events: Mapping[Asset, Sequence[Any]], storage: Storage) -> list[dict]:
    """One job run's parameters per site the triggering asset events announce, by site name.

    Per site: the newest ingest that announced both files (events of one ingest carry the same
    ``ingest_id``; events without one pair by timestamp order). ``{posts,users}_etag``,
    ``_bytes`` and ``_last_modified`` are empty when an older producer's event lacks them,
    ``_version_id`` also when the bucket is not versioned.
    """
    assets = raw_assets(storage)
    # site -> ingest -> member -> (timestamp, extra)
    found: dict[str, dict[str, dict[str, tuple[Any, dict]]]] = {}
    for member, asset in assets.items():
        try:
            asset_events = events[asset]
        except KeyError:
            asset_events = []
        if not asset_events:
            raise AirflowFailException(
                f"No triggering event for asset {asset.name}: this DAG runs on the producer's "
                "asset events; trigger produce_data_asset instead of running this DAG by hand."
            )
        for event in asset_events:
            extra = _checked(asset, dict(event.extra or {}), storage, member)
            ingest = str(extra.get("ingest_id") or "")
            by_ingest = found.setdefault(str(extra["site"]), {}).setdefault(ingest, {})
            if member not in by_ingest or event.timestamp > by_ingest[member][0]:
                by_ingest[member] = (event.timestamp, extra)
    runs = []
    for site, by_ingest in sorted(found.items()):
        pairs = [files for files in by_ingest.values() if len(files) == len(PREFIXES)]
        if not pairs:
            log.warning("%s: the events announce only one file of each ingest; no job run", site)
            continue
        newest = max(pairs, key=lambda files: max(t for t, _ in files.values()))
        runs.append(_parameters(site, {member: extra for member, (_, extra) in newest.items()}))
    return runs


def still_published(
    runs: Sequence[Mapping[str, str]], aws_conn_id: str, storage: Storage
) -> list[Mapping[str, str]]:
    """The runs whose pair is still the site's current one (its manifest names the announced
    objects, which still hold the ETags and VersionIds it records: ``publish.matches``). A site
    whose pair a newer ingest replaced is left out: that ingest's own events trigger a run.
    Raises ``AirflowSkipException`` when no site is left."""
    from stackexchange.publish import SiteKeys, matches, read_manifest
    from stackexchange.s3 import S3ConfigError, explained, s3_hook

    current = []
    try:
        client = s3_hook(aws_conn_id).get_conn()
        for parameters in runs:
            site = parameters["site"]
            keys = SiteKeys.of(storage, site)
            with explained(aws_conn_id, storage.bucket, f"reading {keys.uri(keys.manifest)}"):
                manifest = read_manifest(client, keys)
            named = {o.uri for o in manifest.objects.values()} if manifest else set()
            announced = {parameters[f"{prefix}_uri"] for _, prefix in PREFIXES}
            if manifest is None or named != announced:
                log.warning(
                    "%s: its manifest %s names %s, not the announced pair %s: superseded by a "
                    "newer ingest, whose own asset events trigger a run",
                    site, keys.uri(keys.manifest), sorted(named) or "nothing", sorted(announced),
                )  # fmt: skip
                continue
            with explained(aws_conn_id, storage.bucket, f"checking the pair of {site}"):
                changed = matches(client, keys, manifest)
            if changed:
                raise AirflowFailException(
                    f"{changed}, although the manifest of {site} names it: generation objects "
                    "are written once, so something else wrote (or deleted) it; re-run "
                    "produce_data_asset for the site with force=true to publish the pair again."
                )
            log.info("%s: both objects are as its manifest records them", site)
            current.append(parameters)
    except S3ConfigError as error:
        raise AirflowFailException(str(error)) from error
    if not current:
        raise AirflowSkipException(
            "every announced pair was superseded by a newer ingest; those ingests' own asset "
            "events trigger a run"
        )
    return current
