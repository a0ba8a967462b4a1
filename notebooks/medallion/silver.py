"""Silver posts: tags as an array, post types by name, ``(site, PostId)`` as the key, one row per
post of each site (``PostId`` is unique only within a site)."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

# PostTypeId values of the Stack Exchange data model (PostTypes table); others -> UNKNOWN.
POST_TYPES: dict[int, str] = {
    1: "Question",
    2: "Answer",
    3: "OrphanedTagWiki",
    4: "TagWikiExcerpt",
    5: "TagWiki",
    6: "ModeratorNomination",
    7: "WikiPlaceholder",
    8: "PrivilegeWiki",
}
UNKNOWN = "Unknown"
KEY = "PostId"
KEYS = ("site", KEY)
# Hash of a post's content columns (not the ``_`` lineage columns): what tells an edit apart.
HASH_COLUMN = "_row_hash"


def parse_tags(tags: Column) -> Column:
    """``<a><b>`` or ``|a|b|`` -> ``["a", "b"]``; null or empty -> ``[]``."""
    inner = F.regexp_replace(F.trim(tags), r"^[<|]|[>|]$", "")
    parts = F.split(inner, r"><|\|")
    return F.coalesce(
        F.filter(parts, lambda tag: tag != F.lit("")), F.array().cast("array<string>")
    )


def post_type_name(post_type_id: Column) -> Column:
    """The PostTypeId's name; ids we do not know (and null) are kept as ``Unknown``."""
    names = F.create_map(*[F.lit(x) for pair in POST_TYPES.items() for x in pair])
    return F.coalesce(names[post_type_id], F.lit(UNKNOWN))


def to_silver_posts(bronze_posts: DataFrame) -> DataFrame:
    """Bronze rows -> silver rows: ``Id`` -> ``PostId``, ``PostType``, ``Tags`` as an array."""
    renamed = bronze_posts.withColumnRenamed("Id", KEY)
    columns = [
        F.col(KEY),
        F.col("PostTypeId"),
        post_type_name(F.col("PostTypeId")).alias("PostType"),
        *[F.col(name) for name in renamed.columns if name not in {KEY, "PostTypeId", "Tags"}],
        parse_tags(F.col("Tags")).alias("Tags"),
    ]
    return renamed.select(columns)


def latest_per_post(posts: DataFrame) -> DataFrame:
    """One row per ``(site, PostId)``: the most recently active (then edited) version,
    deterministically."""
    order = Window.partitionBy(*KEYS).orderBy(
        F.col("LastActivityDate").desc_nulls_last(),
        F.col("LastEditDate").desc_nulls_last(),
        F.col("_ingested_at").desc_nulls_last(),
        F.col(HASH_COLUMN),
    )
    return posts.withColumn("_n", F.row_number().over(order)).where(F.col("_n") == 1).drop("_n")


def with_row_hash(posts: DataFrame) -> DataFrame:
    """Add a hash of the post's content, so an upsert rewrites only rows that really changed."""
    content = [name for name in posts.columns if not name.startswith("_")]
    return posts.withColumn(
        HASH_COLUMN, F.sha2(F.to_json(F.struct(*[F.col(name) for name in content])), 256)
    )


def prepare_upsert(bronze_posts: DataFrame) -> DataFrame:
    """The batch to upsert into silver posts: transformed, hashed, one row per post."""
    return latest_per_post(with_row_hash(to_silver_posts(bronze_posts)))
