"""Is the raw object still the one its asset event announced?

A newer ingest overwrites ``Posts.xml``/``Users.xml`` at the same keys, so bronze compares the
object's ETag (and VersionId, on a versioned bucket) with the announced ones right before and
right after reading it. ``current_identity`` is the one lookup: on Databricks through the
Hadoop FileSystem of the path (S3A's file status carries both, read with the cluster's own S3
credentials: Unity Catalog external locations); elsewhere (the local stand-in, tests) with a
boto3 ``HEAD`` (endpoint from ``AWS_ENDPOINT_URL_S3``, which boto3 reads itself).

Events from a producer older than the ETag contract carry only a sha256, which the object no
longer holds; checking it would mean reading the whole object a second time, so such events are
processed as announced, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from pyspark.sql import SparkSession

from medallion.tables import on_databricks


@dataclass(frozen=True)
class Identity:
    """An S3 object version: its ETag without quotes, and its VersionId ("" if unversioned)."""

    etag: str
    version_id: str = ""


class SupersededError(RuntimeError):
    """The object no longer holds what the asset event announced."""


def current_identity(spark: SparkSession, uri: str) -> Identity:
    """What the object at ``uri`` is now; ``FileNotFoundError`` if there is none."""
    if on_databricks():
        return _hadoop_identity(spark, uri)
    return _boto3_identity(uri)


def ensure_announced(spark: SparkSession, uri: str, announced: Identity) -> None:
    """Raise ``SupersededError`` unless ``uri`` still holds ``announced``.

    An empty announced ETag (a sha256-only event of an older producer) cannot be checked:
    warn and accept. An empty announced VersionId (unversioned bucket) is not compared.
    """
    if not announced.etag:
        warnings.warn(
            f"{uri}: the asset event has no ETag (older producer), so the object cannot be "
            "checked against it; reading it as announced by sha256 only",
            stacklevel=2,
        )
        return
    now = current_identity(spark, uri)
    if now.etag == announced.etag and announced.version_id in ("", now.version_id):
        return
    versions = bool(announced.version_id)
    raise SupersededError(
        f"{uri} was superseded by a newer ingest (announced {_describe(announced, versions)}, "
        f"now {_describe(now, versions)}); its own asset events trigger a run"
    )


def _describe(identity: Identity, with_version: bool) -> str:
    return f"ETag {identity.etag}" + (f", version {identity.version_id}" if with_version else "")


def _boto3_identity(uri: str) -> Identity:
    import boto3
    from botocore.exceptions import ClientError

    location = urlsplit(uri)
    if location.scheme != "s3":
        raise ValueError(f"{uri} is not an s3:// URI: the raw objects are read from S3")
    try:
        head = boto3.client("s3").head_object(Bucket=location.netloc, Key=location.path.lstrip("/"))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise FileNotFoundError(f"{uri} does not exist") from None
        raise
    return Identity(str(head["ETag"]).strip('"'), str(head.get("VersionId") or ""))


def _hadoop_identity(spark: SparkSession, uri: str) -> Identity:
    """``getFileStatus`` of the path; S3A's status implements ``EtagSource`` and has a VersionId.

    Spark Connect sessions (serverless, standard access mode) have no JVM to ask.
    """
    from py4j.protocol import Py4JError, Py4JJavaError

    try:
        jvm, session = spark._jvm, spark._jsparkSession  # type: ignore[attr-defined]
    except AttributeError:
        raise RuntimeError(
            f"Cannot read the ETag of {uri}: this compute runs Spark Connect (serverless or "
            "standard access mode), which gives no access to Hadoop's FileSystem; run the job "
            "on a job cluster in dedicated (single user) access mode."
        ) from None
    path = jvm.org.apache.hadoop.fs.Path(uri)
    try:
        status = path.getFileSystem(session.sessionState().newHadoopConf()).getFileStatus(path)
    except Py4JJavaError as error:
        if error.java_exception.getClass().getName() == "java.io.FileNotFoundException":
            raise FileNotFoundError(f"{uri} does not exist") from None
        raise

    def text(method: str) -> str:
        try:
            return str(getattr(status, method)() or "")
        except Py4JJavaError:
            raise
        except Py4JError:  # the status class has no such method
            return ""

    etag = text("getEtag").strip('"')
    if not etag:
        raise RuntimeError(
            f"Cannot read the ETag of {uri}: its filesystem's status "
            f"({status.getClass().getName()}) has none; the raw objects must be read from S3."
        )
    return Identity(etag, text("getVersionId"))
