"""The 7z format, read forward only: the header parsed with bounds, each folder decoded by the
standard library as its packed bytes arrive.

A 7z archive is a 32-byte signature header, the packed streams, then the (end) header the
signature header points at. The header may itself be packed ("encoded header"): a small folder
of its own, decoded here with the same decoders. :func:`parse_signature` and :func:`parse_header`
read those bytes (fetched ahead with Range requests) into a :class:`Layout`.

Hostile headers are bounded before anything is allocated from them: the header's size is capped,
and every count it declares (files, folders, streams, coders) must fit in the bytes left to
read, so a 40-byte header cannot make us build a list of a billion entries. Every CRC the format
carries is checked: the signature header's, the header's, the encoded header's, each folder's.

:class:`FolderDecoder` maps a folder's coder chain onto ``lzma.LZMADecompressor`` in raw mode
(LZMA, LZMA2, the BCJ filters, delta), ``bz2`` or ``zlib`` (deflate), or copy; a coder the
standard library lacks (PPMd, 7zAES, BCJ2...) raises :class:`UnsupportedCoder` naming it.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAGIC = b"7z\xbc\xaf\x27\x1c"
SIGNATURE_BYTES = 32
# The largest header accepted (packed or decoded). A dump's header lists a handful of files and
# is a few hundred bytes; 7-Zip's own header for a million files is ~30 MiB.
MAX_HEADER_BYTES = 16 << 20
# 7-Zip's largest dictionary; a folder declaring more is forged. A dictionary is also never
# allocated larger than the folder's output, which is all a decoder can refer back to.
MAX_DICTIONARY_BYTES = 1536 << 20
MAX_CODERS = 8  # per folder; 7-Zip writes at most 4
MAX_CODER_STREAMS = 8
# Decoded bytes handed on per step: bounds the memory a chunk of packed bytes can expand to.
OUTPUT_BYTES = 2 << 20

_LZMA1, _LZMA2, _COPY = b"\x03\x01\x01", b"\x21", b"\x00"
_DELTA, _DEFLATE, _BZIP2 = b"\x03", b"\x04\x01\x08", b"\x04\x02\x02"
_BRANCH_FILTERS = {  # old (03 03 ..) and new (single byte) ids of the branch converters
    b"\x03\x03\x01\x03": lzma.FILTER_X86,
    b"\x04": lzma.FILTER_X86,
    b"\x03\x03\x02\x05": lzma.FILTER_POWERPC,
    b"\x05": lzma.FILTER_POWERPC,
    b"\x03\x03\x04\x01": lzma.FILTER_IA64,
    b"\x06": lzma.FILTER_IA64,
    b"\x03\x03\x05\x01": lzma.FILTER_ARM,
    b"\x07": lzma.FILTER_ARM,
    b"\x03\x03\x07\x01": lzma.FILTER_ARMTHUMB,
    b"\x08": lzma.FILTER_ARMTHUMB,
    b"\x03\x03\x08\x05": lzma.FILTER_SPARC,
    b"\x09": lzma.FILTER_SPARC,
}
_KNOWN_UNSUPPORTED = {
    b"\x03\x04\x01": "PPMd",
    b"\x06\xf1\x07\x01": "7zAES (an encrypted archive)",
    b"\x03\x03\x01\x1b": "BCJ2",
    b"\x04\x01\x09": "Deflate64",
    b"\x0a": "ARM64",
}

# Property ids of the header (7-Zip's 7zFormat.txt).
_END, _HEADER, _ARCHIVE_PROPERTIES, _ADDITIONAL_STREAMS, _MAIN_STREAMS = 0, 1, 2, 3, 4
_FILES_INFO, _PACK_INFO, _UNPACK_INFO, _SUBSTREAMS_INFO, _SIZE, _CRC = 5, 6, 7, 8, 9, 10
_FOLDER, _CODERS_UNPACK_SIZE, _NUM_UNPACK_STREAM, _EMPTY_STREAM, _EMPTY_FILE = 11, 12, 13, 14, 15
_NAME, _ENCODED_HEADER = 17, 23


class SevenZipError(ValueError):
    """The bytes are not a well-formed 7z archive (damaged or forged); the message says where."""


class UnsupportedCoder(SevenZipError):
    """A folder uses a coder the standard library cannot decode."""


@dataclass(frozen=True)
class Signature:
    """The signature header: where the (end) header is and how long it is."""

    header_offset: int  # absolute
    header_size: int
    header_crc32: int


@dataclass(frozen=True)
class Coder:
    method: bytes
    properties: bytes

    @property
    def name(self) -> str:
        known = _KNOWN_UNSUPPORTED.get(self.method)
        return f"{known} (method id {self.method.hex()})" if known else self.method.hex()


@dataclass(frozen=True)
class Folder:
    """One independently decodable stream: its coders from its output to its packed input."""

    coders: tuple[Coder, ...]
    pack_offset: int  # absolute offset of its packed stream in the archive
    pack_size: int
    unpack_size: int
    crc32: int | None


@dataclass(frozen=True)
class Entry:
    """A file of the archive; ``folder`` is None for an empty file or a directory."""

    name: str
    size: int
    crc32: int | None
    folder: int | None
    offset: int  # where its bytes start in the folder's output
    is_directory: bool


@dataclass(frozen=True)
class Layout:
    folders: tuple[Folder, ...]
    entries: tuple[Entry, ...]


def parse_signature(data: bytes, archive_size: int) -> Signature:
    """The 32-byte signature header, checked (magic, CRC, the header lies inside the archive)."""
    if len(data) < SIGNATURE_BYTES or data[:6] != MAGIC:
        raise SevenZipError("no 7z signature at its start")
    (start_crc,) = struct.unpack_from("<I", data, 8)
    if zlib.crc32(data[12:32]) != start_crc:
        raise SevenZipError("the signature header's CRC does not match")
    offset, size, crc = struct.unpack_from("<QQI", data, 12)
    header_offset = SIGNATURE_BYTES + offset
    if size == 0 or size > MAX_HEADER_BYTES or header_offset + size > archive_size:
        raise SevenZipError(
            f"the signature header points at {size} header bytes at {header_offset}, outside "
            f"the archive's {archive_size} bytes or above the {MAX_HEADER_BYTES} accepted"
        )
    return Signature(header_offset, size, crc)


def parse_header(data: bytes, signature: Signature, fetch: Callable[[int, int], bytes]) -> Layout:
    """The archive's layout from its (end) header ``data``; an encoded header is decoded first,
    its packed bytes read with ``fetch(start, end)`` (absolute offsets)."""
    if zlib.crc32(data) != signature.header_crc32:
        raise SevenZipError("the header's CRC does not match")
    reader = _Reader(data)
    kind = reader.byte()
    if kind == _ENCODED_HEADER:
        folders = _streams_info(reader, signature.header_offset).folders
        if len(folders) != 1:
            raise SevenZipError(f"an encoded header in {len(folders)} folders")
        folder = folders[0]
        if folder.unpack_size > MAX_HEADER_BYTES or folder.pack_size > MAX_HEADER_BYTES:
            raise SevenZipError(f"an encoded header of {folder.unpack_size} bytes")
        packed = fetch(folder.pack_offset, folder.pack_offset + folder.pack_size)
        decoder = FolderDecoder(folder)
        decoded = b"".join([*decoder.feed(packed), *decoder.finish()])
        if folder.crc32 is not None and zlib.crc32(decoded) != folder.crc32:
            raise SevenZipError("the encoded header's CRC does not match")
        reader = _Reader(decoded)
        kind = reader.byte()
    if kind != _HEADER:
        raise SevenZipError(f"the header starts with property {kind}, not a header")
    return _header(reader, signature.header_offset)


class _Reader:
    """Reads the header's fields; every count is bounded by the bytes left to read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int) -> bytes:
        if count > self.left():
            raise SevenZipError("the header ends in the middle of a field")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def number(self) -> int:
        """7z's variable-length UINT64: the first byte's leading 1-bits count the extra bytes."""
        first = self.byte()
        mask, value = 0x80, 0
        for index in range(8):
            if first & mask == 0:
                return value | ((first & (mask - 1)) << (8 * index))
            value |= self.byte() << (8 * index)
            mask >>= 1
        return value

    def count(self, what: str, bytes_each: float = 1) -> int:
        """A declared number of items, each needing at least ``bytes_each`` header bytes."""
        value = self.number()
        if value * bytes_each > self.left():
            raise SevenZipError(
                f"the header declares {value} {what}, more than its {self.left()} remaining "
                "bytes can describe"
            )
        return value

    def bits(self, count: int) -> list[bool]:
        data = self.take((count + 7) // 8)
        return [bool(data[i >> 3] & (0x80 >> (i & 7))) for i in range(count)]

    def defined(self, count: int) -> list[bool]:
        all_defined = self.byte()
        return [True] * count if all_defined else self.bits(count)

    def digests(self, count: int) -> list[int | None]:
        defined = self.defined(count)
        if sum(defined) * 4 > self.left():
            raise SevenZipError("the header ends in the middle of its CRCs")
        return [struct.unpack("<I", self.take(4))[0] if d else None for d in defined]

    def expect(self, property_id: int) -> None:
        found = self.byte()
        if found != property_id:
            raise SevenZipError(f"expected header property {property_id}, found {found}")


@dataclass
class _RawFolder:
    chain: list[Coder]
    out_streams: int
    main_out: int  # index of the output stream that is the folder's output


def _folder(reader: _Reader) -> _RawFolder:
    number_of_coders = reader.number()
    if not 1 <= number_of_coders <= MAX_CODERS:
        raise SevenZipError(f"a folder with {number_of_coders} coders")
    coders: list[tuple[Coder, int, int]] = []
    for _ in range(number_of_coders):
        flags = reader.byte()
        if flags & 0x80:
            raise SevenZipError("alternative coder methods, which 7z does not use")
        method = reader.take(flags & 0x0F)
        ins = outs = 1
        if flags & 0x10:
            ins, outs = reader.number(), reader.number()
            if not (1 <= ins <= MAX_CODER_STREAMS and 1 <= outs <= MAX_CODER_STREAMS):
                raise SevenZipError(f"a coder with {ins} inputs and {outs} outputs")
        properties = reader.take(reader.count("property bytes")) if flags & 0x20 else b""
        coders.append((Coder(method, properties), ins, outs))
    total_in = sum(ins for _, ins, _ in coders)
    total_out = sum(outs for _, _, outs in coders)
    bind_pairs = [(reader.number(), reader.number()) for _ in range(total_out - 1)]
    packed_streams = total_in - len(bind_pairs)
    if packed_streams < 1:
        raise SevenZipError("a folder without a packed stream")
    if packed_streams > 1:
        [reader.number() for _ in range(packed_streams)]
    for coder, ins, outs in coders:
        if ins != 1 or outs != 1:
            raise UnsupportedCoder(
                f"coder {coder.name} with {ins} inputs and {outs} outputs: only a chain of "
                "single-stream coders is decoded"
            )
    # Single-stream coders: coder i reads input i and writes output i. Follow the chain from
    # the output nobody consumes down to the packed input.
    bound_outs = {out for _, out in bind_pairs}
    feeds = dict(bind_pairs)  # input index -> the output index feeding it
    main = [i for i in range(total_out) if i not in bound_outs]
    if len(main) != 1 or any(i >= total_in or o >= total_out for i, o in bind_pairs):
        raise SevenZipError("a folder whose coders are not one chain")
    chain, current, seen = [], main[0], set()
    while True:
        if current in seen:
            raise SevenZipError("a folder whose coders form a loop")
        seen.add(current)
        chain.append(coders[current][0])
        if current not in feeds:
            break
        current = feeds[current]
    if len(chain) != number_of_coders:
        raise SevenZipError("a folder whose coders are not one chain")
    return _RawFolder(chain, total_out, main[0])


@dataclass
class _Streams:
    folders: list[Folder]
    sizes: list[int]  # of every unpack stream (one per file with data), folder after folder
    crcs: list[list[int | None]]  # per folder, of each of its unpack streams


def _streams_info(reader: _Reader, header_offset: int) -> _Streams:
    pack_pos, pack_sizes = 0, []
    raw_folders: list[_RawFolder] = []
    unpack_sizes: list[list[int]] = []
    folder_crcs: list[int | None] = []
    property_id = reader.byte()
    if property_id == _PACK_INFO:
        pack_pos = reader.number()
        number = reader.count("packed streams")
        property_id = reader.byte()
        if property_id == _SIZE:
            pack_sizes = [reader.number() for _ in range(number)]
            property_id = reader.byte()
        if property_id == _CRC:
            reader.digests(number)
            property_id = reader.byte()
        if property_id != _END or len(pack_sizes) != number:
            raise SevenZipError("malformed pack info")
        property_id = reader.byte()
    if property_id == _UNPACK_INFO:
        reader.expect(_FOLDER)
        number = reader.count("folders", 2)
        if reader.byte() != 0:
            raise SevenZipError("folders stored elsewhere (external), which 7z does not use")
        raw_folders = [_folder(reader) for _ in range(number)]
        reader.expect(_CODERS_UNPACK_SIZE)
        unpack_sizes = [[reader.number() for _ in range(f.out_streams)] for f in raw_folders]
        property_id = reader.byte()
        folder_crcs = [None] * number
        if property_id == _CRC:
            folder_crcs = reader.digests(number)
            property_id = reader.byte()
        if property_id != _END:
            raise SevenZipError("malformed unpack info")
        property_id = reader.byte()
    if len(pack_sizes) != len(raw_folders):
        raise SevenZipError(f"{len(pack_sizes)} packed streams for {len(raw_folders)} folders")
    offset = SIGNATURE_BYTES + pack_pos
    folders = []
    for raw, sizes, crc, pack_size in zip(
        raw_folders, unpack_sizes, folder_crcs, pack_sizes, strict=True
    ):
        folders.append(Folder(tuple(raw.chain), offset, pack_size, sizes[raw.main_out], crc))
        offset += pack_size
    if offset > header_offset:
        raise SevenZipError("packed streams that run into the header")
    streams = [1] * len(folders)
    sizes_per_folder: list[list[int]] = [[f.unpack_size] for f in folders]
    if property_id == _SUBSTREAMS_INFO:
        property_id = reader.byte()
        if property_id == _NUM_UNPACK_STREAM:
            streams = [reader.count("files in a folder") for _ in folders]
            property_id = reader.byte()
        sizes_per_folder = []
        for folder, count in zip(folders, streams, strict=True):
            if count == 0:
                sizes_per_folder.append([])
                continue
            sizes = [reader.number() for _ in range(count - 1)] if property_id == _SIZE else []
            if len(sizes) != count - 1 or sum(sizes) > folder.unpack_size:
                raise SevenZipError("file sizes that do not add up to their folder's size")
            sizes_per_folder.append([*sizes, folder.unpack_size - sum(sizes)])
        if property_id == _SIZE:
            property_id = reader.byte()
        unknown = sum(n for n, f in zip(streams, folders, strict=True)
                      if not (n == 1 and f.crc32 is not None))  # fmt: skip
        crcs: list[int | None] = [None] * unknown
        if property_id == _CRC:
            crcs = reader.digests(unknown)
            property_id = reader.byte()
        if property_id != _END:
            raise SevenZipError("malformed substreams info")
        property_id = reader.byte()
        crc_iter = iter(crcs)
        stream_crcs = []
        for count, folder in zip(streams, folders, strict=True):
            if count == 1 and folder.crc32 is not None:
                stream_crcs.append([folder.crc32])
            else:
                stream_crcs.append([next(crc_iter) for _ in range(count)])
    else:
        stream_crcs = [[f.crc32] for f in folders]
    if property_id != _END:
        raise SevenZipError("malformed streams info")
    sizes = [size for folder_sizes in sizes_per_folder for size in folder_sizes]
    return _Streams(folders, sizes, stream_crcs)


def _header(reader: _Reader, header_offset: int) -> Layout:
    property_id = reader.byte()
    if property_id == _ARCHIVE_PROPERTIES:
        while reader.byte() != _END:
            reader.take(reader.count("archive property bytes"))
        property_id = reader.byte()
    if property_id == _ADDITIONAL_STREAMS:
        raise SevenZipError("additional header streams, which 7z does not write")
    streams = _Streams([], [], [])
    if property_id == _MAIN_STREAMS:
        streams = _streams_info(reader, header_offset)
        property_id = reader.byte()
    entries: list[Entry] = []
    if property_id == _FILES_INFO:
        entries = _files(reader, streams)
        property_id = reader.byte()
    folders = streams.folders
    if property_id != _END:
        raise SevenZipError(f"unexpected header property {property_id}")
    return Layout(tuple(folders), tuple(entries))


def _files(reader: _Reader, streams: _Streams) -> list[Entry]:
    number = reader.count("files", 2)  # each has a name of at least its 2-byte terminator
    empty_stream = [False] * number
    empty_file = None
    names: list[str] | None = None
    while (property_id := reader.byte()) != _END:
        size = reader.count("property bytes")
        field = _Reader(reader.take(size))
        if property_id == _EMPTY_STREAM:
            empty_stream = field.bits(number)
        elif property_id == _EMPTY_FILE:
            empty_file = field.bits(sum(empty_stream))
        elif property_id == _NAME:
            if field.byte() != 0:
                raise SevenZipError("file names stored elsewhere (external)")
            text = field.take(field.left())
            if len(text) % 2:
                raise SevenZipError("file names of an odd number of bytes")
            names = text.decode("utf-16-le", errors="replace").split("\0")[:-1]
        # times, attributes, padding...: not needed
    if names is None or len(names) != number:
        raise SevenZipError("file names missing or not one per file")
    sizes, crcs = streams.sizes, streams.crcs
    with_data = number - sum(empty_stream)
    if with_data != len(sizes):
        raise SevenZipError(f"{with_data} files with data for {len(sizes)} streams")
    entries = []
    positions = [(f, n) for f, folder_crcs in enumerate(crcs) for n in range(len(folder_crcs))]
    stream = 0
    empty_index = 0
    offsets: dict[int, int] = {}
    for index, name in enumerate(names):
        if empty_stream[index]:
            is_file = bool(empty_file and empty_file[empty_index])
            empty_index += 1
            entries.append(Entry(name, 0, None, None, 0, not is_file))
            continue
        folder, position = positions[stream]
        offset = offsets.get(folder, 0)
        entries.append(Entry(name, sizes[stream], crcs[folder][position], folder, offset, False))
        offsets[folder] = offset + sizes[stream]
        stream += 1
    return entries


class FolderDecoder:
    """Decodes one folder's packed bytes, fed in order, into chunks of at most OUTPUT_BYTES;
    refuses output beyond the folder's declared size.

    LZMA (1) streams in 7z carry no end marker: decoding the encoder's final flush bytes yields
    a few bytes past the end, so an LZMA chain stops at the declared size instead.
    """

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self.produced = 0
        self._step = _decoder(folder.coders, folder.unpack_size)
        self._stops_at_size = folder.coders[-1].method == _LZMA1

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        left = self.folder.unpack_size - self.produced
        if self._stops_at_size and left == 0:
            return
        for chunk in self._step(data):
            if len(chunk) > left:
                if not self._stops_at_size:
                    raise SevenZipError(
                        "a folder decodes to more than its declared "
                        f"{self.folder.unpack_size} bytes"
                    )
                chunk = chunk[:left]
            self.produced += len(chunk)
            left -= len(chunk)
            if chunk:
                yield chunk
            if self._stops_at_size and left == 0:
                return

    def finish(self) -> Iterator[bytes]:
        """Whatever the decoder still holds; then the folder must be complete."""
        yield from self.feed(b"")
        if self.produced != self.folder.unpack_size:
            raise SevenZipError(
                f"a folder decodes to {self.produced} bytes, not its declared "
                f"{self.folder.unpack_size}"
            )


def _dictionary(declared: int, unpack_size: int) -> int:
    if declared > MAX_DICTIONARY_BYTES:
        raise SevenZipError(f"an LZMA dictionary of {declared} bytes, beyond 7-Zip's largest")
    return max(min(declared, unpack_size), 4096)


def _lzma_filter(coder: Coder, unpack_size: int) -> dict[str, int] | None:
    method, props = coder.method, coder.properties
    if method == _LZMA2:
        if len(props) != 1 or props[0] > 40:
            raise SevenZipError("malformed LZMA2 properties")
        bits = props[0]
        dict_size = 0xFFFFFFFF if bits == 40 else (2 | (bits & 1)) << (bits // 2 + 11)
        return {"id": lzma.FILTER_LZMA2, "dict_size": _dictionary(dict_size, unpack_size)}
    if method == _LZMA1:
        if len(props) != 5 or props[0] >= 9 * 5 * 5:
            raise SevenZipError("malformed LZMA properties")
        lc, rest = props[0] % 9, props[0] // 9
        lp, pb = rest % 5, rest // 5
        (dict_size,) = struct.unpack("<I", props[1:5])
        return {"id": lzma.FILTER_LZMA1, "dict_size": _dictionary(dict_size, unpack_size),
                "lc": lc, "lp": lp, "pb": pb}  # fmt: skip
    if method == _DELTA:
        return {"id": lzma.FILTER_DELTA, "dist": (props[0] + 1) if props else 1}
    if method in _BRANCH_FILTERS:
        return {"id": _BRANCH_FILTERS[method]}
    return None


def _decoder(
    coders: tuple[Coder, ...], unpack_size: int
) -> Callable[[bytes | memoryview], Iterator[bytes]]:
    """A step function for the chain: packed bytes in (``b""`` at the end), decoded out."""
    chain = [c for c in coders if c.method != _COPY]
    if not chain:
        return _copy
    if len(chain) == 1 and chain[0].method in (_DEFLATE, _BZIP2):
        if chain[0].method == _DEFLATE:
            return _zlib_steps(zlib.decompressobj(-15))
        return _bounded_steps(bz2.BZ2Decompressor())
    filters = [_lzma_filter(c, unpack_size) for c in chain]
    for coder, found in zip(chain, filters, strict=True):
        if found is None:
            raise UnsupportedCoder(
                f"coder {coder.name}, which Python's standard library cannot decode"
            )
    if filters[-1]["id"] not in (lzma.FILTER_LZMA1, lzma.FILTER_LZMA2):  # type: ignore[index]
        raise UnsupportedCoder(
            "a filter chain that does not end in LZMA or LZMA2: "
            + " + ".join(c.name for c in chain)
        )
    try:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
    except lzma.LZMAError as exc:
        raise SevenZipError(f"coder properties liblzma refuses ({exc})") from exc
    return _bounded_steps(decompressor)


def _copy(data: bytes | memoryview) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), OUTPUT_BYTES):
        yield bytes(view[start : start + OUTPUT_BYTES])


