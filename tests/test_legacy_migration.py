"""Upgrading from the single-site layout: the pair an earlier version published at
``<prefix>/Posts.xml`` and ``<prefix>/Users.xml`` (with its ``<prefix>/_manifest.json``, format 1)
becomes the site's first generation, committed by the site's manifest, and is announced from
there; nothing else is ever replaced.

Against moto's S3 server over HTTP and a local HTTP mirror of the dump; the legacy objects are
written as the earlier producer wrote them (``tests/legacy_layout.py``). The whole DAG's run
over a legacy pair: ``test_produce_dag_e2e.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor
from botocore.exceptions import ClientError

from local.sample_dump import pack_7z, write_site
from local.services import s3_client
from stackexchange import databricks_job, ingest, legacy, multipart, publish, source
from stackexchange.assets import raw_assets
from stackexchange.settings import DownloadPolicy, Storage
from tests import legacy_layout
from tests.http_fixtures import DumpServer, S3FaultProxy

SITE = "legacy.stackexchange.com"
STORAGE = Storage()
BUCKET = STORAGE.bucket
KEYS = publish.SiteKeys.of(STORAGE, SITE)
MEMBERS = ("Posts.xml", "Users.xml")
pytestmark = pytest.mark.e2e


@dataclass
class Mirror:
    server: DumpServer
    files: dict[str, bytes]

    @property
    def base(self) -> str:
        return f"{self.server.url}/stackexchange"

    def archive_gets(self) -> int:
        return len(self.server.gets(f"{SITE}.7z"))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    root = tmp_path_factory.mktemp("mirror")
    files = write_site(root / "xml", posts=400, users=50, seed=5, other_files=False)
    pack_7z(files, root / "stackexchange" / f"{SITE}.7z")
    with DumpServer(root) as server:
        yield Mirror(server, {p.name: p.read_bytes() for p in files})


@pytest.fixture
def s3(aws_conn: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An empty bucket and a local-friendly producer."""
    monkeypatch.setenv("STACKEXCHANGE_ALLOWED_HOSTS", "127.0.0.1,localhost")
    monkeypatch.setenv("STACKEXCHANGE_CHECKSUMS_URL", "none")
    monkeypatch.setattr(multipart, "MIN_PART_BYTES", 5 << 20)
    client = s3_client(json.loads(os.environ["AIRFLOW_CONN_AWS_CONN"])["extra"]["endpoint_url"])
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    return client


def legacy_key(name: str) -> str:
    return legacy_layout.legacy_key(STORAGE.prefix, name)


def write_legacy(
    client: Any,
    files: dict[str, bytes],
    source_of: dict[str, source.RemoteArchive],
    *,
    site: str = SITE,
    **options: Any,
) -> None:
    legacy_layout.write_legacy(client, BUCKET, STORAGE.prefix, site, files, source_of, **options)


def resolved(mirror: Mirror) -> dict[str, source.RemoteArchive]:
    return source.resolve(SITE, source.Dumps(mirror.base, DownloadPolicy.from_env())).archives


def all_keys(client: Any) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def adopt(client: Any, ingest_id: str = "upgrade-run#1", **kwargs: Any) -> Any:
    current = publish.read_current(client, KEYS)
    return legacy.adopt(
        client, KEYS, ingest_id=ingest_id, current=current, keep_previous=1, **kwargs
    )


