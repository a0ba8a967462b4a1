"""Read a dump archive forward only: check its header, bound it, stream only the members we need.

:func:`open_members` reads the 7z signature header and the end header ahead of everything else
(Range requests, through the archive's ``read_range``), parses them with bounds (``sevenzip``)
and checks what they declare before one byte is decompressed: the members we need exist once
each, every folder holding them uses coders we can decode, and the archive does not expand more
than a real dump can (a 7z bomb is refused, not ingested).

:func:`stream` then reads the archive once, in order, as its bytes arrive (``chunks()``): the
packed stream of each folder holding a needed member goes into the folder's decoder, the output is
split at member boundaries by the declared sizes, each needed member's CRC32 is checked on the
output and its writer closed before the next member starts. Members after the last one we need
are not decoded, but their bytes are still read: the archive's published checksum covers every
byte (``chunks()`` verifies it at the end), and the header bytes fetched ahead must be the bytes
the forward read finds there.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from stackexchange import sevenzip
from stackexchange.settings import Limits
from stackexchange.source import human_bytes


class ArchiveError(ValueError):
    """The archive is damaged (a fresh download may help); the message names it and the fix."""


class ArchiveRefused(ArchiveError):
    """Not a dump we can take (not 7z, a member missing, a bomb): retrying cannot help."""


class MemberWriter(Protocol):
    def write(self, data: bytes | memoryview) -> object: ...

    def close(self) -> None:
        """The member is complete and its CRC matched (called before the next one starts)."""


class ArchiveBytes(Protocol):
    """An archive as ``download.open_archive`` serves it."""

    size: int

    def read_range(self, start: int, end: int) -> bytes: ...

    def chunks(self) -> Iterator[bytes]:
        """Every byte from the first, in order; raises at the end if the checksum failed."""
        ...


@dataclass(frozen=True)
class Member:
    name: str
    size: int  # declared in the header
    crc32: int | None


@dataclass(frozen=True)
class Opened:
    """An archive whose header was read and checked: what :func:`stream` needs."""

    name: str
    layout: sevenzip.Layout
    needed: dict[str, sevenzip.Entry]
    fetched: list[tuple[int, bytes]]  # (offset, bytes) read ahead
    # One per folder holding a needed member, built (and checked) once, used by stream().
    decoders: dict[int, sevenzip.FolderDecoder]


def _corrupt(name: str, detail: object) -> ArchiveError:
    return ArchiveError(
        f"{name} is damaged ({detail}): run again to download it afresh; if it stays "
        "damaged, the source's copy is bad: use another mirror via source_base_url"
    )


def _unsupported(name: str, exc: sevenzip.UnsupportedCoder) -> ArchiveRefused:
    return ArchiveRefused(
        f"{name} uses {exc}; the ingest decodes LZMA, LZMA2, BCJ/delta filters, bzip2, "
        "deflate and copy (what 7-Zip writes for the Stack Exchange dumps): repack it with "
        "one of those, e.g. '7z a -m0=lzma2'"
    )


def open_members(
    archive: ArchiveBytes, name: str, needed: Sequence[str], limits: Limits
) -> tuple[Opened, dict[str, Member]]:
    """The archive's header, read ahead and checked, and the ``needed`` members it declares.

    Raises ArchiveRefused if it is not a 7z archive, lacks a member or holds one twice, uses a
    coder we cannot decode, or declares an expansion beyond ``limits.max_expansion_ratio``;
    ArchiveError if the header is damaged.
    """
    start = archive.read_range(0, min(sevenzip.SIGNATURE_BYTES, archive.size))
    if start[:6] != sevenzip.MAGIC:
        raise ArchiveRefused(
            f"{name} is not a 7z archive; check that source_base_url serves the Stack "
            "Exchange .7z dumps, not an HTML page"
        )  # the bytes themselves are never echoed: they came from an untrusted source
    fetched = [(0, start)]

    def fetch(begin: int, end: int) -> bytes:
        data = archive.read_range(begin, end)
        fetched.append((begin, data))
        return data

    try:
        signature = sevenzip.parse_signature(start, archive.size)
        header = fetch(signature.header_offset, signature.header_offset + signature.header_size)
        layout = sevenzip.parse_header(header, signature, fetch)
    except sevenzip.UnsupportedCoder as exc:
        raise _unsupported(name, exc) from exc
    except sevenzip.SevenZipError as exc:
        raise _corrupt(name, f"unreadable header: {exc}") from exc
    at_root: dict[str, list[sevenzip.Entry]] = {}
    for entry in layout.entries:
        if not entry.is_directory and "/" not in entry.name and "\\" not in entry.name:
            at_root.setdefault(entry.name, []).append(entry)
    missing = [m for m in needed if m not in at_root]
    if missing:
        raise ArchiveRefused(
            f"{name} has no {' or '.join(missing)} at its root; it contains: "
            f"{', '.join(sorted(at_root)) or 'nothing'}. Is it a Stack Exchange site dump?"
        )
    twice = [m for m in needed if len(at_root[m]) > 1]
    if twice:
        raise ArchiveRefused(
            f"{name} holds {' and '.join(twice)} more than once ({len(at_root[twice[0]])} "
            "entries of that name); a real dump holds each file once, so it is refused"
        )
    packed = sum(f.pack_size for f in layout.folders)
    unpacked = sum(f.unpack_size for f in layout.folders)
    ratio = unpacked / max(packed, 1)
    if ratio > limits.max_expansion_ratio:
        raise ArchiveRefused(
            f"{name} declares {human_bytes(unpacked)} from {human_bytes(packed)} packed, "
            f"an expansion of {ratio:,.0f}x; real dumps expand less than "
            f"{limits.max_expansion_ratio:g}x, so it is refused (raise "
            "STACKEXCHANGE_MAX_EXPANSION_RATIO only if you trust the source)"
        )
    entries = {m: at_root[m][0] for m in needed}
    decoders: dict[int, sevenzip.FolderDecoder] = {}
    for entry in entries.values():
        if entry.folder is not None and entry.folder not in decoders:
            try:
                decoders[entry.folder] = sevenzip.FolderDecoder(layout.folders[entry.folder])
            except sevenzip.UnsupportedCoder as exc:
                raise _unsupported(name, exc) from exc
            except sevenzip.SevenZipError as exc:
                raise _corrupt(name, exc) from exc
    members = {m: Member(m, e.size, e.crc32) for m, e in entries.items()}
    return Opened(name, layout, entries, fetched, decoders), members


class _Splitter:
    """Cuts one folder's output at member boundaries: each needed member's bytes go to its
    writer and its CRC32; the writer is closed once the member is complete and intact."""

    def __init__(self, name: str, members: list[tuple[sevenzip.Entry, MemberWriter]]) -> None:
        self.name = name
        self.pending = sorted(members, key=lambda m: m[0].offset)
        self.position = 0  # in the folder's output
        self.crc = 0

    @property
    def done(self) -> bool:
        return not self.pending

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        start = self.position
        self.position += len(view)
        while self.pending:
            entry, writer = self.pending[0]
            begin, end = entry.offset, entry.offset + entry.size
            if begin >= self.position:
                return  # starts in a later chunk
            piece = view[max(begin - start, 0) : end - start]
            self.crc = zlib.crc32(piece, self.crc)
            writer.write(piece)
            if end > self.position:
                return  # continues in the next chunk
            self._close()

    def _close(self) -> None:
        entry, writer = self.pending.pop(0)
        if entry.crc32 is not None and self.crc != entry.crc32:
            raise _corrupt(self.name, f"CRC check failed for {entry.name}")
        self.crc = 0
        writer.close()


@dataclass
class _Folder:
    folder: sevenzip.Folder
    decoder: sevenzip.FolderDecoder
    splitter: _Splitter


def stream(archive: ArchiveBytes, opened: Opened, writers: dict[str, MemberWriter]) -> None:
    """Read the whole archive once, in order, decoding the members named in ``writers`` into
    them; each writer is closed once its member is complete and its CRC matched. Not closed on
    an error. Raises ArchiveError if a folder does not decode, a CRC or the read-ahead header
    bytes do not match; the archive's own errors (download, checksum) as they are."""
    name, layout = opened.name, opened.layout
    by_folder: dict[int, list[tuple[sevenzip.Entry, MemberWriter]]] = {}
    for member, writer in writers.items():
        entry = opened.needed[member]
        if entry.folder is None:  # an empty member: nothing to decode
            writer.close()
        else:
            by_folder.setdefault(entry.folder, []).append((entry, writer))
    folders = [
        _Folder(layout.folders[i], opened.decoders[i], _Splitter(name, members))
        for i, members in sorted(by_folder.items(), key=lambda f: layout.folders[f[0]].pack_offset)
    ]
    position = 0
    try:
        for chunk in archive.chunks():
            start, position = position, position + len(chunk)
            for offset, data in opened.fetched:
                low, high = max(offset, start), min(offset + len(data), position)
                if (
                    low < high
                    and chunk[low - start : high - start] != data[low - offset : high - offset]
                ):
                    raise _corrupt(name, "its header changed between the reads")
            while folders:
                current = folders[0]
                pack_start = current.folder.pack_offset
                pack_end = pack_start + current.folder.pack_size
                low, high = max(pack_start, start), min(pack_end, position)
                if low < high and not current.splitter.done:
                    for output in current.decoder.feed(
                        memoryview(chunk)[low - start : high - start]
                    ):
                        current.splitter.write(output)
                        if current.splitter.done:
                            break
                if position < pack_end:
                    break
                if not current.splitter.done:
                    for output in current.decoder.finish():
                        current.splitter.write(output)
                if not current.splitter.done:
                    missing = ", ".join(e.name for e, _ in current.splitter.pending)
                    raise _corrupt(name, f"{missing} could not be extracted")
                folders.pop(0)
    except sevenzip.SevenZipError as exc:
        raise _corrupt(name, exc) from exc
    if position != archive.size or folders:
        raise _corrupt(name, f"it ended after {position} of {archive.size} bytes")
