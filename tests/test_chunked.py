"""One parser of HTTP chunked framing (stockyard.chunked.Dechunker) for request bodies (strict) and
provider answers (lenient): for random chunkings, random damage and random splits of the bytes it
yields the same data and the same refusals as the two parsers it replaced (kept below, verbatim
but for names, as the reference)."""

from __future__ import annotations

import http.client
import io
import re
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockyard.chunked import ChunkError, Dechunker
from stockyard.errors import ClientGone, ProxyError
from stockyard.httphead import MAX_REQUEST_HEAD, HeadError, read_head
from stockyard.server import BODY_BLOCK, CHUNK_LINE_MAX, Handler

# -- the two parsers before (server.Handler._chunked_blocks, upstream._Dechunker) ----------------

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\r\n")


def old_server_blocks(rfile, limit: int, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    total = 0
    while True:
        line = rfile.readline(CHUNK_LINE_MAX + 1)
        if not line.endswith(b"\n") and len(line) <= CHUNK_LINE_MAX:
            raise ClientGone()
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise ProxyError(
                400,
                "malformed chunked request body: a chunk size must be hex digits, "
                "optionally followed by ;extensions, and end with CRLF",
                code="bad_chunked_body",
            )
        size = int(match.group(1), 16)
        if size == 0:
            try:
                read_head(rfile, strict=True, max_bytes=MAX_REQUEST_HEAD)
            except HeadError as exc:
                raise ProxyError(
                    exc.status, f"malformed chunked request body: trailer: {exc}", code="bad_chunked_body"
                ) from None
            return
        if total + size > limit:
            raise ProxyError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        while size > 0:
            data = rfile.read(min(BODY_BLOCK, size))
            if not data:
                raise ClientGone()
            size -= len(data)
            total += len(data)
            if progress:
                progress(total)
            yield data
        end = rfile.read(2)
        if end != b"\r\n":
            if len(end) < 2:
                raise ClientGone()
            raise ProxyError(
                400, "malformed chunked request body: chunk data is not followed by CRLF", code="bad_chunked_body"
            )


class OldDechunker:
    MAX_LINE = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0
        self._crlf = False
        self._trailers = False
        self.ended = False
        self.broken: Exception | None = None

    def feed(self, data: bytes) -> bytes:
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
                        raise http.client.HTTPException("chunk data not followed by CRLF")
                    pos, self._crlf = pos + 2, False
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    if len(buf) - pos > self.MAX_LINE:
                        raise http.client.HTTPException("chunk-size line too long")
                    break
                line, pos = buf[pos:eol].strip(), eol + 1
                if self._trailers:
                    self.ended = not line
                else:
                    size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                    if size < 0:
                        raise ValueError("negative chunk size")
                    self._left, self._trailers = size, size == 0
        finally:
            self._buf = buf[pos:]


# -- random chunkings ----------------------------------------------------------------------------

SIZE_STYLES = ["%x", "%X", "00%x", "%x;ext=1", "%x ;a", " %x", "%x ", "0x%x", "+%x", "-%x", "%x_", "", "%x\r"]
ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"X\r\n", b"\r", b""]
TRAILERS = [b"", b"X-Trailer: done\r\n", b" folded\r\n", b"bad line\r\n", b"X-A: b\n", b"X-Ctl: a\rb\r\n"]


@st.composite
def chunked_bodies(draw) -> bytes:
    """A chunked body, mostly well formed, sometimes damaged, followed by the next request's bytes
    (which no reader may take), or cut short by the end of the connection."""
    parts = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5)):
        good = draw(st.integers(0, 7)) > 0
        style = "%x" if good else draw(st.sampled_from(SIZE_STYLES))
        size = (style % len(data)) if "%" in style else style
        if draw(st.integers(0, 30)) == 0:
            size += ";" + "e" * draw(st.integers(4080, 4100))  # about the line limit
        end = b"\r\n" if good else draw(st.sampled_from(ENDS))
        parts.append(size.encode() + (b"\r\n" if good or draw(st.booleans()) else b"\n") + data + end)
    last = draw(st.sampled_from([b"0\r\n", b"0\r\n", b"0;x\r\n", b"00\r\n", b"0\n"]))
    trailers = b"".join(draw(st.lists(st.sampled_from(TRAILERS), max_size=2)))
    body = b"".join(parts) + last + trailers + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]))
    if draw(st.integers(0, 4)) == 0:
        return body[: draw(st.integers(0, len(body)))]  # the connection ended there
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=60))
    return body + b"GET /next HTTP/1.1\r\n\r\n"


