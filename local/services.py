"""Local stand-ins for the services the pipeline talks to, each set up one way.

Used by the local stack, the tests and the benchmarks: free ports on 127.0.0.1, waiting on a real
condition, moto's S3 server (``MotoS3``), the dummy AWS credentials and an S3 client for it, and the
Airflow connections ``aws_conn`` / ``databricks_conn`` as ``AIRFLOW_CONN_*`` values.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import IO, Self, TypeVar
from urllib.parse import urlsplit

import requests
import tenacity

T = TypeVar("T")

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; these obvious dummies keep boto3 from looking for real ones.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
# The producer refuses loopback/private sources unless exempted: local servers need this.
LOCAL_SOURCE_ENV = {"STACKEXCHANGE_ALLOWED_HOSTS": f"{HOST},localhost"}


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def http_answers(url: str) -> bool:
    """Whether an HTTP server answers ``url`` with anything but a 5xx."""
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


class WaitTimeout(TimeoutError):
    """``wait_until`` gave up; the message names what it waited for and how long."""


def wait_until(what: str, ready: Callable[[], T], *, timeout: float, interval: float = 0.25) -> T:
    """Call ``ready`` until it returns something truthy, and return that.

    An exception from ``ready`` is not retried: it ends the wait (e.g. "the server died").
    Raises ``WaitTimeout`` naming ``what`` after ``timeout`` seconds.
    """

    def timed_out(state: tenacity.RetryCallState) -> T:
        raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_fixed(interval),
        retry=tenacity.retry_if_result(lambda result: not result),
        retry_error_callback=timed_out,
    )
    return retrying(ready)


class MotoS3:
    """moto's S3 server: real HTTP on 127.0.0.1, as any S3-compatible endpoint.

    ``start()`` runs it as a child process and waits until it answers; ``stop()`` ends it.
    A supervisor of its own (the local stack's pid files) runs ``command`` and waits on
    ``answers`` instead.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def answers(self) -> bool:
        return http_answers(self.url)

    def start(self, log: IO[bytes] | None = None, timeout: float = 60) -> Self:
        """Start the server (output to ``log``, else discarded) and wait until it answers."""
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def answering() -> bool:
            assert self._process is not None
            if (code := self._process.poll()) is not None:
                raise RuntimeError(
                    f"moto's S3 server exited with {code} before answering on {self.url} "
                    f"(is port {self.port} taken?)"
                )
            return self.answers()

        try:
            wait_until(f"moto's S3 server on {self.url}", answering, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End the server started by ``start``; safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def client(self):  # -> botocore S3 client (boto3's types are generated at runtime)
        return s3_client(self.url)

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_client(endpoint_url: str):  # -> botocore S3 client
    """boto3's S3 client for a local endpoint, with the dummy credentials.

    moto 5.1.5 returns a whole-object CRC for multipart objects that botocore rejects, so
    response checksums are validated only when the operation requires it.
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(response_checksum_validation="when_required"),
    )


def aws_conn(endpoint_url: str) -> str:
    """``AIRFLOW_CONN_AWS_CONN``: S3 at ``endpoint_url`` with the dummy credentials."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
            "password": DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
        }
    )


def databricks_conn(url: str, token: str) -> str:
    """``AIRFLOW_CONN_DATABRICKS_CONN`` for a plain-HTTP workspace such as the local stand-in.

    The provider's hook builds its URLs from ``schema`` (the scheme), ``host`` and ``port``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise ValueError(f"databricks_conn needs a URL like http://127.0.0.1:PORT, not {url!r}")
    return json.dumps(
        {
            "conn_type": "databricks",
            "host": parts.hostname,
            "port": parts.port,
            "schema": parts.scheme,
            "password": token,
        }
    )


def connections_env(s3_endpoint: str, databricks_url: str, token: str) -> dict[str, str]:
    """Both connections the DAGs use, as the environment variables Airflow reads."""
    return {
        "AIRFLOW_CONN_AWS_CONN": aws_conn(s3_endpoint),
        "AIRFLOW_CONN_DATABRICKS_CONN": databricks_conn(databricks_url, token),
    }
