"""Opening and streaming dump archives: generated in the real format, and corrupt, foreign,
forged and bomb-like variants built with py7zr or by hand; every coder py7zr writes."""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import py7zr
import pytest

from local.sample_dump import BOM, CRLF, HEADER, STORED, pack_7z, write_site
from stackexchange import archive, sevenzip
from stackexchange.download import LocalArchiveBytes
from stackexchange.settings import Limits

MEMBERS = ["Posts.xml", "Users.xml"]
REPO = Path(__file__).resolve().parents[1]
# The shared reference data beside the repository, absent in a clean clone; TESTS_SHARED_DIR
# points elsewhere (a missing directory: run as a clean clone would).
SHARED_DIR = Path(os.environ.get("TESTS_SHARED_DIR") or REPO.parent / "shared")
REAL_DUMPS = sorted((SHARED_DIR / "stackexchange-dumps").glob("*.7z"))


class Collected:
    """A member writer that keeps its bytes and notes when it is closed, in a shared log."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events, self.data = name, events, bytearray()

    def write(self, data: bytes | bytearray) -> int:
        if not self.events or self.events[-1] != f"write {self.name}":
            self.events.append(f"write {self.name}")
        self.data += data
        return len(data)

    def close(self) -> None:
        self.events.append(f"close {self.name}")


def collectors(names: object) -> tuple[dict[str, Collected], list[str]]:
    events: list[str] = []
    return {name: Collected(name, events) for name in names}, events


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The eight files of a small site dump."""
    return write_site(tmp_path_factory.mktemp("site"), posts=300, users=40)


def local(path: Path) -> LocalArchiveBytes:
    return LocalArchiveBytes(path, None, chunk_bytes=7001)  # chunks unaligned with anything


def extract(path: Path, limits: Limits | None = None) -> tuple[dict, dict[str, bytes]]:
    """``open_members`` then ``stream`` Posts.xml and Users.xml: declared members, contents."""
    with local(path) as archive_bytes:
        opened, members = archive.open_members(
            archive_bytes, path.name, MEMBERS, limits or Limits()
        )
        writers, _ = collectors(members)
        archive.stream(archive_bytes, opened, writers)
    return members, {name: bytes(writer.data) for name, writer in writers.items()}


def test_each_writer_is_closed_when_its_member_is_complete(site: list[Path], tmp_path: Path):
    """Posts.xml's writer is closed (its CRC checked) before Users.xml's first byte arrives."""
    path = pack_7z(site, tmp_path / "site.7z")
    with local(path) as archive_bytes:
        opened, members = archive.open_members(archive_bytes, path.name, MEMBERS, Limits())
        writers, events = collectors(members)
        archive.stream(archive_bytes, opened, writers)
    assert events == ["write Posts.xml", "close Posts.xml", "write Users.xml", "close Users.xml"]