def splits(draw, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]


def server_outcome(blocks: Callable, body: bytes, limit: int) -> tuple:
    """(data, refusal, bytes consumed) of a server reading ``body`` with ``blocks``."""
    rfile, data = io.BufferedReader(io.BytesIO(body), 16), []  # a small buffer: many short reads
    try:
        for block in blocks(rfile, limit):
            data.append(block)
        refusal = None
    except ProxyError as exc:
        refusal = (exc.status, exc.message, exc.code)
    except ClientGone:
        refusal = "gone"
    return b"".join(data), refusal, rfile.tell()


def new_server_blocks(rfile, limit: int) -> Iterator[bytes]:
    return Handler._chunked_blocks(SimpleNamespace(rfile=rfile), limit)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(body=chunked_bodies(), limit=st.sampled_from([10, 50, 10_000]))
def test_request_bodies_read_the_same_refusals_included_and_never_past_their_end(body, limit):
    assert server_outcome(new_server_blocks, body, limit) == server_outcome(old_server_blocks, body, limit)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), body=chunked_bodies(), limit=st.sampled_from([10, 50, 10_000]))
def test_the_strict_parser_is_the_same_for_any_split_of_the_bytes(data, body, limit):
    """Fed in random pieces, the strict parser reads what the server read up to the trailers."""
    old, refusal, _ = server_outcome(old_server_blocks, body, limit)
    parser = Dechunker(strict=True, limit=limit, max_line=CHUNK_LINE_MAX)
    got = b""
    for piece in splits(data.draw, body):
        got += parser.feed(piece)
        if parser.ended or parser.broken:
            break
    assert got == old
    if parser.broken is not None:
        assert isinstance(parser.broken, ChunkError) and refusal[0] == parser.broken.status  # type: ignore[index]
        assert str(parser.broken) in refusal[1] or parser.broken.status == 413  # type: ignore[index]
    elif parser.ended:
        assert refusal is None or "trailer" in refusal[1]  # type: ignore[index]
    else:
        assert refusal == "gone"


@settings(max_examples=400, deadline=None)
@given(data=st.data(), body=chunked_bodies())
def test_answers_read_the_same_for_any_split_of_the_bytes(data, body):
    """The answers' reading: after every piece, the same data, end and refusal as before."""
    old, new = OldDechunker(), Dechunker()
    for piece in splits(data.draw, body):
        assert new.feed(piece) == old.feed(piece)
        assert new.ended == old.ended and (new.broken is None) == (old.broken is None)
        if old.broken is not None:
            assert isinstance(new.broken, type(old.broken)) or isinstance(new.broken, ChunkError)
            break


@pytest.mark.parametrize("line", [b"5_0\r\n", b"0x5\r\n", b"+5\r\n", b" 5 \r\n", b"5\n"])
def test_answers_stay_as_lenient_as_http_client_where_requests_are_refused(line):
    lenient, strict = Dechunker(), Dechunker(strict=True)
    lenient.feed(line)
    strict.feed(line)
    assert lenient.broken is None and lenient.want > 0
    assert isinstance(strict.broken, ChunkError) and strict.broken.status == 400


def test_want_reads_a_strict_body_up_to_its_last_chunk_line_and_no_further():
    parser = Dechunker(strict=True, limit=100)
    assert parser.want == 0  # a size line first
    assert parser.feed(b"5;x\r\n") == b"" and parser.want == 5 + 2
    assert parser.feed(b"hel") == b"hel" and parser.want == 2 + 2
    assert parser.feed(b"lo\r") == b"lo" and parser.want == 1
    assert parser.feed(b"\n") == b"" and parser.want == 0
    assert parser.feed(b"0\r\n") == b"" and parser.ended and parser.broken is None
    too_much = Dechunker(strict=True, limit=100)
    too_much.feed(b"65\r\n")  # 101: refused at the size line, before any data
    assert isinstance(too_much.broken, ChunkError) and too_much.broken.status == 413
