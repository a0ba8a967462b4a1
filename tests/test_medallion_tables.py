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


# Tables of the single-site version: no `site` column; bronze and silver name their rows' site
# in the lineage column `_site`, gold does not.
LEGACY_SILVER = ["PostId", "PostType", "Title", "_site", "_source_uri", "_row_hash"]
LEGACY_GOLD = ["Rank", "Tag", "Posts"]
TABLE = tables.Table("main", "stack`exchange", "silver_posts")


def test_evolution_is_decided_from_the_existing_columns() -> None:
    assert tables.evolution(None) is tables.Evolution.NONE  # no table yet: created as it is now
    assert tables.evolution(["site", "PostId"]) is tables.Evolution.NONE
    assert tables.evolution(LEGACY_SILVER) is tables.Evolution.KEEP_ROWS
    assert tables.evolution(LEGACY_GOLD) is tables.Evolution.DROP_ROWS


def test_evolution_sql_renames_the_legacy_site_column_in_place_or_recreates_empty() -> None:
    assert tables.evolution_sql(TABLE, None, "v") == []
    assert tables.evolution_sql(TABLE, ["site", *LEGACY_GOLD], "v") == []
    head = "CREATE OR REPLACE TABLE `main`.`stack``exchange`.`silver_posts` USING DELTA CLUSTER BY"
    assert tables.evolution_sql(TABLE, LEGACY_SILVER, "v") == [
        f"{head} (`site`) AS SELECT `PostId`, `PostType`, `Title`, `_site` AS `site`, "
        "`_source_uri`, `_row_hash` FROM `main`.`stack``exchange`.`silver_posts`"
    ]
    assert tables.evolution_sql(TABLE, LEGACY_GOLD, "v") == [
        f"{head} (`site`) AS SELECT * FROM `v` WHERE false"
    ]


def _legacy_local(spark: SparkSession, table: tables.Table, rows: list[tuple], frame: str) -> None:
    """A table as the single-site version wrote it off Databricks: Parquet files right in the
    table's directory."""
    spark.createDataFrame(rows, frame).write.parquet(str(table.local_path(spark)))


def test_a_legacy_silver_table_keeps_its_rows_as_their_sites(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", "t_legacy_silver", request.node.name[:40])
    _legacy_local(spark, table, [(1, "a", "h1"), (2, "a", "h2")],
                  "PostId long, _site string, _row_hash string")  # fmt: skip
    frame = "PostId long, site string, _row_hash string"

    tables.upsert(spark.createDataFrame([(2, "a", "h2-edited"), (3, "a", "h3")], frame), table,
                  keys=("site", "PostId"), hash_column="_row_hash", site="a")  # fmt: skip
    tables.replace_site(spark.createDataFrame([(1, "b", "hb1")], frame), table, "b")

    rows = tables.read(spark, table).collect()
    assert sorted((r["site"], r["PostId"], r["_row_hash"]) for r in rows) == [
        ("a", 1, "h1"),  # the legacy row the batch lacks stays, now site a's
        ("a", 2, "h2-edited"),
        ("a", 3, "h3"),
        ("b", 1, "hb1"),
    ]
    assert sorted(p.name for p in table.local_path(spark).iterdir()) == ["a", "b"]


def test_a_legacy_gold_table_starts_empty(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", "t_legacy_gold", request.node.name[:40])
    _legacy_local(spark, table, [(1, "python", 9)], "Rank int, Tag string, Posts long")
    fresh = spark.createDataFrame(
        [("b", 1, "rust", 4)], "site string, Rank int, Tag string, Posts long"
    )

    tables.replace_site(fresh, table, "b")

    assert [tuple(r) for r in tables.read(spark, table).collect()] == [("b", 1, "rust", 4)]
    assert [p.name for p in table.local_path(spark).iterdir()] == ["b"]
