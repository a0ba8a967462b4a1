"""Streaming validation of a dump XML file while it passes through: structure, rows, sha256.

A dump file is ``<root>`` holding one ``<row .../>`` per line. Real dumps start with a UTF-8 BOM,
use CRLF and declare no DOCTYPE, so a DOCTYPE or entity declaration is refused outright (an
entity-expansion file is never expanded). A line (so a row) longer than ``max_line_bytes`` is
refused before expat sees it: expat 2.5 parses one huge attribute in quadratic time (64 MiB: 3 s),
and the largest row of the real dumps here is 20 KB. Nothing is held in memory beyond one chunk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from xml.parsers import expat

ROOTS = {"Posts.xml": "posts", "Users.xml": "users"}
PIPE_BYTES = 1 << 20
QUEUED_CHUNKS = 2  # the decoder hands over chunks of up to 2 MiB
MAX_LINE_BYTES = 16 << 20  # the default of STACKEXCHANGE_MAX_ROW_BYTES


class DumpXmlError(ValueError):
    """The file is not a valid dump file; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ValidatedFile:
    name: str
    bytes: int
    rows: int
    sha256: str


class ByteSink(Protocol):
    def write(self, data: bytes) -> object: ...


class _Structure:
    """expat callbacks: the root element first, then only ``row`` elements; count them.

    Rows are counted on their end events: pyexpat builds no attribute list for those, which
    makes the whole parse ~10% faster than counting start events. Start events are watched
    only until the root is seen, so any other element is caught when it ends.
    """

    def __init__(self, name: str, root: str, parser: expat.XMLParserType) -> None:
        self.name, self.root = name, root
        self.rows = 0
        self._parser = parser
        parser.StartElementHandler = self.start_root
        parser.EndElementHandler = self.end

    def start_root(self, element: str, _attributes: object) -> None:
        if element == "row":
            raise DumpXmlError(f"{self.name}: root element must be <{self.root}>, not <row>")
        if element != self.root:
            raise DumpXmlError(
                f"{self.name}: root element is <{element}>, expected <{self.root}> "
                "(is this the right file of a Stack Exchange dump?)"
            )
        self._parser.StartElementHandler = None

    def end(self, element: str) -> None:
        if element == "row":
            self.rows += 1
        elif element != self.root:
            raise DumpXmlError(f"{self.name}: unexpected element <{element}> inside <{self.root}>")

    def refuse_doctype(self, *_: object) -> None:
        raise DumpXmlError(
            f"{self.name}: declares a DOCTYPE/entities, which real dumps never do; refusing it "
            "(entities are not expanded)"
        )