def test_the_producer_adopts_the_legacy_pair_and_announces_its_new_generation(
    mirror: Mirror, s3: Any
) -> None:
    write_legacy(s3, mirror.files, resolved(mirror))
    gets_before = mirror.archive_gets()

    extras = ingest.ingest(SITE, mirror.base, "aws_conn", "upgrade-run#1", STORAGE)

    assert mirror.archive_gets() == gets_before  # the source is unchanged: nothing downloaded
    manifest = publish.read_manifest(s3, KEYS)
    assert manifest is not None and manifest.ingest_id == "upgrade-run#1"
    assert publish.matches(s3, KEYS, manifest) is None
    for name, extra in zip(MEMBERS, extras, strict=True):
        key = KEYS.key(manifest.generation, name)
        assert extra["uri"] == manifest.objects[name].uri == KEYS.uri(key)
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == mirror.files[name]
        assert extra["sha256"] == hashlib.sha256(mirror.files[name]).hexdigest()
        assert extra["rows"] == mirror.files[name].count(b"<row ")
        assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]["ingest-id"] == "upgrade-run#1"
    # Only the new layout is left: the legacy keys are deleted after the commit.
    assert all_keys(s3) == {KEYS.manifest} | {KEYS.key(manifest.generation, n) for n in MEMBERS}

    # The consumer accepts the announced pair and finds it current.
    assets, now = raw_assets(STORAGE), datetime.now(UTC)
    events = TriggeringAssetEventsAccessor.build(
        AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=assets[name].name, uri=assets[name].uri,
                                                 extra={}),
            extra=extra, source_aliases=[], timestamp=now,
        )
        for name, extra in zip(MEMBERS, extras, strict=True)
    )  # fmt: skip
    runs = databricks_job.still_published(
        databricks_job.job_parameters(events, STORAGE), "aws_conn", STORAGE
    )
    assert [(r["site"], r["posts_uri"], r["users_uri"]) for r in runs] == [
        (SITE, manifest.objects["Posts.xml"].uri, manifest.objects["Users.xml"].uri)
    ]

    # The next producer run finds the site up to date: nothing to ingest, nothing adopted.
    [decision] = ingest.check(
        [SITE],
        source.Dumps(mirror.base, DownloadPolicy.from_env()),
        False,
        "aws_conn",
        lambda *_: True,
        STORAGE,
    )
    assert not decision.ingest, decision.reason
    assert adopt(s3, "second-run#1") is None
    assert publish.read_manifest(s3, KEYS) == manifest


def test_a_changed_source_is_ingested_over_the_adopted_pair(mirror: Mirror, s3: Any) -> None:
    """The legacy pair of an older source version is adopted (kept for rollback), then the
    source's current version is ingested and committed over it."""
    older = {n: source.RemoteArchive(r.url, r.size, "older-etag", r.last_modified)
             for n, r in resolved(mirror).items()}  # fmt: skip
    old_files = {n: b.replace(b"<row ", b"<row Old='1' ", 1) for n, b in mirror.files.items()}
    write_legacy(s3, old_files, older)

    extras = ingest.ingest(SITE, mirror.base, "aws_conn", "upgrade-run#1", STORAGE)

    manifest = publish.read_manifest(s3, KEYS)
    assert manifest is not None and len(manifest.previous) == 1
    assert [e["uri"] for e in extras] == [manifest.objects[n].uri for n in MEMBERS]
    for name in MEMBERS:
        kept = KEYS.key(manifest.previous[0], name)
        assert s3.get_object(Bucket=BUCKET, Key=kept)["Body"].read() == old_files[name]
        current = KEYS.key(manifest.generation, name)
        assert s3.get_object(Bucket=BUCKET, Key=current)["Body"].read() == mirror.files[name]
    assert not {legacy_key(n) for n in (*MEMBERS, "_manifest.json")} & all_keys(s3)


