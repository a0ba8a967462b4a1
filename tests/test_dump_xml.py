"""Streaming validation of dump XML files, on generated files in the real dump format: the
validator, ``ValidatingStream`` (bytes passed on to a sink, validated in a child process) and
the child's command line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from local.sample_dump import write_site
from stackexchange import dump_xml
from stackexchange.dump_xml import DumpXmlError, ValidatedFile, ValidatingStream, validate_stream


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("site")
    write_site(directory, posts=400, users=60, tag_style="pipe", other_files=False)
    return directory


def validate_file(
    path: Path, name: str | None = None, chunk_bytes: int = dump_xml.PIPE_BYTES
) -> tuple[int, int]:
    """``(bytes, rows)`` of a dump file on disk (``name`` picks the rules; default: its name)."""
    with path.open("rb") as src:
        return validate_stream(src, name or path.name, chunk_bytes)


def expected(path: Path) -> ValidatedFile:
    """What the file holds, computed independently of the code under test."""
    data = path.read_bytes()
    rows = len(ET.fromstring(data).findall("row"))
    return ValidatedFile(path.name, len(data), rows, hashlib.sha256(data).hexdigest())


def validators() -> list[psutil.Process]:
    """This process's children that run the validator."""
    found = []
    for child in psutil.Process().children():
        try:
            if any(part.endswith("dump_xml.py") for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # exited meanwhile
            continue
    return found


class Recorder:
    """A sink that keeps what it is given, or fails on its ``fail_at``-th write (an upload)."""

    def __init__(self, fail_at: int = 0) -> None:
        self.chunks: list[bytes] = []
        self.fail_at = fail_at
        self.error = ConnectionError("the upload of part 3 failed")

    def write(self, data: bytes) -> int:
        if len(self.chunks) + 1 == self.fail_at:
            raise self.error
        self.chunks.append(data)
        return len(data)


def pass_through(stream: ValidatingStream, data: bytes, piece: int = 1000) -> None:
    """Write ``data`` from one reused buffer (the stream must copy what it keeps)."""
    buffer = bytearray()
    for start in range(0, len(data), piece):
        buffer[:] = data[start : start + piece]
        stream.write(buffer)
        buffer[:] = bytes(len(buffer))  # the caller reuses its buffer at once


# --- DumpValidator through validate_stream ------------------------------------------------


@pytest.mark.parametrize("name", ["Posts.xml", "Users.xml"])
def test_real_format_files_validate(site: Path, name: str) -> None:
    path = site / name
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # the real format: BOM, CRLF
    truth = expected(path)
    assert validate_file(path) == (truth.bytes, truth.rows)


@pytest.mark.parametrize(("name", "chunk_bytes"), [("Posts.xml", 7), ("Users.xml", 1)])
def test_chunk_boundaries_do_not_matter(site: Path, name: str, chunk_bytes: int) -> None:
    """Chunks that split the BOM, multi-byte characters, tags and CRLFs."""
    path = site / name
    assert validate_file(path, chunk_bytes=chunk_bytes) == validate_file(path)


def test_angle_tags_validate(tmp_path: Path) -> None:
    write_site(tmp_path, posts=50, users=5, tag_style="angle", other_files=False)
    assert validate_file(tmp_path / "Posts.xml")[1] == expected(tmp_path / "Posts.xml").rows


def test_wrong_root_element(site: Path) -> None:
    with pytest.raises(DumpXmlError, match=r"Users.xml: root element is <posts>, expected <users>"):
        validate_file(site / "Posts.xml", name="Users.xml")


def test_unknown_file_has_no_rules(site: Path) -> None:
    with pytest.raises(ValueError, match="no validation rules for Tags.xml; known: Posts.xml"):
        validate_file(site / "Posts.xml", name="Tags.xml")


def test_truncated_file_is_malformed(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "Posts.xml"
    path.write_bytes((site / "Posts.xml").read_bytes()[:-300])
    with pytest.raises(DumpXmlError, match=r"Posts.xml: malformed XML at line \d+, column \d+"):
        validate_file(path)


def test_garbage_inside_is_malformed(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "Users.xml"
    data = bytearray((site / "Users.xml").read_bytes())
    data[len(data) // 2] = ord("<")
    path.write_bytes(data)
    with pytest.raises(DumpXmlError, match="Users.xml: malformed XML"):
        validate_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\r\n<posts>\r\n</posts>', "no <row>"),
        (b"<posts><row Id='1'/><comment/></posts>", r"unexpected element <comment>"),
        (b"<posts><row Id='1'><b>x</b></row></posts>", r"unexpected element <b>"),
        (b"<row Id='1'/>", r"root element must be <posts>"),
        (b"<!DOCTYPE posts><posts><row Id='1'/></posts>", "declares a DOCTYPE"),
        (
            b"<!DOCTYPE posts [<!ENTITY x SYSTEM 'file:///etc/hostname'>]>"
            b"<posts><row A='&x;'/></posts>",
            "declares a DOCTYPE",
        ),
    ],
    ids=["empty", "no-rows", "other-element", "nested", "row-as-root", "doctype", "external"],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "Posts.xml"
    path.write_bytes(content)
    with pytest.raises(DumpXmlError, match=f"^Posts.xml: .*{message}"):
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


def huge_row(path: Path, attribute_bytes: int, padding_rows: int = 0) -> Path:
    """A Posts.xml whose one row carries an attribute of ``attribute_bytes``, after ordinary
    rows (padding: the whole file is not what is bounded, the line is)."""
    rows = b'  <row Id="1" />\r\n' * padding_rows
    path.write_bytes(b"<posts>\r\n" + rows + b'  <row Id="2" Body="' + b"a" * attribute_bytes
                     + b'" />\r\n</posts>')  # fmt: skip
    return path


def test_a_row_longer_than_the_bound_is_refused(tmp_path: Path) -> None:
    path = huge_row(tmp_path / "Posts.xml", 3 << 20, padding_rows=200_000)
    with path.open("rb") as src, pytest.raises(DumpXmlError) as err:
        validate_stream(src, "Posts.xml", 1 << 16, max_line_bytes=2 << 20)
    assert str(err.value).startswith("Posts.xml: a line longer than 2097152 bytes ends past")
    assert "STACKEXCHANGE_MAX_ROW_BYTES" in str(err.value)
    with path.open("rb") as src:  # the bound refused it, not the content
        assert validate_stream(src, "Posts.xml", 1 << 16, max_line_bytes=4 << 20)[1] == 200_001


def test_the_child_applies_the_row_bound_it_is_given(tmp_path: Path) -> None:
    data = huge_row(tmp_path / "Posts.xml", 3 << 20).read_bytes()
    stream = ValidatingStream("Posts.xml", Recorder(), max_line_bytes=2 << 20)
    pass_through(stream, data, piece=1 << 20)
    with pytest.raises(DumpXmlError, match="a line longer than 2097152 bytes"):
        stream.finish()


# --- ValidatingStream ---------------------------------------------------------------------


def test_stream_passes_every_byte_on_and_reports_the_file(site: Path) -> None:
    data = (site / "Posts.xml").read_bytes()
    out = Recorder()
    stream = ValidatingStream("Posts.xml", out)
    assert len(validators()) == 1
    pass_through(stream, data, piece=4099)
    result = stream.finish()
    assert b"".join(out.chunks) == data
    assert result == expected(site / "Posts.xml")
    assert validators() == []


def test_stream_of_invalid_xml_fails_at_finish(site: Path) -> None:
    data = (site / "Users.xml").read_bytes().replace(b"<row ", b"<wor ", 1)
    out = Recorder()
    stream = ValidatingStream("Users.xml", out)
    pass_through(stream, data)
    with pytest.raises(DumpXmlError, match=r"^Users.xml: unexpected element <wor> inside <users>$"):
        stream.finish()
    assert b"".join(out.chunks) == data  # the sink is not the judge; finish() is
    assert validators() == []


def test_failing_sink_is_reraised_at_finish(site: Path) -> None:
    data = (site / "Posts.xml").read_bytes()
    out = Recorder(fail_at=3)
    stream = ValidatingStream("Posts.xml", out)
    try:
        pass_through(stream, data)
    except ConnectionError as exc:  # write() may already report it
        assert exc is out.error
    with pytest.raises(ConnectionError) as err:
        stream.finish()
    assert err.value is out.error
    assert len(out.chunks) == 2  # nothing written after the failure
    assert validators() == []


def test_child_is_gone_after_close(site: Path) -> None:
    stream = ValidatingStream("Users.xml", Recorder())
    [child] = validators()
    stream.write((site / "Users.xml").read_bytes()[:500])
    stream.close()
    assert not child.is_running()  # exited and reaped, not a zombie
    assert validators() == []


def test_stream_for_an_unknown_file_starts_no_child() -> None:
    with pytest.raises(ValueError, match="no validation rules for Votes.xml"):
        ValidatingStream("Votes.xml", Recorder())
    assert validators() == []


# --- the child's command line -------------------------------------------------------------


@pytest.mark.parametrize("corrupt", [False, True], ids=["valid", "invalid"])
def test_child_reports_one_json_line(site: Path, corrupt: bool) -> None:
    data = (site / "Users.xml").read_bytes()
    if corrupt:
        data = data[:-10]
    done = subprocess.run(
        [sys.executable, "-I", dump_xml.__file__, "Users.xml", str(dump_xml.MAX_LINE_BYTES)],
        input=data,
        capture_output=True,
        check=True,
        timeout=60,
    )
    report = json.loads(done.stdout)
    if corrupt:
        assert report.keys() == {"error"} and report["error"].startswith("Users.xml: malformed")
    else:
        truth = expected(site / "Users.xml")
        assert report == {"bytes": truth.bytes, "rows": truth.rows}
