"""The money of requests that do not end cleanly: what reaches a provider is billed here too.

``mock-bill`` is priced here at $1 per 1M tokens in and out, so a token costs 100 µ¢: the mock's
answer (12 prompt and 5 completion tokens) costs 1,700 µ¢, and an estimate of the input alone is
100 µ¢ for every four bytes of the request's body (``estimate.input_tokens``, rounded up).

- A client that leaves a non-streamed request: the provider finishes the answer and bills it
  whole, so Stockyard reads it to its end and records its real usage (``client_disconnected``).
- A client that leaves a stream: the upstream stream is ended (a provider stops generating when
  its connection closes), and what the provider was sent is estimated.
- An attempt that timed out after its request went out, or a whole answer whose body broke off
  after its head: its input is estimated (a retry after it is billed too).
- A call reset after its request went out, before any answer: its input is estimated, as a timeout's.
- Nothing is billed for a call that never reached a provider.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
import threading

import anthropic
import openai
import pytest
import rawhttp
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import Reply
from module_helpers import api, fresh, module_env, put_module, start_server  # noqa: F401

MODEL = "openai/mock-bill"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdefUNCLEAN"
TOKEN_UC = 100  # µ¢ a token, in and out
ANSWER_UC = (12 + 5) * TOKEN_UC  # the mock's usage


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """The module tests' providers on the mock (``module_helpers.provider_env``), Anthropic too."""
    env = module_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    with served(pyz_path, tmp_path_factory, "unclean", env, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def priced(server):
    status, body = api(server, "POST", "/api/prices", {"model": "mock-bill", "input": "1", "output": "1"})
    assert status == 200, body


@pytest.fixture(autouse=True)
def budgets_on(fresh, server):  # noqa: F811
    """Every module off but the budget (on by default): the keys' holds settle to what was billed."""
    put_module(server, "budget", {})


def body_of(model: str = MODEL, **fields) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello"}], **fields}).encode()


def input_estimate_uc(body: bytes) -> int:
    """What an estimate of the input alone costs: the body at four bytes a token, rounded up."""
    return -(-len(body) // 4) * TOKEN_UC


def send_raw(server: ServerProcess, body: bytes, secret: str) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    client.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return client


def key_rows(server: ServerProcess, key_id: str, count: int) -> list[dict]:
    """The key's traces once ``count`` are stored: a request's failed attempts (by number), then the request."""
    sql = "SELECT * FROM traces WHERE key_id = ? ORDER BY parent_id IS NULL, attempt"
    return wait_for(
        lambda: (rows := server.db_rows(sql, (key_id,))) and len(rows) >= count and rows,
        10,
        f"{count} traces",
    )


def budget_key(server: ServerProcess) -> tuple[str, str]:
    """A key with a budget (its hold settles to what the request cost): (secret, id)."""
    fields = {"name": f"b{next(_names)}", "budget_usd": "1", "budget_period": "day"}
    status, body = api(server, "POST", "/api/keys", fields)
    assert status == 201, body
    return body["key"], body["id"]


def spent(server: ServerProcess, key_id: str) -> int:
    """What the key's budget counts as spent (its daily rollups)."""
    rows = server.db_rows("SELECT COALESCE(SUM(cost_uc), 0) AS s FROM rollups_daily WHERE key_id = ?", (key_id,))
    return rows[0]["s"]


def left_waiting(server: ServerProcess) -> float:
    return server.metric("clients_left_waiting_total")


def left_waiting_under_cap(server: ServerProcess) -> float | None:
    """``left_waiting`` on a server whose connection cap the departed request nearly fills: None when
    the poll meets the cap (a 503) because the server has not yet let go of the last poll's connection."""
    try:
        return left_waiting(server)
    except AssertionError:  # /metrics answered 503 at the cap
        return None


# -- a non-streamed request whose client leaves ------------------------------------------------------


def ask_and_give_up(server: ServerProcess, secret: str, sdk: str) -> None:
    """A request with an official SDK that gives up after a second (its timeout closes the connection)."""
    hello = [{"role": "user", "content": "Say hello"}]
    if sdk == "openai":
        with pytest.raises(openai.APITimeoutError):
            server.openai(secret, timeout=1.0).chat.completions.create(model=MODEL, messages=hello)
    else:
        with pytest.raises(anthropic.APITimeoutError):
            server.anthropic(secret, timeout=1.0).messages.create(
                model="anthropic/mock-bill", max_tokens=16, messages=hello
            )


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_client_that_leaves_a_plain_request_is_billed_the_whole_answer_the_provider_made(server, mock, sdk):
    """The official SDK gives up (its timeout) while the provider works: the provider finishes and
    bills the answer, so Stockyard reads it to its end and records its exact usage and cost."""
    secret, key_id = budget_key(server)
    reached, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=reached))
    before = left_waiting(server)
    ask_and_give_up(server, secret, sdk)
    assert reached.is_set()
    wait_for(lambda: left_waiting(server) == before + 1, 10, "the server saw the client leave")
    release.set()  # the provider answers after its client left
    (trace,) = key_rows(server, key_id, 1)
    assert trace["outcome"] == "client_disconnected" and trace["status"] == 200, trace
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (12, 5)
    assert trace["cost_uc"] == ANSWER_UC and trace["cost_status"] == "exact" and trace["usage_estimated"] == 0
    assert "read to its end" in trace["error_message"]
    wait_for(lambda: spent(server, key_id) == ANSWER_UC, 10, "the budget counts the whole answer")
    assert server.request("GET", "/readyz")[0] == 200


