"""Publish a site's Posts.xml and Users.xml as a pair, committed by one S3 write.

Layout of one site (``SiteKeys``)::

    {prefix}/{site}/_manifest.json              the commit: names the current pair
    {prefix}/{site}/_lock                       held by the one writer of the site (``lock``)
    {prefix}/{site}/{generation}/Posts.xml      one generation per ingest, written once
    {prefix}/{site}/{generation}/Users.xml

Each ingest streams both files into multipart uploads under its own generation, keys no other
ingest ever writes, and completes each (:func:`complete`) once it is validated and uploaded,
while the next streams: no reader looks at a generation no manifest names. :func:`commit`
then writes the manifest with one PUT, which is the commit: a reader that resolves the pair
through the manifest sees the previous pair or the new one, whole, whenever the writer dies. A
failing ingest deletes the objects it completed; a generation whose manifest was never written
(the writer died) is garbage, deleted by the next commit's retention (or the bucket's lifecycle
rule); nothing is ever rolled back, so nothing needs ``s3:DeleteObjectVersion``.

Each object's identity comes from its own CompleteMultipartUpload response (ETag, VersionId),
checked against a HEAD of the generation key that must carry this ingest's id in its metadata.
A completion whose reply was lost (the retry answers NoSuchUpload) is recognised the same way:
the object at our own key with our ingest id is ours. The manifest PUT is conditional on the
manifest it replaces (If-Match its ETag, or If-None-Match for the first), so a writer that lost
the lock cannot overwrite a newer commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from stackexchange.dump_xml import ValidatedFile
from stackexchange.multipart import MultipartUpload, strip_etag, version_of
from stackexchange.settings import Storage
from stackexchange.source import RemoteArchive

log = logging.getLogger(__name__)

FORMAT = 2
MANIFEST = "_manifest.json"
LOCK = "_lock"


@dataclass(frozen=True)
class SiteKeys:
    """Where one site's generations, manifest and lock live."""

    bucket: str
    prefix: str
    site: str

    @classmethod
    def of(cls, storage: Storage, site: str) -> SiteKeys:
        """``site``'s keys in the deployment's bucket and prefix."""
        return cls(storage.bucket, storage.prefix, site)

    @property
    def site_prefix(self) -> str:
        return f"{self.prefix}/{self.site}/"

    @property
    def manifest(self) -> str:
        return f"{self.site_prefix}{MANIFEST}"

    @property
    def lock(self) -> str:
        return f"{self.site_prefix}{LOCK}"

    def key(self, generation: str, name: str) -> str:
        return f"{self.site_prefix}{generation}/{name}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def new_generation(ingest_id: str, now: datetime | None = None) -> str:
    """A generation name: sortable by time, unique per ingest, safe in a key."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    digest = hashlib.sha256(ingest_id.encode()).hexdigest()[:10]
    return f"{moment:%Y%m%dT%H%M%SZ}-{digest}"


class ConcurrentCommitError(RuntimeError):
    """Another writer committed the site's manifest while this one ingested."""


@dataclass(frozen=True)
class PublishedObject:
    """One object of a committed pair, as the manifest and the asset event describe it."""

    name: str
    uri: str
    etag: str
    version_id: str | None
    last_modified: str  # ISO 8601, UTC: what Spark's file metadata shows as modificationTime
    bytes: int
    rows: int
    sha256: str
    source_url: str
    source_version: str
    part_size: int


@dataclass(frozen=True)
class Staged:
    """A validated file in its still-open multipart upload, and where it came from."""

    upload: MultipartUpload
    file: ValidatedFile
    source: RemoteArchive


@dataclass(frozen=True)
class Manifest:
    """The commit record of a site: its current pair, and the generations kept for rollback."""

    site: str
    ingest_id: str
    generation: str
    published_at: str
    objects: dict[str, PublishedObject]
    map_index: int | None = None  # the writer's mapped task instance in its DAG run
    previous: list[str] = field(default_factory=list)  # kept generations, newest first

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **asdict(self)}
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError(f"manifest format {body.get('format')!r}, expected {FORMAT}")
        objects = {n: PublishedObject(**o) for n, o in body["objects"].items()}
        return cls(
            body["site"],
            body["ingest_id"],
            body["generation"],
            body["published_at"],
            objects,
            body.get("map_index"),
            list(body.get("previous", [])),
        )


@dataclass(frozen=True)
class Current:
    """The manifest on S3 and its ETag (what the next commit's If-Match names)."""

    manifest: Manifest | None
    etag: str | None


def run_id_of(ingest_id: str) -> str:
    """The DAG run of an ingest id (``{run_id}#{try_number}``, see ``ingest.ingest_id``)."""
    return ingest_id.rpartition("#")[0]


def missing(exc: ClientError) -> bool:
    """S3's answer for a key (or object version) that does not exist: 404, NoSuchKey."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def precondition_failed(exc: ClientError) -> bool:
    """S3's answer to a failed If-Match/If-None-Match (412), or to a concurrent one (409)."""
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if missing(exc):
            return None
        raise


def read_current(client: Any, keys: SiteKeys) -> Current:
    try:
        answer = client.get_object(Bucket=keys.bucket, Key=keys.manifest)
    except ClientError as exc:
        if missing(exc):
            return Current(None, None)
        raise
    etag = strip_etag(answer["ETag"])
    try:
        return Current(Manifest.from_json(answer["Body"].read()), etag)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s); treating the site as unpublished",
                    keys.uri(keys.manifest), exc)  # fmt: skip
        return Current(None, etag)