@pytest.fixture(scope="module")
def generated_dump(site: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small site packed as the real dumps are: one solid LZMA2 folder, its files in name
    order (so Users.xml comes next to last, after Posts.xml)."""
    return pack_7z(site, tmp_path_factory.mktemp("generated") / "generated.stackexchange.com.7z")


@pytest.mark.parametrize(
    "dump", ["generated", *REAL_DUMPS], ids=["generated", *(d.name for d in REAL_DUMPS)]
)
def test_dumps_stream_like_py7zr_extracts_them(
    dump: str | Path, generated_dump: Path, tmp_path: Path
) -> None:
    """A generated dump, and the real ones when they are here: packed alike, and streamed to
    the same members, byte for byte, as py7zr extracts."""
    path = generated_dump if dump == "generated" else Path(dump)
    with py7zr.SevenZipFile(path) as z:
        info, names = z.archiveinfo(), z.getnames()
        assert (info.blocks, info.solid, info.method_names) == (1, True, ["LZMA2"])
        assert names.index("Users.xml") == len(names) - 2 > names.index("Posts.xml")
        z.extract(tmp_path, targets=MEMBERS)
    _, contents = extract(path)
    for name in MEMBERS:
        assert contents[name] == (tmp_path / name).read_bytes(), path.name


def test_each_folder_decoder_is_built_once(
    site: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A solid dump holds both members in one folder: one decoder (one LZMA dictionary) is
    built for it, by open_members, and stream decodes with that one. (The encoded header's
    folder has a decoder of its own.)"""
    built: list[sevenzip.Folder] = []

    class Counting(sevenzip.FolderDecoder):
        def __init__(self, folder: sevenzip.Folder) -> None:
            built.append(folder)
            super().__init__(folder)

    monkeypatch.setattr(sevenzip, "FolderDecoder", Counting)
    path = pack_7z(site, tmp_path / "site.7z")
    members, contents = extract(path)
    assert len(built) == len(set(built)) == 2
    assert {name: len(data) for name, data in contents.items()} == {
        name: member.size for name, member in members.items()
    }


CODERS = {
    "lzma2": [{"id": py7zr.FILTER_LZMA2, "preset": 1}],
    "lzma": [{"id": py7zr.FILTER_LZMA}],
    "bcj-x86+lzma2": [{"id": py7zr.FILTER_X86}, {"id": py7zr.FILTER_LZMA2, "preset": 1}],
    "arm+lzma2": [{"id": py7zr.FILTER_ARM}, {"id": py7zr.FILTER_LZMA2, "preset": 1}],
    "delta+lzma": [{"id": py7zr.FILTER_DELTA, "dist": 4}, {"id": py7zr.FILTER_LZMA}],
    "bzip2": [{"id": py7zr.FILTER_BZIP2}],
    "deflate": [{"id": py7zr.FILTER_DEFLATE}],
    "copy": [{"id": py7zr.FILTER_COPY}],
}


@pytest.mark.parametrize("coders", CODERS.values(), ids=CODERS.keys())
def test_every_coder_the_standard_library_has_decodes(
    site: list[Path], tmp_path: Path, coders: list[dict]
) -> None:
    """Also: an empty file and a directory ahead of the members, which have no stream."""
    empty = tmp_path / "Empty.xml"
    empty.write_bytes(b"")
    path = tmp_path / "site.7z"
    with py7zr.SevenZipFile(path, "w", filters=coders) as z:
        z.writestr(b"", "a-directory/")
        z.write(empty, arcname="Empty.xml")
        for file in sorted(site):
            z.write(file, arcname=file.name)
    members, contents = extract(path)
    for name in MEMBERS:
        original = next(p for p in site if p.name == name).read_bytes()
        assert contents[name] == original
        assert members[name].crc32 == zlib.crc32(original)


@pytest.mark.parametrize(
    ("coders", "password", "named"),
    [([{"id": py7zr.FILTER_PPMD}], None, "PPMd"),
     ([{"id": py7zr.FILTER_LZMA2}, {"id": py7zr.FILTER_CRYPTO_AES256_SHA256}], "pw", "7zAES")],
    ids=["ppmd", "7zaes"],
)  # fmt: skip
def test_a_coder_the_standard_library_lacks_is_refused_by_name(
    site: list[Path], tmp_path: Path, coders: list[dict], password: str | None, named: str
) -> None:
    path = pack_7z(site, tmp_path / "site.7z", filters=coders, password=password)
    with pytest.raises(archive.ArchiveRefused, match=f"^site.7z uses coder {named}") as err:
        extract(path)
    assert "repack it" in str(err.value)


def number(value: int) -> bytes:
    """A 7z UINT64 in its 9-byte form."""
    return b"\xff" + struct.pack("<Q", value)


def forged(path: Path, header: bytes) -> Path:
    """An archive of nothing but a signature header pointing at ``header``."""
    start = struct.pack("<QQI", 0, len(header), zlib.crc32(header))
    path.write_bytes(sevenzip.MAGIC + b"\x00\x04" + struct.pack("<I", zlib.crc32(start)) + start
                     + header)  # fmt: skip
    return path


def test_a_header_declaring_millions_of_files_is_refused_before_allocating(
    tmp_path: Path,
) -> None:
    """40 bytes that declare 4 million files (py7zr allocates 1.45 GiB for them)."""
    files_info = bytes([1, 5]) + number(4_000_000) + bytes([0, 0])
    path = forged(tmp_path / "site.7z", files_info + b"\x00" * (40 - len(files_info)))
    tracemalloc.start()
    try:
        with pytest.raises(archive.ArchiveError, match="declares 4000000 files, more than its"):
            extract(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "body",
    [
        bytes([4, 6]) + number(0) + number(1 << 40) + bytes([0]),  # a trillion packed streams
        bytes([4, 7, 11]) + number(1 << 40) + bytes([0]),  # a trillion folders
        bytes([4, 8, 13]) + number(1 << 40) + bytes([0]),  # a trillion substreams
    ],
    ids=["packed-streams", "folders", "substreams"],
)
def test_every_declared_count_is_bounded_by_the_header(tmp_path: Path, body: bytes) -> None:
    path = forged(tmp_path / "site.7z", bytes([1]) + body + b"\x00" * 8)
    with pytest.raises(archive.ArchiveError, match="site.7z is damaged .*header"):
        extract(path)


def test_a_member_held_twice_is_refused(site: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "site.7z"
    with py7zr.SevenZipFile(path, "w") as z:
        for file in sorted(site):
            z.write(file, arcname=file.name)
        z.writestr(b"<posts/>", "Posts.xml")
    with pytest.raises(archive.ArchiveRefused, match="holds Posts.xml more than once"):
        extract(path)


class _Changing(LocalArchiveBytes):
    """Serves one header by Range and another in the forward stream."""

    def chunks(self) -> Iterator[bytes]:
        for chunk in super().chunks():
            yield chunk[:-1] + bytes([chunk[-1] ^ 1]) if len(chunk) < 7001 else chunk


def test_header_bytes_read_ahead_must_be_those_of_the_forward_read(
    site: list[Path], tmp_path: Path
) -> None:
    path = pack_7z(site, tmp_path / "site.7z")
    with _Changing(path, None, 7001) as archive_bytes:
        opened, members = archive.open_members(archive_bytes, path.name, MEMBERS, Limits())
        writers, _ = collectors(members)
        with pytest.raises(archive.ArchiveError, match="its header changed between the reads"):
            archive.stream(archive_bytes, opened, writers)


def test_streams_the_needed_members_byte_for_byte(site: list[Path], tmp_path: Path) -> None:
    packed = pack_7z(site, tmp_path / "site.7z")
    members, contents = extract(packed)
    originals = {p.name: p.read_bytes() for p in site}
    assert sorted(contents) == MEMBERS
    for name in MEMBERS:
        assert contents[name] == originals[name]
        assert members[name] == archive.Member(
            name, len(originals[name]), zlib.crc32(originals[name])
        )


def test_not_a_7z_archive_is_refused_without_echoing_its_bytes(tmp_path: Path) -> None:
    page = tmp_path / "site.7z"
    first = b"<!DOCTYPE html><html><title>Item not available</title>"
    page.write_bytes(first + b"\x1b[2J" * 10)
    with pytest.raises(archive.ArchiveRefused) as err:
        extract(page)
    message = str(err.value)
    assert message.startswith("site.7z is not a 7z archive") and "source_base_url" in message
    for echoed in (first[:6].decode(), "DOCTYPE", "html", "Item", repr(first[:6]), "\x1b"):
        assert echoed not in message


@pytest.mark.parametrize("arcname", [None, "dump/Users.xml"], ids=["absent", "not-at-the-root"])
def test_missing_member_lists_what_is_there(
    site: list[Path], tmp_path: Path, arcname: str | None
) -> None:
    path = tmp_path / "site.7z"
    with py7zr.SevenZipFile(path, "w") as z:
        for file in sorted(site):
            if file.name != "Users.xml":
                z.write(file, arcname=file.name)
            elif arcname:
                z.write(file, arcname=arcname)
    with pytest.raises(archive.ArchiveRefused) as err:
        extract(path)
    assert str(err.value) == (
        "site.7z has no Users.xml at its root; it contains: Badges.xml, Comments.xml, "
        "PostHistory.xml, PostLinks.xml, Posts.xml, Tags.xml, Votes.xml. Is it a Stack Exchange "
        "site dump?"
    )


def test_expansion_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    """Highly repetitive XML packs ~1000x; real dumps ~5-15x."""
    xml = tmp_path / "xml"
    xml.mkdir()
    row = '  <row Id="1" PostTypeId="1" Score="0" Body="&lt;p&gt;same&lt;/p&gt;" />' + CRLF
    (xml / "Posts.xml").write_text(
        f"{BOM}{HEADER}{CRLF}<posts>{CRLF}{row * 60_000}</posts>", "utf-8"
    )
    (xml / "Users.xml").write_text(
        f'{BOM}{HEADER}{CRLF}<users>{CRLF}  <row Id="1" />{CRLF}</users>', "utf-8"
    )
    packed = pack_7z(sorted(xml.iterdir()), tmp_path / "bomb.7z")
    unpacked = sum(p.stat().st_size for p in xml.iterdir())
    assert unpacked / packed.stat().st_size > 200  # what the archive really is
    with pytest.raises(archive.ArchiveRefused) as err:
        extract(packed, Limits(max_expansion_ratio=200))
    assert "bomb.7z declares" in str(err.value) and "STACKEXCHANGE_MAX_EXPANSION_RATIO" in str(
        err.value
    )
    # The bound, not the content, refused it: with a bound above its ratio it streams.
    _, contents = extract(packed, Limits(max_expansion_ratio=1e6))
    assert contents["Posts.xml"] == (xml / "Posts.xml").read_bytes()


def test_expansion_counts_every_member_not_only_those_at_the_root(
    site: list[Path], tmp_path: Path
) -> None:
    """A bomb in a subdirectory, ahead of Posts.xml in the solid stream, is decompressed (and
    discarded) on the way to Posts.xml: it must count towards the bound too."""
    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(b"<a/>" * 5_000_000)  # 20 MB that pack into a few KB
    path = tmp_path / "site.7z"
    with py7zr.SevenZipFile(path, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 1}]) as z:
        z.write(bomb, arcname="junk/bomb.xml")
        for file in sorted(site):
            z.write(file, arcname=file.name)
    with pytest.raises(archive.ArchiveRefused, match="site.7z declares .* an expansion of"):
        extract(path, Limits())


