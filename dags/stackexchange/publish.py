"""Publish Posts.xml and Users.xml as a pair: the previous pair stays whole until the new one is.

Both files stream into open multipart uploads (``multipart``), invisible until completed. Only
when both validated and both archives verified does :func:`commit` make them visible:

1. ``_publish/pending.json`` records the intent (the ingest id, what the keys held before);
2. the smaller object (Users) is completed first; on an unversioned bucket its previous version
   is first copied aside, part for part so the copy keeps its ETag;
3. the larger object (Posts) is completed; if that fails, Users is put back (the previous
   version becomes current again on a versioned bucket, else the copy is restored) and the Posts
   upload aborted, so the keys hold the previous pair;
4. ``_manifest.json``, the commit record, is written last: both objects' ETag, VersionId,
   sha256, rows, source version and the ingest id. Change detection reads it.

If the task dies in the middle, :func:`recover` (run first by the next run) finishes the job from
``pending.json``: a pair both of whose objects are new is committed, one of whose objects is new
is rolled back; multipart uploads left open by dead runs are aborted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from stackexchange.dump_xml import ValidatedFile
from stackexchange.multipart import MultipartUpload, strip_etag, version_of
from stackexchange.source import RemoteArchive

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class Keys:
    """Where a pair lives: the two objects, the manifest and the commit's scratch space."""

    bucket: str
    prefix: str

    @property
    def manifest(self) -> str:
        return f"{self.prefix}/_manifest.json"

    @property
    def pending(self) -> str:
        return f"{self.prefix}/_publish/pending.json"

    def backup(self, name: str) -> str:
        return f"{self.prefix}/_publish/previous/{name}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"


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
    site: str
    ingest_id: str
    published_at: str
    objects: dict[str, PublishedObject]

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **asdict(self)}
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError(f"manifest format {body.get('format')!r}, expected {FORMAT}")
        objects = {n: PublishedObject(**o) for n, o in body["objects"].items()}
        return cls(body["site"], body["ingest_id"], body["published_at"], objects)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _missing(exc):
            return None
        raise


def _get_json(client: Any, bucket: str, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if _missing(exc):
            return None
        raise


def read_manifest(client: Any, keys: Keys) -> Manifest | None:
    data = _get_json(client, keys.bucket, keys.manifest)
    if data is None:
        return None
    try:
        return Manifest.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("s3://%s/%s is unreadable (%s); treating the pair as unpublished",
                    keys.bucket, keys.manifest, exc)  # fmt: skip
        return None


def matches(client: Any, keys: Keys, manifest: Manifest) -> str | None:
    """None if the keys hold exactly the manifest's objects, else what differs."""
    for name, published in manifest.objects.items():
        found = head(client, keys.bucket, keys.key(name))
        if found is None:
            return f"{keys.uri(name)} is missing"
        etag, version = strip_etag(found["ETag"]), version_of(found)
        if etag != published.etag or (published.version_id and version != published.version_id):
            return f"{keys.uri(name)} is not the object the manifest records (ETag {etag})"
    return None


def abort_stale_uploads(client: Any, keys: Keys) -> int:
    """Abort every multipart upload under the prefix (left by runs that died). Call this only
    when no other ingest runs (the DAG allows one active run)."""
    aborted = 0
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=keys.bucket, Prefix=f"{keys.prefix}/"):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=keys.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            aborted += 1
    if aborted:
        log.info("Aborted %d multipart upload(s) left open by an earlier run", aborted)
    return aborted


def _versioned(client: Any, bucket: str) -> bool:
    return client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"


