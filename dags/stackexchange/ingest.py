"""The ingest the producer DAG runs for one site: decide (:func:`check`), stream and publish
(:func:`ingest`).

One streaming pipeline per archive, its stages overlapped::

    Range reads of the 7z headers, then
    download thread ──► queue ──► lzma/bz2/zlib decoder (main thread) ──► per member:
        CRC32, then sha256 + validator child process (expat) + S3 multipart parts (threads)

Nothing touches the local disk: neither the archive (read forward only, resumed with Range after
a drop) nor the extracted XML. The parts go to this ingest's own generation of the site
(``publish.SiteKeys``), under the site's lock (``lock``). Each member's upload is completed in the
background once it validated and its CRC matched, while the next member streams (S3's completion
of a large object takes seconds: off the tail). Nothing becomes visible until both members
validated, every CRC and the published checksum matched and both are complete: then
``publish.commit`` writes the site's manifest, the one write that commits the pair. Any failure
aborts both uploads (deletes a completed one); the previous pair stays as it was.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stackexchange import archive, legacy, lock, metrics, publish, s3, source, url_policy
from stackexchange.download import open_archive
from stackexchange.dump_xml import DumpXmlError, ValidatedFile, ValidatingStream
from stackexchange.multipart import MultipartUpload, part_size_for
from stackexchange.progress import Counter, Reporter
from stackexchange.settings import DownloadPolicy, Limits, Storage

log = logging.getLogger(__name__)

# Failures a retry cannot fix (bad params, unknown site, S3 set-up, invalid data, another
# writer holds or committed the site): fail fast.
PERMANENT_ERRORS = (
    url_policy.InvalidSourceParam,
    source.SourceNotFound,
    s3.S3ConfigError,
    DumpXmlError,
    archive.ArchiveRefused,
    lock.SiteLocked,
    publish.ConcurrentCommitError,
    legacy.LegacyPairError,
)


def ingest_id(run_id: str, try_number: int) -> str:
    """The id recorded on both objects and the manifest: which DAG run (and try) wrote them."""
    return f"{run_id}#{try_number}"


def extra(
    keys: publish.SiteKeys, manifest: publish.Manifest, published: publish.PublishedObject
) -> dict[str, object]:
    """An asset event's payload (the team contract): what was published, and from what."""
    return {
        "site": manifest.site,
        "uri": published.uri,
        "bytes": published.bytes,
        "rows": published.rows,
        "sha256": published.sha256,
        "etag": published.etag,
        "version_id": published.version_id,
        "last_modified": published.last_modified,
        "source_url": published.source_url,
        "source_version": published.source_version,
        "ingest_id": manifest.ingest_id,
        "generation": manifest.generation,
        "manifest_uri": keys.uri(keys.manifest),
    }


def _client(aws_conn_id: str, bucket: str) -> Any:
    hook = s3.s3_hook(aws_conn_id)
    with s3.explained(aws_conn_id, bucket, "checking the bucket"):
        client = hook.get_conn()
        client.head_bucket(Bucket=bucket)  # fail early, before any download
    return client


def up_to_date(
    client: Any, keys: publish.SiteKeys, manifest: publish.Manifest | None, found: source.Source
) -> tuple[bool, str]:
    """Whether the site's published pair is this source's, whole and unchanged; and why not."""
    if manifest is None:
        return False, f"no pair of {keys.site} is published yet (no {keys.uri(keys.manifest)})"
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
    changed = publish.matches(client, keys, manifest)
    if changed:
        return False, f"the objects changed since the manifest was written: {changed}"
    return True, f"both objects are the source's current version ({manifest.ingest_id})"


@dataclass(frozen=True)
class Decision:
    """What :func:`check` found for one site."""

    site: str
    ingest: bool
    reason: str
    source: source.Source
    manifest: publish.Manifest | None


