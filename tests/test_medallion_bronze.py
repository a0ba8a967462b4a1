"""Bronze: dump XML in the real format -> typed rows without attribute prefix, plus lineage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from local.sample_dump import post_rows, user_rows, write_xml
from medallion import bronze, schemas
from medallion.objects import Identity


def _read(spark: SparkSession, path: Path, schema) -> list[dict]:
    df = bronze.drop_attribute_prefix(bronze.read_dump_xml(spark, str(path), schema))
    return [row.asDict() for row in df.orderBy("Id").collect()]


def test_posts_are_typed_and_unprefixed(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "Posts.xml"
    write_xml(
        path,
        "posts",
        iter(
            [
                {"Id": 1, "PostTypeId": 1, "CreationDate": "2020-01-02T03:04:05.678",
                 "Score": 5, "Body": "<p>a & b\r\nline</p>", "OwnerUserId": -1,
                 "Title": "T?", "Tags": "<python><c++>", "ContentLicense": "CC BY-SA 4.0"},
                {"Id": 2, "PostTypeId": 2, "ParentId": 1, "CreationDate": "2020-01-03T00:00:00.000",
                 "Score": -1, "OwnerDisplayName": "anon"},
            ]
        ),
    )  # fmt: skip
    question, answer = _read(spark, path, schemas.POSTS)

    assert list(question) == [field.name for field in schemas.POSTS.fields]
    assert question["CreationDate"] == datetime(2020, 1, 2, 3, 4, 5, 678000)
    assert question["Body"] == "<p>a & b\r\nline</p>"
    assert question["Tags"] == "<python><c++>"
    assert (question["OwnerUserId"], question["ParentId"]) == (-1, None)
    assert (answer["ParentId"], answer["Score"], answer["OwnerUserId"]) == (1, -1, None)
    assert answer["OwnerDisplayName"] == "anon"


def test_schema_covers_every_attribute_of_generated_dumps(
    spark: SparkSession, tmp_path: Path
) -> None:
    posts = list(post_rows(300, 30, seed=3))
    users = list(user_rows(30, seed=3))
    write_xml(tmp_path / "Posts.xml", "posts", iter(posts))
    write_xml(tmp_path / "Users.xml", "users", iter(users))

    assert {key for row in posts for key in row} <= set(schemas.POSTS.fieldNames())
    assert {key for row in users for key in row} <= set(schemas.USERS.fieldNames())
    read_posts = _read(spark, tmp_path / "Posts.xml", schemas.POSTS)
    read_users = _read(spark, tmp_path / "Users.xml", schemas.USERS)
    assert [row["Id"] for row in read_posts] == sorted(row["Id"] for row in posts)
    assert read_users[0]["Id"] == -1 and read_users[0]["DisplayName"] == "Community"
    assert len(read_users) == len(users)


def test_malformed_file_fails_instead_of_yielding_nulls(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "Posts.xml"
    path.write_text('<posts>\r\n  <row Id="not-a-number" />\r\n</posts>', encoding="utf-8")
    with pytest.raises(Exception, match=r"FAILED_READ_FILE[\s\S]*Posts\.xml"):
        _read(spark, path, schemas.POSTS)


def test_ingestion_metadata(spark: SparkSession) -> None:
    at = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    df = bronze.with_ingestion_metadata(
        spark.createDataFrame([(1,)], "Id long"),
        site="s.example",
        source_uri="s3://b/k/Posts.xml",
        source_sha256="ab" * 32,
        source=Identity("9b2cf535f27731c974343645a3985328-3", "v7"),
        ingested_at=at,
    )
    row = df.collect()[0].asDict()
    assert df.columns == ["Id", *bronze.METADATA_COLUMNS]
    assert row["site"] == "s.example" and row["_source_uri"] == "s3://b/k/Posts.xml"
    assert row["_source_sha256"] == "ab" * 32
    assert row["_source_etag"] == "9b2cf535f27731c974343645a3985328-3"
    assert row["_source_version_id"] == "v7"
    assert row["_ingested_at"] == datetime(2024, 5, 6, 7, 8, 9)  # session time zone is UTC


def test_sha256_only_and_unversioned_sources_record_nulls(spark: SparkSession) -> None:
    df = bronze.with_ingestion_metadata(
        spark.createDataFrame([(1,)], "Id long"),
        site="s.example",
        source_uri="s3://b/k/Posts.xml",
        source_sha256="ab" * 32,
        source=Identity(""),
        ingested_at=datetime(2024, 5, 6, tzinfo=UTC),
    )
    row = df.collect()[0]
    assert (row["_source_etag"], row["_source_version_id"]) == (None, None)
    assert dict(df.dtypes)["_source_etag"] == dict(df.dtypes)["_source_version_id"] == "string"