def _copy(client: Any, bucket: str, source: str, target: str, part_size: int | None) -> None:
    """Copy ``source`` to ``target`` server-side. With ``part_size`` (the source's own part
    layout) the copy is made of the same parts, so it has the same ETag."""
    found = head(client, bucket, source)
    if found is None:
        raise FileNotFoundError(f"s3://{bucket}/{source}")
    size = found["ContentLength"]
    if part_size is None:
        client.copy({"Bucket": bucket, "Key": source}, bucket, target)
        return
    created = client.create_multipart_upload(
        Bucket=bucket,
        Key=target,
        Metadata=found.get("Metadata", {}),
        ContentType=found.get("ContentType", "application/xml"),
    )
    upload_id = created["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, max(size, 1), part_size), start=1):
            end = min(start + part_size, size) - 1
            answer = client.upload_part_copy(
                Bucket=bucket,
                Key=target,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": source},
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket, Key=target, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        client.abort_multipart_upload(Bucket=bucket, Key=target, UploadId=upload_id)
        raise


def _delete(client: Any, bucket: str, *keys: str) -> None:
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)


def _put_json(client: Any, bucket: str, key: str, body: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def _restore(client: Any, keys: Keys, name: str, pending: dict[str, Any]) -> None:
    """Put ``name`` back to what it was before the commit recorded in ``pending``."""
    before = pending["before"].get(name)
    key = keys.key(name)
    if pending["versioned"]:
        found = head(client, keys.bucket, key)
        if found is not None and version_of(found) != (before or {}).get("version_id"):
            client.delete_object(Bucket=keys.bucket, Key=key, VersionId=found["VersionId"])
    elif before is None:
        _delete(client, keys.bucket, key)
    else:
        _copy(client, keys.bucket, keys.backup(name), key, before.get("part_size"))
    log.warning("Rolled %s back to the previous pair's object", keys.uri(name))


def _is_new(client: Any, keys: Keys, name: str, ingest_id: str) -> bool:
    found = head(client, keys.bucket, keys.key(name))
    return found is not None and found.get("Metadata", {}).get("ingest-id") == ingest_id


def _as_published(client: Any, keys: Keys, draft: PublishedObject) -> PublishedObject:
    """``draft`` with the identity S3 gave the object now at its key."""
    found = head(client, keys.bucket, keys.key(draft.name))
    if found is None:
        raise FileNotFoundError(f"{keys.uri(draft.name)} vanished while it was published")
    identity = {
        "etag": strip_etag(found["ETag"]),
        "version_id": version_of(found),
        "last_modified": found["LastModified"].astimezone(UTC).isoformat(),
    }
    return PublishedObject(**{**asdict(draft), **identity})


def recover(client: Any, keys: Keys) -> None:
    """Finish or undo a commit a dead run left half done; abort its open uploads."""
    abort_stale_uploads(client, keys)
    data = _get_json(client, keys.bucket, keys.pending)
    if data is None:
        return
    pending = json.loads(data)
    ingest_id, order = pending["ingest_id"], pending["order"]
    new = [name for name in order if _is_new(client, keys, name, ingest_id)]
    if len(new) == len(order):
        manifest = Manifest.from_json(pending["manifest"].encode())
        objects = {
            name: _as_published(client, keys, draft) for name, draft in manifest.objects.items()
        }
        committed = Manifest(manifest.site, ingest_id, manifest.published_at, objects)
        _put_json(client, keys.bucket, keys.manifest, committed.to_json())
        log.warning("Committed the pair of ingest %s that a dead run left unrecorded", ingest_id)
    else:
        for name in new:
            _restore(client, keys, name, pending)
        log.warning("Undid the unfinished commit of ingest %s: the keys hold the previous pair",
                    ingest_id)  # fmt: skip
    _delete(client, keys.bucket, *(keys.backup(n) for n in order), keys.pending)


def commit(
    client: Any, keys: Keys, site: str, ingest_id: str, staged: dict[str, Staged]
) -> Manifest:
    """Make both staged objects visible as one pair (see the module docstring)."""
    previous = read_manifest(client, keys)
    versioned = _versioned(client, keys.bucket)
    order = sorted(staged, key=lambda name: staged[name].file.bytes)  # the smaller first
    before: dict[str, dict[str, Any] | None] = {}
    for name in order:
        found = head(client, keys.bucket, keys.key(name))
        known = previous.objects.get(name) if previous else None
        before[name] = found and {
            "etag": strip_etag(found["ETag"]),
            "version_id": version_of(found),
            # The part layout is known for objects we published: their copy keeps the ETag.
            "part_size": known.part_size if known and known.etag == strip_etag(found["ETag"])
            else None,
        }  # fmt: skip
    now = datetime.now(UTC).isoformat(timespec="seconds")
    draft = Manifest(site, ingest_id, now, {
        name: PublishedObject(
            name, keys.uri(name), "", None, "", s.file.bytes, s.file.rows, s.file.sha256,
            s.source.url, s.source.version, s.upload.part_size,
        )
        for name, s in staged.items()
    })  # fmt: skip
    first = order[0]
    if not versioned and before[first] is not None:
        _copy(client, keys.bucket, keys.key(first), keys.backup(first), before[first]["part_size"])
    pending = {"ingest_id": ingest_id, "order": order, "versioned": versioned, "before": before,
               "manifest": draft.to_json().decode()}  # fmt: skip
    _put_json(client, keys.bucket, keys.pending, json.dumps(pending).encode())
    done: list[str] = []
    try:
        for name in order:
            staged[name].upload.complete()
            done.append(name)
    except (ClientError, BotoCoreError):
        for name in done:
            _restore(client, keys, name, pending)
        for name in order:
            if name not in done:
                staged[name].upload.abort()
        _delete(client, keys.bucket, keys.backup(first), keys.pending)
        raise
    objects = {name: _as_published(client, keys, draft.objects[name]) for name in order}
    manifest = Manifest(site, ingest_id, now, objects)
    _put_json(client, keys.bucket, keys.manifest, manifest.to_json())
    _delete(client, keys.bucket, keys.backup(first), keys.pending)
    log.info("Published the pair of ingest %s: %s", ingest_id,
             ", ".join(f"{o.uri} (ETag {o.etag})" for o in objects.values()))  # fmt: skip
    return manifest
