"""The ingest the producer DAG runs: decide (:func:`check`), stream and publish (:func:`ingest`).

One streaming pipeline per archive, its stages overlapped::

    Range reads of the 7z headers, then
    download thread ──► queue ──► lzma/bz2/zlib decoder (main thread) ──► per member:
        CRC32, then sha256 + validator child process (expat) + S3 multipart parts (threads)

Nothing touches the local disk: neither the archive (read forward only, resumed with Range after
a drop) nor the extracted XML. Nothing becomes visible until both members validated, every CRC
and the published checksum matched and every part is uploaded: then ``publish.commit`` completes
the pair.
Any failure aborts both multipart uploads; the previous pair stays as it was.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from stackexchange import archive, metrics, publish, s3, source, url_policy
from stackexchange.assets import BUCKET, PREFIX
from stackexchange.download import open_archive
from stackexchange.dump_xml import DumpXmlError, ValidatedFile, ValidatingStream
from stackexchange.multipart import MultipartUpload, part_size_for
from stackexchange.progress import Counter, Reporter
from stackexchange.settings import DownloadPolicy, Limits

log = logging.getLogger(__name__)

KEYS = publish.Keys(BUCKET, PREFIX)
# Failures a retry cannot fix (bad params, unknown site, S3 set-up, invalid data): fail fast.
PERMANENT_ERRORS = (
    url_policy.InvalidSourceParam,
    source.SourceNotFound,
    s3.S3ConfigError,
    DumpXmlError,
    archive.ArchiveRefused,
)


def ingest_id(run_id: str, try_number: int) -> str:
    """The id recorded on both objects and the manifest: which DAG run (and try) wrote them."""
    return f"{run_id}#{try_number}"


def run_id_of(ingest_id: str) -> str:
    return ingest_id.rpartition("#")[0]


def extra(site: str, ingest_id: str, published: publish.PublishedObject) -> dict[str, object]:
    """An asset event's payload (the team contract): what was published, and from what."""
    return {
        "site": site,
        "uri": published.uri,
        "bytes": published.bytes,
        "rows": published.rows,
        "sha256": published.sha256,
        "etag": published.etag,
        "version_id": published.version_id,
        "last_modified": published.last_modified,
        "source_url": published.source_url,
        "source_version": published.source_version,
        "ingest_id": ingest_id,
    }


def _client(aws_conn_id: str) -> Any:
    hook = s3.s3_hook(aws_conn_id)
    with s3.explained(aws_conn_id, BUCKET, "checking the bucket"):
        client = hook.get_conn()
        client.head_bucket(Bucket=BUCKET)  # fail early, before any download
    return client


def up_to_date(
    client: Any, manifest: publish.Manifest | None, found: source.Source
) -> tuple[bool, str]:
    """Whether the published pair is this source's, whole and unchanged; and why not."""
    if manifest is None:
        return False, f"no complete pair is published yet (no s3://{BUCKET}/{KEYS.manifest})"
    for member, remote in found.archives.items():
        published = manifest.objects.get(member)
        if published is None:
            return False, f"the manifest has no {member}"
        if published.source_url != remote.url:
            return False, f"{member} came from {published.source_url}, not {remote.url}"
        if published.source_version != remote.version:
            return False, (
                f"{member} holds source version {published.source_version!r}, the source now "
                f"has {remote.version!r}"
            )
    changed = publish.matches(client, KEYS, manifest)
    if changed:
        return False, f"the keys changed since the manifest was written: {changed}"
    return True, f"both objects are the source's current version ({manifest.ingest_id})"


def check(
    site: str,
    source_base_url: str,
    force: bool,
    aws_conn_id: str,
    ingest_succeeded: Callable[[str], bool],
) -> bool:
    """True if the dump must be ingested: S3 lacks this source version, or ``force``.

    First repairs what a dead run left (``publish.recover``). ``ingest_succeeded(run_id)``
    tells whether that run's ingest task succeeded: a run can die after the commit but before
    Airflow records its asset events; the consumer never heard of that pair, so it does not
    count.
    """
    client = _client(aws_conn_id)
    found = source.resolve(site, source_base_url, DownloadPolicy.from_env())
    with s3.explained(aws_conn_id, BUCKET, "repairing the published pair"):
        publish.recover(client, KEYS)
        manifest = publish.read_manifest(client, KEYS)
        current, reason = up_to_date(client, manifest, found)
    if current and manifest is not None:
        writer = run_id_of(manifest.ingest_id)
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


