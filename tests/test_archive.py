"""Opening and streaming dump archives: generated in the real format, and corrupt, foreign and
bomb-like variants built with py7zr."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import py7zr
import pytest

from local.sample_dump import BOM, CRLF, HEADER, pack_7z, write_site
from stackexchange import archive
from stackexchange.settings import Limits

MEMBERS = ["Posts.xml", "Users.xml"]


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


def extract(path: Path, limits: Limits | None = None) -> tuple[dict, dict[str, bytes]]:
    """``open_members`` then ``stream`` Posts.xml and Users.xml: declared members, contents."""
    with path.open("rb") as fileobj:
        seven_zip, members = archive.open_members(fileobj, path.name, MEMBERS, limits or Limits())
        writers, _ = collectors(members)
        with seven_zip:
            archive.stream(seven_zip, path.name, writers)
    return members, {name: bytes(writer.data) for name, writer in writers.items()}


def test_each_writer_is_closed_when_its_member_is_complete(site: list[Path], tmp_path: Path):
    """Posts.xml's writer is closed (its CRC checked) before Users.xml's first byte arrives."""
    path = pack_7z(site, tmp_path / "site.7z")
    with path.open("rb") as fileobj:
        seven_zip, members = archive.open_members(fileobj, path.name, MEMBERS, Limits())
        writers, events = collectors(members)
        with seven_zip:
            archive.stream(seven_zip, path.name, writers)
    assert events == ["write Posts.xml", "close Posts.xml", "write Users.xml", "close Users.xml"]


def stored(files: list[Path], path: Path) -> Path:
    """Pack without compression, so a flipped byte reaches the CRC check, not the decoder."""
    with py7zr.SevenZipFile(path, "w", filters=[{"id": py7zr.FILTER_COPY}]) as z:
        for file in sorted(files):
            z.write(file, arcname=file.name)
    return path


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
    path = stored(site, tmp_path / "site.7z")
    with py7zr.SevenZipFile(path) as z:
        offset = z.afterheader
        for info in z.files:  # stored members lie one after the other in name order
            if info.filename == "Posts.xml":
                break
            offset += info.uncompressed
    data = bytearray(path.read_bytes())
    data[offset + 5000] ^= 0x01  # a letter in a post: the XML stays well-formed
    path.write_bytes(data)
    with pytest.raises(archive.ArchiveError) as err:
        extract(path)
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
