"""Bronze: the dump file as a table, typed by an explicit schema, plus where it came from."""

from __future__ import annotations

from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from medallion import tables
from medallion.objects import Identity, ensure_announced
from medallion.schemas import ATTRIBUTE_PREFIX, with_attribute_prefix

METADATA_COLUMNS = [
    "site",
    "_source_uri",
    "_source_sha256",
    "_source_etag",
    "_source_version_id",
    "_ingested_at",
]


def read_dump_xml(spark: SparkSession, path: str, schema: StructType) -> DataFrame:
    """Read one dump file (``<row .../>`` per line) with ``schema``; columns keep the ``_`` prefix.

    ``mode=FAILFAST`` makes a malformed file fail the task instead of silently yielding nulls.
    """
    return (
        spark.read.format("xml")
        .option("rowTag", "row")
        .option("attributePrefix", ATTRIBUTE_PREFIX)
        .option("mode", "FAILFAST")
        .schema(with_attribute_prefix(schema))
        .load(path)
    )


def drop_attribute_prefix(df: DataFrame) -> DataFrame:
    """``_Id`` -> ``Id`` for every attribute column."""
    return df.select(
        [F.col(f"`{name}`").alias(name.removeprefix(ATTRIBUTE_PREFIX)) for name in df.columns]
    )


def with_ingestion_metadata(
    df: DataFrame,
    *,
    site: str,
    source_uri: str,
    source_sha256: str,
    source: Identity,
    ingested_at: datetime,
) -> DataFrame:
    """Add the site (the tables' clustering key) and the lineage columns: the source object as
    announced, ingestion time (UTC).

    An ETag the event lacks (older producer) or an empty VersionId (unversioned bucket) is
    recorded as null.
    """
    return df.select(
        "*",
        F.lit(site).alias("site"),
        F.lit(source_uri).alias("_source_uri"),
        F.lit(source_sha256).alias("_source_sha256"),
        F.lit(source.etag or None).cast("string").alias("_source_etag"),
        F.lit(source.version_id or None).cast("string").alias("_source_version_id"),
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
    )


def ingest(
    spark: SparkSession,
    table: tables.Table,
    *,
    uri: str,
    dump_schema: StructType,
    site: str,
    sha256: str,
    announced: Identity,
) -> None:
    """Replace ``site``'s rows of ``table`` with the dump file at ``uri``, only if it is the
    announced object; other sites' rows are not touched.

    The object is checked right before the read and again right after it (the write is where
    Spark reads). If a newer ingest replaced it in between, the task fails: nothing downstream
    runs on what was read, and that ingest's own run replaces the table again.
    """
    ensure_announced(spark, uri, announced)
    raw = read_dump_xml(spark, uri, dump_schema)
    rows = with_ingestion_metadata(
        drop_attribute_prefix(raw),
        site=site,
        source_uri=uri,
        source_sha256=sha256,
        source=announced,
        ingested_at=datetime.now(UTC),
    )
    tables.replace_site(rows, table, site)
    ensure_announced(spark, uri, announced)
