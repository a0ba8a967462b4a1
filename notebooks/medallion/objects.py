"""Is the raw object still the one its asset event announced?

A newer ingest overwrites ``Posts.xml``/``Users.xml`` at the same keys, so bronze compares the
object with what its asset event announced right before and right after reading it.
``current_identity`` is the one lookup, and returns what the compute can see:

- on Databricks with a JVM (classic compute in dedicated access mode): the Hadoop FileSystem's
  status of the path (S3A's carries the ETag and VersionId), with the cluster's own S3
  credentials (Unity Catalog external locations);
- on Databricks through Spark Connect (serverless, standard access mode: no JVM to ask): Spark's
  own file metadata (``binaryFile`` without its content column, so no byte is read), which has
  the size and the modification time (S3's ``LastModified``) but no ETag;
- elsewhere (the local stand-in, tests): a boto3 ``HEAD`` (endpoint from
  ``AWS_ENDPOINT_URL_S3``, which boto3 reads itself), which has all of them.

``compared_fields`` decides what is compared: the ETag (and VersionId, when one was announced)
when both sides have an ETag; else size and modification time (S3 keeps it to the second, so two
same-size ingests within one second would pass); else nothing. Events from a producer older than
these fields carry only a sha256, which the object does not hold; checking it would mean reading
the whole object a second time, so such events are processed as announced, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pyspark.sql import SparkSession

from medallion.tables import on_databricks

ETAG_FIELDS = ("etag",)
VERSIONED_ETAG_FIELDS = ("etag", "version_id")
SIZE_AND_TIME_FIELDS = ("size", "last_modified")


@dataclass(frozen=True)
class Identity:
    """What is known of one S3 object version; empty or ``None`` where it is not known.

    ``etag`` is without quotes, ``version_id`` is "" on an unversioned bucket, ``last_modified``
    is UTC to the second (``utc_second``).
    """

    etag: str = ""
    version_id: str = ""
    size: int | None = None
    last_modified: datetime | None = None

    @property
    def has_size_and_time(self) -> bool:
        return self.size is not None and self.last_modified is not None


class SupersededError(RuntimeError):
    """The object no longer holds what the asset event announced."""


def utc_second(moment: datetime) -> datetime:
    """``moment`` in UTC without its fraction of a second: S3's precision for LastModified."""
    return moment.astimezone(UTC).replace(microsecond=0)


def announced_identity(
    prefix: str, *, etag: str, version_id: str, size: str, last_modified: str
) -> Identity:
    """The identity in the job parameters ``{prefix}_etag``, ``_version_id``, ``_bytes`` and
    ``_last_modified``; an empty parameter is unknown."""
    return Identity(
        etag,
        version_id,
        _size_parameter(f"{prefix}_bytes", size) if size else None,
        _time_parameter(f"{prefix}_last_modified", last_modified) if last_modified else None,
    )