class DumpValidator:
    """Parses a dump file fed in chunks.

    A parse error is remembered and raised by :meth:`finish`, so the caller can first learn
    whether the bytes themselves were intact (the archive's CRC), which is the better message.
    """

    def __init__(self, name: str, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if name not in ROOTS:
            raise ValueError(f"no validation rules for {name}; known: {', '.join(ROOTS)}")
        self.name, self.max_line_bytes = name, max_line_bytes
        self.bytes = 0
        self._line_start = 0  # where the current line starts (after the last newline)
        self._error: DumpXmlError | None = None
        self._parser = expat.ParserCreate()
        self._structure = _Structure(name, ROOTS[name], self._parser)
        self._parser.StartDoctypeDeclHandler = self._structure.refuse_doctype
        self._parser.EntityDeclHandler = self._structure.refuse_doctype
        self._parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def feed(self, buffer: bytes | bytearray, size: int | None = None) -> None:
        """Parse ``buffer[:size]`` (all of it by default), not copied."""
        size = len(buffer) if size is None else size
        newline = buffer.rfind(b"\n", 0, size)
        if newline >= 0:
            self._line_start = self.bytes + newline + 1
        self.bytes += size
        if self.bytes - self._line_start > self.max_line_bytes and self._error is None:
            self._error = DumpXmlError(
                f"{self.name}: a line longer than {self.max_line_bytes} bytes ends past byte "
                f"{self._line_start}; real dumps hold one row per line, the longest a few "
                "hundred KB, so it is refused (raise STACKEXCHANGE_MAX_ROW_BYTES only if you "
                "trust the source)"
            )
        self._parse(memoryview(buffer)[:size], final=False)

    def _parse(self, data: bytes | memoryview, *, final: bool) -> None:
        if self._error is not None:
            return
        try:
            self._parser.Parse(data, final)
        except expat.ExpatError as exc:
            self._error = DumpXmlError(
                f"{self.name}: malformed XML at line {exc.lineno}, column {exc.offset}: "
                f"{expat.ErrorString(exc.code)}"
            )
        except DumpXmlError as exc:
            self._error = exc

    def finish(self) -> tuple[int, int]:
        """``(bytes, rows)`` of the file, or raise the first problem found."""
        if self.bytes == 0:
            raise DumpXmlError(f"{self.name}: the file is empty")
        self._parse(b"", final=True)
        if self._error is not None:
            raise self._error
        if self._structure.rows == 0:
            raise DumpXmlError(f"{self.name}: <{self._structure.root}> holds no <row> elements")
        return self.bytes, self._structure.rows


class ValidatingStream:
    """Passes a dump file's bytes on to ``out`` while they are hashed and validated.

    Parsing (expat, ~100 MB/s) is the slowest step and holds the GIL; in its own process it
    runs on a second core alongside decompression and the upload. The child is this module
    run as a script (standard library only), fed through a pipe. Hashing, the pipe and ``out``
    are served by a thread, so decompression (which releases the GIL) goes on meanwhile; the
    queue between them bounds the memory.
    """

    def __init__(self, name: str, out: ByteSink, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if name not in ROOTS:
            raise ValueError(f"no validation rules for {name}; known: {', '.join(ROOTS)}")
        self.name, self.out = name, out
        self.bytes = 0
        self._child = subprocess.Popen(
            [sys.executable, "-I", __file__, name, str(max_line_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._child.stdin is not None
        self._pipe: BinaryIO | None = self._child.stdin
        # A pipe holds 64 KiB by default; a larger one lets the child parse while we write
        # (Linux; the most an unprivileged process gets is /proc/sys/fs/pipe-max-size).
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._chunks: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._error: BaseException | None = None
        self._sha256 = hashlib.sha256()
        self._thread = threading.Thread(target=self._drain, name=f"pass-{name}", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        # Immutable bytes (the decoder's output, or a view of it) are queued as they are; a
        # mutable buffer is copied, since its owner may reuse it.
        readonly = isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly)
        self._chunks.put(data if readonly else bytes(data))
        self.bytes += len(data)
        return len(data)

    def _drain(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._error is not None:
                continue  # keep emptying the queue so write() never blocks forever
            self._sha256.update(chunk)
            if self._pipe is not None:
                try:
                    _write_all(self._pipe.fileno(), memoryview(chunk))
                except BrokenPipeError:  # the child died; finish() reports how
                    self._pipe = None
            try:
                self.out.write(chunk)
            except BaseException as exc:  # e.g. an upload failed: stop the pipeline
                self._error = exc

    def close(self) -> None:
        """Flush and close the pipe; the child then reports and exits."""
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()
        if self._pipe is not None:
            with contextlib.suppress(BrokenPipeError):
                self._pipe.close()
            self._pipe = None
        if self._child.poll() is None and self._error is not None:
            self._child.kill()
        self._child.wait()  # its report (one line) fits in the pipe, so it never blocks here

    def finish(self) -> ValidatedFile:
        """What the file holds, or raise the first problem found."""
        self.close()
        if self._error is not None:
            raise self._error
        assert self._child.stdout is not None
        output = self._child.stdout.read()
        if self._child.returncode != 0:
            raise RuntimeError(f"validating {self.name} crashed (exit {self._child.returncode})")
        result = json.loads(output)
        if "error" in result:
            raise DumpXmlError(result["error"])
        if result["bytes"] != self.bytes:
            raise RuntimeError(f"validating {self.name}: the child saw {result['bytes']} bytes "
                               f"of {self.bytes}")  # fmt: skip
        return ValidatedFile(self.name, result["bytes"], result["rows"], self._sha256.hexdigest())


def _write_all(fd: int, view: memoryview) -> None:
    """All of ``view`` to the pipe, without the copy a buffered file would make."""
    while view:
        view = view[os.write(fd, view) :]


def validate_stream(
    stream: BinaryIO | io.RawIOBase,
    name: str,
    chunk_bytes: int = PIPE_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> tuple[int, int]:
    """``(bytes, rows)`` of a dump file read from ``stream`` (``name`` picks the rules)."""
    validator = DumpValidator(name, max_line_bytes)
    buffer = bytearray(chunk_bytes)  # reused: no allocation per chunk
    view = memoryview(buffer)
    while size := stream.readinto(view):
        validator.feed(buffer, size)
    return validator.finish()


def _validate_stdin(name: str, max_line_bytes: int) -> None:
    """The child of ValidatingStream: validate stdin, print the result as one JSON line."""
    try:
        # Unbuffered: each read takes what the pipe holds, no copy through a buffer.
        stdin = sys.stdin.buffer.raw
        size, rows = validate_stream(stdin, name, max_line_bytes=max_line_bytes)
        print(json.dumps({"bytes": size, "rows": rows}))
    except DumpXmlError as exc:
        print(json.dumps({"error": str(exc)}))


if __name__ == "__main__":
    _validate_stdin(sys.argv[1], int(sys.argv[2]))  # ValidatingStream always passes both
