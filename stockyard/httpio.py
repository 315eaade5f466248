"""The HTTP seam between the server and its route handlers: a :class:`Request` in, a :class:`Response` out.

Handlers (admin API, console, operational routes) never touch the connection: they read a
Request and return a Response, and the server writes it (head and body in one write).
Proxied calls stream and answer through the server's reply protocol instead (proxy.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable
from urllib.parse import parse_qs, urlsplit

from .errors import ProxyError

if TYPE_CHECKING:
    from .multipart import Spooled, Upload


# A JSON value costs its parser 64-100 bytes however few it took to send (``{}``, ``[]``, ``1``): a
# 32 MiB body of them took ~900 MB. A million is several times what a real request holds (300,000
# token ids of an embeddings batch) and keeps a body's parsed size to ~100 MB at most.
MAX_JSON_VALUES = 1_000_000
# What one parsed value may cost at most: a body allowed more values (a Message Batch: App.parsing)
# holds this much a value in the request bodies' bound while it is parsed and checked.
JSON_VALUE_BYTES = 100


class DuplicateMember(ValueError):
    """A JSON object that names a member twice (``name``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def unique_members(pairs: list[tuple[str, Any]]) -> dict:
    """An object's members, a name given twice refused: JSON parsers differ on which one counts
    (the last here, the first in some others), and a body relayed as sent must mean to the
    provider what it meant to the checks made on it (model, caps, file ids)."""
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateMember(name)
            seen.add(name)
    return members


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included


def json_values(raw: bytes) -> int:
    """At least as many as the values ``raw`` holds, if it is JSON (every value but an array's or an
    object's first follows a comma; each of those opens with a bracket): counted in C, strings left
    out only when the quick count, theirs included, reaches ``MAX_JSON_VALUES``."""
    count = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if count < MAX_JSON_VALUES:
        return count
    bare = _STRING.sub(b"", raw)
    return bare.count(b",") + bare.count(b"[") + bare.count(b"{") + 1


def too_many_values(limit: int, remedy: str) -> ProxyError:
    """The 413 of a body holding more than ``limit`` JSON values, saying what to change."""
    return ProxyError(413, f"request body holds more than {limit:,} JSON values; {remedy}", code="request_too_large")


def json_object(
    raw: bytes | str, parse_float: Callable[[str], Any] | None = None, max_values: int = MAX_JSON_VALUES
) -> dict:
    """``raw`` (bytes, or text already decoded: a WebSocket message) as a JSON object, or the 400
    every JSON route answers with; a 413 for more than ``max_values`` values, before parsing."""
    if json_values(raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw) > max_values:
        raise too_many_values(max_values, "send fewer (or larger) ones")
    try:
        value = json.loads(raw, parse_float=parse_float, object_pairs_hook=unique_members)
    except DuplicateMember as exc:
        raise ProxyError(
            400, f"request body names {exc.name[:64]!r} twice in one object; send each name once", code="duplicate_key"
        ) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProxyError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ProxyError(400, "request body must be a JSON object", code="invalid_body")
    return value


class Request:
    """What a route handler gets: method, path, query, headers (lower-case), body bytes.

    The body is read from the connection only when a handler first asks for it, so a
    handler that refuses first (the admin key) costs a keyless sender no read at all.
    """

    def __init__(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | Callable[[], bytes],
        client: str,
        upload: Callable[..., "Upload"] | None = None,
        spool: Callable[[], "Spooled"] | None = None,
    ) -> None:
        parts = urlsplit(target)
        self.method = method
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.headers = headers
        self._body = body
        self.client = client
        self._upload = upload
        self._spool = spool

    @property
    def body(self) -> bytes:
        if callable(self._body):
            self._body = self._body()
        return self._body

    def upload(self, limit: int | None = None) -> "Upload":
        """The body as a streamed multipart/form-data upload (``multipart.Upload``; the caller
        closes it), instead of :attr:`body`, up to ``limit`` bytes when less than the server's own
        bound; a 400 where the server gave no upload reader."""
        if self._upload is None:
            raise ProxyError(400, "this route does not take uploads", code="invalid_body")
        return self._upload() if limit is None else self._upload(limit)

    def spool(self) -> "Spooled":
        """The body, whatever its type, spooled to disk as it arrives (``multipart.Spooled``: a
        context manager giving the file and its size), instead of :attr:`body`."""
        if self._spool is None:
            raise ProxyError(400, "this route does not take uploads", code="invalid_body")
        return self._spool()

    def json(self) -> dict:
        """The body as a JSON object (an empty body is ``{}``), or a 400."""
        return json_object(self.body or b"{}")


_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")


def whole_number(text: str | None) -> int | None:
    """A query parameter's number: ASCII digits with an optional minus, else None — not ``int()``'s
    extras (``1_0``, a full-width digit, spaces, a plus), which the provider a query goes on to reads
    otherwise or refuses."""
    return int(text) if text is not None and _WHOLE_NUMBER.fullmatch(text) else None


def allow(methods: Iterable[str]) -> str:
    """An ``Allow`` value: the methods a route takes, and HEAD beside GET (the server answers a
    HEAD as the route's GET, without the body: RFC 9110 §9.3.2)."""
    listed = list(dict.fromkeys(methods))
    if "GET" in listed and "HEAD" not in listed:
        listed.insert(listed.index("GET") + 1, "HEAD")
    return ", ".join(listed)


def check_method(method: str, allowed: Iterable[str]) -> None:
    """A method the route does not take: 405 naming the ones it does (``Allow``)."""
    if method not in allowed:
        listed = allow(allowed)
        raise ProxyError(
            405,
            f"method {method} is not allowed here; use {listed}",
            code="method_not_allowed",
            headers={"Allow": listed},
        )


@dataclass
class Response:
    """A whole answer: status, body and headers; the server adds Date, Server, length and Connection.

    With ``stream``, the body is those pieces instead, each sent (chunked) as it comes: a
    provider's event stream relayed as it arrives. The server closes it if the client leaves.
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Generator[bytes, None, None] | None = None


# Made once: json.dumps builds an encoder on every call that asks for anything but its defaults.
_UTF8 = {False: json.JSONEncoder(ensure_ascii=False), True: json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))}
_ASCII = {False: json.JSONEncoder(), True: json.JSONEncoder(separators=(",", ":"))}


def json_bytes(value: Any, compact: bool = False) -> bytes:
    """``value`` as UTF-8 JSON, its text as it is, or escaped where it holds a lone UTF-16 surrogate
    (a valid JSON escape that no UTF-8 holds: a client may send one, a provider answer one) — for
    what Stockyard keeps or passes on as it came, and the one encoder of every answer and event a
    translation writes for its client (the provider's text is the provider's: never the client's
    400, nor a cut stream). A parser reads either form back the same; the escaped form is what a
    pass-through client gets from the provider's own bytes. ``compact``: no spaces (stream events)."""
    try:
        return _UTF8[compact].encode(value).encode()
    except UnicodeEncodeError:
        return _ASCII[compact].encode(value).encode()


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None, *, ensure_ascii: bool = True
) -> Response:
    """``payload`` as a JSON answer (values JSON cannot hold, such as datetimes, as text)."""
    body = json.dumps(payload, default=str, ensure_ascii=ensure_ascii).encode()
    return Response(status, body, "application/json", headers or {})
