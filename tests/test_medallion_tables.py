"""Tables off Databricks: Parquet directories replaced atomically."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from medallion import tables


def test_overwrite_replaces_content_and_leaves_no_staging(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", "t_overwrite", request.node.name[:40])
    tables.overwrite(spark.createDataFrame([(1,), (2,)], "x long"), table)
    tables.overwrite(spark.createDataFrame([(3,)], "x long"), table)

    assert [r["x"] for r in tables.read(spark, table).collect()] == [3]
    siblings = sorted(p.name for p in table.local_path(spark).parent.iterdir())
    assert siblings == [table.name]


def test_failed_write_keeps_the_previous_table(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", "t_failed", request.node.name[:40])
    tables.overwrite(spark.createDataFrame([(1,)], "x long"), table)
    broken = spark.createDataFrame([("a",)], "x string").selectExpr(
        "x", "CAST(assert_true(x = 'b', 'boom') AS INT) AS check"
    )
    with pytest.raises(Exception, match="boom"):
        tables.overwrite(broken, table)
    assert [r["x"] for r in tables.read(spark, table).collect()] == [1]
    assert [p.name for p in table.local_path(spark).parent.iterdir()] == [table.name]


def test_reading_a_missing_table_names_it(spark: SparkSession) -> None:
    with pytest.raises(FileNotFoundError, match="main.nowhere.silver_posts does not exist"):
        tables.read(spark, tables.Table("main", "nowhere", "silver_posts"))
