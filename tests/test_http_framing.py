"""HTTP/1.1 framing at the edge (RFC 9112 §5–7), over raw sockets: anything two parties could
read differently is a 400 with ``Connection: close``; chunked bodies are parsed strictly and
held to the body limit; an early answer never leaves body bytes on a keep-alive connection;
answers to HEAD carry no body."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ServerProcess, mock_env, served
from rawhttp import connect, read_response, read_until_close, statuses

LIMIT = 65536
HELLO = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
SMUGGLED = b"GET /v1/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        STOCKYARD_MAX_BODY_BYTES=str(LIMIT),
        STOCKYARD_REQUEST_READ_TIMEOUT="5",
        STOCKYARD_IDLE_TIMEOUT="2",  # a stalled body meets the socket's timeout before the read deadline
    )
    with served(pyz_path, tmp_path_factory, "framing", env) as srv:
        yield srv


def exchange(server: ServerProcess, raw: bytes) -> bytes:
    with connect(server) as sock:
        sock.sendall(raw)
        return read_until_close(sock)


def post(
    head_lines: list[str], body: bytes = b"", path: str = "/v1/chat/completions", version: str = "HTTP/1.1"
) -> bytes:
    lines = [f"POST {path} {version}", "Host: 127.0.0.1", "Content-Type: application/json", *head_lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_refused(data: bytes, status: int = 400) -> None:
    assert statuses(data) == [status], data[:500]
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head, head
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["message"]


# -- chunked bodies --------------------------------------------------------------------------


def test_a_negative_chunk_size_is_400_at_once_not_a_read_to_the_end(server):
    """Was: -1 read until the client closed (no limit: 512 MiB in 1.3 s), -10 a 500."""
    for size in (b"-1", b"-10"):
        with connect(server) as sock:
            sock.sendall(post(["Transfer-Encoding: chunked"]) + size + b"\r\n" + b"x" * 4096)
            assert_refused(read_until_close(sock))


@pytest.mark.parametrize(
    "line",
    [
        b"+5\r\n",
        b" 5\r\n",
        b"5 \r\n",
        b"0x5\r\n",
        b"5_0\r\n",
        b"g\r\n",
        b"\r\n",
        b"5\n",
        b"5\r\r\n",
        b"5;a\x00b\r\n",
        b"0" * 17 + b"5\r\n",
        b"5;" + b"e" * 5000 + b"\r\n",
        b"\xd9\xa5\r\n",
    ],
)
def test_malformed_chunk_size_lines_are_400(server, line):
    data = exchange(server, post(["Transfer-Encoding: chunked"]) + line + b"hello\r\n0\r\n\r\n")
    assert_refused(data)


def test_chunk_data_must_be_followed_by_crlf(server):
    """Was: any three bytes after the data were skipped, so the framing could be shifted."""
    body = b"%x\r\n%sX\r\n0\r\n\r\n" % (len(HELLO), HELLO)
    assert_refused(exchange(server, post(["Transfer-Encoding: chunked"]) + body))


def test_the_body_limit_holds_for_the_running_total_of_chunks(server):
    chunk = b"a" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // len(chunk) + 1))
    assert_refused(exchange(server, post(["Transfer-Encoding: chunked"]) + body + b"0\r\n\r\n"), 413)
    huge = exchange(server, post(["Transfer-Encoding: chunked"]) + b"ffffffffffffffff\r\nabc")
    assert_refused(huge, 413)


def test_well_formed_chunks_with_extensions_and_trailers_are_accepted(server):
    half = len(HELLO) // 2
    body = b"%x;name=value;flag\r\n%s\r\n%X\r\n%s\r\n0\r\nX-Trailer: done\r\n\r\n" % (
        half,
        HELLO[:half],
        len(HELLO) - half,
        HELLO[half:],
    )
    data = exchange(server, post(["Transfer-Encoding: chunked", "Connection: close"]) + body)
    assert statuses(data) == [200], data[:300]


# -- the head --------------------------------------------------------------------------------

N = str(len(HELLO))


@pytest.mark.parametrize(
    "lines",
    [
        [f"Content-Length: {N}", f"Content-Length: {N}"],  # even identical ones
        [f"Content-Length: {N}", "Content-Length: 5"],
        [f"Content-Length: {N}", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: gzip, chunked"],
        ["Transfer-Encoding: chunked, identity"],
        ["Transfer-Encoding: identity"],
        ["Transfer-Encoding: xchunked"],
        ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
        [f"Content-Length: +{N}"],
        [f"Content-Length: {N[0]}_{N[1:]}"],
        [f"Content-Length: \xa0{N}"],
        [f"Content-Length: {N} {N}"],
        [f"Content-Length: {N},{N}"],
        [f"Content-Length: 0x{len(HELLO):x}"],
        ["Content-Length: -1"],
        ["X-Folded: one", "  two", f"Content-Length: {N}"],  # obs-fold
        ["X-Bare: a\rb", f"Content-Length: {N}"],  # bare CR in a value
        ["X\rBare: b", f"Content-Length: {N}"],  # bare CR in a name
        ["X-Nul: a\x00b", f"Content-Length: {N}"],
        ["X Space: b", f"Content-Length: {N}"],
        ["X-Space : b", f"Content-Length: {N}"],
        ["Host: 127.0.0.1", f"Content-Length: {N}"],  # a second Host
        ["Authorization: Bearer a", "Authorization: Bearer b", f"Content-Length: {N}"],
        ["X-Api-Key: a", "x-api-key: b", f"Content-Length: {N}"],
        ["X-Goog-Api-Key: a", "x-goog-api-key: b", f"Content-Length: {N}"],  # the Gemini routes' key
    ],
)
def test_ambiguous_heads_are_400_and_close(server, lines):
    assert_refused(exchange(server, post(lines, HELLO)))


def test_transfer_encoding_on_http_1_0_is_400(server):
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(HELLO), HELLO)
    assert_refused(exchange(server, post(["Transfer-Encoding: chunked"], body, version="HTTP/1.0")))


def test_http_1_1_without_host_is_400(server):
    assert_refused(exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n"))


def test_a_request_target_with_control_characters_is_400(server):
    assert_refused(exchange(server, b"GET /he\x1balthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    assert_refused(exchange(server, b"GET /healthz HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n"))


def test_header_bytes_are_capped_in_total_with_431(server):
    """Was: 100 lines of 64 KiB each (6.4 MiB per connection) were read and kept."""
    lines = [f"X-Pad-{i}: {'p' * 4000}" for i in range(20)]  # 80 KB in 20 lines
    data = exchange(server, ("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode())
    assert_refused(data, 431)
    fine = [f"X-Pad-{i}: {'p' * 4000}" for i in range(10)]
    data = exchange(
        server,
        ("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + "\r\n".join(fine) + "\r\n\r\n").encode(),
    )
    assert statuses(data) == [200]


def test_a_request_line_over_64_kib_is_414_and_closes(server):
    assert_refused(exchange(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 414)


def test_any_method_reaches_the_routes_which_refuse_it_never_501(server):
    """A method no route serves is that route's 405 (with Allow) or a 404, never the stdlib's 501."""
    with connect(server) as sock:
        sock.sendall(b"BREW /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 405 and headers["allow"] == "GET, HEAD", (status, headers)
        assert json.loads(body)["error"]["code"] == "method_not_allowed"
        sock.sendall(b"BREW /ui/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status == 405 and headers["allow"] == "GET, HEAD"
        sock.sendall(b"BREW /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


# -- early answers and keep-alive ------------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # 405
        b"POST /no/such/route HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # 404
        b"PUT /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # 405
    ],
)
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_early_answer_never_leaves_the_body_on_the_connection(server, request_head, framing):
    """The body holds a second request: it must never be answered as one."""
    if framing == "length":
        raw = request_head + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED
    else:
        raw = request_head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    with connect(server) as sock:
        sock.sendall(raw)
        status, headers, _ = read_response(sock)
        assert status in (404, 405)
        if headers.get("connection") != "close":  # the body was drained: the connection is clean
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock)[0] == 200
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        rest = read_until_close(sock)
    assert b"smuggled" not in rest and 404 not in statuses(rest), rest[:300]


@pytest.mark.parametrize(
    "path,framing,first",
    [
        ("/v1/chat/completions", "Content-Length: 500", b'{"model": "gpt-4o-mini", '),
        ("/v1/messages", "Transfer-Encoding: chunked", b'a\r\n{"model": '),
    ],
)
def test_a_body_that_stops_arriving_is_a_408_in_the_routes_shape_not_a_500(server, path, framing, first):
    """A client that sends part of its body and then nothing: once the socket's idle timeout passes
    (before the request's read deadline), the answer is a 408 in the route's error shape and the
    connection closes, never a 500 with a traceback in the log."""
    before = server.log.count("Traceback")
    with connect(server) as sock:
        sock.sendall(post([framing], first, path=path))
        data = read_until_close(sock, timeout=10)
    assert_refused(data, 408)
    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["type"] == "timeout_error" and "body" in error["message"], error
    assert server.log.count("Traceback") == before


def test_an_oversized_content_length_is_413_and_closes_without_reading(server):
    with connect(server) as sock:
        sock.sendall(post([f"Content-Length: {LIMIT + 1}"]))
        assert_refused(read_until_close(sock), 413)


def test_a_good_request_keeps_the_connection(server):
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(post([f"Content-Length: {len(HELLO)}"], HELLO))
            status, headers, _ = read_response(sock)
            assert status == 200 and headers.get("connection") != "close"


# -- HEAD ------------------------------------------------------------------------------------


def test_answers_to_head_carry_no_body(server):
    """Was: HEAD /healthz wrote its JSON, which a keep-alive client read as the next response."""
    with connect(server) as sock:
        sock.sendall(
            b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        data = read_until_close(sock)
    parts = data.split(b"\r\n\r\n")
    assert statuses(data) == [200, 405, 200], data
    assert parts[0].startswith(b"HTTP/1.1 200") and b"content-length: 16" in parts[0].lower()
    assert parts[1].startswith(b"HTTP/1.1 405"), "the first HEAD answer had a body"
    assert parts[2].startswith(b"HTTP/1.1 200"), "the second HEAD answer had a body"
    assert parts[3] == b'{"status": "ok"}'


def head_then_get(server: ServerProcess, path: str) -> tuple[bytes, bytes]:
    """HEAD then GET of ``path`` on one connection: (the HEAD's answer, all that came after it).
    A HEAD answer carrying a body would put that body before the GET's status line."""
    with connect(server) as sock:
        sock.sendall(
            f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = read_until_close(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def fields(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.mark.parametrize("path", ["/", "/ui", "/ui/app.js", "/healthz", "/readyz", "/metrics", "/v1/models"])
def test_head_on_a_get_route_answers_as_the_get_without_the_body(server, path):
    """Uptime monitors and load balancers send HEAD: was a 405 on every GET route but /healthz.
    RFC 9110 §9.3.2: the GET's status and head, its Content-Length, no body."""
    head, rest = head_then_get(server, path)
    assert rest.startswith(b"HTTP/1.1 "), f"the HEAD answer carried a body: {rest[:200]!r}"
    get_head, _, get_body = rest.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == get_head.split(b"\r\n")[0]  # the same status
    got, sent = fields(head), fields(get_head)
    assert got["content-type"] == sent["content-type"] and got.get("location") == sent.get("location")
    if path != "/metrics":  # its counters move between the two requests
        assert int(got["content-length"]) == len(get_body) == int(sent["content-length"])


def test_head_on_a_post_only_route_is_a_405_naming_post(server):
    head, rest = head_then_get(server, "/v1/chat/completions")
    assert head.startswith(b"HTTP/1.1 405") and fields(head)["allow"] == "POST"
    assert rest.startswith(b"HTTP/1.1 405"), rest[:200]  # the 405 to HEAD carried no body either


@pytest.mark.parametrize("framing", ["Content-Length: 300000", "Transfer-Encoding: chunked"])
def test_an_upload_that_stops_arriving_is_a_408_and_leaves_no_spool(server, framing):
    """Review 35: a multipart upload (spooled to disk as it arrives) that stops half way: a 408 in
    OpenAI's shape, the connection closed, no traceback, and no spool file left in ``uploads/``."""
    before = server.log.count("Traceback")
    part = b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
    part += b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n'
    part += b"Content-Type: application/pdf\r\n\r\n%PDF-1.5\n" + b"x" * 200_000
    body = part if framing.startswith("Content-Length") else b"%x\r\n" % len(part) + part + b"\r\n"
    head = ["POST /v1/files HTTP/1.1", "Host: 127.0.0.1", "Content-Type: multipart/form-data; boundary=b", framing]
    with connect(server) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = read_until_close(sock, timeout=10)
    assert_refused(data, 408)
    assert server.log.count("Traceback") == before
    uploads = Path(server.db).parent / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir()), list(uploads.iterdir())
