"""The bronze identity check against a real S3 API (moto's server over HTTP), and the Hadoop
FileSystem branch Databricks takes, on the local JVM."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from medallion import objects
from medallion.objects import Identity, SupersededError
from tests.moto_s3 import s3_client


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch):
    """boto3 pointed at moto the way the stand-in's notebooks are: through the environment."""
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_client(moto_server)


def _bucket(s3, *, versioned: bool) -> str:
    name = f"objects-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _put(s3, bucket: str, body: bytes) -> Identity:
    """Write the object as an ingest does; its identity as the producer announces it."""
    response = s3.put_object(Bucket=bucket, Key="raw/Posts.xml", Body=body)
    return Identity(response["ETag"].strip('"'), response.get("VersionId") or "")


@pytest.mark.parametrize("versioned", [False, True])
def test_the_announced_object_passes(s3, spark: SparkSession, versioned: bool) -> None:
    bucket = _bucket(s3, versioned=versioned)
    announced = _put(s3, bucket, b"<posts/>")
    uri = f"s3://{bucket}/raw/Posts.xml"

    assert objects.current_identity(spark, uri) == announced
    assert bool(announced.version_id) is versioned
    objects.ensure_announced(spark, uri, announced)


def test_a_newer_ingest_supersedes_the_announced_object(s3, spark: SparkSession) -> None:
    bucket = _bucket(s3, versioned=False)
    announced = _put(s3, bucket, b"<posts>old</posts>")
    newer = _put(s3, bucket, b"<posts>new</posts>")
    uri = f"s3://{bucket}/raw/Posts.xml"

    with pytest.raises(SupersededError) as raised:
        objects.ensure_announced(spark, uri, announced)
    assert str(raised.value) == (
        f"{uri} was superseded by a newer ingest (announced ETag {announced.etag}, "
        f"now ETag {newer.etag}); its own asset events trigger a run"
    )


def test_same_bytes_written_again_are_another_version(s3, spark: SparkSession) -> None:
    """A re-ingest of identical content keeps the ETag; on a versioned bucket it is caught."""
    bucket = _bucket(s3, versioned=True)
    announced = _put(s3, bucket, b"<posts/>")
    again = _put(s3, bucket, b"<posts/>")
    uri = f"s3://{bucket}/raw/Posts.xml"
    assert again.etag == announced.etag and again.version_id != announced.version_id

    with pytest.raises(SupersededError, match=f"version {announced.version_id}, now ETag"):
        objects.ensure_announced(spark, uri, announced)
    # Announced without a VersionId (unversioned when published): the ETag is all there is.
    objects.ensure_announced(spark, uri, Identity(announced.etag))


def test_a_missing_object_is_named(s3, spark: SparkSession) -> None:
    bucket = _bucket(s3, versioned=False)
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/raw/Gone.xml does not exist"):
        objects.ensure_announced(spark, f"s3://{bucket}/raw/Gone.xml", Identity("abc"))


def test_a_sha256_only_event_is_accepted_with_a_warning(s3, spark: SparkSession) -> None:
    """Nothing is looked up: the object does not even exist, and no error is raised."""
    bucket = _bucket(s3, versioned=False)
    with pytest.warns(UserWarning, match="no ETag .older producer"):
        objects.ensure_announced(spark, f"s3://{bucket}/raw/Gone.xml", Identity(""))


def test_on_databricks_the_path_status_comes_from_hadoop(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real JVM calls: a local file's status has no ETag (S3A's has), a missing one is named."""
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    path = tmp_path / "Posts.xml"
    path.write_text("<posts/>", encoding="utf-8")

    with pytest.raises(
        RuntimeError, match=r"Cannot read the ETag of file:.*Posts\.xml: .*has none"
    ):
        objects.current_identity(spark, path.as_uri())
    with pytest.raises(FileNotFoundError, match=r"Gone\.xml does not exist"):
        objects.current_identity(spark, (tmp_path / "Gone.xml").as_uri())
