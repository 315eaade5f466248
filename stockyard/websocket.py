"""The WebSocket protocol (RFC 6455), server side: the handshake's checks and answer, and frames.

Only what a server that takes text messages needs: client frames must be masked, no extension
is agreed (so every RSV bit is 0), fragmented messages are joined, control frames may come between
their fragments, a message is capped while its frames arrive (before a payload is read), a text
message must be valid UTF-8, binary messages are refused. :class:`FrameReader` is fed bytes as they
arrive and hands back whole messages and control frames; a breach of the protocol is a
:class:`Fault` carrying the close code to answer with (RFC 6455 §7.4.1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from typing import Mapping

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
VERSION = "13"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL = (CLOSE, PING, PONG)

NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
INVALID_DATA, POLICY, TOO_BIG, INTERNAL = 1007, 1008, 1009, 1011
# Codes a close frame may carry (§7.4): 1000-1003, 1007-1011 (1012-1014 registered since), 3000-4999.
_SENDABLE = frozenset([1000, 1001, 1002, 1003, *range(1007, 1015)])


class Fault(Exception):
    """The peer broke the protocol: close with ``code`` (and ``reason``, a short ASCII text)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class Frame:
    """A whole message (TEXT, its text) or a control frame (CLOSE, PING, PONG, its payload)."""

    opcode: int
    payload: bytes = b""
    text: str = ""


def handshake_problem(method: str, version: str, headers: Mapping[str, str]) -> str | None:
    """Why this request is not a WebSocket opening handshake a server may accept (§4.2.1), or None.
    ``headers`` has lower-case names."""
    if method != "GET" or version != "HTTP/1.1":
        return "a WebSocket handshake is a GET request over HTTP/1.1"
    if "websocket" not in _tokens(headers.get("upgrade")):
        return "the Upgrade header must name websocket"
    if "upgrade" not in _tokens(headers.get("connection")):
        return "the Connection header must name Upgrade"
    if accept_key(headers.get("sec-websocket-key") or "") is None:
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def accept_key(key: str) -> str | None:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (None: not 16 bytes in base64)."""
    try:
        if len(base64.b64decode(key.strip(), validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    digest = hashlib.sha1((key.strip() + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame: final, unmasked (§5.1: a server never masks)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and ``reason`` (cut to fit the 125 bytes of a control frame)."""
    data = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return frame(CLOSE, struct.pack("!H", code) + data)


def close_code(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a client's close frame (None: it gave no code); a Fault if malformed."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise Fault(PROTOCOL_ERROR, "a close frame's payload is empty or begins with a 2-byte code")
    code = struct.unpack("!H", payload[:2])[0]
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise Fault(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise Fault(INVALID_DATA, "a close frame's reason must be UTF-8") from None
    return code, reason


class FrameReader:
    """Client frames in, whole messages and control frames out, never holding more than
    ``max_message`` bytes of a message (a frame announcing more is refused before it is read)."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._parts = bytearray()  # a fragmented message so far (one buffer: no object per fragment)
        self._opcode: int | None = None  # the fragmented message's type

    def feed(self, data: bytes) -> list[Frame]:
        """The frames ``data`` completes (a Fault if the peer broke the protocol)."""
        self._buf += data
        out: list[Frame] = []
        while (got := self._next()) is not None:
            if got.opcode != CONTINUATION or got.payload or got.text:
                out.append(got)
        return out

    def _next(self) -> Frame | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, n = b1 & 0x80, b1 & 0x7F
        if rsv:
            raise Fault(PROTOCOL_ERROR, "reserved bits set, and no extension was agreed")
        if not masked:
            raise Fault(PROTOCOL_ERROR, "a client's frames must be masked")
        if opcode not in (CONTINUATION, TEXT, BINARY, *CONTROL):
            raise Fault(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode in CONTROL and (not fin or n > 125):
            raise Fault(PROTOCOL_ERROR, "a control frame must be final and at most 125 bytes")
        at = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, at = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if n >> 63:
                raise Fault(PROTOCOL_ERROR, "a frame's length has its top bit set")
        if opcode not in CONTROL:
            if opcode == CONTINUATION and self._opcode is None:
                raise Fault(PROTOCOL_ERROR, "a continuation frame with no message begun")
            if opcode != CONTINUATION and self._opcode is not None:
                raise Fault(PROTOCOL_ERROR, "a new message began before the last one ended")
            if len(self._parts) + n > self.max_message:
                raise Fault(TOO_BIG, f"a message is limited to {self.max_message} bytes")
        if len(buf) < at + 4 + n:
            return None
        mask = bytes(buf[at : at + 4])
        payload = _unmask(bytes(buf[at + 4 : at + 4 + n]), mask)
        del buf[: at + 4 + n]
        if opcode in CONTROL:
            return Frame(opcode, payload)
        if opcode != CONTINUATION:
            self._opcode = opcode
        self._parts += payload
        if not fin:
            return Frame(CONTINUATION)  # more to come: nothing to hand out yet
        whole, kind = bytes(self._parts), self._opcode
        self._parts, self._opcode = bytearray(), None
        if kind == BINARY:
            raise Fault(UNSUPPORTED_DATA, "binary messages are not accepted: send JSON text")
        try:
            return Frame(TEXT, whole, whole.decode("utf-8"))
        except UnicodeDecodeError:
            raise Fault(INVALID_DATA, "a text message must be valid UTF-8") from None


def _unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (one big-integer XOR: fast in CPython)."""
    if not data:
        return data
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
