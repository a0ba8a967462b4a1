"""A boto3 S3 client for the moto servers the tests start (dummy credentials)."""

from __future__ import annotations

import boto3
from botocore.config import Config


def s3_client(endpoint: str):
    """moto 5.1.5 returns a whole-object CRC for multipart objects that botocore rejects, so
    response checksums are off: the tests compare the bytes themselves."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(response_checksum_validation="when_required"),
    )
