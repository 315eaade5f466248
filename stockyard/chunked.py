"""HTTP/1.1 chunked framing (RFC 9112 §7.1) taken off bytes as they come: one parser for the
request bodies the server reads and the provider answers the upstream pool and the stream relay
read (every event of every stream passes it, so its loop stays small).

Two readings of the one framing:

- answers (the default) are read as leniently as ``http.client`` reads them: a size is what
  ``int(…, 16)`` makes of the text before ``;``, trailer lines are skipped up to the blank one;
- request bodies (``strict=True``) are what a server must insist on, or a proxy in front of it
  could read another framing (smuggling): hex digits only (at most 16), extensions of visible
  characters, CRLF; the running total of the sizes never passes ``limit`` (refused at the size
  line, before the data is read); the parser ends at the last chunk's size line and leaves the
  trailer section to the caller's strict head reader (``httphead.read_head``). :attr:`want` says
  how much to read next without reading past the body (a pipelined request may follow it).
"""

from __future__ import annotations

import http.client
import re

MAX_LINE = 4096  # a chunk-size line (with its extensions) or trailer line longer than this is refused
# RFC 9112 §7.1: chunk-size (hex digits, bounded) [; extensions] CRLF; no sign, no spaces before it.
_STRICT_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\r\n")
BAD_SIZE = "a chunk size must be hex digits, optionally followed by ;extensions, and end with CRLF"
BAD_END = "chunk data is not followed by CRLF"


class ChunkError(http.client.HTTPException):
    """Framing that is not chunked HTTP (``status`` 400), or a body past its limit (413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dechunker:
    """``feed`` returns the data of every chunk (or part of one) the bytes complete; ``ended`` once
    the framing ended (see the module's docstring for where); ``broken`` holds the refusal."""

    def __init__(self, *, strict: bool = False, limit: int | None = None, max_line: int = MAX_LINE) -> None:
        self.strict = strict
        self.limit = limit  # strict only: the most data bytes the chunks may announce in all
        self.max_line = max_line
        self._buf = b""
        self._left = 0  # data bytes of the current chunk still to come
        self._crlf = False  # the current chunk's data is done; its CRLF is next
        self._trailers = False  # the last chunk came: trailer lines until a blank one
        self._total = 0  # data bytes the chunks so far announced
        self.ended = False
        self.broken: Exception | None = None  # bad framing: raised once the data before it is relayed

    @property
    def want(self) -> int:
        """How many bytes may be read next without passing the end of the body: the rest of the
        chunk's data and its CRLF, or 0 when a line comes next (read up to its LF)."""
        if self._left:
            return self._left + 2
        return 2 - len(self._buf) if self._crlf else 0

    def feed(self, data: bytes) -> bytes:
        """The chunk data ``data`` completes. Bad framing sets ``broken`` (for the caller to raise)
        instead of raising here, so the data before it is still relayed."""
        self._buf += data
        out: list[bytes] = []
        try:
            self._parse(out)
        except (ValueError, http.client.HTTPException) as exc:
            self.broken = exc
        return b"".join(out)

    def _parse(self, out: list[bytes]) -> None:
        buf, pos = self._buf, 0
        try:
            while not self.ended:
                if self._left:
                    take = buf[pos : pos + self._left]
                    out.append(take)
                    pos += len(take)
                    self._left -= len(take)
                    if self._left:
                        break
                    self._crlf = True
                if self._crlf:
                    if len(buf) - pos < 2:
                        break
                    if buf[pos : pos + 2] != b"\r\n":
                        raise ChunkError(400, BAD_END)
                    pos, self._crlf = pos + 2, False
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    if len(buf) - pos > self.max_line:
                        raise ChunkError(400, BAD_SIZE if self.strict else "chunk-size line too long")
                    break
                if self.strict:
                    self._strict_size(buf[pos : eol + 1])
                    pos = eol + 1
                    continue
                line, pos = buf[pos:eol].strip(), eol + 1
                if self._trailers:
                    self.ended = not line
                else:
                    size = int(line.split(b";", 1)[0].strip() or b"x", 16)  # ValueError: not a chunk size
                    if size < 0:
                        raise ValueError("negative chunk size")
                    self._left, self._trailers = size, size == 0
        finally:
            self._buf = buf[pos:]

    def _strict_size(self, line: bytes) -> None:
        """A request body's chunk-size line (with its CRLF): the next chunk's size, or the end."""
        match = _STRICT_SIZE.fullmatch(line) if len(line) <= self.max_line + 1 else None
        if match is None:
            raise ChunkError(400, BAD_SIZE)
        size = int(match.group(1), 16)
        if size == 0:
            self.ended = True  # the trailer section is the caller's to read
            return
        if self.limit is not None and self._total + size > self.limit:
            raise ChunkError(413, f"the chunks pass the limit of {self.limit} bytes")
        self._total += size
        self._left = size
