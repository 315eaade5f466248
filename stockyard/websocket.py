"""The WebSocket protocol (RFC 6455): the handshake's checks and answer, and frames — the server
side, and the few pieces of the client side a relay to a provider needs (:func:`client_frame`,
:func:`client_handshake`, ``FrameReader(masked=False)`` for a server's frames).

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
import os
import struct
from dataclasses import dataclass
from typing import Callable, Mapping

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
VERSION = "13"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL = (CLOSE, PING, PONG)

NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA = 1000, 1001, 1002, 1003
INVALID_DATA, POLICY, TOO_BIG, INTERNAL, TRY_AGAIN_LATER = 1007, 1008, 1009, 1011, 1013
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
    return frame(CLOSE, close_payload(code, reason))


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: ``code`` and ``reason``, cut to fit a control frame."""
    data = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + data


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: final, masked with a fresh random key (§5.3: a client always masks)."""
    n, mask = len(payload), os.urandom(4)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = bytearray()
    unmask_into(body, 0, memoryview(payload), mask, 0)  # XOR both ways: masking is unmasking
    return head + mask + bytes(body)


def client_handshake(host: bytes, target: str, headers: Mapping[str, str]) -> tuple[bytes, str]:
    """A client's opening handshake (§4.1) for ``target`` on ``host`` with ``headers`` (checked
    by the caller), and the ``Sec-WebSocket-Accept`` the server must answer with."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: " + host.decode("ascii"),
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {VERSION}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    accept = accept_key(key)
    assert accept is not None
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), accept


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
    ``max_message`` bytes of a message (a frame announcing more is refused before it is read).
    ``masked=False``: a server's frames (a relay's provider side), which are never masked.

    A data frame's payload is unmasked into the message as its bytes arrive, so a message costs
    about its own size while it is joined (not the frame buffered whole, then copied, unmasked and
    joined), and its text is decoded from that one buffer."""

    def __init__(self, max_message: int, room: Callable[[int], bool] | None = None, masked: bool = True) -> None:
        self.max_message = max_message
        self.masked = masked
        self._room = room  # asked for each data frame's size before its payload is read (Session._room)
        self.progress = 0  # data frames' heads and payload bytes taken so far: the client at work (not its pings)
        self._head = bytearray()  # a frame's head (at most 14 bytes) while it arrives
        self._parts = bytearray()  # the message so far, unmasked (one buffer: no object per fragment)
        self._opcode: int | None = None  # the message's type, from its first frame to its last
        self._frame: tuple[int, bool, bytes] | None = None  # the frame whose payload arrives: opcode, fin, mask
        self._into = self._parts  # where that payload goes: the message, or a control frame's own buffer
        self._start = self._at = self._end = 0  # the payload's place there: first byte, next byte, end

    @property
    def in_message(self) -> bool:
        """A message has begun and not ended: its bytes are held (the caller bounds for how long)."""
        return self._opcode is not None

    def feed(self, data: bytes) -> list[Frame]:
        """The frames ``data`` completes (a Fault if the peer broke the protocol)."""
        view = memoryview(data)
        out: list[Frame] = []
        while True:
            if self._frame is None:
                view = self._read_head(view)
                if self._frame is None:
                    return out  # the head is not all here yet (every byte of ``data`` taken)
            if self._at < self._end:
                view = self._read_payload(view)
                if self._at < self._end:
                    return out
            if (got := self._frame_ended()) is not None:
                out.append(got)

    def _read_head(self, view: memoryview) -> memoryview:
        """A frame's head taken from ``view`` (its rest returned); once whole and checked, the frame's
        payload is expected (``_frame`` set)."""
        head = self._head
        while len(head) < (need := self._head_size()):
            if not view:
                return view
            take = need - len(head)
            head += view[:take]
            view = view[take:]
        n, at = head[1] & 0x7F, 2
        if n == 126:
            n, at = struct.unpack_from("!H", head, 2)[0], 4
        elif n == 127:
            n, at = struct.unpack_from("!Q", head, 2)[0], 10
            if n >> 63:
                raise Fault(PROTOCOL_ERROR, "a frame's length has its top bit set")
        opcode, fin, mask = head[0] & 0x0F, bool(head[0] & 0x80), bytes(head[at : at + 4])
        if opcode in CONTROL:
            self._into, self._start = bytearray(), 0
        else:
            self._start = self._begin_data(opcode, n)
        self._head = bytearray()
        self._frame, self._at, self._end = (opcode, fin, mask), self._start, self._start + n
        return view

    def _head_size(self) -> int:
        """How long the head is: 2 bytes until they are here (and checked), then all of it."""
        head = self._head
        if len(head) < 2:
            return 2
        if len(head) == 2:
            _check_first_bytes(head[0], head[1], self.masked)
        n = head[1] & 0x7F
        return 2 + (2 if n == 126 else 8 if n == 127 else 0) + (4 if self.masked else 0)

    def _begin_data(self, opcode: int, n: int) -> int:
        """A data frame of ``n`` bytes begins: the message's order and size checked; where in the
        message its payload goes."""
        if opcode == CONTINUATION and self._opcode is None:
            raise Fault(PROTOCOL_ERROR, "a continuation frame with no message begun")
        if opcode != CONTINUATION and self._opcode is not None:
            raise Fault(PROTOCOL_ERROR, "a new message began before the last one ended")
        if opcode == BINARY:  # refused before its payload is read
            raise Fault(UNSUPPORTED_DATA, "binary messages are not accepted: send JSON text")
        start = len(self._parts)
        if start + n > self.max_message:
            raise Fault(TOO_BIG, f"a message is limited to {self.max_message} bytes")
        if self._room is not None and not self._room(n):
            raise Fault(TRY_AGAIN_LATER, "the server holds all the messages it may at once; try again later")
        if opcode != CONTINUATION:
            self._opcode = opcode
        self.progress += 1
        self._into = self._parts  # it grows as the payload arrives: a frame announced, never sent, costs nothing
        return start

    def _read_payload(self, view: memoryview) -> memoryview:
        """What ``view`` holds of the frame's payload unmasked into its place (the rest returned)."""
        assert self._frame is not None
        piece = view[: self._end - self._at]
        if self.masked:
            unmask_into(self._into, self._at, piece, self._frame[2], (self._at - self._start) % 4)
        else:
            self._into[self._at : self._at + len(piece)] = piece
        self._at += len(piece)
        if self._frame[0] not in CONTROL:
            self.progress += len(piece)
        return view[len(piece) :]

    def _frame_ended(self) -> Frame | None:
        """The frame read whole: a control frame, or a message if it was its last frame (else None)."""
        assert self._frame is not None
        opcode, fin, _ = self._frame
        self._frame = None
        if opcode in CONTROL:
            payload, self._into = bytes(self._into), self._parts
            return Frame(opcode, payload)
        if not fin:
            return None  # more to come: nothing to hand out yet
        whole = self._parts
        self._parts = self._into = bytearray()
        self._opcode = None
        try:
            return Frame(TEXT, text=whole.decode("utf-8"))
        except UnicodeDecodeError:
            raise Fault(INVALID_DATA, "a text message must be valid UTF-8") from None


