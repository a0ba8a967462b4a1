"""Gold, per site: posts with their owners, and the most popular tags."""

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
    """Every silver post with its owner's profile (of the same site: user ids are per site);
    posts without a known owner are kept.

    The owner name falls back to the post's ``OwnerDisplayName`` (deleted or anonymous users).
    """
    owners = users.select(
        F.col("site").alias("OwnerSite"),
        *[F.col(name).alias(alias) for name, alias in OWNER_COLUMNS.items()],
    )
    same_owner = (posts["OwnerUserId"] == owners["OwnerId"]) & (
        posts["site"] == owners["OwnerSite"]
    )
    joined = posts.join(owners, same_owner, "left")
    return joined.select(
        "site",
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
    """Per site, tags by the number of distinct posts carrying them; ties ordered by tag name.

    ``Rank`` is 1-based and unique within a site, so a site's "top N" is ``Rank <= N`` and reads
    the same every run.
    """
    counts = (
        posts.select("site", "PostId", F.explode("Tags").alias("Tag"))
        .groupBy("site", "Tag")
        .agg(F.countDistinct("PostId").alias("Posts"))
    )
    order = Window.partitionBy("site").orderBy(F.col("Posts").desc(), F.col("Tag").asc())
    ranked = counts.select("site", F.row_number().over(order).alias("Rank"), "Tag", "Posts")
    return ranked.orderBy("site", "Rank")
