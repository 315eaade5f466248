"""Reading HTTP/1.1 message heads without the ``email`` package.

The standard library parses every request's and every upstream response's headers with
``email.parser`` — measured at about 30% of the proxy's CPU per request. Headers here are a
plain list plus a lower-case index; :class:`Response` and the server's ``parse_request`` use
them, and behave otherwise exactly as ``http.client`` / ``http.server`` do.
"""

from __future__ import annotations

import http.client
import re
from typing import BinaryIO, Iterator, Mapping

MAX_LINE = 65536
MAX_HEADERS = 100
MAX_REQUEST_HEAD = 64 * 1024  # all header lines of one request together
# Fields a request may carry once: framing (smuggling) and who is asking (two readings of one key).
SINGLE_HEADERS = ("content-length", "transfer-encoding", "host", "authorization", "x-api-key", "x-goog-api-key")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but HTAB
_DIGITS = re.compile(r"[0-9]+")
# The common header line in one match: a token name, a value without control characters (HTAB
# allowed; spaces and tabs around it are stripped after). Any other line takes the careful path.
# (One greedy run per part: a long line that fails to match costs linear time, never quadratic.)
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([\t\x20-\x7e\x80-\xff]*)\r?\n")


class HeadError(http.client.HTTPException):
    """A message head that cannot be read: ``status`` is what a server answers (400 or 431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """Header fields in arrival order, looked up case-insensitively (first value wins, as in email)."""

    __slots__ = ("_items", "_index", "repeated")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._index: dict[str, str] = {}
        self.repeated: set[str] = set()  # lower-case names sent more than once
        for name, value in items:
            lowered = name.lower()
            if lowered in self._index:
                self.repeated.add(lowered)
            else:
                self._index[lowered] = value

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._index.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self._index.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def get_all(self, name: str, failobj=None) -> list[str] | None:
        lowered = name.lower()
        values = [v for n, v in self._items if n.lower() == lowered]
        return values or failobj

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def as_dict(self) -> dict[str, str]:
        """A new dict of lower-case name → value, the first value of a repeated name, as :meth:`get` reads it."""
        return dict(self._index)

    def keys(self) -> list[str]:
        return [n for n, _ in self._items]

    def values(self) -> list[str]:
        return [v for _, v in self._items]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer …`` (lower-case header names), or None."""
    value = headers.get("authorization", "")
    return (value[7:].strip() or None) if value[:7].lower() == "bearer " else None


def read_head(fp: BinaryIO, *, strict: bool = False, max_bytes: int = MAX_LINE * MAX_HEADERS) -> Headers:
    """Read header lines up to the blank line, at most ``max_bytes`` in all (else 431).

    ``strict`` is for requests (RFC 9112 §5): a folded line, a name that is not a token, a
    control character in a value (a bare CR above all) or a head cut off by the end of the
    stream is a 400. Otherwise (provider answers) folded lines are joined with a space and a
    field with a control character in it is dropped: it is never relayed.
    """
    items: list[tuple[str, str]] = []
    total = 0
    careful = False  # a line took the careful path: in a provider's answer, check every field at the end
    while True:
        line = fp.readline(MAX_LINE + 1)
        total += len(line)
        if len(line) > MAX_LINE or total > max_bytes:
            raise HeadError(431, f"header section larger than {min(MAX_LINE, max_bytes)} bytes")
        if line in (b"\r\n", b"\n") or (line == b"" and not strict):
            break
        field = _FIELD.fullmatch(line)
        if field is not None:
            items.append((field[1].decode("ascii"), field[2].decode("iso-8859-1").strip(" \t")))
            if len(items) > MAX_HEADERS:
                raise HeadError(431, f"more than {MAX_HEADERS} headers")
            continue
        careful = True
        if not line.endswith(b"\n"):
            raise HeadError(400, "header section ended before its blank line")
        text = line.decode("iso-8859-1")
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
        if text[:1] in (" ", "\t"):
            if strict:
                raise HeadError(400, "malformed header: obsolete line folding is not accepted")
            if not items:
                raise HeadError(400, "malformed header: continuation of nothing")
            name, value = items[-1]
            items[-1] = (name, value + " " + text.strip(" \t"))
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise HeadError(400, "malformed header line")
        value = value.strip(" \t")
        if strict and not _TOKEN.fullmatch(name):
            raise HeadError(400, "malformed header name")
        if strict and _CONTROL.search(value):
            raise HeadError(400, f"the value of header {name[:64]!r} holds a control character (such as a bare CR)")
        items.append((name, value))
        if len(items) > MAX_HEADERS:
            raise HeadError(431, f"more than {MAX_HEADERS} headers")
    if careful and not strict:
        items = [(n, v) for n, v in items if not (_CONTROL.search(n) or _CONTROL.search(v))]
    return Headers(items)


def body_framing(headers: Headers, version: str) -> int | None:
    """How a request's body is framed (RFC 9112 §6): its Content-Length, 0 for none, None for chunked.

    Anything two parties could read differently is a 400: a repeated framing or identity
    header, Content-Length with Transfer-Encoding, a coding other than exactly ``chunked``,
    Transfer-Encoding on HTTP/1.0, a length that is not plain digits, a 1.1 request without Host.
    """
    for name in SINGLE_HEADERS if headers.repeated else ():
        if name in headers.repeated:
            raise HeadError(400, f"the {name} header is sent more than once")
    if version == "HTTP/1.1" and "host" not in headers:
        raise HeadError(400, "an HTTP/1.1 request needs a Host header")
    coding, length = headers.get("transfer-encoding"), headers.get("content-length")
    if coding is not None:
        if length is not None:
            raise HeadError(400, "Content-Length and Transfer-Encoding together are ambiguous; send one")
        if coding.lower() != "chunked" or version != "HTTP/1.1":
            raise HeadError(400, "the only Transfer-Encoding accepted is chunked, on HTTP/1.1")
        return None
    if length is None:
        return 0
    if not _DIGITS.fullmatch(length):
        raise HeadError(400, "Content-Length is not a valid number")
    return int(length) if len(length) <= 18 else 10**18


class Response(http.client.HTTPResponse):
    """An ``HTTPResponse`` whose head is read by :func:`read_head` (same semantics as ``begin``)."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != 100:
                break
            read_head(self.fp)  # the head of an interim 100 Continue
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = read_head(self.fp)
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding) and encoding.lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                n = int(length)
            except ValueError:
                n = -1
            self.length = n if n >= 0 else None
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True
