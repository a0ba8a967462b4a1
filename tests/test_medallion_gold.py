"""Gold, per site: posts with owners (orphans kept) and most popular tags (exact,
deterministic), two sites side by side."""

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

POSTS = "site string, PostId long, PostType string, Title string, CreationDate timestamp, " \
    "Score int, Tags array<string>, OwnerUserId long, OwnerDisplayName string"  # fmt: skip
USERS = "site string, Id long, DisplayName string, Reputation int, Location string"


def _posts(spark: SparkSession, *rows: tuple, site: str = "s") -> DataFrame:
    full = [
        (site, r[0], "Question", None, None, 0, r[1], r[2], r[3] if len(r) > 3 else None)
        for r in rows
    ]
    return spark.createDataFrame(full, POSTS)


def _users(spark: SparkSession, *rows: tuple, site: str = "s") -> DataFrame:
    return spark.createDataFrame([(site, *row) for row in rows], USERS)


def test_post_users_keeps_orphans_and_joins_community(spark: SparkSession) -> None:
    posts = _posts(
        spark, (1, [], 10), (2, [], -1), (3, [], 999), (4, [], None, "anonymous7"), (5, [], 10)
    )
    users = _users(
        spark, (10, "ten", 100, "Lagos"), (-1, "Community", 1, None), (11, "eleven", 5, None)
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
    assert rows == [("s", 1, "a", 2), ("s", 2, "b", 2), ("s", 3, "c", 2), ("s", 4, "d", 1)]


def test_two_sites_rank_apart_and_owners_join_within_their_site(spark: SparkSession) -> None:
    """User 10 exists in both sites under different names; post 1 of each site is owned by its
    own site's user 10; tags rank within each site."""
    posts = _posts(spark, (1, ["a"], 10), (2, ["a", "b"], None), site="one").unionByName(
        _posts(spark, (1, ["b"], 10), (3, ["b", "c"], None), (4, ["c"], None), site="two")
    )
    users = _users(spark, (10, "ten of one", 1, None), site="one").unionByName(
        _users(spark, (10, "ten of two", 2, None), site="two")
    )
    owners = {(r["site"], r["PostId"]): r["OwnerName"]
              for r in gold.post_users(posts, users).collect()}  # fmt: skip
    assert owners == {("one", 1): "ten of one", ("one", 2): None, ("two", 1): "ten of two",
                      ("two", 3): None, ("two", 4): None}  # fmt: skip
    tags = [tuple(r) for r in gold.most_popular_tags(posts).collect()]
    assert tags == [
        ("one", 1, "a", 2), ("one", 2, "b", 1),
        ("two", 1, "b", 2), ("two", 2, "c", 2),
    ]  # fmt: skip


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
    assert tags == [("s", rank, tag, n) for rank, (tag, n) in enumerate(ordered, start=1)]

    joined = gold.post_users(posts, load("Users.xml", schemas.USERS))
    assert joined.count() == len(owners)
    assert joined.where("NOT OwnerKnown").count() == sum(o not in user_ids for o in owners)
