"""Settings of the ingest, from the environment, each read once and passed down.

``Storage`` (bucket, prefix, retention, lock) is read once by each DAG file at parse time (the
Asset URIs need it) and once by each task; ``max_active_sites`` once at parse time (the bound of
the fan-out). The URL policy's settings (allowed hosts, file root) live in ``url_policy.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

AWS_CONN_ID = "aws_conn"
DEFAULT_SITE = "ai.meta.stackexchange.com"
DEFAULT_SOURCE_BASE_URL = "https://archive.org/download/stackexchange"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; unset it or give a number") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard to try: attempts per request, exponential backoff, socket timeouts, log cadence."""

    attempts: int = 6
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 60.0
    connect_timeout: float = 30.0
    read_timeout: float = 120.0
    chunk_bytes: int = 1 << 20
    progress_seconds: float = 10.0

    @classmethod
    def from_env(cls) -> DownloadPolicy:
        return cls(
            attempts=max(1, int(_number("STACKEXCHANGE_DOWNLOAD_ATTEMPTS", cls.attempts))),
            backoff_seconds=_number("STACKEXCHANGE_DOWNLOAD_BACKOFF_SECONDS", cls.backoff_seconds),
            read_timeout=_number("STACKEXCHANGE_READ_TIMEOUT_SECONDS", cls.read_timeout),
            # The task log shows progress at least every 30 s, whatever is configured.
            progress_seconds=min(
                _number("STACKEXCHANGE_PROGRESS_SECONDS", cls.progress_seconds), 30.0
            ),
        )


@dataclass(frozen=True)
class Limits:
    """Bounds on what an archive may declare (checked against its header before anything is
    decompressed) and on the rows the validator reads."""

    # Real dumps expand 5-15x (XML under LZMA2); an archive declaring far more is a bomb.
    max_expansion_ratio: float = 100.0
    # The longest line (one row) the validator accepts; real rows are at most a few hundred KB
    # (20 KB in the dumps in ../shared), and expat's cost grows with a row's square.
    max_row_bytes: int = 16 << 20

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_expansion_ratio=_number(
                "STACKEXCHANGE_MAX_EXPANSION_RATIO", cls.max_expansion_ratio
            ),
            max_row_bytes=int(_number("STACKEXCHANGE_MAX_ROW_BYTES", cls.max_row_bytes)),
        )


def checksums_url_override() -> str | None:
    """``STACKEXCHANGE_CHECKSUMS_URL``: an archive.org-style ``*_files.xml`` list, or ``none``."""
    return os.environ.get("STACKEXCHANGE_CHECKSUMS_URL", "").strip() or None


@dataclass(frozen=True)
class Storage:
    """Where sites are published and how: ``s3://{bucket}/{prefix}/{site}/...``.

    ``keep_previous``: generations kept besides the current one (for rollback); older ones are
    deleted after each commit. ``lock_seconds``: how long a writer's lock on a site holds before
    another run may take it over (a little longer than the ingest's execution_timeout).
    """

    bucket: str = "stackexchange-raw"
    prefix: str = "raw/stackexchange"
    keep_previous: int = 1
    lock_seconds: float = 13 * 3600.0

    @classmethod
    def from_env(cls) -> Storage:
        prefix = os.environ.get("STACKEXCHANGE_PREFIX", cls.prefix).strip().strip("/")
        if not prefix:
            raise ValueError("STACKEXCHANGE_PREFIX must not be empty: unset it or name a folder")
        return cls(
            bucket=os.environ.get("STACKEXCHANGE_BUCKET", "").strip() or cls.bucket,
            prefix=prefix,
            keep_previous=int(_number("STACKEXCHANGE_KEEP_PREVIOUS", cls.keep_previous)),
            lock_seconds=_number("STACKEXCHANGE_LOCK_SECONDS", cls.lock_seconds),
        )


def max_active_sites() -> int:
    """``STACKEXCHANGE_MAX_ACTIVE_SITES``: sites checked or ingested at once in one DAG run
    (each ingest pod needs its CPU, memory and scratch disk). Read by the DAG file at parse time."""
    return max(1, int(_number("STACKEXCHANGE_MAX_ACTIVE_SITES", 4)))


def plan_bytes_per_second() -> float:
    """``STACKEXCHANGE_PLAN_BYTES_PER_SECOND``: the archive bytes one ingest gets through per
    second, for the dry run's time estimate. The default is archive.org's usual per-connection
    rate, which bounds the ingest (``make bench``: the ingest keeps up with a paced source)."""
    return max(1.0, _number("STACKEXCHANGE_PLAN_BYTES_PER_SECOND", 10e6))
