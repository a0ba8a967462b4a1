"""Read a dump archive: check it is an intact 7z and extract only the members we need.

Members are streamed through a writer per member (see ``dump_xml.ValidatingWriter``), so
each byte is decompressed, written, hashed and parsed in one pass. Integrity: py7zr checks
the header CRCs on open and the CRC of every member it decompresses on the way to ours
(members after the last one we need are never decompressed, so never read).
"""

from __future__ import annotations

import lzma
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import py7zr
import py7zr.exceptions
import py7zr.io


class ArchiveError(ValueError):
    """The archive cannot be used; the message names the archive and the fix."""


class MemberWriter(Protocol):
    def write(self, data: bytes | bytearray) -> int: ...
    def close(self) -> None: ...


class _Sink(py7zr.io.Py7zIO):
    """Adapts a MemberWriter to py7zr's writer interface (write-only, never read back)."""

    def __init__(self, writer: MemberWriter) -> None:
        self.writer = writer
        self.length = 0

    def write(self, s: bytes | bytearray) -> int:
        self.length += len(s)
        return self.writer.write(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0  # py7zr rewinds after writing; our writers only go forward

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self.length


class _Factory(py7zr.io.WriterFactory):
    def __init__(self, open_writer: Callable[[str], MemberWriter]) -> None:
        self.open_writer = open_writer
        self.sinks: dict[str, _Sink] = {}

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        name = Path(filename).name
        self.sinks[name] = _Sink(self.open_writer(name))
        return self.sinks[name]


def _corrupt(archive: Path, detail: object) -> ArchiveError:
    return ArchiveError(
        f"{archive.name} is damaged ({detail}): run again to download it afresh; if it stays "
        "damaged, the source's copy is bad: use another mirror via source_base_url"
    )


def _open(archive: Path) -> py7zr.SevenZipFile:
    """The archive with its header read (and CRC-checked); ArchiveError if it is not a
    readable 7z archive."""
    if not py7zr.is_7zfile(archive):
        with archive.open("rb") as f:
            head = f.read(16)
        raise ArchiveError(
            f"{archive.name} is not a 7z archive (it starts with {head!r}); check that "
            "source_base_url serves the Stack Exchange .7z dumps, not an HTML page"
        )
    try:
        return py7zr.SevenZipFile(archive)
    except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError, OSError) as exc:
        raise _corrupt(archive, f"unreadable header: {exc}") from exc


def extract(
    archive: Path, members: Sequence[str], open_writer: Callable[[str], MemberWriter]
) -> None:
    """Stream ``members`` (at the archive root) into writers from ``open_writer(name)``."""
    factory = _Factory(open_writer)
    try:
        with _open(archive) as z:
            names = z.getnames()
            missing = [m for m in members if m not in names]
            if missing:
                raise ArchiveError(
                    f"{archive.name} has no {' or '.join(missing)}; it contains: "
                    f"{', '.join(sorted(names)) or 'nothing'}. Is it a Stack Exchange site "
                    "dump? (stackoverflow.com is split into one archive per file and is not "
                    "supported)"
                )
            z.extract(targets=list(members), factory=factory)
    except py7zr.exceptions.CrcError as exc:
        raise _corrupt(archive, f"CRC check failed for {exc.args[2] or 'a block'}") from exc
    except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError) as exc:
        raise _corrupt(archive, exc) from exc
    finally:
        for sink in factory.sinks.values():
            sink.writer.close()
    short = [name for name in members if name not in factory.sinks]
    if short:
        raise _corrupt(archive, f"{', '.join(short)} could not be extracted")
