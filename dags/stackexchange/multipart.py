"""One S3 object written as a multipart upload from a stream of bytes, invisible until completed.

Bytes are cut into parts of ``part_size`` and uploaded by a few threads while more arrive; at most
``in_flight`` parts are held in memory (a writer blocks until a slot frees: backpressure). The
object appears only on :meth:`MultipartUpload.complete`; :meth:`MultipartUpload.abort` throws
every uploaded part away. An upload nobody completes or aborts (the task was killed) is aborted
by the next run (``publish.abort_stale_uploads``) and by the bucket's lifecycle rule.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from stackexchange.progress import Counter

log = logging.getLogger(__name__)

MIN_PART_BYTES = 16 << 20
MAX_PARTS = 10_000
CONTENT_TYPE = "application/xml"


def part_size_for(declared_bytes: int) -> int:
    """Parts of 16 MiB, larger where a file would need more than 9,000 (S3 allows 10,000)."""
    needed = math.ceil(declared_bytes / (MAX_PARTS - 1000) / (1 << 20)) << 20
    return max(MIN_PART_BYTES, needed)


def strip_etag(etag: str) -> str:
    return etag.strip('"')


def version_of(answer: dict[str, Any]) -> str | None:
    """The VersionId S3 gave the object; None on an unversioned bucket (some servers say
    "null" there)."""
    version = answer.get("VersionId")
    return None if version in (None, "null") else version


class MultipartUpload:
    """Write with :meth:`write`; then :meth:`finish` (all parts uploaded), :meth:`complete`."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        metadata: dict[str, str],
        part_size: int,
        uploaded: Counter,
        in_flight: int = 3,
    ) -> None:
        self.client, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.uploaded = uploaded
        created = client.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata=metadata, ContentType=CONTENT_TYPE
        )
        self.upload_id: str = created["UploadId"]
        self._buffer = bytearray()
        self._next_part = 1
        self._etags: dict[int, str] = {}
        self._error: BaseException | None = None
        self._slots = threading.BoundedSemaphore(in_flight)
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix=f"upload-{key}")
        self._futures: list[Future[None]] = []

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data
        while len(self._buffer) >= self.part_size:
            self._submit(bytes(self._buffer[: self.part_size]))
            del self._buffer[: self.part_size]

    def _submit(self, body: bytes) -> None:
        number, self._next_part = self._next_part, self._next_part + 1
        if number > MAX_PARTS:
            raise ValueError(f"{self.key}: more than {MAX_PARTS} parts; the header lied about size")
        self._slots.acquire()
        future = self._pool.submit(self._upload, number, body)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _upload(self, number: int, body: bytes) -> None:
        if self._error is not None:
            return
        try:
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
            )
        except (ClientError, BotoCoreError) as exc:
            self._error = exc
            return
        self._etags[number] = answer["ETag"]
        self.uploaded.done += len(body)

    def finish(self) -> None:
        """Upload what is left and wait for every part; raise the first failure."""
        if self._error is None and (self._buffer or self._next_part == 1):
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        for future in self._futures:
            future.result()
        self._pool.shutdown()
        if self._error is not None:
            raise self._error

    def complete(self) -> None:
        """Make the object visible."""
        parts = [{"PartNumber": n, "ETag": self._etags[n]} for n in sorted(self._etags)]
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )

    def abort(self) -> None:
        """Throw the upload away (best effort: the next run aborts what is left)."""
        self._error = self._error or RuntimeError("aborted")
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("Could not abort the upload of %s (%s); the next run will", self.key, exc)
