"""One S3 object written as a multipart upload from a stream of bytes, invisible until completed.

Bytes are cut into parts of ``part_size`` and uploaded by a few threads while more arrive; at most
``in_flight`` parts upload at once, plus one filling (a writer blocks until a buffer frees:
backpressure). The object appears only on :meth:`MultipartUpload.complete`;
:meth:`MultipartUpload.abort` throws every uploaded part away (or the object, once completed). An
upload nobody completes or aborts (the task was killed) is aborted by the site's next writer
(``publish.abort_stale_uploads``) and by the bucket's lifecycle rule.
"""

from __future__ import annotations

import logging
import math
import queue
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
    """Write with :meth:`write`; then :meth:`finish` (all parts uploaded), :meth:`complete`.

    Parts are filled in place in a few reused buffers (``in_flight`` uploading, one filling):
    no part-sized allocation per part, so the memory stays flat however large the file.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        metadata: dict[str, str],
        part_size: int,
        uploaded: Counter,
        in_flight: int = 2,
    ) -> None:
        self.client, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.uploaded = uploaded
        created = client.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata=metadata, ContentType=CONTENT_TYPE
        )
        self.upload_id: str = created["UploadId"]
        self._next_part = 1
        self._etags: dict[int, str] = {}
        self._error: BaseException | None = None
        self._buffers = in_flight + 1  # allocated lazily, returned to _free after each upload
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._part: bytearray | None = None  # taken at the first write
        self._filled = 0
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix=f"upload-{key}")
        self._futures: list[Future[None]] = []
        self._completed = False

    def _take(self) -> bytearray:
        """A free part buffer; blocks while every buffer is uploading (backpressure)."""
        if self._free.empty() and self._buffers > 0:
            self._buffers -= 1
            return bytearray(self.part_size)
        return self._free.get()

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        while view:
            if self._part is None:
                self._part = self._take()
            count = min(len(view), self.part_size - self._filled)
            self._part[self._filled : self._filled + count] = view[:count]
            self._filled += count
            view = view[count:]
            if self._filled == self.part_size:
                self._submit(self._part, self.part_size)
                self._part, self._filled = None, 0

    def _submit(self, buffer: bytearray, length: int) -> None:
        number, self._next_part = self._next_part, self._next_part + 1
        if number > MAX_PARTS:
            raise ValueError(f"{self.key}: more than {MAX_PARTS} parts; the header lied about size")
        self._futures.append(self._pool.submit(self._upload, number, buffer, length))

    def _upload(self, number: int, buffer: bytearray, length: int) -> None:
        try:
            if self._error is not None:
                return
            body = buffer if length == len(buffer) else bytes(buffer[:length])  # the last part
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
            )
            self._etags[number] = answer["ETag"]
            self.uploaded.add(length)
        except (ClientError, BotoCoreError) as exc:
            self._error = exc
        finally:
            self._free.put(buffer)

    def finish(self) -> None:
        """Upload what is left and wait for every part; raise the first failure."""
        if self._error is None and (self._filled or self._next_part == 1):
            self._submit(self._part or bytearray(), self._filled)
        for future in self._futures:
            future.result()
        self._pool.shutdown()
        self._part = None
        while not self._free.empty():  # the buffers go now, not with the upload object
            self._free.get()
        if self._error is not None:
            raise self._error

    def complete(self) -> dict[str, Any]:
        """Make the object visible; S3's answer (its ETag and VersionId are the object's)."""
        parts = [{"PartNumber": n, "ETag": self._etags[n]} for n in sorted(self._etags)]
        answer = self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        self._completed = True
        return answer

    def abort(self) -> None:
        """Throw the upload away, or the object if it was completed (best effort: the next
        run aborts what is left, and its commit deletes generations no manifest names)."""
        self._error = self._error or RuntimeError("aborted")
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            if self._completed:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
            else:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )
        except (ClientError, BotoCoreError) as exc:
            log.warning("Could not abort the upload of %s (%s); the next run will", self.key, exc)
