"""The bronze identity check: which identity is compared (no Spark), the boto3 lookup against a
real S3 API (moto's server over HTTP), and the two lookups Databricks takes on the local Spark
session: the Hadoop FileSystem (compute with a JVM) and Spark's file metadata (Spark Connect,
serverless), with a ``file://`` path standing in for S3 (Spark reads its size and modification
time the same way)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from local.services import s3_client
from medallion import objects
from medallion.objects import Identity, SupersededError

T0 = datetime(2026, 12, 1, 21, 30, 12, tzinfo=UTC)
T1 = datetime(2026, 12, 1, 21, 30, 13, tzinfo=UTC)
SERVERLESS_SEES = Identity(size=8, last_modified=T0)


# --- which identity is compared -------------------------------------------------------------


@pytest.mark.parametrize(
    ("announced", "now", "fields"),
    [
        # ETag on both sides: the ETag decides, even if size and time are known too.
        (Identity("e1", "", 8, T0), Identity("e1", "", 8, T0), ("etag",)),
        (Identity("e1", "v1", 8, T0), Identity("e1", "v2", 8, T0), ("etag", "version_id")),
        # The object's VersionId without an announced one (published unversioned): not compared.
        (Identity("e1"), Identity("e1", "v2"), ("etag",)),
        # Serverless sees no ETag: size and time, when the event announces them.
        (Identity("e1", "v1", 8, T0), SERVERLESS_SEES, ("size", "last_modified")),
        (SERVERLESS_SEES, Identity("e1", "", 8, T0), ("size", "last_modified")),
        # Nothing both sides have: an ETag-only event on serverless, a sha256-only event, half a
        # size-and-time pair.
        (Identity("e1", "v1"), SERVERLESS_SEES, ()),
        (Identity(), Identity("e1", "", 8, T0), ()),
        (Identity(size=8), Identity("e1", "", 8, T0), ()),
    ],
)
def test_the_compared_identity_is_what_both_sides_have(
    announced: Identity, now: Identity, fields: tuple[str, ...]
) -> None:
    assert objects.compared_fields(announced, now) == fields


def test_job_parameters_become_the_announced_identity() -> None:
    announced = objects.announced_identity(
        "posts",
        etag="9b2cf535f27731c974343645a3985328-3",
        version_id="v7",
        size="1048576",
        last_modified="2026-12-01T22:30:12.5+01:00",
    )
    assert announced == Identity("9b2cf535f27731c974343645a3985328-3", "v7", 1048576, T0)
    assert announced.last_modified.tzinfo is UTC
    assert (
        objects.announced_identity("users", etag="", version_id="", size="", last_modified="")
        == Identity()
    )


@pytest.mark.parametrize(
    ("size", "last_modified", "message"),
    [
        ("12 MB", "", r"Job parameter posts_bytes must be the object's size in bytes .* '12 MB'"),
        ("-3", "", r"posts_bytes must be .* not '-3'"),
        ("8", "2026-12-01T21:30:12", r"posts_last_modified must be an ISO 8601 time with its UTC"),
        ("8", "yesterday", r"posts_last_modified .* \(e\.g\. 2026-12-01T21:30:12\+00:00\), not"),
    ],
)
def test_bad_job_parameters_name_the_parameter(size: str, last_modified: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        objects.announced_identity(
            "posts", etag="e", version_id="", size=size, last_modified=last_modified
        )


# --- boto3 (the local stand-in, tests) --------------------------------------------------------


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
    """Write the object as an ingest does; its identity as the producer announces it (read back
    with a HEAD after the write)."""
    s3.put_object(Bucket=bucket, Key="raw/Posts.xml", Body=body)
    head = s3.head_object(Bucket=bucket, Key="raw/Posts.xml")
    return objects.announced_identity(
        "posts",
        etag=head["ETag"].strip('"'),
        version_id=head.get("VersionId") or "",
        size=str(len(body)),
        last_modified=head["LastModified"].astimezone(UTC).isoformat(),
    )


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


def test_without_an_etag_size_and_time_decide(s3, spark: SparkSession) -> None:
    bucket = _bucket(s3, versioned=False)
    announced = _put(s3, bucket, b"<posts>old</posts>")
    uri = f"s3://{bucket}/raw/Posts.xml"
    unchecked_etag = Identity(size=announced.size, last_modified=announced.last_modified)
    objects.ensure_announced(spark, uri, unchecked_etag)

    newer = _put(s3, bucket, b"<posts>newer</posts>")
    with pytest.raises(SupersededError) as raised:
        objects.ensure_announced(spark, uri, unchecked_etag)
    assert str(raised.value) == (
        f"{uri} was superseded by a newer ingest (announced {announced.size} bytes, last "
        f"modified {announced.last_modified.isoformat()}, now {newer.size} bytes, last "
        f"modified {newer.last_modified.isoformat()}); its own asset events trigger a run"
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
    with pytest.warns(UserWarning, match="neither an ETag nor size and last_modified .older"):
        objects.ensure_announced(spark, f"s3://{bucket}/raw/Gone.xml", Identity(""))


# --- Databricks: the Hadoop FileSystem (JVM) and Spark's file metadata (Spark Connect) --------


class SparkConnectSession:
    """The local session as a Spark Connect client has it: ``read`` works, there is no ``_jvm``
    (PySpark's Connect session raises ``AttributeError`` for it, as for ``sparkContext``)."""

    def __init__(self, spark: SparkSession) -> None:
        self._spark = spark

    @property
    def read(self):
        return self._spark.read


@pytest.fixture
def on_databricks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")


def _write(path: Path, body: bytes, modified: datetime) -> Path:
    """Write ``body`` and set the file's mtime (with a fraction of a second, as S3 never has)."""
    path.write_bytes(body)
    nanoseconds = int(modified.timestamp()) * 10**9 + 789_000_000
    os.utime(path, ns=(nanoseconds, nanoseconds))
    return path


def test_with_a_jvm_the_path_status_comes_from_hadoop(
    spark: SparkSession, tmp_path: Path, on_databricks: None
) -> None:
    """The real JVM calls: a local file's status has no ETag (S3A's has), a missing one is named."""
    path = _write(tmp_path / "Posts.xml", b"<posts/>", T0)

    # Size and mtime (to the second) are what is compared then.
    assert objects.current_identity(spark, path.as_uri()) == Identity("", "", 8, T0)
    with pytest.raises(FileNotFoundError, match=r"Gone\.xml does not exist"):
        objects.current_identity(spark, (tmp_path / "Gone.xml").as_uri())


def test_on_spark_connect_size_and_time_come_from_file_metadata(
    spark: SparkSession, tmp_path: Path, on_databricks: None
) -> None:
    connect = SparkConnectSession(spark)
    path = _write(tmp_path / "Posts.xml", b"<posts>old</posts>", T0)
    uri = path.as_uri()
    assert objects.current_identity(connect, uri) == Identity(size=18, last_modified=T0)

    # As announced (the producer's LastModified has whole seconds): the object passes.
    objects.ensure_announced(connect, uri, Identity("e1", "v1", 18, T0))

    # Another modification time, same size: superseded.
    with pytest.raises(SupersededError) as raised:
        objects.ensure_announced(connect, uri, Identity("e1", "v1", 18, T1))
    assert str(raised.value) == (
        f"{uri} was superseded by a newer ingest (announced 18 bytes, last modified "
        "2026-12-01T21:30:13+00:00, now 18 bytes, last modified 2026-12-01T21:30:12+00:00); "
        "its own asset events trigger a run"
    )

    # Another size within the same second: superseded.
    _write(path, b"<posts>newer</posts>", T0)
    with pytest.raises(SupersededError, match=r"announced 18 bytes, .* now 20 bytes, last"):
        objects.ensure_announced(connect, uri, Identity("e1", "v1", 18, T0))


def test_file_metadata_reads_no_content(
    spark: SparkSession, tmp_path: Path, on_databricks: None
) -> None:
    """With binaryFile's length limit below the file's size, reading the content fails; the
    lookup does not (a Posts.xml over 2 GiB would otherwise fail on serverless)."""
    uri = _write(tmp_path / "Posts.xml", b"<posts>old</posts>", T0).as_uri()
    spark.conf.set("spark.sql.sources.binaryFile.maxLength", "4")
    try:
        with pytest.raises(Exception, match="FAILED_READ_FILE"):
            spark.read.format("binaryFile").load(uri).collect()
        assert objects.current_identity(SparkConnectSession(spark), uri).size == 18
    finally:
        spark.conf.unset("spark.sql.sources.binaryFile.maxLength")


def test_on_spark_connect_a_missing_object_and_an_etag_only_event(
    spark: SparkSession, tmp_path: Path, on_databricks: None
) -> None:
    connect = SparkConnectSession(spark)
    with pytest.raises(FileNotFoundError, match=r"Gone\.xml does not exist"):
        objects.ensure_announced(connect, (tmp_path / "Gone.xml").as_uri(), Identity("e1"))

    uri = _write(tmp_path / "Posts.xml", b"<posts/>", T0).as_uri()
    with pytest.warns(UserWarning, match="announces ETag e1 but not both size and last_modified"):
        objects.ensure_announced(connect, uri, Identity("e1"))
