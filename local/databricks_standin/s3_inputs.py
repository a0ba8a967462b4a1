"""``s3://`` job parameters fetched to local files: the stand-in's local Spark has no S3 filesystem.

Each task run downloads into its own directory under the stand-in's state directory (never the
system's temporary folder: a killed stand-in leaves its downloads there, and the next one on that
state directory clears them). Each S3 key becomes a path under that directory; a key that could
leave it (``..``, an absolute path, empty or ``.`` segments) is refused rather than mapped.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def local_path(directory: Path, uri: str) -> Path:
    """Where ``s3://bucket/key`` is stored under ``directory``; refuses keys that escape it."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.removeprefix("/")
    if parts.scheme != "s3" or not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"Cannot read {uri}: expected s3://<bucket>/<key> with a valid bucket name."
        )
    segments = key.split("/")
    if not key or any(segment in {"", ".", ".."} for segment in segments):
        raise ValueError(
            f"Cannot read {uri}: the stand-in refuses S3 keys with empty, '.' or '..' segments "
            "(they would map outside its download directory); use a plain key such as "
            "raw/stackexchange/Posts.xml."
        )
    target = directory.joinpath(bucket, *PurePosixPath(key).parts)
    if not target.resolve().is_relative_to(directory.resolve()):  # e.g. a symlink in the way
        raise ValueError(f"Cannot read {uri}: it maps outside {directory}.")
    return target


class S3Inputs:
    """``s3://`` values downloaded through ``endpoint`` into a new directory under ``parent``,
    once each; :meth:`cleanup` removes it."""

    def __init__(self, endpoint: str | None, parent: Path) -> None:
        self.endpoint = endpoint
        self.directory = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
        self._fetched: dict[str, str] = {}

    def resolve(self, value: str) -> str:
        """The local path to read for ``value``: a download for ``s3://``, else ``value`` itself."""
        if not value.startswith("s3://"):
            return value
        if value not in self._fetched:
            self._fetched[value] = self._download(value)
        return self._fetched[value]

    def _download(self, uri: str) -> str:
        if not self.endpoint:
            raise ValueError(
                f"Cannot read {uri}: start the stand-in with --s3-endpoint URL (S3-compatible)."
            )
        import boto3

        target = local_path(self.directory, uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket, key = urlsplit(uri).netloc, urlsplit(uri).path.removeprefix("/")
        client = boto3.client("s3", endpoint_url=self.endpoint)
        try:
            client.download_file(bucket, key, str(target))
        except Exception as error:
            raise OSError(f"Cannot read {uri} from {self.endpoint}: {error}") from error
        return str(target)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