def _bounded_steps(
    decompressor: lzma.LZMADecompressor | bz2.BZ2Decompressor,
) -> Callable[[bytes | memoryview], Iterator[bytes]]:
    def step(data: bytes | memoryview) -> Iterator[bytes]:
        if decompressor.eof:  # the stream ended: nothing may follow it
            if data:
                raise SevenZipError("packed bytes after the end of a folder's stream")
            return
        try:
            chunk = decompressor.decompress(data, OUTPUT_BYTES)
            while True:
                if chunk:
                    yield chunk
                if decompressor.eof or decompressor.needs_input:
                    return
                chunk = decompressor.decompress(b"", OUTPUT_BYTES)
        except (lzma.LZMAError, OSError, EOFError) as exc:
            raise SevenZipError(f"the packed stream does not decode ({exc})") from exc

    return step


def _zlib_steps(decompressor: zlib._Decompress) -> Callable[[bytes | memoryview], Iterator]:
    def step(data: bytes | memoryview) -> Iterator[bytes]:
        try:
            pending = bytes(data)
            while pending:
                chunk = decompressor.decompress(pending, OUTPUT_BYTES)
                pending = decompressor.unconsumed_tail
                if chunk:
                    yield chunk
            if not data:
                while chunk := decompressor.flush(OUTPUT_BYTES):
                    yield chunk
        except zlib.error as exc:
            raise SevenZipError(f"the packed stream does not decode ({exc})") from exc

    return step