def test_a_big_legacy_object_is_copied_part_by_part(mirror: Mirror, s3: Any) -> None:
    """Above CopyObject's 5 GiB limit the copy is a multipart UploadPartCopy (here with the
    limit and the part size lowered to S3's 5 MiB minimum)."""
    posts = mirror.files["Posts.xml"]
    big = {**mirror.files, "Posts.xml": posts * (11 * (1 << 20) // len(posts) + 1)}
    write_legacy(s3, big, resolved(mirror))

    manifest = adopt(s3, single_copy_max=5 << 20, part_bytes=5 << 20)

    assert manifest is not None
    adopted = manifest.objects["Posts.xml"]
    key = KEYS.key(manifest.generation, "Posts.xml")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == big["Posts.xml"]
    assert adopted.etag.endswith("-3") and adopted.part_size == 5 << 20  # 3 copied parts
    assert adopted.sha256 == hashlib.sha256(big["Posts.xml"]).hexdigest()
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_half_legacy_pair_is_refused_and_nothing_is_written(mirror: Mirror, s3: Any) -> None:
    write_legacy(s3, mirror.files, resolved(mirror), members=("Posts.xml",))
    before = all_keys(s3)

    with pytest.raises(legacy.LegacyPairError, match=r"legacy pair of .* is half: .*Users\.xml"):
        ingest.ingest(SITE, mirror.base, "aws_conn", "upgrade-run#1", STORAGE)

    assert all_keys(s3) == before  # no manifest, no copy, legacy objects left as they were


def test_a_legacy_pair_without_its_manifest_is_refused(mirror: Mirror, s3: Any) -> None:
    write_legacy(s3, mirror.files, resolved(mirror), with_manifest=False)
    with pytest.raises(legacy.LegacyPairError, match=r"no commit record .*_manifest\.json"):
        adopt(s3)
    assert publish.read_manifest(s3, KEYS) is None


@pytest.mark.parametrize(
    ("ingest_id", "refusal"),
    [
        ("cut-short#1", "not the pair .* records"),
        (legacy_layout.LEGACY_INGEST, "its legacy manifest records"),
    ],
    ids=["written-by-another-ingest", "same-ingest-other-bytes"],
)
def test_a_legacy_object_that_is_not_the_recorded_one_is_refused(
    mirror: Mirror, s3: Any, ingest_id: str, refusal: str
) -> None:
    """Posts.xml replaced after the legacy manifest was written (a cut-short commit of the
    earlier version, or another tool): not the recorded pair."""
    write_legacy(s3, mirror.files, resolved(mirror))
    s3.put_object(Bucket=BUCKET, Key=legacy_key("Posts.xml"), Body=b"<posts></posts>",
                  Metadata={"site": SITE, "ingest-id": ingest_id})  # fmt: skip
    with pytest.raises(legacy.LegacyPairError, match=refusal):
        adopt(s3)
    assert publish.read_manifest(s3, KEYS) is None


def test_another_sites_legacy_pair_is_left_alone(mirror: Mirror, s3: Any) -> None:
    write_legacy(s3, mirror.files, resolved(mirror), site="other.stackexchange.com")
    before = all_keys(s3)
    assert adopt(s3) is None
    assert all_keys(s3) == before


def test_an_existing_manifest_is_never_replaced(mirror: Mirror, s3: Any) -> None:
    ingest.ingest(SITE, mirror.base, "aws_conn", "new-layout#1", STORAGE)  # nothing to adopt
    manifest_bytes = s3.get_object(Bucket=BUCKET, Key=KEYS.manifest)["Body"].read()
    write_legacy(s3, mirror.files, resolved(mirror))

    assert adopt(s3) is None
    # A migration that read "no manifest" just before another writer committed one loses.
    with pytest.raises(publish.ConcurrentCommitError):
        legacy.adopt(s3, KEYS, ingest_id="stale#1", current=publish.Current(None, None),
                      keep_previous=1)  # fmt: skip

    assert s3.get_object(Bucket=BUCKET, Key=KEYS.manifest)["Body"].read() == manifest_bytes
    assert {legacy_key(n) for n in MEMBERS} <= all_keys(s3)  # not deleted: not adopted


def test_a_migration_cut_before_its_commit_leaves_no_manifest_and_reruns(
    mirror: Mirror, s3: Any, aws_conn: str
) -> None:
    """The manifest PUT fails (as a kill before it would): no manifest, the legacy pair intact;
    the next run adopts it whole and its retention deletes the orphaned copies."""
    write_legacy(s3, mirror.files, resolved(mirror))
    refused = S3FaultProxy(
        aws_conn, deny=lambda method, path: method == "PUT" and path.endswith(KEYS.manifest)
    )
    with refused, pytest.raises(ClientError, match="AccessDenied"):
        adopt(s3_client(refused.url), "cut-run#1")
    assert refused.denied
    assert publish.read_manifest(s3, KEYS) is None
    assert {legacy_key(n) for n in (*MEMBERS, "_manifest.json")} <= all_keys(s3)
    orphans = {k for k in all_keys(s3) if k.startswith(KEYS.site_prefix)}
    assert len(orphans) == 2

    manifest = adopt(s3, "next-run#1")

    assert manifest is not None
    assert all_keys(s3) == {KEYS.manifest} | {KEYS.key(manifest.generation, n) for n in MEMBERS}
