"""Bad input and broken upstreams: every refusal is a clear error in the client's own shape,
with the right status — never a 500, a traceback, or a lost trace."""

from __future__ import annotations

import io
import json
import socket

import openai
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mock_upstream import Reply

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """Two providers (so routing can be ambiguous), one of them dead; short timeouts and body limit."""
    env = mock_env(
        cache_home,
        mock,
        OPENAI_API_KEY="sk-test-errors-123456",
        GROQ_API_KEY="gsk-test-errors-123456",
        GROQ_BASE_URL="http://127.0.0.1:9/openai/v1",
        STOCKYARD_UPSTREAM_TIMEOUT="1",
        STOCKYARD_MAX_BODY_BYTES="65536",
    )
    with served(pyz_path, tmp_path_factory, "errors", env) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh_mock(mock):
    mock.clear_replies()
    yield
    mock.clear_replies()


def error_of(body: bytes) -> dict:
    payload = json.loads(body)
    assert set(payload) == {"error"} and {"message", "type", "param", "code"} <= set(payload["error"])
    return payload["error"]


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'"text"', "invalid_body"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": 42}', "missing_model"),
        (b'{"model": "gpt-4o-mini", "stream": "yes"}', "invalid_stream"),
    ],
)
def test_malformed_requests_are_400(server, raw, code):
    status, headers, body = server.request("POST", "/v1/chat/completions", raw=raw)
    assert status == 400 and error_of(body)["code"] == code
    assert headers["x-stockyard-trace-id"], "refusals are traced too"


def test_unroutable_model_names_the_providers(server):
    status, _, body = server.request("POST", "/v1/chat/completions", {"model": "mystery-model", "messages": HELLO})
    err = error_of(body)
    assert status == 400 and "openai" in err["message"] and "groq" in err["message"]


def test_unknown_route_is_404(server):
    status, _, body = server.request("GET", "/v1/nothing-here")
    assert status == 404 and error_of(body)["type"] == "not_found_error"


def test_wrong_method_is_405_with_allow(server):
    status, headers, body = server.request("GET", "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST" and error_of(body)["code"] == "method_not_allowed"
    status, _, _ = server.request("DELETE", "/v1/models")
    assert status == 405


def test_oversized_body_is_413(server):
    status, _, body = server.request("POST", "/v1/chat/completions", raw=b"{" + b" " * 70000 + b"}")
    assert status == 413 and error_of(body)["code"] == "request_too_large"


def test_anthropic_route_errors_use_anthropic_shape(server):
    status, _, body = server.request("POST", "/v1/messages", raw=b"{oops")
    payload = json.loads(body)
    assert status == 400 and payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"


def test_unreachable_upstream_is_502(server):
    status, headers, body = server.request(
        "POST", "/v1/chat/completions", {"model": "groq/llama-3.3-70b", "messages": HELLO}
    )
    err = error_of(body)
    assert status == 502 and err["code"] == "upstream_connect"
    assert "gsk-test-errors" not in body.decode()
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["status"] == 502 and trace["provider"] == "groq"


def test_upstream_timeout_is_504(server, mock):
    mock.enqueue(Reply(hang_s=3))
    status, headers, body = server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
    assert status == 504 and error_of(body)["code"] == "upstream_timeout"
    assert server.trace(headers["x-stockyard-trace-id"])["status"] == 504


def test_upstream_garbage_is_502(server, mock):
    mock.enqueue(Reply(body=b"<html>surprise</html>", headers={"content-type": "text/html"}))
    status, _, body = server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
    assert status == 502 and error_of(body)["code"] == "bad_upstream_response"


def test_upstream_reset_is_502_after_one_stale_retry(server, mock):
    """A reused connection that closes unanswered at once looks stale (the keep-alive race): the
    request goes once more on a fresh one, never more."""
    server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})  # pool warm
    mock.clear()
    mock.enqueue(Reply(reset=True), Reply(reset=True), Reply(reset=True))
    status, _, body = server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
    assert status == 502 and error_of(body)["code"] == "upstream_reset"
    assert len(mock.requests) == 2 and mock.pending() == 1


def test_a_get_on_a_reused_connection_that_closes_unanswered_goes_once_more(server, mock):
    """A GET may go twice (idempotent): on a reused connection that closes before any answer (it may
    have been stale), it is sent once more on a new one, never more."""
    openai.OpenAI(base_url=server.url + "/v1", api_key="open-mode", max_retries=0).files.create(
        file=("held.jsonl", io.BytesIO(b"{}\n")), purpose="batch"
    )  # a listing of none of the owner's would not ask the provider
    server.request("GET", "/v1/files")  # pool warm (the listing asks the provider)
    mock.clear()
    mock.enqueue(Reply(reset=True), Reply(reset=True), Reply(reset=True))
    server.request("GET", "/v1/files")
    assert [r.method for r in mock.requests] == ["GET", "GET"] and mock.pending() == 1


def test_upstream_error_with_non_json_body_keeps_status(server, mock):
    mock.enqueue(Reply(status=503, body=b"Service Unavailable", headers={"content-type": "text/plain"}))
    status, _, body = server.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
    assert status == 503 and "not JSON" in error_of(body)["message"]


def test_malformed_http_gets_a_json_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400") and b'"error"' in data


def test_bad_content_length_is_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")


def test_chunked_request_body_is_accepted(server):
    body = json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n"
            % (len(body), body)
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"Hello from mock" in data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(["model", "messages", "stream", "stream_options", "input", "prompt", "max_tokens", "x"]),
        json_values,
        max_size=6,
    ),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"]),
)
def test_arbitrary_json_never_gives_500(server, body, path):
    status, _, payload = server.request("POST", path, body)
    assert status < 500 or status in (502, 503, 504), payload
    assert b"Traceback" not in payload


def test_slow_clients_do_not_block_others(pyz_path, cache_home, mock, tmp_path):
    """Clients that trickle their headers are cut off at the read deadline; others are served meanwhile."""
    env = mock_env(cache_home, mock, OPENAI_API_KEY="sk-test-slow-123456", STOCKYARD_REQUEST_READ_TIMEOUT="2")
    srv = ServerProcess(pyz_path, tmp_path / "slow.db", env).start()
    try:
        slow = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        status, _, _ = srv.request("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})
        assert status == 200
        for sock in slow:
            sock.settimeout(10)
            assert sock.recv(1) == b"", "the server closes a request that did not arrive in time"
            sock.close()
    finally:
        srv.stop()


def test_a_model_name_cannot_forge_log_lines(server):
    forged = "gpt-4o-mini\n2026-01-01T00:00:00 I POST /v1/admin 200 forged"
    server.request("POST", "/v1/chat/completions", {"model": forged, "messages": HELLO})
    wait_for(lambda: "forged" in server.log, 10, "the access line")
    assert not any(line.startswith("2026-01-01T00:00:00") for line in server.log_lines)
