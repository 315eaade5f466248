"""What a provider adapter does: build the upstream request, translate the answer back.

Adapters are chosen by (provider kind, client dialect). A same-dialect adapter passes
bytes through; a translating adapter converts JSON both ways and SSE event by event.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote

from ..context import RequestContext
from ..errors import ProxyError
from ..pricing import Usage
from . import Provider


@dataclass
class UpstreamCall:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | BinaryIO | None  # a file-like body (a spooled upload) is sent in blocks
    read_timeout: float | None = None
    base_url: str | None = None  # only when the adapter needs another base than the provider's


@dataclass
class FollowUp:
    """The call that continues a turn the provider paused (Anthropic's ``pause_turn``): the same
    request with the answer so far sent back as the assistant's turn; or none (``call`` None) when
    that answer cannot be sent back, the turn ending there incomplete for the reason ``stopped`` says."""

    call: UpstreamCall | None  # None: the turn cannot go on (``stopped`` says why), ending incomplete
    usage: Usage | None  # what the paused call used (each call is priced on its own)
    sent_back: int  # input tokens the answer so far adds (estimated): what a budget must hold more
    stopped: str | None = None


class StreamTranslator:
    """Turns upstream SSE events into the client's events; records usage on the context."""

    complete: bool = False  # the upstream sent its terminal event
    content_type: str = "text/event-stream"  # of the client's stream (Gemini's JSON-array form differs)

    def feed(self, event: bytes) -> list[bytes]:
        raise NotImplementedError

    def finish(self) -> list[bytes]:
        """Events to send after a clean upstream end (e.g. a translated terminator)."""
        return []

    def failure(self, message: str, code: str) -> list[bytes] | None:
        """The events that end this stream when the upstream broke; None: the dialect's error event."""
        return None

    def paused_answer(self) -> bytes | None:
        """The provider's whole answer when it paused the turn (``pause_turn``) and this translator
        held the stream's end back, so a follow-up call can go on in the same client stream (the
        next call's events are fed here too); :meth:`finish` ends it as incomplete instead. None
        when the stream ended otherwise."""
        return None


class Adapter:
    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        raise NotImplementedError

    def parse(self, ctx: RequestContext, body: bytes) -> bytes:
        raise NotImplementedError

    def stream(self, ctx: RequestContext) -> StreamTranslator:
        raise NotImplementedError

    def error(self, ctx: RequestContext, status: int, body: bytes) -> bytes:
        """Upstream error body for the client; same-dialect adapters pass it through."""
        return body

    def follow_up(self, ctx: RequestContext, answers: list[bytes]) -> FollowUp | None:
        """The call that continues the turn when the last of ``answers`` (the whole answers of this
        request's calls so far, in order) is one the provider paused; None when it is not. Only
        translating adapters continue: a client of the provider's own API gets its pause."""
        return None

    def parse_turn(self, ctx: RequestContext, answers: list[bytes]) -> bytes:
        """:meth:`parse` for a turn of several calls (a paused one continued): one answer of them all."""
        return self.parse(ctx, answers[-1])

    def relays_bytes(self, ctx: RequestContext) -> bool:
        """True when the answer is relayed as raw bytes as they arrive (audio), never parsed."""
        return False

    def content_type(self, upstream: str | None) -> str:
        """The Content-Type the client gets for a whole answer (upstream's, when it is passed on)."""
        return "application/json"


def sse_data(event: bytes) -> bytes | None:
    """The joined ``data:`` payload of one SSE event, or None when it has none."""
    if event.startswith(b"data:") and event.find(b"\n") == len(event) - 2:  # one data line: most events
        return event[5:-2].lstrip(b" ")
    lines = [line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in event.split(b"\n")]
    data = [line for line in lines if line is not None]
    return b"\n".join(data) if data else None


def sse_object(event: bytes) -> dict | None:
    """The JSON object one SSE event carries, or None (no data, not JSON, not an object)."""
    data = sse_data(event)
    try:
        obj = json.loads(data) if data else None
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def loads_object(data: bytes, what: str = "provider answer") -> dict:
    """Parse a JSON object from upstream; a 502 when it is not one."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ProxyError(502, f"the {what} is not valid JSON", code="bad_upstream_response") from None
    except RecursionError:  # else a 400 blaming the client's request (errors.refusal_of)
        raise ProxyError(502, f"the {what} nests too deeply to be read", code="bad_upstream_response") from None
    if not isinstance(value, dict):
        raise ProxyError(502, f"the {what} is not a JSON object", code="bad_upstream_response")
    return value


_URL_BREAKERS = frozenset("/\\?#%")


def model_segment(model: str, what: str = "model") -> str:
    """``model`` as one URL path segment (Azure deployments, Gemini models), or a 400 naming it.

    Names that could leave their segment are refused, not escaped: ``.`` and ``..`` (which
    URL normalisation turns into a parent path), ``/ \\ ? # %``, white space and control
    characters. What remains is quoted, so the upstream URL is always the one configured.
    """
    bad = (
        not model
        or model in (".", "..")
        or any(ch in _URL_BREAKERS or ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in model)
    )
    if bad:
        raise ProxyError(
            400,
            f"{what} {model[:100]!r} cannot name a {what} in the provider's URL: "
            "it must not be '.', '..' or contain / \\ ? # %, spaces or control characters",
            param="model",
            code="invalid_model",
        )
    return quote(model, safe="-._~")
