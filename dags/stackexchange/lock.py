"""One writer per site, enforced by S3: ``{prefix}/{site}/_lock``, created with a conditional PUT.

``If-None-Match: *`` makes the creation fail when the lock exists, so of two writers (a manual
run beside the scheduled one, two deployments on one bucket) one gets the lock and the other
is refused with a clear error. The lock names its holder (the ingest id) and an expiry; a lock
past its expiry, or one held by an earlier try of the same DAG run (a killed worker: Airflow
runs one try of a task at a time), is taken over with ``If-Match`` on its ETag, so two writers
taking over the same stale lock cannot both win.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from stackexchange.multipart import strip_etag
from stackexchange.publish import SiteKeys, missing, precondition_failed, run_id_of

log = logging.getLogger(__name__)


class SiteLocked(RuntimeError):
    """Another writer holds the site: retrying while it runs cannot help."""


def _put(client: Any, keys: SiteKeys, body: bytes, condition: dict[str, str]) -> str | None:
    """The new lock's ETag, or None when the condition failed."""
    try:
        answer = client.put_object(
            Bucket=keys.bucket, Key=keys.lock, Body=body, ContentType="application/json",
            **condition,
        )  # fmt: skip
    except ClientError as exc:
        if precondition_failed(exc) or missing(exc):  # If-Match on a lock deleted meanwhile
            return None
        raise
    return strip_etag(answer["ETag"])


def _holder(client: Any, keys: SiteKeys) -> tuple[dict[str, Any], str] | None:
    try:
        answer = client.get_object(Bucket=keys.bucket, Key=keys.lock)
    except ClientError as exc:
        if missing(exc):
            return None
        raise
    try:
        body = json.loads(answer["Body"].read())
    except ValueError:
        body = {}
    return body, strip_etag(answer["ETag"])


def acquire(
    client: Any,
    keys: SiteKeys,
    ingest_id: str,
    ttl_seconds: float,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> str:
    """Take the site's lock for ``ingest_id``; its ETag. ``SiteLocked`` if another writer has it."""
    moment = now()
    body = json.dumps({
        "ingest_id": ingest_id,
        "acquired_at": moment.isoformat(timespec="seconds"),
        "expires_at": (moment + timedelta(seconds=ttl_seconds)).isoformat(timespec="seconds"),
    }).encode()  # fmt: skip
    for _ in range(3):  # the lock may vanish or change between our PUT and our GET
        etag = _put(client, keys, body, {"IfNoneMatch": "*"})
        if etag:
            return etag
        found = _holder(client, keys)
        if found is None:
            continue
        holder, held_etag = found
        holder_id = str(holder.get("ingest_id", ""))
        try:
            expires = datetime.fromisoformat(str(holder["expires_at"]))
        except (KeyError, ValueError):
            expires = moment  # an unreadable lock protects nothing
        same_run = bool(holder_id) and run_id_of(holder_id) == run_id_of(ingest_id)
        if not (same_run or expires <= moment):
            raise SiteLocked(
                f"{keys.site} is being written by ingest {holder_id or '(unknown)'} until "
                f"{expires.isoformat()} ({keys.uri(keys.lock)}): wait for that run to finish, "
                "or, if it is dead, delete the lock object and run again"
            )
        why = "an earlier try of this run" if same_run else "expired"
        etag = _put(client, keys, body, {"IfMatch": held_etag})
        if etag:
            log.warning("Took over the lock of %s from %s (%s)", keys.site, holder_id, why)
            return etag
    raise SiteLocked(f"{keys.uri(keys.lock)} keeps changing: another writer is taking it")


def release(client: Any, keys: SiteKeys, ingest_id: str) -> None:
    """Delete the lock if it is still ours (a writer that took it over keeps it)."""
    found = _holder(client, keys)
    if found is not None and found[0].get("ingest_id") == ingest_id:
        client.delete_object(Bucket=keys.bucket, Key=keys.lock)


@contextlib.contextmanager
def held(client: Any, keys: SiteKeys, ingest_id: str, ttl_seconds: float) -> Iterator[None]:
    acquire(client, keys, ingest_id, ttl_seconds)
    try:
        yield
    finally:
        try:
            release(client, keys, ingest_id)
        except ClientError as exc:  # it expires anyway
            log.warning("Could not release %s (%s); it expires", keys.uri(keys.lock), exc)
