"""Adopt the pair an earlier version published at fixed keys as a site's first generation.

Before per-site generations, the producer published one site per prefix (README: "Upgrading
from the single-site layout")::

    {prefix}/Posts.xml, {prefix}/Users.xml   user metadata: site, source-url, source-version,
                                             ingest-id
    {prefix}/_manifest.json                  format 1, the commit record: the site, the ingest
                                             id and per object its ETag, VersionId, sha256, rows

The producer's ingest of a site that has no manifest yet calls :func:`adopt` under the site's
lock. The legacy pair is adopted only if it proves to be that site's and whole: both objects'
metadata name the site and the same ingest, and the legacy manifest names the site, that ingest
and exactly these objects (ETags). So no operator has to name the site: the old producer
recorded it on every object. The objects are copied server-side (CopyObject, or UploadPartCopy
above 5 GiB: Posts.xml of stackoverflow.com is about 100 GB) into a new generation, conditional
on the legacy ETag, then the site's manifest is written with the same single conditional PUT
as every commit (``publish.commit``). A kill before that PUT leaves no manifest (the
copies are garbage the next commit's retention deletes); after it, a whole one. The legacy keys
are deleted only after the commit: nothing reads them any more, and keeping them would double
the storage of the biggest objects.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from stackexchange import publish, s3
from stackexchange.multipart import CONTENT_TYPE, MAX_PARTS, strip_etag, version_of

log = logging.getLogger(__name__)

MEMBERS = ("Posts.xml", "Users.xml")
LEGACY_MANIFEST = "_manifest.json"
LEGACY_FORMAT = 1
SINGLE_COPY_MAX_BYTES = 5 << 30  # CopyObject's limit
COPY_PART_BYTES = 512 << 20


class LegacyPairError(RuntimeError):
    """The legacy keys hold something of this site that is not a whole, recorded pair."""


@dataclass(frozen=True)
class LegacyObject:
    key: str
    etag: str
    bytes: int
    rows: int
    sha256: str
    source_url: str
    source_version: str


@dataclass(frozen=True)
class LegacyPair:
    ingest_id: str
    objects: dict[str, LegacyObject]


def legacy_key(keys: publish.SiteKeys, name: str) -> str:
    return f"{keys.prefix}/{name}"


def _legacy_manifest(client: Any, keys: publish.SiteKeys, fix: str) -> dict[str, Any]:
    where = keys.uri(legacy_key(keys, LEGACY_MANIFEST))
    try:
        body = client.get_object(Bucket=keys.bucket, Key=legacy_key(keys, LEGACY_MANIFEST))
    except client.exceptions.NoSuchKey:
        raise LegacyPairError(
            f"the legacy pair of {keys.site} has no commit record ({where} is missing), so "
            f"neither its wholeness nor its sha256 is known: {fix}"
        ) from None
    try:
        found = json.loads(body["Body"].read())
        if not isinstance(found, dict) or found.get("format") != LEGACY_FORMAT:
            raise ValueError(f"not a format {LEGACY_FORMAT} manifest")
        return found
    except ValueError as exc:
        raise LegacyPairError(f"{where} is unreadable ({exc}): {fix}") from None


def find(client: Any, keys: publish.SiteKeys) -> LegacyPair | None:
    """The legacy pair if its objects say they are ``keys.site``'s; None if there is none or it
    is another site's. ``LegacyPairError`` if it is this site's but not whole as recorded."""
    heads = {name: publish.head(client, keys.bucket, legacy_key(keys, name)) for name in MEMBERS}
    ours = {n: h for n, h in heads.items() if h and h.get("Metadata", {}).get("site") == keys.site}
    if not ours:
        others = sorted({h.get("Metadata", {}).get("site", "?") for h in heads.values() if h})
        if others:
            log.info("The legacy objects under %s are of %s, not %s: left alone",
                     keys.uri(keys.prefix + "/"), ", ".join(others), keys.site)  # fmt: skip
        return None
    fix = (
        f"delete {keys.uri(legacy_key(keys, 'Posts.xml'))}, "
        f"{keys.uri(legacy_key(keys, 'Users.xml'))} and "
        f"{keys.uri(legacy_key(keys, LEGACY_MANIFEST))}, and the site is ingested afresh"
    )
    missing = [keys.uri(legacy_key(keys, n)) for n in MEMBERS if n not in ours]
    if missing:
        raise LegacyPairError(
            f"the legacy pair of {keys.site} is half: {', '.join(missing)} is missing or "
            f"another site's, so it cannot be adopted: {fix}"
        )
    recorded = _legacy_manifest(client, keys, fix)
    ingest_ids = {h["Metadata"].get("ingest-id") for h in ours.values()}
    if recorded.get("site") != keys.site or ingest_ids != {recorded.get("ingest_id")}:
        raise LegacyPairError(
            f"the legacy objects of {keys.site} (ingest {', '.join(map(str, ingest_ids))}) are "
            f"not the pair {keys.uri(legacy_key(keys, LEGACY_MANIFEST))} records (site "
            f"{recorded.get('site')!r}, ingest {recorded.get('ingest_id')!r}): an earlier "
            f"version's commit was cut short, or something else wrote them: {fix}"
        )
    objects = {}
    for name, found in ours.items():
        entry = recorded.get("objects", {}).get(name) or {}
        etag = strip_etag(found["ETag"])
        if entry.get("etag") != etag:
            raise LegacyPairError(
                f"{keys.uri(legacy_key(keys, name))} has ETag {etag}, its legacy manifest "
                f"records {entry.get('etag')!r}: {fix}"
            )
        try:
            objects[name] = LegacyObject(
                key=legacy_key(keys, name),
                etag=etag,
                bytes=int(found["ContentLength"]),
                rows=int(entry["rows"]),
                sha256=str(entry["sha256"]),
                source_url=str(entry["source_url"]),
                source_version=str(entry["source_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LegacyPairError(
                f"the legacy manifest's entry of {name} lacks {exc}: {fix}"
            ) from None
    return LegacyPair(str(recorded["ingest_id"]), objects)


def _copy(
    client: Any,
    keys: publish.SiteKeys,
    target: str,
    legacy: LegacyObject,
    metadata: dict[str, str],
    single_copy_max: int,
    part_bytes: int,
) -> dict[str, Any]:
    """Copy ``legacy`` to ``target`` server-side, only while it has the adopted ETag; S3's
    answer for the new object (its ETag and VersionId)."""
    source = {"Bucket": keys.bucket, "Key": legacy.key}
    if legacy.bytes <= single_copy_max:
        answer = client.copy_object(
            Bucket=keys.bucket, Key=target, CopySource=source, CopySourceIfMatch=legacy.etag,
            MetadataDirective="REPLACE", Metadata=metadata, ContentType=CONTENT_TYPE,
        )  # fmt: skip
        return {"ETag": answer["CopyObjectResult"]["ETag"], "VersionId": answer.get("VersionId")}
    part = max(part_bytes, math.ceil(legacy.bytes / MAX_PARTS))
    upload = client.create_multipart_upload(
        Bucket=keys.bucket, Key=target, Metadata=metadata, ContentType=CONTENT_TYPE
    )["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, legacy.bytes, part), start=1):
            answer = client.upload_part_copy(
                Bucket=keys.bucket, Key=target, UploadId=upload, PartNumber=number,
                CopySource=source, CopySourceIfMatch=legacy.etag,
                CopySourceRange=f"bytes={start}-{min(start + part, legacy.bytes) - 1}",
            )  # fmt: skip
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        return client.complete_multipart_upload(
            Bucket=keys.bucket, Key=target, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=keys.bucket, Key=target, UploadId=upload)
        raise


def _adopted(
    client: Any,
    keys: publish.SiteKeys,
    ingest_id: str,
    generation: str,
    name: str,
    legacy: LegacyObject,
    copy: tuple[int, int],
) -> publish.PublishedObject:
    target = keys.key(generation, name)
    values = {
        "site": keys.site,
        "source-url": legacy.source_url,
        "source-version": legacy.source_version,
        "ingest-id": ingest_id,
        "adopted-from": keys.uri(legacy.key),
    }
    metadata = {name: s3.ascii_value(value) for name, value in values.items()}
    answer = _copy(client, keys, target, legacy, metadata, *copy)
    etag = strip_etag(answer["ETag"])
    found = publish.head(client, keys.bucket, target)
    source_now = publish.head(client, keys.bucket, legacy.key)
    if source_now is None or strip_etag(source_now["ETag"]) != legacy.etag:
        raise LegacyPairError(f"{keys.uri(legacy.key)} changed while it was adopted: run again")
    if found is None or strip_etag(found["ETag"]) != etag or found["ContentLength"] != legacy.bytes:
        raise publish.ConcurrentCommitError(f"{keys.uri(target)} is not the copy just made")
    return publish.PublishedObject(
        name=name,
        uri=keys.uri(target),
        etag=etag,
        version_id=version_of(answer),
        last_modified=found["LastModified"].astimezone(UTC).isoformat(),
        bytes=legacy.bytes,
        rows=legacy.rows,
        sha256=legacy.sha256,
        source_url=legacy.source_url,
        source_version=legacy.source_version,
        part_size=legacy.bytes if legacy.bytes <= copy[0] else copy[1],
    )


def adopt(
    client: Any,
    keys: publish.SiteKeys,
    *,
    ingest_id: str,
    current: publish.Current,
    keep_previous: int,
    map_index: int | None = None,
    single_copy_max: int = SINGLE_COPY_MAX_BYTES,
    part_bytes: int = COPY_PART_BYTES,
) -> publish.Manifest | None:
    """Adopt the site's legacy pair as its first generation, committed as ``ingest_id``; the
    new manifest, or None when there is nothing to adopt (the site has a manifest, readable or
    not, or the legacy keys hold no pair of this site). Call it holding the site's lock."""
    if current.etag is not None:
        return None  # a manifest exists: the migration never replaces one
    pair = find(client, keys)
    if pair is None:
        return None
    # Not the generation this ingest may write next: another name for the same ingest id.
    generation = publish.new_generation(f"{ingest_id} adopts {pair.ingest_id}")
    log.info("Adopting the legacy pair of %s (ingest %s) as generation %s",
             keys.site, pair.ingest_id, generation)  # fmt: skip
    objects = {
        name: _adopted(
            client, keys, ingest_id, generation, name, legacy, (single_copy_max, part_bytes)
        )
        for name, legacy in pair.objects.items()
    }
    manifest = publish.commit(
        client,
        keys,
        ingest_id=ingest_id,
        generation=generation,
        objects=objects,
        current=current,
        keep_previous=keep_previous,
        map_index=map_index,
    )
    for legacy in pair.objects.values():
        found = publish.head(client, keys.bucket, legacy.key)
        if found is not None and strip_etag(found["ETag"]) == legacy.etag:
            client.delete_object(Bucket=keys.bucket, Key=legacy.key)
    client.delete_object(Bucket=keys.bucket, Key=legacy_key(keys, LEGACY_MANIFEST))
    log.info("Deleted the legacy keys of %s under %s", keys.site, keys.uri(keys.prefix + "/"))
    return manifest
