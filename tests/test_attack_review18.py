"""Review 18: an attacker's look at the WebSocket changes of the day (the frame parser that unmasks as
bytes arrive, the server's keepalive pings, the 426 at the WebSocket caps and their bound by
``STOCKYARD_MAX_CONNECTIONS``), over raw sockets against the built pyz."""

from __future__ import annotations

import json
import threading
import time

import openai
import rawhttp
from conftest import wait_for
from test_responses_websocket import Raw, handshake, start

PING = bytes([0x89, 0x80]) + b"\0\0\0\0"  # an empty client ping (masked with a zero key)


def test_one_connection_is_never_taken_by_a_websocket(pyz_path, cache_home, mock, tmp_path_factory):
    """Hole: with ``STOCKYARD_MAX_CONNECTIONS=1`` the WebSocket cap, "at most half" of it, was still 1
    (``max(1, 1 // 2)``): a socket took the server's only connection for up to its hour-long lifetime,
    and every HTTP request, the fallback included, was refused with a 503. Now half of one is none:
    the handshake is the 426 and the client goes on over HTTP, which is served."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "ws18one", STOCKYARD_MAX_CONNECTIONS="1")
    try:
        with rawhttp.connect(srv) as sock:
            sock.sendall(handshake("anything").encode())
            status, _, body = rawhttp.read_response(sock)
        assert status == 426, (status, body)
        assert json.loads(body)["error"]["code"] == "too_many_websockets", body
        answer = wait_for(lambda: _answer_or_none(srv), what="the HTTP fallback served on the one connection")
        assert answer.status == "completed", answer
    finally:
        srv.stop()


def _answer_or_none(srv):
    """The fallback's answer, or None while the refused handshake's connection still holds its place."""
    try:
        return srv.openai("anything").responses.create(model="gpt-4o-mini", input="over HTTP")
    except openai.APIStatusError as exc:
        if exc.status_code != 503:
            raise
        return None


def test_a_ping_flood_is_not_answered_pong_for_ping(pyz_path, cache_home, mock, tmp_path_factory):
    """Hole: each client ping was answered with its own pong, one write to the socket each, so a
    client's 6-byte pings made the server do a system call apiece (1 MB of pings cost a second of
    server CPU, 100 times a 1 MB message). RFC 6455 §5.5.3 lets a server answer only the latest of
    the pings it has not answered yet: now one pong per read, and the last ping is still answered."""
    srv = start(pyz_path, cache_home, mock, tmp_path_factory, "ws18ping", STOCKYARD_WEBSOCKET_PING_INTERVAL="0")
    try:
        raw = Raw(srv, "anything")
        raw.sock.sendall(PING * 5000)
        raw.send_frame(0x9, b"last")
        pongs = 0
        while (got := raw.frame()) != (0xA, b"last"):
            assert got == (0xA, b""), got
            pongs += 1
        assert pongs < 50, pongs  # one per read of up to 64 KiB (30 KB sent): a few at most
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_message_never_finished_is_not_held_for_the_lifetime(pyz_path, cache_home, mock, tmp_path_factory):
    """Hole: a message's data bytes keep a socket from its idle timeout, so a client that began a
    message (up to ``STOCKYARD_MAX_BODY_BYTES``, 32 MiB, held in memory) and sent a byte of it now
    and then kept it, and its memory, for the whole lifetime (an hour): 64 sockets, 2 GiB. An HTTP
    request must arrive whole within ``STOCKYARD_REQUEST_READ_TIMEOUT``; now a message must too, from
    its first frame (1 s here), or the socket is closed with 1008."""
    srv = start(
        pyz_path,
        cache_home,
        mock,
        tmp_path_factory,
        "ws18slow",
        STOCKYARD_REQUEST_READ_TIMEOUT="1",
        STOCKYARD_WEBSOCKET_IDLE_TIMEOUT="60",
        STOCKYARD_WEBSOCKET_PING_INTERVAL="0",
    )
    try:
        raw = Raw(srv, "anything")
        raw.sock.settimeout(10)
        stop = threading.Event()

        def trickle() -> None:  # the client's pace, a byte of its message every 0.2 s: never idle
            try:
                raw.send_frame(0x1, b'{"type": ', fin=False)
                while not stop.wait(0.2):
                    raw.send_frame(0x0, b" ", fin=False)
            except OSError:
                pass

        threading.Thread(target=trickle, daemon=True).start()
        began = time.monotonic()
        try:
            code = raw.close_code()
        finally:
            stop.set()
        assert code == 1008 and time.monotonic() - began < 5, code
        raw.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log