def check(
    sites: list[str],
    dumps: source.Dumps,
    force: bool,
    aws_conn_id: str,
    ingest_succeeded: Callable[[str, int | None], bool],
    storage: Storage,
) -> list[Decision]:
    """Must each of ``sites`` be ingested? Yes if S3 lacks this source version, or ``force``.

    Reads only (the manifest, a HEAD per object): no lock, nothing written. One S3 client and
    one read of the file list (``dumps`` keeps it) serve every site.
    ``ingest_succeeded(run_id, map_index)`` tells whether the ingest that wrote the manifest
    succeeded: a run can die after the commit but before Airflow records its asset events; the
    consumer never heard of that pair, so it does not count.
    """
    client = _client(aws_conn_id, storage.bucket)
    return [
        _decide(site, dumps, force, aws_conn_id, ingest_succeeded, storage, client)
        for site in sites
    ]


def _decide(
    site: str,
    dumps: source.Dumps,
    force: bool,
    aws_conn_id: str,
    ingest_succeeded: Callable[[str, int | None], bool],
    storage: Storage,
    client: Any,
) -> Decision:
    found = source.resolve(site, dumps)
    keys = publish.SiteKeys.of(storage, site)
    with s3.explained(aws_conn_id, storage.bucket, "reading the site's manifest"):
        manifest = publish.read_manifest(client, keys)
        current, reason = up_to_date(client, keys, manifest, found)
    if current and manifest is not None:
        writer = publish.run_id_of(manifest.ingest_id)
        if not writer or not ingest_succeeded(writer, manifest.map_index):
            current = False
            reason = (
                f"{reason}, but the run that wrote them ({writer or 'not a DAG run'}) has no "
                "successful ingest, so its asset events may never have been recorded"
            )
    if force:
        log.info("%s: force=true: ingesting whatever S3 holds (%s)", site, reason)
        return Decision(site, True, reason, found, manifest)
    if current:
        log.info("%s is up to date, nothing to do: %s. Trigger with force=true to ingest anyway",
                 site, reason)  # fmt: skip
        return Decision(site, False, reason, found, manifest)
    log.info("Ingesting %s: %s", site, reason)
    return Decision(site, True, reason, found, manifest)


class _Member:
    """Where one member's bytes go: counted, hashed and validated (``ValidatingStream``), and
    uploaded (``MultipartUpload``). Closed as soon as its last byte is decoded and its CRC
    matched, so its validation result is known before the next member; its last parts and its
    completion (``complete``) then run on ``completing`` while the next member streams."""

    def __init__(
        self,
        name: str,
        upload: MultipartUpload,
        decompressed: Counter,
        limits: Limits,
        completing: ThreadPoolExecutor,
        complete: Callable[[str, MultipartUpload, ValidatedFile], publish.PublishedObject],
    ) -> None:
        self.name, self.upload, self.decompressed = name, upload, decompressed
        self.stream = ValidatingStream(name, upload, limits.max_row_bytes)
        self.completing, self.complete = completing, complete
        self.published: Future[publish.PublishedObject] | None = None

    def write(self, data: bytes | memoryview) -> int:
        self.decompressed.add(len(data))
        return self.stream.write(data)

    def close(self) -> None:
        file = self.stream.finish()
        log.info("%s is valid: %d rows, %s, sha256 %s", self.name, file.rows,
                 source.human_bytes(file.bytes), file.sha256)  # fmt: skip
        self.published = self.completing.submit(self._publish, file)

    def _publish(self, file: ValidatedFile) -> publish.PublishedObject:
        self.upload.finish()
        return self.complete(self.name, self.upload, file)


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


def _complete(
    client: Any,
    keys: publish.SiteKeys,
    ingest_id: str,
    remote: source.RemoteArchive,
    name: str,
    upload: MultipartUpload,
    file: ValidatedFile,
) -> publish.PublishedObject:
    return publish.complete(client, keys, ingest_id, name, publish.Staged(upload, file, remote))


