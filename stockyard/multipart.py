"""Streamed ``multipart/form-data`` uploads: parsed as they arrive, never held in memory whole.

Audio and image uploads (and files) can be hundreds of megabytes. :func:`receive` reads the
client's body block by block, parses the parts as they stream past, and keeps:

- small text fields (``model``, ``purpose``, ``prompt``, …) in memory, each capped;
- file parts as metadata only (field name, filename, content type, size); their bytes go to a
  private spool file (``tempfile.TemporaryFile`` in a 0700 folder: mode 0600, and on Linux it
  never has a name, so nothing is left behind even if the process dies).

The parser is strict: a bad or missing boundary, a missing closing delimiter, a part without
``Content-Disposition: form-data; name=…`` (or one naming itself by RFC 2231's ``name*``, which
parsers that follow it read as another name: the parts are relayed as they came), too many parts
or part headers → a 400 naming the
problem; a body beyond the limit → 413. Never a 500, never a wait beyond the body's end.

The API::

    with receive(blocks, content_type, limit=..., folder=...) as upload:  # the spool goes on close
        upload.fields          # {"model": "whisper-1", "timestamp_granularities[]": ["word", "segment"]}
        upload.get("model")    # one field's text (None if absent; a 400 if sent more than once)
        upload.refuse_repeated()  # a 400 duplicate_key for any text field sent twice (but `name[]`)
        upload.refuse_stray_files()  # a 400 for a file part under a text field's name (`model`)
        upload.files           # [FilePart(name="file", filename="a.wav", content_type="audio/wav", size=…)]
        upload.size            # bytes the client sent
        upload.metadata()      # JSON-able fields + file metadata: what a trace stores, never file bytes
        body = upload.encode({"model": "whisper-1"})  # the form again, fields replaced or added
        body.content_type, body.length                # headers for the upstream request
        body.read(n), body.seek(0)                    # a file-like body for http.client, from the spool
        upload.open(upload.files[0]).read()           # one file's bytes, from the spool

The upstream body is re-encoded from the parts (same boundary, the parts' own headers, in the
client's order) so that routing can send the upstream model name in the ``model`` field.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator
from urllib.parse import unquote

from .errors import ProxyError
from .loglimit import Throttle

log = logging.getLogger("stockyard")

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # OpenAI's file limit
MAX_FIELD_BYTES = 64 * 1024  # one text field
MAX_FIELDS_BYTES = 1024 * 1024  # all text fields together
MAX_PARTS = 256
MAX_PART_HEADERS = 16
MAX_PART_HEAD_BYTES = 8 * 1024
MAX_PREAMBLE_BYTES = 64 * 1024
MAX_PADDING = 64  # transport padding (spaces, tabs) after a boundary
BLOCK = 64 * 1024

# RFC 2046 §5.1.1: 1-70 bchars, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER_NAME = re.compile(_TOKEN)
_PARAM = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN})\s*')
_QUOTED_PAIR = re.compile(r"\\(.)")
_EXT_VALUE = re.compile(r"(?i)utf-8'[^']*'(.*)")


# The form fields that carry files in OpenAI's APIs (audio ``file``; images ``image``, ``image[]``,
# ``mask``; ``/v1/files``' ``file``): a part with a filename under any other name is refused.
FILE_FIELDS = ("file", "image", "image[]", "mask")


def _bad(message: str) -> ProxyError:
    return ProxyError(400, f"malformed multipart/form-data body: {message}", code="invalid_multipart")


@dataclass(frozen=True)
class FilePart:
    """A file part as metadata: its bytes stay in the spool (``offset``, ``size``)."""

    name: str
    filename: str
    content_type: str | None
    size: int
    offset: int = field(default=0, repr=False)

    def describe(self) -> dict:
        return {"name": self.name, "filename": self.filename, "content_type": self.content_type, "size": self.size}


@dataclass
class _Part:
    head: bytes  # the part's header lines as sent, each ending in CRLF
    name: str
    file: FilePart | None = None
    value: bytearray = field(default_factory=bytearray)  # a text field's bytes


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or a 400 saying what is wrong."""
    kind, _, rest = (content_type or "").partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise ProxyError(
            400,
            f"this endpoint takes multipart/form-data, not {kind.strip()[:100] or 'a body without Content-Type'!r}",
            code="invalid_content_type",
        )
    params = _params(rest, "the Content-Type header")
    boundary = params.get("boundary")
    if boundary is None:
        raise _bad("the Content-Type header has no boundary parameter")
    if not _BOUNDARY.fullmatch(boundary):
        raise _bad("the boundary must be 1 to 70 letters, digits or '()+_,-./:=? and not end in a space")
    return boundary.encode("ascii")


