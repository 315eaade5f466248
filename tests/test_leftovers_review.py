"""Leftovers of the last review, each through a real server and the mock upstream: a provider's download
that stalls midway leaves no provider connection open; Anthropic's stream relay passes every odd event
through."""

from __future__ import annotations

import io
import json
import socket
import threading

import pytest
from conftest import ServerProcess, mock_env, wait_for
from mock_upstream import Reply
from rawhttp import read_until_close

CLAUDE = "claude-leftovers"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-leftovers-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_UPSTREAM_TIMEOUT="2",  # a provider that stops sending midway is given up on soon
    )
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("leftovers") / "stockyard.db", env)
    srv.keys = srv.create_keys({"alice": [], "bob": []})
    srv.start()
    yield srv
    srv.stop()
    assert "sk-ant-test-leftovers" not in srv.log
    assert "Traceback" not in srv.log


def get_until_close(server: ServerProcess, path: str, key: str) -> bytes:
    """GET ``path`` over a raw socket with ``Connection: close``: everything until the server closes."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {key}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        return read_until_close(sock, timeout=30)
    finally:
        sock.close()


def test_a_download_the_provider_stops_sending_midway_closes_the_providers_connection(server, mock):
    """A file's content relayed as it arrives (``ProviderCalls._relay``) whose provider stops sending
    midway: once the read times out the client's answer is cut (no chunked end), and the provider's
    connection is closed too — the mock sees it closed while it still waits to send the rest."""
    made = server.openai("alice").files.create(file=("notes.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    hung_up = threading.Event()
    mock.enqueue(Reply(sse=["first-part-of-the-file", "the-rest"], hang_after=1, hang_s=60, hung_up=hung_up))
    data = get_until_close(server, f"/v1/files/{made.id}/content", server.keys["alice"])
    assert data.startswith(b"HTTP/1.1 200 ") and b"first-part-of-the-file" in data
    assert b"the-rest" not in data and not data.endswith(b"0\r\n\r\n"), data[-200:]  # cut: never taken for whole
    wait_for(hung_up.is_set, timeout=10, what="the provider's connection closed")