class _Member:
    """Where one member's bytes go: counted, hashed and validated (``ValidatingStream``), and
    uploaded (``MultipartUpload``). Closed as soon as its last byte is decoded and its CRC
    matched, so its validation result is known and its upload buffers are freed before the
    next member."""

    def __init__(
        self, name: str, upload: MultipartUpload, decompressed: Counter, limits: Limits
    ) -> None:
        self.name, self.upload, self.decompressed = name, upload, decompressed
        self.stream = ValidatingStream(name, upload, limits.max_row_bytes)
        self.file: ValidatedFile | None = None

    def write(self, data: bytes | memoryview) -> int:
        self.decompressed.done += len(data)
        return self.stream.write(data)

    def close(self) -> None:
        self.file = self.stream.finish()
        self.upload.finish()
        log.info("%s is valid: %d rows, %s, sha256 %s", self.name, self.file.rows,
                 source.human_bytes(self.file.bytes), self.file.sha256)  # fmt: skip


class _Total:
    """Several counters read as one (the archives of a split layout)."""

    def __init__(self, parts: list[Counter]) -> None:
        self.parts = parts

    @property
    def done(self) -> int:
        return sum(part.done for part in self.parts)

    @property
    def total(self) -> int:
        return sum(part.total or 0 for part in self.parts)


def _metadata(site: str, remote: source.RemoteArchive, ingest_id: str) -> dict[str, str]:
    values = {
        "site": site,
        "source-url": remote.url,
        "source-version": remote.version,
        "ingest-id": ingest_id,
    }
    return {name: s3.ascii_value(value) for name, value in values.items()}


def _stage(
    client: Any,
    found: source.Source,
    ingest_id: str,
    uploads: list[MultipartUpload],
) -> dict[str, publish.Staged]:
    """Stream every archive's members into open multipart uploads; validated, not visible.

    Each archive is read once, forward, with no local copy (``download``): its header by Range
    requests first, then its packed streams decoded as they arrive (``archive``).
    """
    policy, limits = DownloadPolicy.from_env(), Limits.from_env()
    archives = found.unique_archives()
    staged: dict[str, publish.Staged] = {}
    with contextlib.ExitStack() as opened:
        sources = [opened.enter_context(open_archive(r, policy)) for r, _ in archives]
        decompressed, uploaded = Counter(), Counter()
        counters = {
            "downloaded": _Total([s.downloaded for s in sources]),
            "decompressed": decompressed,
            "uploaded": uploaded,
        }
        figures = metrics.IngestFigures(found.site)
        with Reporter(
            f"ingest of {found.site}", counters, policy.progress_seconds, figures.progress
        ):
            for (remote, members), archive_bytes in zip(archives, sources, strict=True):
                header, declared = archive.open_members(archive_bytes, remote.name, members, limits)
                decompressed.total = (decompressed.total or 0) + sum(
                    m.size for m in declared.values()
                )
                uploaded.total = decompressed.total
                writers: dict[str, _Member] = {}
                try:
                    for member in members:
                        upload = MultipartUpload(
                            client,
                            BUCKET,
                            KEYS.key(member),
                            _metadata(found.site, remote, ingest_id),
                            part_size_for(declared[member].size),
                            uploaded,
                        )
                        uploads.append(upload)
                        writers[member] = _Member(member, upload, decompressed, limits)
                    log.info("Streaming %s from %s", " and ".join(members), remote.name)
                    # Returns once every byte arrived and the published checksum matched.
                    archive.stream(archive_bytes, header, writers)
                finally:
                    for writer in writers.values():
                        writer.stream.close()  # no validator process outlives the stream
                archive_bytes.close()
                for member, writer in writers.items():
                    assert writer.file is not None  # closed by archive.stream
                    staged[member] = publish.Staged(writer.upload, writer.file, remote)
    return staged


def ingest(site: str, source_base_url: str, aws_conn_id: str, ingest_id: str) -> list[dict]:
    """Stream, verify, validate and publish both files as one pair; the asset events' extras.

    Nothing is published unless everything verified; any failure aborts every multipart
    upload, and the previous pair stays readable and consistent.
    """
    client = _client(aws_conn_id)
    found = source.resolve(site, source_base_url, DownloadPolicy.from_env())
    log.info("Layout: %s (%s)", found.layout,
             ", ".join(a.name for a, _ in found.unique_archives()))  # fmt: skip
    with s3.explained(aws_conn_id, BUCKET, "repairing the published pair"):
        publish.recover(client, KEYS)
    uploads: list[MultipartUpload] = []
    try:
        with s3.explained(aws_conn_id, BUCKET, "uploading"):
            staged = _stage(client, found, ingest_id, uploads)
    except BaseException:
        for upload in uploads:
            upload.abort()
        raise
    with s3.explained(aws_conn_id, BUCKET, "publishing the pair"):
        manifest = publish.commit(client, KEYS, site, ingest_id, staged)
    metrics.published(manifest)
    return [extra(site, ingest_id, manifest.objects[member]) for member in source.MEMBERS]
