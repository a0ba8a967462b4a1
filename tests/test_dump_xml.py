"""Streaming validation of dump XML files, on generated files in the real dump format."""

from __future__ import annotations

import hashlib
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from local.sample_dump import write_site
from stackexchange.dump_xml import DumpXmlError, ValidatingWriter, validate_file


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("site")
    write_site(directory, posts=400, users=60, tag_style="pipe", other_files=False)
    return directory


def expected(path: Path) -> tuple[int, int, str]:
    """Rows, bytes and sha256 computed independently of the code under test."""
    data = path.read_bytes()
    return len(ET.fromstring(data).findall("row")), len(data), hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", ["Posts.xml", "Users.xml"])
def test_real_format_files_validate(site: Path, name: str) -> None:
    path = site / name
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # the real format: BOM, CRLF
    result = validate_file(path)
    assert (result.rows, result.bytes, result.sha256) == expected(path)


def test_tiny_chunks_give_the_same_result(site: Path) -> None:
    path = site / "Posts.xml"
    assert validate_file(path, chunk_bytes=7) == validate_file(path)


def test_angle_tags_validate(tmp_path: Path) -> None:
    write_site(tmp_path, posts=50, users=5, tag_style="angle", other_files=False)
    assert validate_file(tmp_path / "Posts.xml").rows == expected(tmp_path / "Posts.xml")[0]


def test_writer_writes_the_bytes_it_validates(site: Path, tmp_path: Path) -> None:
    data = (site / "Users.xml").read_bytes()
    writer = ValidatingWriter("Users.xml", tmp_path / "Users.xml")
    for start in range(0, len(data), 1000):
        writer.write(bytearray(data[start : start + 1000]))
    result = writer.finish()
    assert (tmp_path / "Users.xml").read_bytes() == data
    assert (result.rows, result.bytes, result.sha256) == expected(site / "Users.xml")


def test_wrong_root_element(site: Path) -> None:
    with pytest.raises(DumpXmlError, match=r"Users.xml: root element is <posts>, expected <users>"):
        validate_file(site / "Posts.xml", name="Users.xml")


def test_truncated_file_is_malformed(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "Posts.xml"
    path.write_bytes((site / "Posts.xml").read_bytes()[:-300])
    with pytest.raises(DumpXmlError, match=r"Posts.xml: malformed XML at line \d+"):
        validate_file(path)


def test_garbage_inside_is_malformed(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "Users.xml"
    data = bytearray((site / "Users.xml").read_bytes())
    data[len(data) // 2] = ord("<")
    path.write_bytes(data)
    with pytest.raises(DumpXmlError, match="malformed XML"):
        validate_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\r\n<posts>\r\n</posts>', "no <row>"),
        (b"<posts><row Id='1'/><comment/></posts>", r"unexpected element <comment>"),
        (b"<posts><row Id='1'><b>x</b></row></posts>", r"unexpected element <b>"),
        (b"<row Id='1'/>", r"root element must be <posts>"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "Posts.xml"
    path.write_bytes(content)
    with pytest.raises(DumpXmlError, match=message):
        validate_file(path)


def test_entity_expansion_is_refused_not_expanded(tmp_path: Path) -> None:
    entities = "".join(
        f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' if i else '<!ENTITY e0 "lol">' for i in range(10)
    )
    path = tmp_path / "Posts.xml"
    path.write_text(
        f"<?xml version='1.0'?><!DOCTYPE posts [{entities}]><posts><row A='&e9;'/></posts>"
    )
    started = time.monotonic()
    with pytest.raises(DumpXmlError, match="DOCTYPE"):
        validate_file(path)
    assert time.monotonic() - started < 1  # refused at the declaration, 10**9 'lol's never built