def _check_first_bytes(b0: int, b1: int, masked: bool = True) -> None:
    """A frame's first two bytes: a Fault unless they may begin a client's frame (``masked``), or
    a server's."""
    fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
    if rsv:
        raise Fault(PROTOCOL_ERROR, "reserved bits set, and no extension was agreed")
    if masked and not b1 & 0x80:
        raise Fault(PROTOCOL_ERROR, "a client's frames must be masked")
    if not masked and b1 & 0x80:
        raise Fault(PROTOCOL_ERROR, "a server's frames are never masked")
    if opcode not in (CONTINUATION, TEXT, BINARY, *CONTROL):
        raise Fault(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
    if opcode in CONTROL and (not fin or b1 & 0x7F > 125):
        raise Fault(PROTOCOL_ERROR, "a control frame must be final and at most 125 bytes")


UNMASK_PIECE = 64 * 1024  # bytes unmasked at once (a multiple of 4): its integers stay this small


def unmask_into(into: bytearray, at: int, data: memoryview, mask: bytes, offset: int) -> None:
    """``data`` XORed with the 4-byte ``mask`` repeated, written at ``into[at:]`` (``at`` may be its end:
    it grows); ``offset``: how far into the mask ``data`` begins (the payload's bytes before it, modulo
    4). One big-integer XOR per ``UNMASK_PIECE`` bytes: fast in CPython, and never a copy of the whole
    payload."""
    span = min(len(data), UNMASK_PIECE)
    key = mask[offset:] + mask[:offset]
    whole = int.from_bytes((key * (span // 4 + 1))[:span], "big")
    for i in range(0, len(data), span or 1):
        piece = data[i : i + span]
        n = len(piece)
        xor = whole if n == span else whole >> (8 * (span - n))
        into[at + i : at + i + n] = (int.from_bytes(piece, "big") ^ xor).to_bytes(n, "big")