def test_a_client_that_leaves_a_plain_request_never_starts_a_retry(server, mock):
    """The answer that comes after the client left is a 500: no other attempt is started for a
    client that is gone (the failed one is traced, unbilled: the provider reported no usage)."""
    put_module(server, "fallback", {"retries": 2, "backoff_ms": 0, "max_backoff_ms": 0})
    secret, key_id = budget_key(server)
    reached, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(status=500, held=release, hang_started=reached))
    mock.enqueue(Reply())  # what a retry would get
    before_calls, before = len(mock.requests), left_waiting(server)
    client = send_raw(server, body_of(), secret)
    assert reached.wait(10)
    client.close()
    wait_for(lambda: left_waiting(server) == before + 1, 10, "the server saw the client leave")
    release.set()
    (trace,) = key_rows(server, key_id, 1)
    assert trace["outcome"] == "client_disconnected" and trace["status"] == 500, trace
    assert trace["cost_uc"] is None and len(mock.requests) == before_calls + 1


def test_a_whole_answer_whose_client_left_and_that_then_times_out_is_billed_its_input(server, mock):
    """The client left, the call went on, and the provider then did not answer in time: as any
    timed-out call, its input is billed as an estimate; the trace says both."""
    put_module(server, "timeout", {"models": {MODEL: 1}})
    secret, key_id = budget_key(server)
    reached = threading.Event()
    mock.enqueue(Reply(hang_s=5, hang_started=reached))
    before, body = left_waiting(server), body_of()
    client = send_raw(server, body, secret)
    assert reached.wait(10)
    client.close()
    wait_for(lambda: left_waiting(server) == before + 1, 10, "the server saw the client leave")
    (trace,) = key_rows(server, key_id, 1)
    assert trace["outcome"] == "client_disconnected" and "answer then failed" in trace["error_message"], trace
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (-(-len(body) // 4), 0)
    assert trace["cost_uc"] == input_estimate_uc(body) and trace["cost_status"] == "estimate"


# -- a stream whose client leaves ---------------------------------------------------------------------


def test_a_stream_whose_client_leaves_before_its_first_event_is_ended_and_billed_its_input(server, mock):
    """The provider read the request and began on it; its stream is ended (streams stop generating
    when their connection closes, so reading on would cost more), and the input it was sent is billed
    as an estimate — it was recorded as nothing."""
    secret, key_id = budget_key(server)
    reached, hung_up = threading.Event(), threading.Event()
    mock.enqueue(Reply(hang_s=60, hang_started=reached, hung_up=hung_up))
    body = body_of(stream=True)
    client = send_raw(server, body, secret)
    assert reached.wait(10)
    client.close()
    assert hung_up.wait(10), "the upstream stream was ended"
    (trace,) = key_rows(server, key_id, 1)
    assert trace["outcome"] == "client_disconnected", trace
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (-(-len(body) // 4), 0)
    assert trace["cost_uc"] == input_estimate_uc(body) and trace["cost_status"] == "estimate"
    assert trace["usage_estimated"] == 1
    wait_for(lambda: spent(server, key_id) == input_estimate_uc(body), 10, "the budget counts the input")


# -- attempts that timed out --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_an_attempt_that_timed_out_is_billed_its_input_as_an_estimate(server, mock, stream):
    """The provider got the request and did not answer in time (the timeout module's read timeout):
    it may still bill the input, so the 504's row carries that estimate (a stream's too: nothing
    went out, so it is the same 504)."""
    put_module(server, "timeout", {"models": {MODEL: 0.3}})
    secret, key_id = budget_key(server)
    mock.enqueue(Reply(hang_s=5))
    body = body_of(stream=True) if stream else body_of()
    status, _, answer = server.request(
        "POST", "/v1/chat/completions", raw=body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert status == 504 and json.loads(answer)["error"]["code"] == "upstream_timeout", answer
    (trace,) = key_rows(server, key_id, 1)
    assert trace["outcome"] == "error" and trace["status"] == 504
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (-(-len(body) // 4), 0)
    assert trace["cost_uc"] == input_estimate_uc(body) and trace["cost_status"] == "estimate"
    wait_for(lambda: spent(server, key_id) == input_estimate_uc(body), 10, "the budget counts the input")


# Media in their own units (shipped prices): tts-1 1,500 µ¢ a character, whisper-1 10,000 µ¢ a second
# (an mp3 upload held at 250 bytes a second), gpt-image-1 500 µ¢ a text input token.


def test_a_speech_call_that_timed_out_is_billed_its_characters(server, mock):
    """A speech call went out and did not answer in time: tts-1 bills the input's characters, which
    the request says exactly; the 504's row carries them as an estimate (the provider may have)."""
    put_module(server, "timeout", {"models": {"openai/tts-1": 0.3}})
    secret, key_id = budget_key(server)
    mock.enqueue(Reply(hang_s=5))
    body = json.dumps({"model": "openai/tts-1", "voice": "alloy", "input": "x" * 40}).encode()
    status, _, answer = server.request("POST", "/v1/audio/speech", raw=body, headers=server.auth(secret))
    assert status == 504 and json.loads(answer)["error"]["code"] == "upstream_timeout", answer
    (trace,) = key_rows(server, key_id, 1)
    assert trace["cost_uc"] == 40 * 1_500 and trace["cost_status"] == "estimate", trace
    wait_for(lambda: spent(server, key_id) == 40 * 1_500, 10, "the budget counts the characters")


def test_a_transcription_that_timed_out_is_billed_the_audio_it_held(server, mock):
    """A transcription went out and did not answer in time (the official SDK, no retries): the
    provider heard the audio; its length is known only from an answer, so the hold's count of the
    upload (2,500 mp3 bytes: 10 s) is billed as an estimate."""
    put_module(server, "timeout", {"models": {"openai/whisper-1": 0.3}})
    secret, key_id = budget_key(server)
    mock.enqueue(Reply(hang_s=5))
    with pytest.raises(openai.APIStatusError) as caught:
        server.openai(secret).audio.transcriptions.create(
            model="openai/whisper-1", file=("a.mp3", b"x" * 2_500), response_format="json"
        )
    assert caught.value.status_code == 504
    (trace,) = key_rows(server, key_id, 1)
    assert trace["cost_uc"] == 10 * 10_000 and trace["cost_status"] == "estimate", trace
    wait_for(lambda: spent(server, key_id) == 10 * 10_000, 10, "the budget counts the audio")


def test_an_image_call_that_timed_out_is_billed_its_prompt(server, mock):
    """A GPT Image call went out and did not answer in time: its prompt (the body at four bytes a
    token) at the text input rate, no images (none is known to have been made)."""
    put_module(server, "timeout", {"models": {"openai/gpt-image-1": 0.3}})
    secret, key_id = budget_key(server)
    mock.enqueue(Reply(hang_s=5))
    body = json.dumps({"model": "openai/gpt-image-1", "prompt": "a cat", "quality": "low", "size": "1024x1024"})
    status, _, _ = server.request("POST", "/v1/images/generations", raw=body.encode(), headers=server.auth(secret))
    assert status == 504
    (trace,) = key_rows(server, key_id, 1)
    tokens = -(-len(body) // 4)
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (tokens, 0), trace
    assert trace["cost_uc"] == tokens * 500 and trace["cost_status"] == "estimate", trace


def test_a_retry_after_a_slow_first_attempt_bills_both(server, mock):
    """A slow first attempt times out and a retry answers: the first is billed its input as an
    estimate, the second its usage; the budget counts both."""
    put_module(server, "timeout", {"models": {MODEL: 0.3}})
    put_module(server, "fallback", {"retries": 1, "backoff_ms": 0, "max_backoff_ms": 0})
    secret, key_id = budget_key(server)
    mock.enqueue(Reply(hang_s=5))
    mock.enqueue(Reply())
    body = body_of()
    status, headers, _ = server.request(
        "POST", "/v1/chat/completions", raw=body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert status == 200
    first, answered = key_rows(server, key_id, 2)
    assert first["status"] == 504 and first["cost_uc"] == input_estimate_uc(body), first
    assert first["cost_status"] == "estimate" and first["parent_id"] == answered["id"]
    assert answered["cost_uc"] == ANSWER_UC and answered["cost_status"] == "exact"
    total = input_estimate_uc(body) + ANSWER_UC
    wait_for(lambda: spent(server, key_id) == total, 10, "the budget counts both attempts")


def test_a_whole_answer_whose_body_breaks_is_billed_its_input(server, mock):
    """The provider's head said 200 (a whole answer is made before it is sent), then its body broke
    off: the provider bills that answer, so its input is billed as an estimate (502 to the client)."""
    secret, key_id = budget_key(server)
    mock.enqueue(Reply(cut_after=20))
    body = body_of()
    status, _, answer = server.request("POST", "/v1/chat/completions", raw=body, headers=server.auth(secret))
    assert status == 502 and json.loads(answer)["error"]["code"] == "upstream_reset", answer
    (trace,) = key_rows(server, key_id, 1)
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (-(-len(body) // 4), 0)
    assert trace["cost_uc"] == input_estimate_uc(body) and trace["cost_status"] == "estimate"


@pytest.mark.parametrize("stream", [False, True])
def test_a_reset_after_the_request_went_out_is_billed_its_input(server, mock, stream):
    """The provider read the request, then closed the connection before the answer's head: it may
    have billed the input (as for a timeout), so the 502's row carries that estimate and the budget
    counts it."""
    secret, key_id = budget_key(server)
    mock.enqueue(Reply(reset=True))
    body = body_of(stream=True) if stream else body_of()
    status, _, answer = server.request("POST", "/v1/chat/completions", raw=body, headers=server.auth(secret))
    assert status == 502 and json.loads(answer)["error"]["code"] == "upstream_reset", answer
    (trace,) = key_rows(server, key_id, 1)
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (-(-len(body) // 4), 0)
    assert trace["cost_uc"] == input_estimate_uc(body) and trace["cost_status"] == "estimate"
    assert trace["usage_estimated"] == 1
    wait_for(lambda: spent(server, key_id) == input_estimate_uc(body), 10, "the budget counts the input")


def head_reader() -> tuple[socket.socket, threading.Event]:
    """A provider that reads a request's head, then resets the connection with its body unread: a
    listening socket, and the event set once it did."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():  # other calls (a models listing) are reset too, unread
            try:
                conn, _ = listener.accept()
            except OSError:  # the test closed the listener
                return
            with conn:
                seen = b""
                while b"\r\n\r\n" not in seen and (piece := conn.recv(4096)):
                    seen += piece
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: a reset
            if seen.startswith(b"POST /v1/chat/completions"):
                done.set()

    threading.Thread(target=serve, daemon=True).start()
    return listener, done


def test_a_reset_while_the_request_is_written_is_not_billed(pyz_path, cache_home, mock, tmp_path_factory):
    """The provider reset the connection before it had the whole request (20 MB of it still to
    write): nothing it could act on, so not billed (a 502 all the same)."""
    listener, done = head_reader()
    with listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        srv = start_server(pyz_path, cache_home, mock, tmp_path_factory, "cut", GROQ_BASE_URL=url)
        try:
            assert api(srv, "POST", "/api/prices", {"model": "mock-bill", "input": "1", "output": "1"})[0] == 200
            status, body = api(srv, "POST", "/api/keys", {"name": "cut", "budget_usd": "100", "budget_period": "day"})
            assert status == 201, body
            big = body_of("groq/mock-bill", messages=[{"role": "user", "content": "x" * 20_000_000}])
            status, _, answer = srv.request("POST", "/v1/chat/completions", raw=big, headers=srv.auth(body["key"]))
            assert done.wait(10), (status, answer, srv.db_rows("SELECT status, provider, error_message FROM traces"))
            assert status == 502 and json.loads(answer)["error"]["code"] == "upstream_reset", answer
            (trace,) = key_rows(srv, body["id"], 1)
            assert trace["cost_uc"] is None and trace["usage_estimated"] == 0, trace
            assert spent(srv, body["id"]) == 0
        finally:
            srv.stop()


def test_a_provider_that_cannot_be_reached_is_not_billed(server, mock):
    """Nothing reached a provider (its port is closed): nothing is billed."""
    status, body = api(server, "POST", "/api/prices", {"model": "mistral-small-latest", "input": "1", "output": "1"})
    assert status == 200, body
    secret, key_id = budget_key(server)
    status, _, _ = server.request(
        "POST",
        "/v1/chat/completions",
        raw=body_of("mistral/mistral-small-latest"),
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert status == 502
    (trace,) = key_rows(server, key_id, 1)
    assert trace["cost_uc"] is None and trace["usage_estimated"] == 0
    assert spent(server, key_id) == 0


# -- a departed request still counts against the connection caps ---------------------------------------


def healthy(server: ServerProcess) -> bool:
    """Whether a new connection is served (not the cap's 503)."""
    with rawhttp.connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return rawhttp.statuses(rawhttp.read_until_close(sock)) == [200]


def admitted(server: ServerProcess):
    """A connection the server admitted and keeps open (a keep-alive ``/healthz`` answered 200 on it), or
    None (closed) when it met the cap."""
    sock = rawhttp.connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    if rawhttp.read_response(sock)[0] == 200:
        return sock
    sock.close()
    return None


def test_a_request_whose_client_left_keeps_its_place_under_the_connection_cap(pyz_path, cache_home, mock, tmp_path):
    """While its answer is read, the request whose client left still holds its connection's place:
    leaving and sending again cannot put more calls in flight than the cap lets a client have."""
    srv = ServerProcess(pyz_path, tmp_path / "s.db", mock_env(cache_home, mock, STOCKYARD_MAX_CONNECTIONS="2")).start()
    try:
        reached, release = threading.Event(), threading.Event()
        mock.enqueue(Reply(held=release, hang_started=reached))
        client = send_raw(srv, body_of("gpt-4o-mini"), "unused")
        assert reached.wait(10)
        client.close()
        wait_for(lambda: left_waiting_under_cap(srv) == 1, 10, "the server saw the client leave")
        # the cap's last place, taken by a connection the server has answered on (a poll's connection the server
        # had not let go of yet would refuse this one and free its place for the next: a CI flake)
        second = wait_for(lambda: admitted(srv), 10, "a connection admitted beside the departed request")
        with second, rawhttp.connect(srv) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert rawhttp.statuses(rawhttp.read_until_close(extra, 15)) == [503]  # 5 s was short under a loaded CI
            release.set()  # the answer read, the departed request's place is free again
            (trace,) = wait_for(lambda: srv.db_rows("SELECT * FROM traces WHERE endpoint = 'chat'"), 10, "trace")
            wait_for(lambda: healthy(srv), 10, "a place free for another connection")
        assert trace["outcome"] == "client_disconnected" and trace["completion_tokens"] == 5
    finally:
        srv.stop()
