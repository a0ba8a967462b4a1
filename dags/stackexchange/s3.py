"""Publish validated dump files to S3 and tell whether the published pair is up to date.

Every object carries what it was made from as user metadata (``x-amz-meta-*``). The pair is
up to date only if both objects exist, come from the same source URL and version, and were
written by the same ingest: if the second upload of a run fails, the pair holds two ingest ids
and the next run ingests again instead of taking the half-replaced pair for current.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from airflow.exceptions import AirflowNotFoundException
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from stackexchange.dump_xml import ValidatedFile
from stackexchange.source import Progress

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/xml"


class S3PublishError(RuntimeError):
    """S3 is unreachable or refuses us; the message names the bucket/connection and the fix."""


class S3ConfigError(S3PublishError):
    """Missing connection or bucket, or denied access: retrying cannot help."""


@dataclass(frozen=True)
class Upload:
    key: str
    file: ValidatedFile


def s3_hook(aws_conn_id: str) -> S3Hook:
    """An S3Hook for ``aws_conn_id``; fails clearly rather than fall back to ambient credentials."""
    try:
        S3Hook.get_connection(aws_conn_id)
    except AirflowNotFoundException:
        raise S3ConfigError(
            f"the Airflow connection {aws_conn_id!r} is not defined: create it (Admin > "
            f"Connections, type 'Amazon Web Services', or AIRFLOW_CONN_{aws_conn_id.upper()}) "
            "with an `endpoint_url` extra for S3-compatible servers"
        ) from None
    return S3Hook(aws_conn_id=aws_conn_id)


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(error.get("Code") or status)
    found = re.search(r"\((\w+)\)", str(exc))
    return found.group(1) if found else ""


def explain(exc: Exception, hook: S3Hook, bucket: str, action: str) -> S3PublishError:
    """Turn a boto error into one that names the bucket, the connection and the fix."""
    code = _error_code(exc)
    where = f"s3://{bucket} (connection {hook.aws_conn_id!r})"
    if code in ("404", "NoSuchBucket"):
        return S3ConfigError(
            f"{action}: bucket {where} does not exist: create it, or set STACKEXCHANGE_BUCKET "
            "to an existing bucket"
        )
    if code in ("403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                "SignatureDoesNotMatch"):  # fmt: skip
        return S3ConfigError(
            f"{action}: access to {where} denied ({code}): give the connection's credentials "
            "s3:ListBucket, s3:GetObject, s3:PutObject and s3:AbortMultipartUpload on the bucket"
        )
    return S3PublishError(f"{action}: {where} failed: {exc}")


def check_bucket(hook: S3Hook, bucket: str) -> None:
    """Fail early, before any download, if the bucket is missing or out of reach."""
    try:
        hook.get_conn().head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, hook, bucket, "checking the bucket") from exc


def stored_metadata(hook: S3Hook, bucket: str, keys: list[str]) -> dict[str, dict[str, str] | None]:
    """Each key's user metadata, or None where the object does not exist."""
    found: dict[str, dict[str, str] | None] = {}
    for key in keys:
        try:
            head = hook.head_object(key=key, bucket_name=bucket)
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, hook, bucket, f"reading {key}") from exc
        found[key] = None if head is None else head.get("Metadata", {})
    return found


def up_to_date(
    stored: Mapping[str, Mapping[str, str] | None], source_url: str, source_version: str
) -> tuple[bool, str]:
    """Whether the stored objects are a complete pair from this source version, and why not."""
    ingests = set()
    for key, metadata in stored.items():
        if metadata is None:
            return False, f"{key} does not exist yet"
        if metadata.get("source-url") != ascii_value(source_url):
            return False, f"{key} came from {metadata.get('source-url')!r}, not {source_url}"
        if metadata.get("source-version") != ascii_value(source_version):
            return False, (
                f"{key} holds source version {metadata.get('source-version')!r}, "
                f"the source now has {source_version!r}"
            )
        ingests.add(metadata.get("ingest-id"))
    if len(ingests) != 1 or None in ingests:
        return False, "the objects come from different ingests (an earlier run failed mid-publish)"
    return True, f"both objects hold source version {source_version!r}"


def ascii_value(value: str) -> str:
    """S3 user metadata must be ASCII: percent-encode anything else."""
    return urllib.parse.quote(value, safe=" !\"#$%&'()*+,-./:;<=>?@[]^_`{|}~")


def publish(hook: S3Hook, bucket: str, uploads: list[Upload], metadata: Mapping[str, str]) -> None:
    """Upload each file (managed multipart transfer), replacing the object, with its metadata."""
    client = hook.get_conn()
    for upload in uploads:
        file = upload.file
        object_metadata = {k: ascii_value(v) for k, v in metadata.items()}
        object_metadata.update(sha256=file.sha256, rows=str(file.rows))
        progress = Progress(f"uploading s3://{bucket}/{upload.key}", file.bytes, 10.0)
        try:
            client.upload_file(
                str(file.path),
                bucket,
                upload.key,
                ExtraArgs={"Metadata": object_metadata, "ContentType": CONTENT_TYPE},
                Config=hook.transfer_config,
                Callback=progress.advance,
            )
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise explain(exc, hook, bucket, f"uploading {upload.key}") from exc
        progress.report()
