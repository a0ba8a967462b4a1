"""Read a dump archive: check its header, bound it, and stream only the members we need.

py7zr reads the header (CRC-checked) when the archive opens; :func:`open_members` then checks
what the header declares before one byte is decompressed: the members we need exist, and the
archive does not expand more than a real dump can (a 7z bomb is refused, not ingested).
:func:`stream` hands each needed member's bytes to a writer as they are decompressed; py7zr
checks the CRC of every member it decompresses on the way (members after the last one we need
are never read).
"""

from __future__ import annotations

import lzma
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import py7zr
import py7zr.exceptions
import py7zr.io
import py7zr.properties

from stackexchange.settings import Limits
from stackexchange.source import human_bytes

# Compressed bytes py7zr reads per step: with the expansion bound, this bounds the size of
# each decompressed chunk (py7zr's default, 1 MiB, could yield 100 MiB chunks).
READ_BLOCK_BYTES = 256 << 10


class ArchiveError(ValueError):
    """The archive is damaged (a fresh download may help); the message names it and the fix."""


class ArchiveRefused(ArchiveError):
    """Not a dump we can take (not 7z, a member missing, a bomb): retrying cannot help."""


class MemberWriter(Protocol):
    def write(self, data: bytes | bytearray) -> int: ...

    def close(self) -> None:
        """The member is complete and its CRC matched (called before the next one starts)."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int  # declared in the header
    crc32: int | None


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
    """Opens each member's writer when py7zr reaches it and closes the one before: py7zr has
    checked a member's CRC by the time it starts the next."""

    def __init__(self, writers: dict[str, MemberWriter]) -> None:
        self.writers = writers
        self.sinks: dict[str, _Sink] = {}
        self._open: MemberWriter | None = None

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        self.close_open()
        name = Path(filename).name
        self.sinks[name] = _Sink(self.writers[name])
        self._open = self.writers[name]
        return self.sinks[name]

    def close_open(self) -> None:
        if self._open is not None:
            writer, self._open = self._open, None
            writer.close()


def _corrupt(name: str, detail: object) -> ArchiveError:
    return ArchiveError(
        f"{name} is damaged ({detail}): run again to download it afresh; if it stays "
        "damaged, the source's copy is bad: use another mirror via source_base_url"
    )


def open_members(
    fileobj: BinaryIO, name: str, needed: Sequence[str], limits: Limits
) -> tuple[py7zr.SevenZipFile, dict[str, Member]]:
    """The archive opened (header read and CRC-checked) and the ``needed`` members it declares.

    Raises ArchiveError if it is not a 7z archive, lacks a member, or declares an expansion
    beyond ``limits.max_expansion_ratio``.
    """
    start = fileobj.read(6)
    fileobj.seek(0)
    if start != py7zr.properties.MAGIC_7Z:
        raise ArchiveRefused(
            f"{name} is not a 7z archive; check that source_base_url serves the Stack "
            "Exchange .7z dumps, not an HTML page"
        )  # the bytes themselves are never echoed: they came from an untrusted source
    try:
        archive = py7zr.SevenZipFile(fileobj, blocksize=READ_BLOCK_BYTES)
    except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError, OSError) as exc:
        raise _corrupt(name, f"unreadable header: {exc}") from exc
    try:
        members = {
            Path(f.filename).name: Member(Path(f.filename).name, f.uncompressed or 0, f.crc32)
            for f in archive.files
            if not f.is_directory and "/" not in f.filename
        }
        missing = [m for m in needed if m not in members]
        if missing:
            raise ArchiveRefused(
                f"{name} has no {' or '.join(missing)} at its root; it contains: "
                f"{', '.join(sorted(members)) or 'nothing'}. Is it a Stack Exchange site dump?"
            )
        packed = sum(archive.header.main_streams.packinfo.packsizes or [0])
        unpacked = sum(f.uncompressed or 0 for f in archive.files if not f.is_directory)
        ratio = unpacked / max(packed, 1)
        if ratio > limits.max_expansion_ratio:
            raise ArchiveRefused(
                f"{name} declares {human_bytes(unpacked)} from {human_bytes(packed)} packed, "
                f"an expansion of {ratio:,.0f}x; real dumps expand less than "
                f"{limits.max_expansion_ratio:g}x, so it is refused (raise "
                "STACKEXCHANGE_MAX_EXPANSION_RATIO only if you trust the source)"
            )
    except BaseException:
        archive.close()
        raise
    return archive, {m: members[m] for m in needed}


def stream(archive: py7zr.SevenZipFile, name: str, writers: dict[str, MemberWriter]) -> None:
    """Decompress the members named in ``writers`` into them, checking every CRC on the way;
    each writer is closed once its member is complete and intact. Not closed on an error."""
    factory = _Factory(writers)
    try:
        archive.extract(targets=list(writers), factory=factory)
        factory.close_open()
    except py7zr.exceptions.CrcError as exc:
        raise _corrupt(name, f"CRC check failed for {exc.args[2] or 'a block'}") from exc
    except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError) as exc:
        raise _corrupt(name, exc) from exc
    short = [member for member in writers if member not in factory.sinks]
    if short:
        raise _corrupt(name, f"{', '.join(short)} could not be extracted")
