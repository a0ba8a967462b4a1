"""Bronze: the dump file as a table, typed by an explicit schema, plus where it came from."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from medallion.schemas import ATTRIBUTE_PREFIX, with_attribute_prefix

METADATA_COLUMNS = ["_site", "_source_uri", "_source_sha256", "_ingested_at"]


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
    df: DataFrame, *, site: str, source_uri: str, source_sha256: str, ingested_at: datetime
) -> DataFrame:
    """Add the lineage columns: site, source URI and checksum, ingestion time (UTC)."""
    return df.select(
        "*",
        F.lit(site).alias("_site"),
        F.lit(source_uri).alias("_source_uri"),
        F.lit(source_sha256).alias("_source_sha256"),
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
    )
