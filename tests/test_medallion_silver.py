"""Silver posts: tags, post type names, PostId, one row per post, incremental upsert."""

from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from medallion import silver, tables

BRONZE_POSTS = (
    "Id long, PostTypeId int, Score int, Tags string, CreationDate timestamp, "
    "LastActivityDate timestamp, LastEditDate timestamp, OwnerUserId long, "
    "_site string, _ingested_at timestamp"
)
T0, T1, T2 = datetime(2024, 1, 1), datetime(2024, 2, 1), datetime(2024, 3, 1)


def _bronze(spark: SparkSession, *rows: tuple) -> DataFrame:
    full = [(*row, *([None] * (8 - len(row))), "site.example", T2) for row in rows]
    return spark.createDataFrame(full, BRONZE_POSTS)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("<python><apache-spark>", ["python", "apache-spark"]),
        ("|python|apache-spark|", ["python", "apache-spark"]),
        ("<c++>", ["c++"]),
        ("|.net|", [".net"]),
        ("", []),
        (None, []),
    ],
)
def test_parse_tags_both_forms_and_empty(spark: SparkSession, tags, expected) -> None:
    df = spark.createDataFrame([(tags,)], "Tags string")
    assert df.select(silver.parse_tags(F.col("Tags")).alias("t")).collect()[0]["t"] == expected


def test_post_type_names_keep_unknown_ids(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1,), (2,), (5,), (99,), (None,)], "PostTypeId int")
    names = [row[0] for row in df.select(silver.post_type_name(F.col("PostTypeId"))).collect()]
    assert names == ["Question", "Answer", "TagWiki", silver.UNKNOWN, silver.UNKNOWN]


def test_to_silver_posts_renames_id_and_parses(spark: SparkSession) -> None:
    rows = silver.to_silver_posts(_bronze(spark, (7, 1, 3, "|a|b|"), (8, 42, 0, None))).collect()
    assert "Id" not in rows[0].asDict()
    assert [(r["PostId"], r["PostType"], r["PostTypeId"], r["Tags"]) for r in rows] == [
        (7, "Question", 1, ["a", "b"]),
        (8, silver.UNKNOWN, 42, []),
    ]


def test_prepare_upsert_keeps_latest_version_of_duplicate_ids(spark: SparkSession) -> None:
    batch = silver.prepare_upsert(
        _bronze(spark, (1, 1, 1, "<a>", T0, T0), (1, 1, 9, "<a><b>", T0, T1), (2, 2, 4, None, T0))
    )
    rows = {r["PostId"]: r for r in batch.collect()}
    assert sorted(rows) == [1, 2]
    assert (rows[1]["Score"], rows[1]["Tags"]) == (9, ["a", "b"])
    assert len(rows[1][silver.HASH_COLUMN]) == 64


def _upsert(spark: SparkSession, table: tables.Table, *rows: tuple) -> dict[int, dict]:
    batch = silver.prepare_upsert(_bronze(spark, *rows))
    tables.upsert(batch, table, key=silver.KEY, hash_column=silver.HASH_COLUMN)
    return {r["PostId"]: r.asDict() for r in tables.read(spark, table).collect()}


def test_upsert_inserts_updates_edits_and_is_idempotent(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", f"t_{request.node.name[:40]}", "silver_posts")
    first = _upsert(spark, table, (1, 1, 1, "<a>", T0, T0), (2, 1, 2, "<b>", T0, T0))
    assert sorted(first) == [1, 2]

    # Post 2 edited (same CreationDate and LastActivityDate), post 3 new, post 1 unchanged.
    second_batch = [(1, 1, 1, "<a>", T0, T0), (2, 1, 7, "<b><c>", T0, T0), (3, 2, 0, None, T1, T1)]
    second = _upsert(spark, table, *second_batch)
    assert sorted(second) == [1, 2, 3]
    assert (second[2]["Score"], second[2]["Tags"]) == (7, ["b", "c"])
    assert second[1] == first[1]  # unchanged row untouched, hash included
    assert second[2][silver.HASH_COLUMN] != first[2][silver.HASH_COLUMN]

    # Re-running the same batch changes nothing.
    assert _upsert(spark, table, *second_batch) == second


def test_upsert_creates_the_table_on_first_run(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", f"t_{request.node.name[:40]}", "silver_posts")
    assert not tables.exists(spark, table)
    assert sorted(_upsert(spark, table, (5, 1, 0, "|x|"))) == [5]


def test_a_table_of_one_site_refuses_another(spark: SparkSession) -> None:
    df = spark.createDataFrame([("a",), ("b",), ("a",), ("c",)], "_site string")
    with pytest.raises(ValueError, match=r"holds site\(s\) \['b', 'c'\], this run is for 'a'"):
        silver.ensure_same_site(df, "a")
    silver.ensure_same_site(df.where("_site = 'a'"), "a")
