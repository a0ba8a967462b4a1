"""S3 through the Airflow connection: the hook, the bucket check, and errors that say the fix."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator

from airflow.exceptions import AirflowNotFoundException
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.exceptions import BotoCoreError, ClientError

# What the ingest does on the bucket (README: "Troubleshooting").
PERMISSIONS = (
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:GetBucketVersioning",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
)


class S3PublishError(RuntimeError):
    """S3 is unreachable or refuses us; the message names the bucket/connection and the fix."""


class S3ConfigError(S3PublishError):
    """Missing connection or bucket, or denied access: retrying cannot help."""


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


def explain(exc: Exception, aws_conn_id: str, bucket: str, action: str) -> S3PublishError:
    """Turn a boto error into one that names the bucket, the connection and the fix."""
    code = _error_code(exc)
    where = f"s3://{bucket} (connection {aws_conn_id!r})"
    if code in ("404", "NoSuchBucket"):
        return S3ConfigError(
            f"{action}: bucket {where} does not exist: create it, or set STACKEXCHANGE_BUCKET "
            "to an existing bucket"
        )
    if code in ("403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                "SignatureDoesNotMatch"):  # fmt: skip
        return S3ConfigError(
            f"{action}: access to {where} denied ({code}): give the connection's credentials "
            f"{', '.join(PERMISSIONS)} on the bucket"
        )
    return S3PublishError(f"{action}: {where} failed: {exc}")


@contextlib.contextmanager
def explained(aws_conn_id: str, bucket: str, action: str) -> Iterator[None]:
    """Boto errors inside become :class:`S3PublishError` s that say what to fix."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, aws_conn_id, bucket, action) from exc


def ascii_value(value: str) -> str:
    """S3 user metadata must be ASCII: percent-encode anything else."""
    return urllib.parse.quote(value, safe=" !\"#$%&'()*+,-./:;<=>?@[]^_`{|}~")
