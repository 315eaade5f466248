"""The upstream pool writes a request's head and body in one write, byte for byte what
http.client would have sent, with the same refusals (issue 18: one system call less per request)."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from stockyard.upstream import Origin, Pool, request_head


class Capture:
    """A socket stand-in for http.client: keeps what it is given to send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def stdlib_bytes(base_url: str, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
    origin = Origin.parse(base_url)
    cls = http.client.HTTPSConnection if origin.scheme == "https" else http.client.HTTPConnection
    conn = cls(origin.host, origin.port)
    capture = Capture()
    conn.sock = capture  # type: ignore[assignment]
    conn.request(method, target, body=body, headers=headers)
    return b"".join(capture.sent)


CASES = [
    ("http://127.0.0.1:8080/v1", "POST", "/v1/chat/completions", {"authorization": "Bearer sk-x"}, b'{"a": 1}'),
    ("http://127.0.0.1:80", "GET", "/v1/models", {"Authorization": "Bearer sk-x"}, None),
    ("http://example.com:8000", "POST", "/x?y=1", {}, None),
    ("https://api.openai.com/v1", "POST", "/v1/embeddings", {"content-type": "application/json"}, b"{}"),
    ("http://[::1]:9000", "DELETE", "/v1/files/f", {"x-goog-api-key": "k"}, None),
    ("https://[::1]", "PUT", "/p", {"Host": "other", "Accept-Encoding": "gzip"}, b"abc"),
    ("http://h:1", "POST", "/p", {"Content-Length": "3", "x-v": "caf\u00e9"}, b"abc"),
]


@pytest.mark.parametrize(("base", "method", "target", "headers", "body"), CASES)
def test_head_is_what_http_client_sends(base, method, target, headers, body) -> None:
    ours = request_head(Origin.parse(base), method, target, headers, body) + (body or b"")
    assert ours == stdlib_bytes(base, method, target, headers, body)


@pytest.mark.parametrize(
    ("target", "headers", "error"),
    [
        ("/p", {"x-a": "1\r\nx-injected: 2"}, ValueError),
        ("/p", {"x-a": "1\nx"}, ValueError),
        ("/p", {" bad": "1"}, ValueError),
        ("/p", {"bad:name": "1"}, ValueError),
        ("/p q", {}, http.client.InvalidURL),
        ("/p\r\nX: 1", {}, http.client.InvalidURL),
    ],
)
def test_refuses_what_http_client_refuses(target, headers, error) -> None:
    with pytest.raises(error):
        stdlib_bytes("http://h:1", "POST", target, headers, b"{}")
    with pytest.raises(error):
        request_head(Origin.parse("http://h:1"), "POST", target, headers, b"{}")


class CountingSocket:
    """Wraps a connection's socket and counts the writes made on it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.writes = 0

    def sendall(self, data: bytes) -> None:
        self.writes += 1
        self._sock.sendall(data)

    def send(self, data: bytes) -> int:
        self.writes += 1
        return self._sock.send(data)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def test_one_write_per_request_and_the_connection_is_reused(mock) -> None:
    pool = Pool()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"authorization": "Bearer sk-test", "content-type": "application/json"}
    first = pool.request(mock.url + "/v1", "POST", "/chat/completions", headers, body)
    assert first.status == 200 and json.loads(first.read_all())["object"] == "chat.completion"
    key = Origin.parse(mock.url + "/v1")
    conn = pool._take(key)
    assert conn is not None and conn.sock is not None  # back in the pool after the answer was read whole
    counting = CountingSocket(conn.sock)
    conn.sock = counting  # type: ignore[assignment]
    pool._put(key, conn)
    second = pool.request(mock.url + "/v1", "POST", "/chat/completions", headers, body)
    assert second.status == 200 and json.loads(second.read_all())["object"] == "chat.completion"
    assert counting.writes == 1
    recorded = mock.last("/chat/completions")
    assert recorded is not None and recorded.body == body
    assert recorded.headers.get("content-length") == str(len(body))
    pool.close()


def connected(pool: Pool, key: Origin) -> http.client.HTTPConnection:
    conn = pool._new(key)
    conn.connect()
    return conn


def test_idle_connections_past_their_age_are_closed_when_another_comes_back(mock) -> None:
    key = Origin.parse(mock.url + "/v1")
    pool = Pool(idle_max_s=-1.0)  # every idle connection is past its age at the next return
    first, second = connected(pool, key), connected(pool, key)
    pool._put(key, first)
    assert first.sock is not None, "nothing older to close yet"
    pool._put(key, second)
    assert first.sock is None, "closed: idle past its age when the second came back"
    assert pool._take(key) is None and second.sock is None, "past its age too: closed when taken"


def test_at_most_max_idle_stay_and_the_most_recent_is_taken_first(mock) -> None:
    key = Origin.parse(mock.url + "/v1")
    pool = Pool(max_idle_per_origin=2)
    conns = [connected(pool, key) for _ in range(3)]
    for conn in conns:
        pool._put(key, conn)
    assert conns[2].sock is None, "the third is closed: two are kept"
    assert pool._take(key) is conns[1] and pool._take(key) is conns[0] and pool._take(key) is None
    for conn in conns[:2]:
        conn.close()
