"""Reading HTTP/1.1 message heads without the ``email`` package.

The standard library parses every request's and every upstream response's headers with
``email.parser`` — measured at about 30% of the proxy's CPU per request. Headers here are a
plain list plus a lower-case index; :class:`Response` and the server's ``parse_request`` use
them, and behave otherwise exactly as ``http.client`` / ``http.server`` do.
"""

from __future__ import annotations

import http.client
from typing import BinaryIO, Iterator, Mapping

MAX_LINE = 65536
MAX_HEADERS = 100


class HeadError(http.client.HTTPException):
    """A message head that cannot be read: ``status`` is what a server answers (400 or 431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """Header fields in arrival order, looked up case-insensitively (first value wins, as in email)."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._index: dict[str, str] = {}
        for name, value in items:
            self._index.setdefault(name.lower(), value)

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


def read_head(fp: BinaryIO) -> Headers:
    """Read header lines up to the blank line; obsolete line folding is joined with a space."""
    items: list[tuple[str, str]] = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeadError(431, "header line too long")
        if line in (b"\r\n", b"\n", b""):
            return Headers(items)
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):
            if not items:
                raise HeadError(400, "malformed header: continuation of nothing")
            name, value = items[-1]
            items[-1] = (name, f"{value} {text.strip()}")
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise HeadError(400, "malformed header line")
        items.append((name, value.strip()))
        if len(items) > MAX_HEADERS:
            raise HeadError(431, f"more than {MAX_HEADERS} headers")


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
        self.headers = self.msg = read_head(self.fp)  # type: ignore[assignment]
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
