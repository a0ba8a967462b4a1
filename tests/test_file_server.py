"""The local stack's file server (local/file_server.py) answers Range requests as archive.org
does, which the producer's forward-only ingest needs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from local.file_server import RangeNotSatisfiable, byte_range
from local.services import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 40


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("files")
    (root / "a.7z").write_bytes(DATA)
    port = free_port()
    command = [sys.executable, "-m", "local.file_server", str(port), "--directory", str(root)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL) as process:
        url = f"http://127.0.0.1:{port}/a.7z"

        def answers() -> bool:
            try:
                return requests.head(url, timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_until("the file server answers", answers, timeout=20)
        yield url
        process.terminate()


@pytest.mark.parametrize(
    ("header", "status", "start", "end"),
    [
        (None, 200, 0, len(DATA)),
        ("bytes=0-31", 206, 0, 32),
        ("bytes=100-", 206, 100, len(DATA)),
        ("bytes=-20", 206, len(DATA) - 20, len(DATA)),
        ("bytes=10-99999999", 206, 10, len(DATA)),
    ],
)
def test_ranges(served: str, header: str | None, status: int, start: int, end: int) -> None:
    body = DATA[start:end]
    response = requests.get(served, headers={"Range": header} if header else {}, timeout=5)
    assert (response.status_code, response.content) == (status, body)
    assert response.headers["Accept-Ranges"] == "bytes" and response.headers["ETag"]
    if status == 206:
        assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"


def test_if_range_with_another_etag_gets_the_whole_file(served: str) -> None:
    etag = requests.head(served, timeout=5).headers["ETag"]
    same = requests.get(served, headers={"Range": "bytes=5-", "If-Range": etag}, timeout=5)
    other = requests.get(served, headers={"Range": "bytes=5-", "If-Range": '"x"'}, timeout=5)
    assert (same.status_code, same.content) == (206, DATA[5:])
    assert (other.status_code, other.content) == (200, DATA)


def test_a_range_past_the_end_is_not_satisfiable(served: str) -> None:
    response = requests.get(served, headers={"Range": f"bytes={len(DATA)}-"}, timeout=5)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=2-5", (2, 6)),
        ("bytes=7-99", (7, 10)),  # the last position is clipped to the end
        ("bytes=3-", (3, 10)),
        ("bytes=-4", (6, 10)),
        ("bytes=-99", (0, 10)),  # a suffix longer than the file: all of it
        ("Bytes=2-5", (2, 6)),  # the unit is case-insensitive
        (" bytes=2-5 ", (2, 6)),
        (None, None),
        ("", None),
        ("bytes=-", None),  # malformed: ignored, the whole file
        ("bytes=5-2", None),  # last before first: invalid, ignored
        ("bytes=0-1,4-5", None),  # several ranges: not served, the whole file
        ("items=0-5", None),
        ("bytes=a-b", None),
    ],
)
def test_byte_range_reads_rfc_9110_ranges(header: str | None, wanted: object) -> None:
    assert byte_range(header, 10) == wanted


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=-5", 0)]
)
def test_byte_range_selecting_nothing_is_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, size)


def test_a_malformed_range_gets_the_whole_file(served: str) -> None:
    response = requests.get(served, headers={"Range": "bytes=-"}, timeout=5)
    assert (response.status_code, response.content) == (200, DATA)
