"""Upload and change detection against moto's S3 server over HTTP (and a fault proxy)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from local.sample_dump import write_site
from stackexchange import s3_publish
from stackexchange.dump_xml import ValidatedFile, validate_file
from tests.http_fixtures import S3FaultProxy
from tests.moto_s3 import s3_client

URL = "https://mirror.example/demo.stackexchange.com.7z"
KEYS = ["raw/test/Posts.xml", "raw/test/Users.xml"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[ValidatedFile]:
    """Posts.xml above boto3's 8 MiB multipart threshold, Users.xml small."""
    directory = tmp_path_factory.mktemp("site")
    write_site(directory, posts=9000, users=50, body_words=120, other_files=False)
    return [validate_file(directory / "Posts.xml"), validate_file(directory / "Users.xml")]


@pytest.fixture
def bucket(aws_conn: str) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client(aws_conn).create_bucket(Bucket=name)
    return name


def metadata(ingest_id: str, version: str = 'etag:"v1"') -> dict[str, str]:
    return {"site": "demo", "source-url": URL, "source-version": version, "ingest-id": ingest_id}


def uploads(files: list[ValidatedFile]) -> list[s3_publish.Upload]:
    return [s3_publish.Upload(key, file) for key, file in zip(KEYS, files, strict=True)]


def test_publish_writes_bytes_and_metadata_multipart(
    aws_conn: str, bucket: str, files: list[ValidatedFile]
) -> None:
    hook = s3_publish.s3_hook("aws_conn")
    s3_publish.check_bucket(hook, bucket)
    s3_publish.publish(hook, bucket, uploads(files), metadata("run-1"))
    client = s3_client(aws_conn)
    for key, file in zip(KEYS, files, strict=True):
        obj = client.get_object(Bucket=bucket, Key=key)
        assert obj["Body"].read() == file.path.read_bytes()
        assert obj["ContentType"] == "application/xml"
        assert obj["Metadata"] == {
            **metadata("run-1"),
            "sha256": file.sha256,
            "rows": str(file.rows),
        }
    posts_etag = client.head_object(Bucket=bucket, Key=KEYS[0])["ETag"]
    assert files[0].bytes > 8 * 1024 * 1024 and "-" in posts_etag  # a multipart upload


def test_up_to_date_only_for_a_complete_pair_of_this_version(
    aws_conn: str, bucket: str, files: list[ValidatedFile]
) -> None:
    hook = s3_publish.s3_hook("aws_conn")
    stored = s3_publish.stored_metadata(hook, bucket, KEYS)
    assert s3_publish.up_to_date(stored, URL, 'etag:"v1"') == (
        False,
        f"{KEYS[0]} does not exist yet",
    )

    s3_publish.publish(hook, bucket, uploads(files), metadata("run-1"))
    stored = s3_publish.stored_metadata(hook, bucket, KEYS)
    assert s3_publish.up_to_date(stored, URL, 'etag:"v1"')[0] is True
    current, reason = s3_publish.up_to_date(stored, URL, 'etag:"v2"')
    assert not current and "the source now has 'etag:\"v2\"'" in reason
    current, reason = s3_publish.up_to_date(stored, URL.replace("demo", "other"), 'etag:"v1"')
    assert not current and "came from" in reason


def test_a_failed_second_upload_leaves_a_pair_that_is_not_up_to_date(
    aws_conn: str, bucket: str, files: list[ValidatedFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = s3_publish.s3_hook("aws_conn")
    s3_publish.publish(hook, bucket, uploads(files), metadata("run-1"))
    with S3FaultProxy(aws_conn, deny=lambda method, path: "Users.xml" in path) as proxy:
        conn = json.loads(os.environ["AIRFLOW_CONN_AWS_CONN"])
        conn["extra"]["endpoint_url"] = proxy.url
        monkeypatch.setenv("AIRFLOW_CONN_AWS_CONN", json.dumps(conn))
        failing = s3_publish.s3_hook("aws_conn")
        with pytest.raises(
            s3_publish.S3PublishError, match=r"uploading raw/test/Users.xml.*denied"
        ):
            s3_publish.publish(failing, bucket, uploads(files), metadata("run-2"))
        assert proxy.denied
    stored = s3_publish.stored_metadata(hook, bucket, KEYS)
    assert stored[KEYS[0]]["ingest-id"] == "run-2" and stored[KEYS[1]]["ingest-id"] == "run-1"
    # Same source version on both objects, yet not current: they come from different ingests.
    assert s3_publish.up_to_date(stored, URL, 'etag:"v1"') == (
        False,
        "the objects come from different ingests (an earlier run failed mid-publish)",
    )


def test_missing_bucket_is_named_with_the_fix(aws_conn: str) -> None:
    hook = s3_publish.s3_hook("aws_conn")
    with pytest.raises(s3_publish.S3PublishError, match=r"s3://no-such-bucket.*does not exist"):
        s3_publish.check_bucket(hook, "no-such-bucket")


def test_denied_access_names_the_permissions(
    aws_conn: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with S3FaultProxy(aws_conn, deny=lambda method, path: True) as proxy:
        conn = {"conn_type": "aws", "login": "x", "password": "y",
                "extra": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_AWS_CONN", json.dumps(conn))
        hook = s3_publish.s3_hook("aws_conn")
        with pytest.raises(s3_publish.S3PublishError, match=r"denied.*s3:PutObject"):
            s3_publish.check_bucket(hook, bucket)


def test_missing_connection_is_named(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_AWS_CONN", raising=False)
    with pytest.raises(s3_publish.S3PublishError, match="'aws_conn' is not defined.*endpoint_url"):
        s3_publish.s3_hook("aws_conn")


def test_non_ascii_metadata_is_percent_encoded(aws_conn: str, bucket: str, tmp_path: Path) -> None:
    write_site(tmp_path, posts=5, users=3, other_files=False)
    users = validate_file(tmp_path / "Users.xml")
    hook = s3_publish.s3_hook("aws_conn")
    s3_publish.publish(
        hook, bucket, [s3_publish.Upload("u.xml", users)], {"source-url": "file:///données/x.7z"}
    )
    stored = s3_publish.stored_metadata(hook, bucket, ["u.xml"])
    assert stored["u.xml"]["source-url"] == "file:///donn%C3%A9es/x.7z"
