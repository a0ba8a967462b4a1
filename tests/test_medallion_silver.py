"""Silver posts: tags, post type names, (site, PostId), one row per post, incremental upsert
per site, several sites side by side."""

from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from medallion import silver, tables

BRONZE_POSTS = (
    "Id long, PostTypeId int, Score int, Tags string, CreationDate timestamp, "
    "LastActivityDate timestamp, LastEditDate timestamp, OwnerUserId long, "
    "site string, _ingested_at timestamp"
)
T0, T1, T2 = datetime(2024, 1, 1), datetime(2024, 2, 1), datetime(2024, 3, 1)


def _bronze(spark: SparkSession, *rows: tuple, site: str = "site.example") -> DataFrame:
    full = [(*row, *([None] * (8 - len(row))), site, T2) for row in rows]
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


def _upsert(
    spark: SparkSession, table: tables.Table, *rows: tuple, site: str = "site.example"
) -> dict[int, dict]:
    """Upsert ``rows`` of ``site``; the site's rows of the table afterwards, by PostId."""
    batch = silver.prepare_upsert(_bronze(spark, *rows, site=site))
    tables.upsert(batch, table, keys=silver.KEYS, hash_column=silver.HASH_COLUMN, site=site)
    return {r["PostId"]: r.asDict() for r in tables.read(spark, table, site).collect()}


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


def test_two_sites_side_by_side_never_touch_each_others_rows(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    """PostId 1 exists in both sites; upserting and re-running one site leaves the other's rows
    exactly as they were (files included: the other site's directory is not rewritten)."""
    table = tables.Table("main", f"t_{request.node.name[:40]}", "silver_posts")
    a = _upsert(spark, table, (1, 1, 1, "<a>", T0, T0), (2, 1, 2, "<b>", T0, T0), site="a.example")
    b = _upsert(spark, table, (1, 1, 50, "<z>", T0, T0), site="b.example")
    assert (a[1]["Score"], b[1]["Score"]) == (1, 50)
    b_files = sorted(p.name for p in (table.local_path(spark) / "b.example").iterdir())

    edited = _upsert(spark, table, (1, 1, 9, "<a><c>", T0, T1), site="a.example")
    assert (edited[1]["Score"], sorted(edited)) == (9, [1, 2])
    assert _upsert(spark, table, (1, 1, 9, "<a><c>", T0, T1), site="a.example") == edited
    assert {r["PostId"]: r.asDict() for r in tables.read(spark, table, "b.example").collect()} == b
    assert sorted(p.name for p in (table.local_path(spark) / "b.example").iterdir()) == b_files
    everything = tables.read(spark, table).collect()
    assert sorted((r["site"], r["PostId"]) for r in everything) == [
        ("a.example", 1), ("a.example", 2), ("b.example", 1),
    ]  # fmt: skip


def test_a_batch_holding_another_sites_row_is_refused(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", f"t_{request.node.name[:40]}", "silver_posts")
    _upsert(spark, table, (1, 1, 1, "<a>", T0, T0), site="a.example")
    stray = silver.prepare_upsert(_bronze(spark, (3, 1, 1, "<a>", T0, T0), site="b.example"))
    with pytest.raises(Exception, match="a row of another site than a.example"):
        tables.upsert(stray, table, keys=silver.KEYS, hash_column=silver.HASH_COLUMN,
                      site="a.example")  # fmt: skip
    assert sorted(_upsert(spark, table, site="a.example")) == [1]