def _params(text: str, where: str) -> dict[str, str]:
    """``key=value; …`` parameters (after the first ``;``; token or quoted string), each key once,
    names lower-cased."""
    found: dict[str, str] = {}
    pos = 0
    text = ";" + text.rstrip() if text.strip() else ""
    while pos < len(text):
        match = _PARAM.match(text, pos)
        if match is None:
            raise _bad(f"{where} has a malformed parameter near {text[pos : pos + 40]!r}")
        key, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        if key in found:
            raise _bad(f"{where} has the parameter {key!r} twice")
        found[key] = value
        pos = match.end()
    return found


def _part_head(head: bytes) -> tuple[str, str | None, str | None]:
    """(name, filename or None, content type or None) from a part's header block."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("part headers are not UTF-8") from None
    lines = text.split("\r\n")[:-1] if text else []
    if len(lines) > MAX_PART_HEADERS:
        raise _bad(f"a part has more than {MAX_PART_HEADERS} headers")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name) or "\r" in value or "\n" in value:
            raise _bad(f"a part header is not 'Name: value': {line[:60]!r}")
        key = name.lower()
        if key in headers:
            raise _bad(f"a part has the header {name!r} twice")
        headers[key] = value.strip(" \t")
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise _bad("a part has no Content-Disposition header")
    kind, _, rest = disposition.partition(";")
    if kind.strip().lower() != "form-data":
        raise _bad(f"a part's Content-Disposition is {kind.strip()[:40]!r}, not form-data")
    params = _params(rest, "a part's Content-Disposition")
    extended = next((key for key in params if "*" in key and key != "filename*"), None)
    if extended is not None:  # RFC 2231's name*, name*0…: a parser that follows it reads another name
        raise _bad(f'a part\'s Content-Disposition has the parameter {extended!r}: send its name as name="…"')
    if "name" not in params:
        raise _bad("a part's Content-Disposition has no name")
    filename = params.get("filename")
    if "filename*" in params:  # RFC 5987: UTF-8''percent-encoded
        ext = _EXT_VALUE.fullmatch(params["filename*"])
        if ext is None:
            raise _bad("a part's filename* is not UTF-8''…")
        try:
            filename = unquote(ext.group(1), errors="strict")
        except UnicodeDecodeError:
            raise _bad("a part's filename* is not UTF-8") from None
    return params["name"], filename, headers.get("content-type")


class _Parser:
    """The multipart state machine: fed blocks, it writes file bytes to ``spool`` as they pass."""

    def __init__(self, boundary: bytes, spool: IO[bytes]) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.boundary = boundary
        self.spool = spool
        self.spooled = 0
        self.parts: list[_Part] = []
        self.field_bytes = 0
        self.state = "preamble"
        self.buf = b"\r\n"  # the first boundary may open the body: as if a CRLF came before it
        self.skipped = 0  # preamble bytes seen
        self.part: _Part | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.buf and self._step():
            pass

    def end(self) -> None:
        self.feed(b"")
        if self.state == "preamble":
            raise _bad(f"no opening boundary '--{self.boundary.decode()}' found")
        if self.state != "epilogue":
            raise _bad(f"the body ended before the closing boundary '--{self.boundary.decode()}--'")

    def _step(self) -> bool:
        """Consume what the buffer allows in the current state; False when more bytes are needed."""
        if self.state in ("preamble", "body"):
            return self._data()
        if self.state == "after_boundary":
            return self._after_boundary()
        if self.state == "head":
            return self._head()
        self.buf = b""  # epilogue: ignored
        return False

    def _data(self) -> bool:
        at = self.buf.find(self.delimiter)
        if at < 0:
            keep = len(self.delimiter) - 1
            if len(self.buf) > keep:
                self._emit(self.buf[: len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep :]
            return False
        self._emit(self.buf[:at])
        self.buf = self.buf[at + len(self.delimiter) :]
        self._close_part()
        self.state = "after_boundary"
        return True

    def _emit(self, data: bytes) -> None:
        if self.state == "preamble":
            self.skipped += len(data)
            if self.skipped > MAX_PREAMBLE_BYTES:
                raise _bad(f"no opening boundary '--{self.boundary.decode()}' in the first {MAX_PREAMBLE_BYTES} bytes")
            return
        part = self.part
        assert part is not None
        if part.file is not None:
            self.spool.write(data)
            self.spooled += len(data)
            return
        part.value += data
        self.field_bytes += len(data)
        if len(part.value) > MAX_FIELD_BYTES:
            raise _bad(f"the field {part.name[:100]!r} is longer than {MAX_FIELD_BYTES} bytes")
        if self.field_bytes > MAX_FIELDS_BYTES:
            raise _bad(f"the text fields together are longer than {MAX_FIELDS_BYTES} bytes")

    def _close_part(self) -> None:
        part = self.part
        if part is not None and part.file is not None:
            f = part.file
            part.file = FilePart(f.name, f.filename, f.content_type, self.spooled - f.offset, f.offset)
        self.part = None

    def _after_boundary(self) -> bool:
        """After a delimiter: ``--`` closes the body, else optional padding and CRLF open a part."""
        if len(self.buf) < 2:
            return False
        if self.buf.startswith(b"--"):
            self.state, self.buf = "epilogue", b""
            return False
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > MAX_PADDING or self.buf.strip(b" \t"):
                raise _bad("a boundary is followed by something other than CRLF or '--'")
            return False
        if self.buf[:end].strip(b" \t"):
            raise _bad("a boundary is followed by something other than CRLF or '--'")
        if end > MAX_PADDING:
            raise _bad("too much padding after a boundary")
        self.buf = self.buf[end + 2 :]
        self.state = "head"
        return True

    def _head(self) -> bool:
        if self.buf.startswith(b"\r\n"):
            end, head = 0, b""
        else:
            at = self.buf.find(b"\r\n\r\n")
            if at < 0:
                if len(self.buf) > MAX_PART_HEAD_BYTES:
                    raise _bad(f"a part's headers are longer than {MAX_PART_HEAD_BYTES} bytes")
                return False
            end, head = at + 2, self.buf[: at + 2]
        if len(head) > MAX_PART_HEAD_BYTES:
            raise _bad(f"a part's headers are longer than {MAX_PART_HEAD_BYTES} bytes")
        if len(self.parts) >= MAX_PARTS:
            raise _bad(f"more than {MAX_PARTS} parts")
        name, filename, content_type = _part_head(head)
        part = _Part(head, name)
        if filename is not None:
            part.file = FilePart(name, filename, content_type, 0, self.spooled)
        self.parts.append(part)
        self.part = part
        self.buf = self.buf[end + 2 :]
        self.state = "body"
        return True


class Upload:
    """A received form: text fields in memory, file bytes in the spool until :meth:`close`."""

    def __init__(self, boundary: bytes, parts: list[_Part], size: int, spool: IO[bytes]) -> None:
        self.boundary = boundary
        self._parts = parts
        self.size = size
        self._spool = spool
        self.files = [p.file for p in parts if p.file is not None]
        self.fields: dict[str, str | list[str]] = {}
        for p in parts:
            if p.file is not None:
                continue
            try:
                text = p.value.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"the field {p.name[:100]!r} is not UTF-8 text") from None
            seen = self.fields.get(p.name)
            if seen is None:
                self.fields[p.name] = text
            else:
                self.fields[p.name] = [*([seen] if isinstance(seen, str) else seen), text]

    def get(self, name: str) -> str | None:
        """The one value of field ``name`` (None when absent; a 400 when it was sent more than once)."""
        value = self.fields.get(name)
        if isinstance(value, list):
            raise ProxyError(400, f"the field {name!r} was sent more than once", param=name, code="invalid_multipart")
        return value

    def repeated(self) -> str | None:
        """The first name the form sends more than once as a text field (or as a text field and a
        file), None if none: a list's name ends in ``[]`` (OpenAI's forms send a list as repeated
        ``name[]`` parts: ``timestamp_granularities[]``, ``include[]``, ``image[]``), and a file
        field may repeat (images)."""
        seen: dict[str, bool] = {}  # name → a text part had it
        for p in self._parts:
            if p.name.endswith("[]"):
                continue
            text = p.file is None
            if p.name in seen and (text or seen[p.name]):
                return p.name
            seen[p.name] = seen.get(p.name, False) or text
        return None

    def refuse_repeated(self) -> None:
        """A 400 for a field sent twice: the proxy reads one value and relays every part, so what it
        checked (``n``, ``response_format``) need not be what the provider reads."""
        name = self.repeated()
        if name is not None:
            raise ProxyError(
                400,
                f"request form names {name[:64]!r} twice; send each field once "
                "(a list's field name ends in '[]', as in 'timestamp_granularities[]')",
                param=name[:64],
                code="duplicate_key",
            )

    def refuse_stray_files(self, names: tuple[str, ...] = FILE_FIELDS) -> None:
        """A 400 for a file part under a name that is not a file field (a ``model`` or ``n`` sent
        with a filename): the checks read text fields only, and a provider's parser may read that
        part as the field, so what was checked (the model a key may use, its budget) would not be
        what runs."""
        for f in self.files:
            if f.name not in names:
                raise ProxyError(
                    400,
                    f"the form sends a file under {f.name[:64]!r}; files go only under {', '.join(names)}",
                    param=f.name[:64],
                    code="invalid_multipart",
                )

    def metadata(self) -> dict:
        """What a trace stores: the fields and the files' metadata, never a file's bytes."""
        return {"fields": self.fields, "files": [f.describe() for f in self.files], "size": self.size}

    def encode(self, fields: dict[str, str] | None = None) -> "Encoded":
        """The form for upstream: every part in order, ``fields`` replacing (or appended as) text fields."""
        replace = dict(fields or {})
        segments: list[bytes | tuple[int, int]] = []
        opening = b"--" + self.boundary + b"\r\n"
        for p in self._parts:
            segments.append(opening + p.head + b"\r\n")
            if p.file is not None:
                segments += [(p.file.offset, p.file.size), b"\r\n"]
            else:
                value = self._checked(replace.pop(p.name)) if p.name in replace else bytes(p.value)
                segments.append(value + b"\r\n")
        for name, text in replace.items():
            quoted = name.replace("\\", "\\\\").replace('"', '\\"')
            head = f'Content-Disposition: form-data; name="{quoted}"\r\n'.encode()
            segments.append(opening + head + b"\r\n" + self._checked(text) + b"\r\n")
        segments.append(b"--" + self.boundary + b"--\r\n")
        return Encoded(f"multipart/form-data; boundary={self.boundary.decode()}", segments, self._spool)

    def _checked(self, value: str) -> bytes:
        """A field value to write into the form (a module's change, the routed model name), refused
        with a 400 if it would end its part early (it holds the form's delimiter)."""
        data = value.encode()
        if b"\r\n--" + self.boundary in b"\r\n" + data:
            raise _bad("a form field's value (as routed or changed) contains the form's boundary; use another boundary")
        return data

    def open(self, part: FilePart) -> "Encoded":
        """A reader of one file part's bytes (from the spool)."""
        return Encoded(part.content_type or "application/octet-stream", [(part.offset, part.size)], self._spool)

    def close(self) -> None:
        """Delete the spool (idempotent)."""
        self._spool.close()

    def __enter__(self) -> "Upload":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Encoded(io.RawIOBase):
    """A body made of byte strings and spool ranges, read in blocks: ``read(n)``, ``seek(0)``, ``length``."""

    def __init__(self, content_type: str, segments: list[bytes | tuple[int, int]], spool: IO[bytes]) -> None:
        super().__init__()
        self.content_type = content_type
        self._segments = segments
        self._spool = spool
        self.length = sum(s[1] if isinstance(s, tuple) else len(s) for s in segments)
        self._at = (0, 0)  # (segment index, offset inside it)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:
            raise io.UnsupportedOperation("only seek(0) (to send the body again)")
        self._at = (0, 0)
        return 0

    def read(self, size: int = -1) -> bytes:
        out: list[bytes] = []
        want = self.length if size is None or size < 0 else size
        index, offset = self._at
        while want > 0 and index < len(self._segments):
            segment = self._segments[index]
            if isinstance(segment, bytes):
                piece = segment[offset : offset + want]
            else:
                start, length = segment
                piece = os.pread(self._spool.fileno(), min(want, length - offset, BLOCK * 4), start + offset)
                if not piece and length - offset > 0:
                    raise OSError("the upload spool is shorter than its parts")
            out.append(piece)
            want -= len(piece)
            offset += len(piece)
            seg_len = segment[1] if isinstance(segment, tuple) else len(segment)
            if offset >= seg_len:
                index, offset = index + 1, 0
        self._at = (index, offset)
        return b"".join(out)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _new_spool(folder: Path | None) -> IO[bytes]:
    """An anonymous file for a body's bytes, in ``folder`` (made private) or the system's temp folder."""
    if folder is not None:
        make_private_folder(folder)
    return tempfile.TemporaryFile(dir=folder, prefix="stockyard-upload-")


def _fed(blocks: Iterable[bytes], limit: int, take: Callable[[bytes], object], finish: Callable[[], object]) -> int:
    """Hand ``blocks`` to ``take`` as they arrive, up to ``limit`` bytes in all (413 beyond), then
    ``finish`` (the spool's flush); their size. A write the spool's disk refuses is :func:`spool_full`'s 503."""
    size = 0
    try:
        for block in blocks:
            size += len(block)
            if size > limit:
                raise too_large(limit)
            take(block)
        finish()
    except OSError as exc:  # only the spool's writes: the client's socket reads raise ClientGone
        raise spool_full(exc) from None
    return size


_SPOOL_FULL_LOG = Throttle()


def spool_full(exc: OSError) -> ProxyError:
    """The 503 of an upload whose spool could not be written (its disk full, or a file size limit):
    the server's room, not the request, is short, so no traceback; said in the log once a minute."""
    _SPOOL_FULL_LOG.say(log, logging.WARNING, "an upload could not be spooled in uploads/ beside the database: %s", exc)
    return ProxyError(
        503,
        "the server has no room to spool this upload (its disk is full); try again later",
        code="upload_spool_full",
    )


def receive(blocks: Iterable[bytes], content_type: str | None, *, limit: int, folder: Path | None = None) -> Upload:
    """Parse a multipart body from ``blocks`` as it arrives, spooling file bytes to ``folder``.

    A 400 for a malformed body or Content-Type, a 413 beyond ``limit`` bytes; on any error
    (the client leaving included) the spool is gone before this returns.
    """
    boundary = boundary_of(content_type)
    spool = _new_spool(folder)
    try:
        parser = _Parser(boundary, spool)

        def finish() -> None:
            parser.end()
            spool.flush()

        size = _fed(blocks, limit, parser.feed, finish)
        return Upload(boundary, parser.parts, size, spool)
    except BaseException:
        spool.close()
        raise


class Spooled:
    """A body of any type, spooled whole to a private file as it arrived (:func:`spool_body`):
    ``with spooled as (file, size)``; the file goes on exit."""

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file = file
        self.size = size

    def __enter__(self) -> tuple[IO[bytes], int]:
        return self.file, self.size

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def spool_body(blocks: Iterable[bytes], *, limit: int, folder: Path | None = None) -> Spooled:
    """``blocks`` written to a spool as they arrive (never held in memory), up to ``limit`` bytes
    (413 beyond); on any error the spool is gone before this returns."""
    spool = _new_spool(folder)
    try:
        size = _fed(blocks, limit, spool.write, spool.flush)
        return Spooled(spool, size)
    except BaseException:
        spool.close()
        raise


def too_large(limit: int, setting: str = "STOCKYARD_MAX_UPLOAD_BYTES") -> ProxyError:
    """The 413 for an upload past ``limit``, naming the ``setting`` that sets it (none: the endpoint's own)."""
    named = f" ({setting})" if setting else " (this endpoint's bound)"
    return ProxyError(413, f"the upload exceeds the limit of {limit} bytes{named}", code="request_too_large")


def make_private_folder(folder: Path) -> None:
    """The spool folder, 0700 (created on first use)."""
    from .store.files import make_folder

    make_folder(folder)


def spool_folder(db_path: Path) -> Path:
    """Where uploads are spooled: ``uploads/`` beside the database (a disk the operator chose, not a tmpfs)."""
    return db_path.parent / "uploads"


def iter_blocks(stream: IO[bytes], length: int) -> Iterator[bytes]:
    """``length`` bytes of ``stream`` in blocks (a test and CLI helper)."""
    while length > 0:
        data = stream.read(min(BLOCK, length))
        if not data:
            return
        length -= len(data)
        yield data