def _stage(
    client: Any,
    keys: publish.SiteKeys,
    generation: str,
    found: source.Source,
    ingest_id: str,
    uploads: list[MultipartUpload],
    policy: DownloadPolicy,
    limits: Limits,
) -> dict[str, publish.PublishedObject]:
    """Stream every archive's members into multipart uploads, each completed once validated;
    not visible (no manifest names them yet).

    Each archive is read once, forward, with no local copy (``download``): its header by Range
    requests first, then its packed streams decoded as they arrive (``archive``).
    """
    archives = found.unique_archives()
    writers: dict[str, _Member] = {}
    with contextlib.ExitStack() as opened:
        sources = [opened.enter_context(open_archive(r, policy)) for r, _ in archives]
        # One thread per member: a member's completion never waits behind the other's. On an
        # error, those not started are dropped and a running one is waited for (then aborted).
        completing = ThreadPoolExecutor(len(source.MEMBERS), thread_name_prefix="complete")
        opened.callback(completing.shutdown, wait=True, cancel_futures=True)
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
                streaming: dict[str, _Member] = {}
                try:
                    for member in members:
                        upload = MultipartUpload(
                            client,
                            keys.bucket,
                            keys.key(generation, member),
                            _metadata(found.site, remote, ingest_id),
                            part_size_for(declared[member].size),
                            uploaded,
                        )
                        uploads.append(upload)
                        complete = functools.partial(_complete, client, keys, ingest_id, remote)
                        streaming[member] = _Member(
                            member, upload, decompressed, limits, completing, complete
                        )
                    log.info("Streaming %s from %s", " and ".join(members), remote.name)
                    # Returns once every byte arrived and the published checksum matched.
                    archive.stream(archive_bytes, header, streaming)
                finally:
                    for writer in streaming.values():
                        writer.stream.close()  # no validator process outlives the stream
                archive_bytes.close()
                writers.update(streaming)
            # Inside the reporter: the last parts are uploaded while it still counts them.
            published = {}
            for member, writer in writers.items():
                assert writer.published is not None  # closed by archive.stream
                published[member] = writer.published.result()
    return published


def ingest(
    site: str,
    source_base_url: str,
    aws_conn_id: str,
    ingest_id: str,
    storage: Storage,
    map_index: int | None = None,
) -> list[dict]:
    """Stream, verify, validate and publish both files of ``site`` as one pair under the
    site's lock; the asset events' extras (Posts, then Users).

    Nothing is published unless everything verified; any failure aborts every multipart
    upload, and the site's manifest keeps naming the previous pair. A site with no manifest
    first adopts the pair an earlier version left at the fixed keys (``legacy.adopt``); if that
    is the source's current version, it is announced and nothing is downloaded.
    """
    client = _client(aws_conn_id, storage.bucket)
    policy, limits = DownloadPolicy.from_env(), Limits.from_env()  # read once, passed down
    found = source.resolve(site, source.Dumps(source_base_url, policy))
    log.info("Layout: %s (%s)", found.layout,
             ", ".join(a.name for a, _ in found.unique_archives()))  # fmt: skip
    keys = publish.SiteKeys.of(storage, site)
    generation = publish.new_generation(ingest_id)
    with (
        s3.explained(aws_conn_id, storage.bucket, f"locking {site}"),
        lock.held(client, keys, ingest_id, storage.lock_seconds),
    ):
        with s3.explained(aws_conn_id, storage.bucket, "cleaning up after dead runs"):
            publish.abort_stale_uploads(client, keys)
            current = publish.read_current(client, keys)
        with s3.explained(aws_conn_id, storage.bucket, "adopting the legacy pair"):
            adopted = legacy.adopt(
                client, keys, ingest_id=ingest_id, current=current,
                keep_previous=storage.keep_previous, map_index=map_index,
            )  # fmt: skip
            if adopted is not None:
                current = publish.read_current(client, keys)
                unchanged, reason = up_to_date(client, keys, adopted, found)
                if unchanged:
                    log.info("The adopted pair is the source's current version: announcing it")
                    metrics.published(adopted)
                    return [extra(keys, adopted, adopted.objects[m]) for m in source.MEMBERS]
                log.info("Ingesting over the adopted pair: %s", reason)
        uploads: list[MultipartUpload] = []
        try:
            with s3.explained(aws_conn_id, storage.bucket, "uploading"):
                objects = _stage(
                    client, keys, generation, found, ingest_id, uploads, policy, limits
                )
        except BaseException:
            for upload in uploads:
                upload.abort()
            raise
        with s3.explained(aws_conn_id, storage.bucket, "publishing the pair"):
            manifest = publish.commit(
                client,
                keys,
                ingest_id=ingest_id,
                generation=generation,
                objects=objects,
                current=current,
                keep_previous=storage.keep_previous,
                map_index=map_index,
            )
    metrics.published(manifest)
    return [extra(keys, manifest, manifest.objects[member]) for member in source.MEMBERS]