def read_manifest(client: Any, keys: SiteKeys) -> Manifest | None:
    return read_current(client, keys).manifest


def matches(client: Any, keys: SiteKeys, manifest: Manifest) -> str | None:
    """None if the manifest's objects exist as recorded, else what differs."""
    for published in manifest.objects.values():
        key = published.uri.removeprefix(f"s3://{keys.bucket}/")
        found = head(client, keys.bucket, key)
        if found is None:
            return f"{published.uri} is missing"
        etag, version = strip_etag(found["ETag"]), version_of(found)
        if etag != published.etag or (published.version_id and version != published.version_id):
            return f"{published.uri} is not the object the manifest records (ETag {etag})"
    return None


def abort_stale_uploads(client: Any, keys: SiteKeys) -> int:
    """Abort every multipart upload of the site (left by writers that died). Only the holder of
    the site's lock calls this."""
    aborted = 0
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=keys.bucket, Prefix=keys.site_prefix):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=keys.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            aborted += 1
    if aborted:
        log.info("Aborted %d multipart upload(s) left open by an earlier run", aborted)
    return aborted


def generations(client: Any, keys: SiteKeys) -> list[str]:
    """Every generation folder of the site, oldest first."""
    found: set[str] = set()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=keys.bucket, Prefix=keys.site_prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            found.add(common["Prefix"].removeprefix(keys.site_prefix).rstrip("/"))
    return sorted(found)


def delete_generations(client: Any, keys: SiteKeys, names: list[str]) -> None:
    for name in names:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=keys.bucket, Prefix=f"{keys.site_prefix}{name}/"):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=keys.bucket, Key=item["Key"])
        log.info("Deleted generation %s of %s", name, keys.site)


def _completed(
    client: Any, keys: SiteKeys, ingest_id: str, staged: Staged
) -> tuple[str, str | None]:
    """Complete the upload; its (ETag, VersionId) from S3's answer. A completion whose reply
    was lost is recognised by the object at our own key carrying our ingest id."""
    upload = staged.upload
    try:
        answer = upload.complete()
        return strip_etag(answer["ETag"]), version_of(answer)
    except (ClientError, BotoCoreError) as exc:
        found = head(client, keys.bucket, upload.key)
        if found is None or found.get("Metadata", {}).get("ingest-id") != ingest_id:
            raise
        log.warning("The completion of %s answered %s, but S3 holds it: it completed",
                    keys.uri(upload.key), exc)  # fmt: skip
        return strip_etag(found["ETag"]), version_of(found)


def complete(
    client: Any, keys: SiteKeys, ingest_id: str, name: str, staged: Staged
) -> PublishedObject:
    """Complete a validated file's upload: the object at its generation key, as the manifest
    will record it (checked to be the object this ingest wrote)."""
    etag, version = _completed(client, keys, ingest_id, staged)
    key = staged.upload.key
    found = head(client, keys.bucket, key)
    if found is None or found.get("Metadata", {}).get("ingest-id") != ingest_id:
        raise ConcurrentCommitError(f"{keys.uri(key)} is not the object ingest {ingest_id} wrote")
    if strip_etag(found["ETag"]) != etag:
        raise ConcurrentCommitError(
            f"{keys.uri(key)} has ETag {strip_etag(found['ETag'])}, its completion said {etag}: "
            "something else wrote this ingest's own key"
        )
    return PublishedObject(
        name=name,
        uri=keys.uri(key),
        etag=etag,
        version_id=version,
        last_modified=found["LastModified"].astimezone(UTC).isoformat(),
        bytes=staged.file.bytes,
        rows=staged.file.rows,
        sha256=staged.file.sha256,
        source_url=staged.source.url,
        source_version=staged.source.version,
        part_size=staged.upload.part_size,
    )


def put_manifest(client: Any, keys: SiteKeys, manifest: Manifest, replaces: str | None) -> None:
    """The commit: one PUT, conditional on the manifest it replaces (``replaces``: its ETag,
    None when the site has none)."""
    condition = {"IfMatch": replaces} if replaces else {"IfNoneMatch": "*"}
    try:
        client.put_object(
            Bucket=keys.bucket,
            Key=keys.manifest,
            Body=manifest.to_json(),
            ContentType="application/json",
            **condition,
        )
    except ClientError as exc:
        if precondition_failed(exc) or (replaces and missing(exc)):
            raise ConcurrentCommitError(
                f"{keys.uri(keys.manifest)} changed while ingest {manifest.ingest_id} ran: "
                "another writer committed the site; its pair stays current"
            ) from exc
        raise


def commit(
    client: Any,
    keys: SiteKeys,
    *,
    ingest_id: str,
    generation: str,
    objects: dict[str, PublishedObject],
    current: Current,
    keep_previous: int,
    map_index: int | None = None,
) -> Manifest:
    """Write the manifest naming the completed ``objects`` (the commit), then apply retention."""
    before = current.manifest
    kept = ([before.generation, *before.previous] if before else [])[:keep_previous]
    manifest = Manifest(
        site=keys.site,
        ingest_id=ingest_id,
        generation=generation,
        published_at=datetime.now(UTC).isoformat(timespec="seconds"),
        objects=objects,
        map_index=map_index,
        previous=[g for g in kept if g != generation],
    )
    put_manifest(client, keys, manifest, current.etag)
    log.info("Published the pair of ingest %s as generation %s: %s", ingest_id, generation,
             ", ".join(f"{o.uri} (ETag {o.etag})" for o in objects.values()))  # fmt: skip
    keep = {generation, *manifest.previous}
    delete_generations(client, keys, [g for g in generations(client, keys) if g not in keep])
    return manifest
