"""Tables off Databricks: a Parquet directory per site, each replaced atomically."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from medallion import tables


def _frame(spark: SparkSession, site: str, *values: int):
    return spark.createDataFrame([(site, v) for v in values], "site string, x long")


def test_replacing_a_site_keeps_the_others_and_leaves_no_staging(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", "t_replace", request.node.name[:40])
    tables.replace_site(_frame(spark, "a", 1, 2), table, "a")
    tables.replace_site(_frame(spark, "b", 7), table, "b")
    tables.replace_site(_frame(spark, "a", 3), table, "a")

    assert [r["x"] for r in tables.read(spark, table, "a").collect()] == [3]
    assert sorted((r["site"], r["x"]) for r in tables.read(spark, table).collect()) == [
        ("a", 3),
        ("b", 7),
    ]
    assert sorted(p.name for p in table.local_path(spark).iterdir()) == ["a", "b"]
    siblings = sorted(p.name for p in table.local_path(spark).parent.iterdir())
    assert siblings == [table.name]


def test_failed_write_keeps_the_previous_table(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", "t_failed", request.node.name[:40])
    tables.replace_site(_frame(spark, "a", 1), table, "a")
    broken = spark.createDataFrame([("a", "z")], "site string, x string").selectExpr(
        "site", "x", "CAST(assert_true(x = 'b', 'boom') AS INT) AS check"
    )
    with pytest.raises(Exception, match="boom"):
        tables.replace_site(broken, table, "a")
    assert [r["x"] for r in tables.read(spark, table, "a").collect()] == [1]
    assert [p.name for p in table.local_path(spark).iterdir()] == ["a"]


def test_reading_a_missing_table_names_it(spark: SparkSession) -> None:
    with pytest.raises(FileNotFoundError, match="main.nowhere.silver_posts does not exist"):
        tables.read(spark, tables.Table("main", "nowhere", "silver_posts"))
