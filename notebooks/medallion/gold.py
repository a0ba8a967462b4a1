"""Gold: posts with their owners, and the most popular tags."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

OWNER_COLUMNS = {
    "Id": "OwnerId",
    "DisplayName": "OwnerName",
    "Reputation": "OwnerReputation",
    "Location": "OwnerLocation",
}


def post_users(posts: DataFrame, users: DataFrame) -> DataFrame:
    """Every silver post with its owner's profile; posts without a known owner are kept.

    The owner name falls back to the post's ``OwnerDisplayName`` (deleted or anonymous users).
    """
    owners = users.select([F.col(name).alias(alias) for name, alias in OWNER_COLUMNS.items()])
    joined = posts.join(owners, posts["OwnerUserId"] == owners["OwnerId"], "left")
    return joined.select(
        "PostId",
        "PostType",
        "Title",
        "CreationDate",
        "Score",
        "Tags",
        "OwnerUserId",
        F.coalesce(F.col("OwnerName"), F.col("OwnerDisplayName")).alias("OwnerName"),
        "OwnerReputation",
        "OwnerLocation",
        F.col("OwnerId").isNotNull().alias("OwnerKnown"),
    )


def most_popular_tags(posts: DataFrame) -> DataFrame:
    """Tags by the number of distinct posts carrying them; ties ordered by tag name.

    ``Rank`` is 1-based and unique, so "top N" is ``Rank <= N`` and reads the same every run.
    """
    counts = (
        posts.select("PostId", F.explode("Tags").alias("Tag"))
        .groupBy("Tag")
        .agg(F.countDistinct("PostId").alias("Posts"))
    )
    order = Window.orderBy(F.col("Posts").desc(), F.col("Tag").asc())
    return counts.select(F.row_number().over(order).alias("Rank"), "Tag", "Posts").orderBy("Rank")