def _size_parameter(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(
            f"Job parameter {name} must be the object's size in bytes (a whole number, the asset "
            f"event's 'bytes'), not {value!r}."
        )
    return int(value)


def _time_parameter(name: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"Job parameter {name} must be an ISO 8601 time with its UTC offset, the asset "
            f"event's 'last_modified' (e.g. 2026-12-01T21:30:12+00:00), not {value!r}."
        )
    return utc_second(moment)


def current_identity(spark: SparkSession, uri: str) -> Identity:
    """What the object at ``uri`` is now, as far as this compute can see; ``FileNotFoundError``
    if there is none."""
    if not on_databricks():
        return _boto3_identity(uri)
    if _has_jvm(spark):
        return _hadoop_identity(spark, uri)
    return _file_metadata_identity(spark, uri)


def compared_fields(announced: Identity, now: Identity) -> tuple[str, ...]:
    """The fields of ``Identity`` that tell whether ``now`` is still ``announced``.

    The ETag when both sides have one (with the VersionId when one was announced: a re-ingest
    of the same bytes keeps the ETag), else size and modification time when both sides have
    them, else none: the object cannot be checked.
    """
    if announced.etag and now.etag:
        return VERSIONED_ETAG_FIELDS if announced.version_id else ETAG_FIELDS
    if announced.has_size_and_time and now.has_size_and_time:
        return SIZE_AND_TIME_FIELDS
    return ()


def ensure_announced(spark: SparkSession, uri: str, announced: Identity) -> None:
    """Raise ``SupersededError`` unless ``uri`` still holds ``announced``.

    What cannot be checked (a sha256-only event of an older producer, or an ETag-only event on
    compute that sees no ETag) is accepted with a warning.
    """
    if not compared_fields(announced, announced):  # the event itself has nothing to compare
        warnings.warn(
            f"{uri}: the asset event has neither an ETag nor size and last_modified (older "
            "producer), so the object cannot be checked against it; reading it as announced "
            "by sha256 only",
            stacklevel=2,
        )
        return
    now = current_identity(spark, uri)
    fields = compared_fields(announced, now)
    if not fields:
        warnings.warn(
            f"{uri}: the asset event announces {_describe(announced, ETAG_FIELDS)} but not both "
            "size and last_modified (older producer), and this compute sees no ETag (Spark "
            "Connect: size and last modified only), so the object cannot be checked against "
            "the event; reading it as announced",
            stacklevel=2,
        )
        return
    if all(getattr(now, field) == getattr(announced, field) for field in fields):
        return
    raise SupersededError(
        f"{uri} was superseded by a newer ingest (announced {_describe(announced, fields)}, "
        f"now {_describe(now, fields)}); its own asset events trigger a run"
    )


_LABELS = {
    "etag": "ETag {}",
    "version_id": "version {}",
    "size": "{} bytes",
    "last_modified": "last modified {}",
}


def _describe(identity: Identity, fields: tuple[str, ...]) -> str:
    """E.g. ``ETag 9b2c…-3, version v7`` or ``8 bytes, last modified 2026-12-01T21:30:12+00:00``."""
    values = {field: getattr(identity, field) for field in fields}
    return ", ".join(
        _LABELS[field].format(value.isoformat() if isinstance(value, datetime) else value)
        for field, value in values.items()
    )


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
    return Identity(
        str(head["ETag"]).strip('"'),
        str(head.get("VersionId") or ""),
        int(head["ContentLength"]),
        utc_second(head["LastModified"]),
    )


def _has_jvm(spark: SparkSession) -> bool:
    """False on Spark Connect, whose session raises ``AttributeError`` for ``_jvm``."""
    try:
        spark._jvm  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError:
        return False
    return True


def _hadoop_identity(spark: SparkSession, uri: str) -> Identity:
    """``getFileStatus`` of the path; S3A's status implements ``EtagSource`` and has a VersionId
    (another filesystem's has neither: then size and modification time are all it tells)."""
    from py4j.protocol import Py4JError, Py4JJavaError

    jvm, session = spark._jvm, spark._jsparkSession  # type: ignore[attr-defined]
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

    return Identity(
        text("getEtag").strip('"'),
        text("getVersionId"),
        int(status.getLen()),
        datetime.fromtimestamp(status.getModificationTime() // 1000, UTC),
    )


def _file_metadata_identity(spark: SparkSession, uri: str) -> Identity:
    """Size and modification time from Spark's file listing, which Spark Connect serves too.

    Only ``length`` and ``modificationTime`` are selected, so the ``content`` column is pruned
    and no byte of the object is read (binaryFile would otherwise refuse files over 2 GiB).
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    try:
        rows = (
            spark.read.format("binaryFile")
            .load(uri)
            .select("path", "length", F.unix_seconds("modificationTime").alias("modified"))
            .collect()
        )
    except AnalysisException as error:
        # getCondition (PySpark 4) replaces getErrorClass, which serverless clients on
        # environment versions with PySpark 3.5 still have.
        condition = getattr(error, "getCondition", error.getErrorClass)()
        if condition == "PATH_NOT_FOUND":
            raise FileNotFoundError(f"{uri} does not exist") from None
        raise
    if len(rows) != 1:
        raise ValueError(
            f"{uri} is not one object: Spark lists {len(rows)} files there "
            f"({', '.join(row.path for row in rows[:3])}); the job reads one Posts.xml/Users.xml."
        )
    (row,) = rows
    return Identity(size=int(row.length), last_modified=datetime.fromtimestamp(row.modified, UTC))