def test_real_format_dump_is_within_the_default_limit(site: list[Path], tmp_path: Path) -> None:
    packed = pack_7z(site, tmp_path / "site.7z")
    members, _ = extract(packed, Limits())
    ratio = sum(m.size for m in members.values()) / packed.stat().st_size
    assert ratio < Limits().max_expansion_ratio


def test_flipped_byte_in_a_member_fails_its_crc(site: list[Path], tmp_path: Path) -> None:
    path = pack_7z(site, tmp_path / "site.7z", filters=STORED)
    with py7zr.SevenZipFile(path) as z:
        offset = z.afterheader
        for info in z.files:  # stored members lie one after the other in name order
            if info.filename == "Posts.xml":
                break
            offset += info.uncompressed
    data = bytearray(path.read_bytes())
    data[offset + 5000] ^= 0x01  # a letter in a post: the XML stays well-formed
    path.write_bytes(data)
    writers, events = collectors(MEMBERS)
    with pytest.raises(archive.ArchiveError) as err, local(path) as archive_bytes:
        opened, _ = archive.open_members(archive_bytes, path.name, MEMBERS, Limits())
        archive.stream(archive_bytes, opened, writers)
    assert events == ["write Posts.xml"]  # never closed: nothing downstream took it as whole
    assert not isinstance(err.value, archive.ArchiveRefused)  # a fresh download may help
    assert "site.7z is damaged (CRC check failed for Posts.xml)" in str(err.value)
    assert "run again" in str(err.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated: no end header
        lambda data: data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:],  # packed
        lambda data: data[:-40] + bytes(b ^ 0x55 for b in data[-40:-30]) + data[-30:],  # header
    ],
    ids=["truncated", "packed-stream", "end-header"],
)
def test_damaged_archive_is_an_error_worth_retrying(
    site: list[Path], tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path = pack_7z(site, tmp_path / "site.7z")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(archive.ArchiveError, match=r"^site.7z is damaged .*run again") as err:
        extract(path)
    assert not isinstance(err.value, archive.ArchiveRefused)
