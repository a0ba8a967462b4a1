"""The ingest the producer DAG runs: decide, download, extract+validate, publish.

Two entry points, one per task: :func:`check` (cheap: HEAD + S3 metadata, decides whether to
ingest) and :func:`ingest` (everything heavy, in one task, because on KubernetesExecutor every
task runs in its own pod with its own disk).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stackexchange import archive, s3_publish, source
from stackexchange.assets import BUCKET, POSTS_KEY, USERS_KEY
from stackexchange.dump_xml import DumpXmlError, ValidatedFile, ValidatingWriter
from stackexchange.settings import DownloadPolicy

log = logging.getLogger(__name__)

MEMBER_KEYS = {"Posts.xml": POSTS_KEY, "Users.xml": USERS_KEY}
# Failures a retry cannot fix (bad params, unknown site, S3 set-up, invalid data): fail fast.
PERMANENT_ERRORS = (
    source.InvalidSourceParam,
    source.SourceNotFound,
    s3_publish.S3ConfigError,
    DumpXmlError,
)


@dataclass(frozen=True)
class Published:
    """One object written to S3; ``extra`` is the asset event's payload (the team contract)."""

    site: str
    uri: str
    file: ValidatedFile
    source: source.SourceInfo

    @property
    def extra(self) -> dict[str, object]:
        return {
            "site": self.site,
            "uri": self.uri,
            "bytes": self.file.bytes,
            "rows": self.file.rows,
            "sha256": self.file.sha256,
            "source_url": self.source.url,
            "source_version": self.source.version,
        }


def ingest_id(run_id: str, try_number: int) -> str:
    """The id recorded on both objects: which DAG run (and try) wrote them."""
    return f"{run_id}#{try_number}"


def run_id_of(ingest_id: str) -> str:
    return ingest_id.rpartition("#")[0]


def check(
    site: str,
    source_base_url: str,
    force: bool,
    aws_conn_id: str,
    ingest_succeeded: Callable[[str], bool],
) -> bool:
    """True if the dump must be ingested: S3 lacks this source version, or ``force``.

    ``ingest_succeeded(run_id)`` tells whether that run's ingest task succeeded. A run can
    die after both uploads but before Airflow records its asset events; S3 then holds an
    up-to-date pair that the consumer never heard of, so that pair does not count.
    """
    url = source.archive_url(source_base_url, site)
    hook = s3_publish.s3_hook(aws_conn_id)
    s3_publish.check_bucket(hook, BUCKET)
    info = source.probe(url, DownloadPolicy.from_env())
    size = source.human_bytes(info.size) if info.size is not None else "unknown size"
    log.info("Source %s: %s, version %s", url, size, info.version)
    stored = s3_publish.stored_metadata(hook, BUCKET, list(MEMBER_KEYS.values()))
    current, reason = s3_publish.up_to_date(stored, url, info.version)
    if current:  # both objects exist and carry the same ingest id
        writer = run_id_of((stored[POSTS_KEY] or {}).get("ingest-id", ""))
        if not writer or not ingest_succeeded(writer):
            current = False
            reason = (
                f"{reason}, but the run that wrote them ({writer or 'not a DAG run'}) has no "
                "successful ingest, so its asset events may never have been recorded"
            )
    if force:
        log.info("force=true: ingesting whatever S3 holds (%s)", reason)
        return True
    if current:
        log.info("Up to date, nothing to do: %s. Trigger with force=true to ingest anyway", reason)
        return False
    log.info("Ingesting: %s", reason)
    return True


def _check_free_space(directory: Path, needed: int | None) -> None:
    free = shutil.disk_usage(directory).free
    if needed is not None and free < needed:
        raise OSError(
            f"{directory} has {source.human_bytes(free)} free but the archive alone is "
            f"{source.human_bytes(needed)}: give the worker more disk or point TMPDIR elsewhere"
        )


def ingest(site: str, source_base_url: str, aws_conn_id: str, ingest_id: str) -> list[Published]:
    """Download, verify, extract, validate and publish both files; nothing is published
    unless both validated. The temporary directory is always removed."""
    url = source.archive_url(source_base_url, site)
    policy = DownloadPolicy.from_env()
    hook = s3_publish.s3_hook(aws_conn_id)
    s3_publish.check_bucket(hook, BUCKET)
    with tempfile.TemporaryDirectory(prefix="stackexchange-ingest-") as tmp:
        workdir = Path(tmp)
        checksum = source.published_checksum(source_base_url, url, policy)
        _check_free_space(workdir, source.probe(url, policy).size)
        archive_path = workdir / f"{site}.7z"
        info = source.download(url, archive_path, policy, checksum)

        writers: dict[str, ValidatingWriter] = {}

        def open_writer(name: str) -> ValidatingWriter:
            writers[name] = ValidatingWriter(name, workdir / name)
            return writers[name]

        log.info(
            "Extracting and validating %s from %s", " and ".join(MEMBER_KEYS), archive_path.name
        )
        archive.extract(archive_path, list(MEMBER_KEYS), open_writer)
        archive_path.unlink()
        files = [writers[name].finish() for name in MEMBER_KEYS]
        for file in files:
            log.info("%s is valid: %d rows, %s, sha256 %s", file.name, file.rows,
                     source.human_bytes(file.bytes), file.sha256)  # fmt: skip

        metadata = {
            "site": site,
            "source-url": url,
            "source-version": info.version,
            "source-etag": info.etag or "",
            "source-last-modified": info.last_modified or "",
            "ingest-id": ingest_id,
        }
        uploads = [s3_publish.Upload(MEMBER_KEYS[f.name], f) for f in files]
        s3_publish.publish(hook, BUCKET, uploads, metadata)
        return [Published(site, f"s3://{BUCKET}/{u.key}", u.file, info) for u in uploads]
