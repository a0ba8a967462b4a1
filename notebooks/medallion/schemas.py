"""Explicit schemas of the dump files we read, as the real dumps spell their attributes.

Every column is an XML attribute of ``<row .../>``; optional ones are simply absent (null).
Timestamps in the dumps are UTC without a zone (``2020-10-03T12:34:56.789``).
"""

from __future__ import annotations

from pyspark.sql.types import (
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# The prefix Spark's XML reader gives attribute columns (option ``attributePrefix``).
ATTRIBUTE_PREFIX = "_"


def _schema(*fields: tuple[str, object]) -> StructType:
    return StructType([StructField(name, kind, nullable=True) for name, kind in fields])  # type: ignore[arg-type]


POSTS = _schema(
    ("Id", LongType()),
    ("PostTypeId", IntegerType()),
    ("AcceptedAnswerId", LongType()),
    ("ParentId", LongType()),
    ("CreationDate", TimestampType()),
    ("Score", IntegerType()),
    ("ViewCount", LongType()),
    ("Body", StringType()),
    ("OwnerUserId", LongType()),
    ("OwnerDisplayName", StringType()),
    ("LastEditorUserId", LongType()),
    ("LastEditorDisplayName", StringType()),
    ("LastEditDate", TimestampType()),
    ("LastActivityDate", TimestampType()),
    ("Title", StringType()),
    ("Tags", StringType()),
    ("AnswerCount", IntegerType()),
    ("CommentCount", IntegerType()),
    ("FavoriteCount", IntegerType()),
    ("ClosedDate", TimestampType()),
    ("CommunityOwnedDate", TimestampType()),
    ("ContentLicense", StringType()),
)

USERS = _schema(
    ("Id", LongType()),
    ("Reputation", IntegerType()),
    ("CreationDate", TimestampType()),
    ("DisplayName", StringType()),
    ("LastAccessDate", TimestampType()),
    ("WebsiteUrl", StringType()),
    ("Location", StringType()),
    ("AboutMe", StringType()),
    ("Views", IntegerType()),
    ("UpVotes", IntegerType()),
    ("DownVotes", IntegerType()),
    ("ProfileImageUrl", StringType()),
    ("AccountId", LongType()),
)


def with_attribute_prefix(schema: StructType) -> StructType:
    """The schema as Spark's XML reader names attributes (``Id`` -> ``_Id``)."""
    return StructType(
        [
            StructField(ATTRIBUTE_PREFIX + field.name, field.dataType, field.nullable)
            for field in schema.fields
        ]
    )
