"""Review 18: an attacker's look at the WebSocket changes of the day (the frame parser that unmasks as
bytes arrive, the server's keepalive pings, the 426 at the WebSocket caps and their bound by
``STOCKYARD_MAX_CONNECTIONS``), over raw sockets against the built pyz."""

from __future__ import annotations

import json

import openai
import rawhttp
from conftest import wait_for
from test_responses_websocket import handshake, start


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
