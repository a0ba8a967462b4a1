"""Integrity checks and selective extraction on generated archives and corrupt variants."""

from __future__ import annotations

from pathlib import Path

import py7zr
import pytest

from local.sample_dump import pack_7z, write_site
from stackexchange.archive import ArchiveError, extract
from stackexchange.dump_xml import ValidatingWriter

MEMBERS = ["Posts.xml", "Users.xml"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_site(tmp_path_factory.mktemp("site"), posts=300, users=40)


def run_extract(archive: Path, out: Path, members: list[str] = MEMBERS) -> dict[str, Path]:
    out.mkdir(exist_ok=True)
    opened: dict[str, ValidatingWriter] = {}

    def open_writer(name: str) -> ValidatingWriter:
        opened[name] = ValidatingWriter(name, out / name)
        return opened[name]

    extract(archive, members, open_writer)
    return {name: writer.finish().path for name, writer in opened.items()}


def test_extracts_only_posts_and_users_byte_for_byte(site: list[Path], tmp_path: Path) -> None:
    archive = pack_7z(site, tmp_path / "site.7z")
    with py7zr.SevenZipFile(archive) as z:
        assert len(z.getnames()) == 8  # the other six members are there, and left alone
    extracted = run_extract(archive, tmp_path / "out")
    assert sorted(extracted) == MEMBERS
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == MEMBERS
    originals = {p.name: p for p in site}
    for name, path in extracted.items():
        assert path.read_bytes() == originals[name].read_bytes()


def test_not_a_7z_archive(tmp_path: Path) -> None:
    page = tmp_path / "site.7z"
    page.write_text("<!DOCTYPE html><html><body>Item not available</body></html>")
    with pytest.raises(ArchiveError, match=r"site.7z is not a 7z archive.*source_base_url"):
        run_extract(page, tmp_path / "out")


def test_truncated_archive(site: list[Path], tmp_path: Path) -> None:
    archive = pack_7z(site, tmp_path / "site.7z")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match=r"site.7z is damaged .*run again"):
        run_extract(archive, tmp_path / "out")


def test_crc_failure_names_the_member(site: list[Path], tmp_path: Path) -> None:
    """Stored (uncompressed) so a flipped byte reaches the CRC check, not the decoder."""
    archive = tmp_path / "site.7z"
    with py7zr.SevenZipFile(archive, "w", filters=[{"id": py7zr.FILTER_COPY}]) as z:
        for path in sorted(site):
            z.write(path, arcname=path.name)
    with py7zr.SevenZipFile(archive) as z:
        offset = z.afterheader
        for info in z.files:
            if info.filename == "Posts.xml":
                break
            offset += info.uncompressed
    data = bytearray(archive.read_bytes())
    data[offset + 5000] ^= 0x01  # a letter of a word in a post body: still well-formed XML
    archive.write_bytes(data)
    with pytest.raises(ArchiveError, match=r"damaged \(CRC check failed for Posts.xml\)"):
        run_extract(archive, tmp_path / "out")


def test_corrupt_compressed_stream(site: list[Path], tmp_path: Path) -> None:
    archive = pack_7z(site, tmp_path / "site.7z")
    data = bytearray(archive.read_bytes())
    for i in range(200, 260):
        data[i] ^= 0xFF
    archive.write_bytes(data)
    with pytest.raises(ArchiveError, match="site.7z is damaged"):
        run_extract(archive, tmp_path / "out")


def test_missing_users_says_what_is_there(site: list[Path], tmp_path: Path) -> None:
    archive = pack_7z([p for p in site if p.name != "Users.xml"], tmp_path / "site.7z")
    with pytest.raises(ArchiveError) as err:
        run_extract(archive, tmp_path / "out")
    message = str(err.value)
    assert "has no Users.xml" in message
    assert "it contains: Badges.xml, Comments.xml, PostHistory.xml, PostLinks.xml, Posts.xml" in (
        message
    )
