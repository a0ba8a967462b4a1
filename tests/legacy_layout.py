"""The single-site layout of earlier versions, as their producer wrote it (fields and metadata
from its ``publish.py``/``ingest.py`` in the git history before per-site generations):
``<prefix>/Posts.xml``, ``<prefix>/Users.xml`` and ``<prefix>/_manifest.json`` (format 1)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from stackexchange.source import RemoteArchive

MEMBERS = ("Posts.xml", "Users.xml")
LEGACY_INGEST = "scheduled__2026-11-30T00:00:00+00:00#1"


def legacy_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}"


def write_legacy(
    client: Any,
    bucket: str,
    prefix: str,
    site: str,
    files: dict[str, bytes],
    source_of: dict[str, RemoteArchive],
    *,
    members: tuple[str, ...] = MEMBERS,
    with_manifest: bool = True,
) -> None:
    """``site``'s pair of ``files``: the objects with their metadata, then the manifest."""
    objects = {}
    for name in members:
        remote, key = source_of[name], legacy_key(prefix, name)
        metadata = {"site": site, "source-url": remote.url, "source-version": remote.version,
                    "ingest-id": LEGACY_INGEST}  # fmt: skip
        answer = client.put_object(Bucket=bucket, Key=key, Body=files[name], Metadata=metadata)
        objects[name] = {
            "name": name, "uri": f"s3://{bucket}/{key}", "etag": answer["ETag"].strip('"'),
            "version_id": None, "last_modified": datetime.now(UTC).isoformat(),
            "bytes": len(files[name]), "rows": files[name].count(b"<row "),
            "sha256": hashlib.sha256(files[name]).hexdigest(), "source_url": remote.url,
            "source_version": remote.version, "part_size": 16 << 20,
        }  # fmt: skip
    if with_manifest:
        body = {"format": 1, "site": site, "ingest_id": LEGACY_INGEST,
                "published_at": datetime.now(UTC).isoformat(), "objects": objects}  # fmt: skip
        key = legacy_key(prefix, "_manifest.json")
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body))
