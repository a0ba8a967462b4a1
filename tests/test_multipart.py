"""Part sizes stay within S3's multipart limits, and an upload never sends more parts than S3 takes.

S3's limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html) are restated
here on purpose, not imported: a change to the module's constants must not move the test's bar.
"""

from __future__ import annotations

import math
import random
import threading

import pytest

from stackexchange.multipart import MultipartUpload, part_size_for
from stackexchange.progress import Counter

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
S3_MIN_PART = 5 * MiB  # every part but the last
S3_MAX_PART = 5 * GiB
S3_MAX_PARTS = 10_000
S3_MAX_OBJECT = 5 * TiB


def _sizes() -> list[int]:
    """Edges (empty, one byte, one part, the object limit) and a seeded spread in between."""
    rng = random.Random(19)
    spread = [int(S3_MAX_OBJECT ** rng.random()) for _ in range(2000)]
    return [0, 1, S3_MIN_PART, 16 * MiB, 16 * MiB + 1, 150 * GiB, TiB, S3_MAX_OBJECT, *spread]


def test_every_declared_size_up_to_5_tib_fits_s3_limits() -> None:
    for size in _sizes():
        part = part_size_for(size)
        assert S3_MIN_PART <= part <= S3_MAX_PART, (size, part)
        assert math.ceil(size / part) <= S3_MAX_PARTS, (size, part)


def test_the_part_size_grows_with_the_object_and_never_shrinks() -> None:
    sizes = sorted(_sizes())
    parts = [part_size_for(size) for size in sizes]
    assert parts == sorted(parts)
    # A 5 TiB object gets parts far above the small-file size: growth, not a fixed size.
    assert part_size_for(S3_MAX_OBJECT) > part_size_for(GiB)
    assert math.ceil(S3_MAX_OBJECT / part_size_for(S3_MAX_OBJECT)) > S3_MAX_PARTS // 2


class RecordingS3:
    """The four multipart calls of an S3 client, recorded: the guard needs 10,001 parts, which
    over HTTP to moto would take minutes; what S3 does with them is not under test here."""

    def __init__(self) -> None:
        self.part_numbers: list[int] = []
        self.completed: list[dict] | None = None
        self.aborted = False
        self._lock = threading.Lock()

    def create_multipart_upload(self, **_: object) -> dict:
        return {"UploadId": "upload-1"}

    def upload_part(self, *, PartNumber: int, Body: bytes, **_: object) -> dict:
        with self._lock:
            self.part_numbers.append(PartNumber)
        return {"ETag": f'"etag-{PartNumber}"'}

    def complete_multipart_upload(self, *, MultipartUpload: dict, **_: object) -> None:
        self.completed = MultipartUpload["Parts"]

    def abort_multipart_upload(self, **_: object) -> None:
        self.aborted = True


def _upload(client: RecordingS3) -> MultipartUpload:
    return MultipartUpload(client, "bucket", "raw/Posts.xml", {}, part_size=1, uploaded=Counter())


def test_an_upload_of_exactly_10_000_parts_completes() -> None:
    client = RecordingS3()
    upload = _upload(client)
    upload.write(b"x" * S3_MAX_PARTS)
    upload.finish()
    upload.complete()
    assert client.completed is not None
    assert [part["PartNumber"] for part in client.completed] == list(range(1, S3_MAX_PARTS + 1))


def test_the_10_001st_part_is_refused_before_it_is_sent() -> None:
    client = RecordingS3()
    upload = _upload(client)
    upload.write(b"x" * S3_MAX_PARTS)
    with pytest.raises(ValueError, match=r"raw/Posts\.xml: more than 10000 parts") as raised:
        upload.write(b"y")  # a header that understated the size: more bytes than declared
    assert "lied about size" in str(raised.value)
    upload.abort()
    assert client.aborted
    assert max(client.part_numbers) <= S3_MAX_PARTS and client.completed is None
