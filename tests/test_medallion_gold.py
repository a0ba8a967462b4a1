"""Gold: posts with owners (orphans kept) and most popular tags (exact, deterministic)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from local.sample_dump import write_site
from medallion import bronze, gold, schemas, silver
from medallion.objects import Identity

POSTS = "PostId long, PostType string, Title string, CreationDate timestamp, Score int, " \
    "Tags array<string>, OwnerUserId long, OwnerDisplayName string"  # fmt: skip
USERS = "Id long, DisplayName string, Reputation int, Location string"


def _posts(spark: SparkSession, *rows: tuple) -> DataFrame:
    full = [
        (r[0], "Question", None, None, 0, r[1], r[2], r[3] if len(r) > 3 else None) for r in rows
    ]
    return spark.createDataFrame(full, POSTS)


def test_post_users_keeps_orphans_and_joins_community(spark: SparkSession) -> None:
    posts = _posts(
        spark, (1, [], 10), (2, [], -1), (3, [], 999), (4, [], None, "anonymous7"), (5, [], 10)
    )
    users = spark.createDataFrame(
        [(10, "ten", 100, "Lagos"), (-1, "Community", 1, None), (11, "eleven", 5, None)], USERS
    )
    rows = {r["PostId"]: r for r in gold.post_users(posts, users).collect()}

    assert sorted(rows) == [1, 2, 3, 4, 5]  # every post once, none lost or duplicated
    assert (rows[1]["OwnerName"], rows[1]["OwnerReputation"], rows[1]["OwnerKnown"]) == (
        "ten",
        100,
        True,
    )
    assert (rows[2]["OwnerName"], rows[2]["OwnerKnown"]) == ("Community", True)
    assert (rows[3]["OwnerUserId"], rows[3]["OwnerName"], rows[3]["OwnerKnown"]) == (
        999,
        None,
        False,
    )
    assert (rows[4]["OwnerName"], rows[4]["OwnerKnown"]) == ("anonymous7", False)


def test_most_popular_tags_counts_distinct_posts_and_breaks_ties_by_name(
    spark: SparkSession,
) -> None:
    posts = _posts(
        spark,
        (1, ["b", "a", "a"], None),  # a repeated tag on one post counts once
        (2, ["b", "c"], None),
        (3, ["c"], None),
        (4, [], None),
        (5, ["a", "d"], None),
    )
    rows = [tuple(r) for r in gold.most_popular_tags(posts).collect()]
    assert rows == [(1, "a", 2), (2, "b", 2), (3, "c", 2), (4, "d", 1)]


def test_gold_from_generated_dump_matches_xml(spark: SparkSession, tmp_path: Path) -> None:
    """The whole chain on a generated dump, checked against counts parsed from the XML."""
    write_site(tmp_path, posts=1500, users=120, tag_style="pipe", seed=11, other_files=False)
    expected: Counter[str] = Counter()
    owners = []
    for row in ET.parse(tmp_path / "Posts.xml").getroot():
        expected.update(set(re.findall(r"[^|]+", row.get("Tags", ""))))
        owners.append(row.get("OwnerUserId"))
    user_ids = {row.get("Id") for row in ET.parse(tmp_path / "Users.xml").getroot()}

    def load(name: str, schema) -> DataFrame:
        raw = bronze.read_dump_xml(spark, str(tmp_path / name), schema)
        return bronze.with_ingestion_metadata(
            bronze.drop_attribute_prefix(raw),
            site="s",
            source_uri=name,
            source_sha256="",
            source=Identity(""),
            ingested_at=datetime.now(UTC),
        )

    posts = silver.prepare_upsert(load("Posts.xml", schemas.POSTS))
    tags = [tuple(r) for r in gold.most_popular_tags(posts).collect()]
    ordered = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
    assert tags == [(rank, tag, n) for rank, (tag, n) in enumerate(ordered, start=1)]

    joined = gold.post_users(posts, load("Users.xml", schemas.USERS))
    assert joined.count() == len(owners)
    assert joined.where("NOT OwnerKnown").count() == sum(o not in user_ids for o in owners)
