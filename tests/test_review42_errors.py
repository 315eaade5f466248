"""Every failure reaches the client in its own API's shape, and its SDK raises the right thing.

A matrix over a real server and the mock upstream: the clients (the official ``openai`` SDK on
chat, Responses and embeddings, the ``anthropic`` SDK on Messages, raw HTTP on the Gemini-native
routes), the routes (native and translated: the OpenAI SDK to Claude and to Gemini, the Anthropic
SDK to GPT) and the failures (the provider's error statuses, a body that is not JSON, a timeout, a
reset; Stockyard's own refusals; a stream's error event and cut). Each cell asserts what the
user's code sees: the SDK's exception class and status, the error body in its API's shape,
``retry-after`` where a retry makes sense, how many calls the SDK's retries made upstream, and the
trace's outcome; never the provider key in the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import anthropic
import openai
import pytest
from conftest import OPENAI_KEY, ServerProcess, mock_env, served, wait_for
from mock_upstream import (
    Reply,
    anthropic_error,
    anthropic_stream,
    gemini_error,
    gemini_stream,
    openai_chat_stream,
    openai_error,
    responses_stream,
)
from module_helpers import new_key

ADMIN = "admin-key-for-review42-errors-0123456789"
ANTHROPIC_KEY = "sk-ant-test-review42-errors-SECRET0123"
GEMINI_KEY = "AIza-test-review42-errors-SECRET0123456"
GPT, CLAUDE, GEMINI, EMBED = "gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash", "text-embedding-3-small"
HELLO = [{"role": "user", "content": "hi"}]
PROVIDER_KEYS = (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY)
MAX_BODY = 65536

# The SDKs' exception class for a status (both SDKs name them alike; Anthropic adds 413 and 529).
OPENAI_CLASSES = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}
ANTHROPIC_CLASSES = {
    400: anthropic.BadRequestError,
    401: anthropic.AuthenticationError,
    403: anthropic.PermissionDeniedError,
    404: anthropic.NotFoundError,
    413: anthropic.RequestTooLargeError,
    422: anthropic.UnprocessableEntityError,
    429: anthropic.RateLimitError,
    503: anthropic.ServiceUnavailableError,
    529: anthropic.OverloadedError,
}
# Anthropic's error type for a status (docs.claude.com/en/api/errors)
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_UPSTREAM_TIMEOUT="1",
        STOCKYARD_MAX_BODY_BYTES=str(MAX_BODY),
    )
    with served(pyz_path, tmp_path_factory, "review42", env, never_logged=PROVIDER_KEYS) as srv:
        yield srv


@pytest.fixture
def key(server, mock) -> str:
    """A client key of this test's own, with no limits; the mock with no scripted replies left."""
    mock.clear_replies()
    yield new_key(server, ADMIN)[0]
    mock.clear_replies()


# --------------------------------------------------------------------------- what the client saw


@dataclass
class Seen:
    """A failure as the user's code sees it: the exception (None for raw HTTP), status, headers, body."""

    exc: Exception | None
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def trace_id(self) -> str:
        return self.headers["x-stockyard-trace-id"]


def seen_sdk(exc: Exception) -> Seen:
    """An SDK's APIStatusError as a :class:`Seen` (its response's headers and JSON body)."""
    response = exc.response  # type: ignore[attr-defined]
    return Seen(exc, response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.json())


def raised(call: Callable[[], Any]) -> Seen:
    """What ``call`` raised: an SDK status error (anything else fails the test)."""
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as info:
        call()
    return seen_sdk(info.value)


@dataclass(frozen=True)
class Client:
    """One client of the matrix: how it calls, the error shape it expects, the path the mock sees."""

    name: str
    dialect: str  # openai, anthropic or gemini: the error shape
    call: Callable[[ServerProcess, str, str, int], Seen]  # (server, key, model, max_retries)


def openai_chat(server: ServerProcess, key: str, model: str, retries: int = 0) -> Seen:
    client = server.openai(key, max_retries=retries)
    return raised(lambda: client.chat.completions.create(model=model, messages=HELLO))


def openai_responses(server: ServerProcess, key: str, model: str, retries: int = 0) -> Seen:
    client = server.openai(key, max_retries=retries)
    return raised(lambda: client.responses.create(model=model, input="hi"))


def openai_embeddings(server: ServerProcess, key: str, model: str, retries: int = 0) -> Seen:
    client = server.openai(key, max_retries=retries)
    return raised(lambda: client.embeddings.create(model=model, input="hi"))


def anthropic_messages(server: ServerProcess, key: str, model: str, retries: int = 0) -> Seen:
    client = server.anthropic(key, max_retries=retries)
    return raised(lambda: client.messages.create(model=model, max_tokens=64, messages=HELLO))


def gemini_generate(server: ServerProcess, key: str, model: str, retries: int = 0) -> Seen:
    """Raw HTTP on the Gemini-native route (Google's clients have no retries of this kind)."""
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    path = f"/v1beta/models/{model}:generateContent"
    status, headers, raw = server.request("POST", path, body, headers={"x-goog-api-key": key})
    return Seen(None, status, headers, json.loads(raw))


OPENAI_CHAT = Client("openai-chat", "openai", openai_chat)
OPENAI_RESPONSES = Client("openai-responses", "openai", openai_responses)
OPENAI_EMBEDDINGS = Client("openai-embeddings", "openai", openai_embeddings)
ANTHROPIC_MESSAGES = Client("anthropic-messages", "anthropic", anthropic_messages)
GEMINI_NATIVE = Client("gemini-native", "gemini", gemini_generate)


def assert_shape(client: Client, seen: Seen) -> dict:
    """The error body in the client's API's shape with the type its status calls for; its error object."""
    body = seen.body
    if client.dialect == "gemini":
        assert set(body) == {"error"}, body
        error = body["error"]
        assert error["code"] == seen.status and isinstance(error["message"], str), body
        assert error["status"] == GOOGLE_STATUSES[seen.status], body
        return error
    if client.dialect == "anthropic":
        assert body["type"] == "error" and set(body) <= {"type", "error", "request_id"}, body
        error = body["error"]
        assert error["type"] == ANTHROPIC_TYPES[seen.status], body
        assert isinstance(error["message"], str) and error["message"], body
        return error
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "code", "param"} <= set(error), body
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), body
    return error


def assert_sdk_class(client: Client, seen: Seen) -> None:
    """The exception the user's ``except`` catches: the SDK's class for the status."""
    if client.dialect == "anthropic":
        default = anthropic.InternalServerError if seen.status >= 500 else anthropic.APIStatusError
        assert isinstance(seen.exc, ANTHROPIC_CLASSES.get(seen.status, default)), (type(seen.exc), seen.status)
    elif client.dialect == "openai":
        default = openai.InternalServerError if seen.status >= 500 else openai.APIStatusError
        assert type(seen.exc) is OPENAI_CLASSES.get(seen.status, default), (type(seen.exc), seen.status)
    assert seen.exc is None or seen.exc.status_code == seen.status  # type: ignore[attr-defined]


def assert_no_secret(seen: Seen) -> None:
    text = json.dumps(seen.body) + json.dumps(seen.headers)
    assert not any(secret in text for secret in PROVIDER_KEYS), text


def assert_traced(server: ServerProcess, seen: Seen, outcome: str) -> dict:
    """The request's trace: the status the client got and ``outcome``."""
    trace = server.trace(seen.trace_id)
    assert (trace["status"], trace["outcome"]) == (seen.status, outcome), trace
    assert not any(secret in (trace["error_message"] or "") for secret in PROVIDER_KEYS)
    return trace


# --------------------------------------------------------------------------- the provider's failures

# (client, model, the provider's error shape, the path the mock sees)
ROUTES = {
    "openai-chat→gpt": (OPENAI_CHAT, GPT, openai_error, "/v1/chat/completions"),
    "openai-chat→claude": (OPENAI_CHAT, CLAUDE, anthropic_error, "/v1/messages"),
    "openai-chat→gemini": (OPENAI_CHAT, GEMINI, gemini_error, ":generateContent"),
    "openai-responses→gpt": (OPENAI_RESPONSES, GPT, openai_error, "/v1/responses"),
    "openai-responses→claude": (OPENAI_RESPONSES, CLAUDE, anthropic_error, "/v1/messages"),
    "openai-responses→gemini": (OPENAI_RESPONSES, GEMINI, gemini_error, ":generateContent"),
    "openai-embeddings→gpt": (OPENAI_EMBEDDINGS, EMBED, openai_error, "/v1/embeddings"),
    "anthropic→claude": (ANTHROPIC_MESSAGES, CLAUDE, anthropic_error, "/v1/messages"),
    "anthropic→gpt": (ANTHROPIC_MESSAGES, GPT, openai_error, "/v1/chat/completions"),
    "gemini-native→gemini": (GEMINI_NATIVE, GEMINI, gemini_error, ":generateContent"),
}
NATIVE = {openai_error: "openai", anthropic_error: "anthropic", gemini_error: "gemini"}
RETRIED = (408, 409, 429, 500, 502, 503, 504, 529)  # what both SDKs retry (without x-should-retry: false)


def provider_failure(make: Callable[[int], Reply], status: int, retry_after: bool) -> Reply:
    """The provider's error reply for ``status`` in its shape, ``retry-after: 1`` only when asked."""
    reply = make(status)
    headers = {"retry-after": "1"} if retry_after else {}
    return Reply(status=reply.status, json=reply.json, headers=headers)


def upstream_calls(mock, path: str, since: int) -> int:
    return sum(path in r.path for r in mock.requests[since:])


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize(
    "status, retry_after",
    [(400, False), (401, False), (403, False), (404, False), (413, False), (422, False)]
    + [(429, False), (429, True), (500, False), (503, False), (529, False)],
)
def test_a_providers_error_status(server, mock, key, route, status, retry_after):
    """The provider's error answer reaches the client with its status, in the client's shape and
    the SDK's class; the SDK retries it (one retry here: two calls upstream) only when the status
    is one it retries; ``retry-after`` passes on as the provider sent it; the trace says so."""
    client, model, make, upstream_path = ROUTES[route]
    retries = 1 if client.dialect != "gemini" else 0
    mock.enqueue(*[provider_failure(make, status, retry_after)] * 2)
    since = len(mock.requests)
    seen = client.call(server, key, model, retries)
    assert seen.status == status
    assert_sdk_class(client, seen)
    if NATIVE[make] == client.dialect:  # the provider's own error, as it sent it
        assert seen.body == make(status).json
    else:
        assert_shape(client, seen)
    assert_no_secret(seen)
    assert ("retry-after" in seen.headers) == retry_after, seen.headers
    expected_calls = 2 if (retries and status in RETRIED) else 1
    assert upstream_calls(mock, upstream_path, since) == expected_calls
    assert_traced(server, seen, "upstream_error")


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_providers_error_that_is_not_json(server, mock, key, route):
    """An error page (a proxy's HTML) keeps its status; the client gets its shape, not the HTML."""
    client, model, _, _ = ROUTES[route]
    page = b"<html><body>Bad gateway</body></html>"
    mock.enqueue(Reply(status=502, body=page, headers={"content-type": "text/html"}))
    seen = client.call(server, key, model, 0)
    assert seen.status == 502
    assert_sdk_class(client, seen)
    error = assert_shape(client, seen)
    assert "not JSON" in error["message"] and "<html>" not in error["message"]
    assert_traced(server, seen, "upstream_error")


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_provider_that_echoes_its_key_in_the_error(server, mock, key, route):
    """A provider's 401 quoting the key it was sent: the client never sees the key."""
    client, model, make, _ = ROUTES[route]
    secret = {openai_error: OPENAI_KEY, anthropic_error: ANTHROPIC_KEY, gemini_error: GEMINI_KEY}[make]
    reply = make(401)
    reply = Reply(status=401, json=json.loads(json.dumps(reply.json).replace("(mock)", f"provided: {secret}")))
    assert secret in json.dumps(reply.json)
    mock.enqueue(reply)
    seen = client.call(server, key, model, 0)
    assert seen.status == 401
    assert_sdk_class(client, seen)
    assert_shape(client, seen)
    assert_no_secret(seen)
    assert_traced(server, seen, "upstream_error")


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("failure", ["timeout", "reset"])
def test_a_provider_that_does_not_answer(server, mock, key, route, failure):
    """A provider that times out (504) or resets the connection (502): a transient failure the SDK
    retries (one retry here), in the client's shape, traced as an error."""
    client, model, _, upstream_path = ROUTES[route]
    scripted = Reply(hang_s=5) if failure == "timeout" else Reply(reset=True)
    mock.enqueue(*[scripted] * 4)  # a reset request is sent once more by Stockyard (a stale connection)
    retries = 1 if client.dialect != "gemini" else 0
    since = len(mock.requests)
    seen = client.call(server, key, model, retries)
    assert seen.status == (504 if failure == "timeout" else 502)
    calls = upstream_calls(mock, upstream_path, since)
    assert calls == 1 + retries if failure == "timeout" else 1 + retries <= calls <= 2 * (1 + retries)
    assert_sdk_class(client, seen)
    assert_shape(client, seen)
    assert_no_secret(seen)
    assert_traced(server, seen, "error")


# --------------------------------------------------------------------------- Stockyard's own refusals

# client → the model it asks for (a priced one of its provider), the other model a key may be limited to
CLIENTS = {
    "openai-chat": (OPENAI_CHAT, GPT),
    "openai-responses": (OPENAI_RESPONSES, GPT),
    "openai-embeddings": (OPENAI_EMBEDDINGS, EMBED),
    "anthropic-messages": (ANTHROPIC_MESSAGES, CLAUDE),
    "gemini-native": (GEMINI_NATIVE, GEMINI),
}


def key_traces(server: ServerProcess, secret_name: str) -> list[dict]:
    sql = "SELECT t.status, t.outcome FROM traces t JOIN client_keys k ON k.id = t.key_id WHERE k.name = ?"
    return server.db_rows(sql, (secret_name,))


def refusal_traced(server: ServerProcess, seen: Seen) -> dict:
    """A refusal's trace: its status, outcome ``rejected``."""
    return assert_traced(server, seen, "rejected")


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_bad_client_key_is_401_not_retried(server, mock, key, name):
    client, model = CLIENTS[name]
    since = len(mock.requests)
    seen = client.call(server, "sk-sy-not-a-key-of-this-server-0123456789", model, 2)
    assert seen.status == 401
    assert_sdk_class(client, seen)
    assert_shape(client, seen)
    assert "retry-after" not in seen.headers
    assert len(mock.requests) == since
    refusal_traced(server, seen)


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_model_the_key_may_not_use_is_403(server, mock, name):
    client, model = CLIENTS[name]
    secret, _ = new_key(server, ADMIN, models=["some-other-model"])
    since = len(mock.requests)
    seen = client.call(server, secret, model, 2)
    assert seen.status == 403
    assert_sdk_class(client, seen)
    assert_shape(client, seen)
    assert "retry-after" not in seen.headers
    assert len(mock.requests) == since
    refusal_traced(server, seen)


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_used_up_budget_is_429_the_sdk_does_not_retry(server, mock, name):
    """A budget used up is a quota, not a pause: ``x-should-retry: false`` keeps the SDK from
    retrying it (two retries allowed here: one request reaches Stockyard)."""
    client, model = CLIENTS[name]
    secret, key_name = new_key(server, ADMIN, budget_usd="0", budget_period="total")
    since = len(mock.requests)
    seen = client.call(server, secret, model, 2)
    assert seen.status == 429
    assert_sdk_class(client, seen)
    error = assert_shape(client, seen)
    if client.dialect == "openai":
        assert (error["type"], error["code"]) == ("budget_exceeded", "budget_exceeded")
    elif client.dialect == "anthropic":  # Anthropic's rate_limit_error (assert_shape), the reason in its details
        assert error["details"] == {"error_code": "budget_exceeded"}
    assert seen.headers.get("x-should-retry") == "false"
    assert len(mock.requests) == since
    refusal_traced(server, seen)
    assert [row["status"] for row in key_traces(server, key_name)] == [429]


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_an_rpm_refusal_is_429_with_retry_after(server, mock, name):
    client, model = CLIENTS[name]
    secret, _ = new_key(server, ADMIN, rpm=1)
    mock.clear_replies()
    assert _served(server, client, secret, model) == 200  # the first request of the minute
    seen = client.call(server, secret, model, 0)
    assert seen.status == 429
    assert_sdk_class(client, seen)
    assert_shape(client, seen)
    assert int(seen.headers["retry-after"]) >= 1
    assert seen.headers.get("x-should-retry") != "false"
    refusal_traced(server, seen)


def _served(server: ServerProcess, client: Client, secret: str, model: str) -> int:
    """The status of one request that should be served (raw HTTP in the client's own route)."""
    path, body, headers = raw_request(client, model, secret)
    status, _, _ = server.request("POST", path, body, headers=headers)
    return status


def raw_request(client: Client, model: str, secret: str) -> tuple[str, dict, dict]:
    """(path, body, headers) of a small request of ``client``'s API."""
    if client is OPENAI_CHAT:
        return "/v1/chat/completions", {"model": model, "messages": HELLO}, {"Authorization": f"Bearer {secret}"}
    if client is OPENAI_RESPONSES:
        return "/v1/responses", {"model": model, "input": "hi"}, {"Authorization": f"Bearer {secret}"}
    if client is OPENAI_EMBEDDINGS:
        return "/v1/embeddings", {"model": model, "input": "hi"}, {"Authorization": f"Bearer {secret}"}
    if client is ANTHROPIC_MESSAGES:
        body = {"model": model, "max_tokens": 64, "messages": HELLO}
        return "/v1/messages", body, {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    return f"/v1beta/models/{model}:generateContent", body, {"x-goog-api-key": secret}


def big_call(server: ServerProcess, client: Client, secret: str, model: str) -> Seen:
    """A request whose body is past STOCKYARD_MAX_BODY_BYTES, through the client."""
    text = "x" * (MAX_BODY + 1000)
    if client is OPENAI_CHAT:
        sdk = server.openai(secret, max_retries=2)
        return raised(lambda: sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": text}]))
    if client is OPENAI_RESPONSES:
        sdk = server.openai(secret, max_retries=2)
        return raised(lambda: sdk.responses.create(model=model, input=text))
    if client is OPENAI_EMBEDDINGS:
        sdk = server.openai(secret, max_retries=2)
        return raised(lambda: sdk.embeddings.create(model=model, input=text))
    if client is ANTHROPIC_MESSAGES:
        sdk = server.anthropic(secret, max_retries=2)
        return raised(
            lambda: sdk.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": text}])
        )
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    path = f"/v1beta/models/{model}:generateContent"
    status, headers, raw = server.request("POST", path, body, headers={"x-goog-api-key": secret})
    return Seen(None, status, headers, json.loads(raw))


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_body_too_large_is_413_not_retried(server, mock, key, name):
    client, model = CLIENTS[name]
    since = len(mock.requests)
    seen = big_call(server, client, key, model)
    assert seen.status == 413
    assert_sdk_class(client, seen)
    assert_shape(client, seen)
    assert "retry-after" not in seen.headers
    assert len(mock.requests) == since


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_bad_json_is_400(server, mock, key, name):
    client, model = CLIENTS[name]
    path, _, headers = raw_request(client, model, key)
    status, got, raw = server.request("POST", path, raw=b'{"model": "gpt-4o-mini", "messages": [', headers=headers)
    seen = Seen(None, status, got, json.loads(raw))
    assert seen.status == 400
    assert_shape(client, seen)
    refusal_traced(server, seen)


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_an_unknown_model_is_a_4xx_in_the_clients_shape(server, mock, key, name):
    """A model no provider serves: the client's 400 (or Google's 404 for a model path), not retried."""
    client, _ = CLIENTS[name]
    since = len(mock.requests)
    seen = client.call(server, key, "mystery-model-7", 2)
    assert seen.status in (400, 404)
    assert_sdk_class(client, seen)
    assert_shape(client, seen)
    assert "retry-after" not in seen.headers
    assert len(mock.requests) == since


# --------------------------------------------------------------------------- failures mid-stream

STREAM_BODY = {"model": "", "messages": HELLO, "input": "hi", "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
# each provider's error event in its stream (what it sends when it fails after the answer began)
SERVER_ERROR = {"message": "The server had an error (mock).", "type": "server_error", "param": None, "code": None}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (mock)"}}
RESPONSES_ERROR = {"type": "error", "code": "server_error", "message": "An error (mock).", "sequence_number": 5}
ERROR_EVENTS = {
    "openai": json.dumps({"error": SERVER_ERROR}),
    "anthropic": f"event: error\ndata: {json.dumps(OVERLOADED)}",
    "responses": f"event: error\ndata: {json.dumps(RESPONSES_ERROR)}",
    "gemini": json.dumps({"error": {"code": 503, "message": "Overloaded (mock).", "status": "UNAVAILABLE"}}),
}
FIRST_EVENTS = {  # the events of the answer the provider sends before it fails: some text
    "openai": lambda model: openai_chat_stream(STREAM_BODY, 1, model)[:2],
    "anthropic": lambda model: anthropic_stream(STREAM_BODY, 1, model)[:4],
    "responses": lambda model: responses_stream(STREAM_BODY, 1, model)[:5],
    "gemini": lambda model: gemini_stream(STREAM_BODY, 1, model)[:1],
}


@dataclass
class StreamEnd:
    """How a broken stream ended for the user's code: the exception its SDK raised (None: none), the
    error object the client read (an SDK's exception body, or the last event), the trace id, the text."""

    exc: Exception | None
    error: dict
    trace_id: str
    text: str


def chat_stream(server: ServerProcess, key: str, model: str) -> StreamEnd:
    stream = server.openai(key).chat.completions.create(model=model, messages=HELLO, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
    assert not isinstance(info.value, openai.APIStatusError)  # the answer's status was 200
    return StreamEnd(info.value, info.value.body, stream.response.headers["x-stockyard-trace-id"], text)


def responses_event_stream(server: ServerProcess, key: str, model: str) -> StreamEnd:
    """The Responses stream: its documented ``error`` event (the SDK yields it as ResponseErrorEvent), or
    ``response.failed`` with the response's ``error`` (Stockyard's end of a cut stream)."""
    stream = server.openai(key).responses.create(model=model, input="hi", stream=True)
    events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    assert last.type in ("error", "response.failed"), [e.type for e in events]
    error = last.model_dump() if last.type == "error" else {**last.response.error.model_dump(), "type": "error"}
    return StreamEnd(None, error, stream.response.headers["x-stockyard-trace-id"], text)


def messages_stream(server: ServerProcess, key: str, model: str) -> StreamEnd:
    stream = server.anthropic(key).messages.create(model=model, max_tokens=64, messages=HELLO, stream=True)
    text = ""
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    return StreamEnd(info.value, body["error"], stream.response.headers["x-stockyard-trace-id"], text)


def gemini_native_stream(server: ServerProcess, key: str, model: str) -> StreamEnd:
    """Raw SSE of streamGenerateContent: the last event is Google's error object."""
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
    status, headers, raw = server.request("POST", path, body, headers={"x-goog-api-key": key})
    assert status == 200
    events = [json.loads(e[5:]) for e in raw.decode().split("\n\n") if e.startswith("data:")]
    text = "".join(p.get("text", "") for e in events[:-1] for c in e["candidates"] for p in c["content"]["parts"])
    error = events[-1]["error"]
    assert set(error) >= {"code", "message", "status"} and error["status"] == GOOGLE_STATUSES[error["code"]], error
    return StreamEnd(None, error, headers["x-stockyard-trace-id"], text)


# name → (how the client streams, model, the provider's stream dialect)
STREAMS = {
    "openai-chat→gpt": (chat_stream, GPT, "openai"),
    "openai-chat→claude": (chat_stream, CLAUDE, "anthropic"),
    "openai-chat→gemini": (chat_stream, GEMINI, "gemini"),
    "openai-responses→gpt": (responses_event_stream, GPT, "responses"),
    "openai-responses→claude": (responses_event_stream, CLAUDE, "anthropic"),
    "openai-responses→gemini": (responses_event_stream, GEMINI, "gemini"),
    "anthropic→claude": (messages_stream, CLAUDE, "anthropic"),
    "anthropic→gpt": (messages_stream, GPT, "openai"),
    "gemini-native→gemini": (gemini_native_stream, GEMINI, "gemini"),
}


def assert_stream_error(how: Callable, end: StreamEnd) -> None:
    """The error the client read is in its API's shape, and names no provider key."""
    if how is messages_stream:
        assert end.error["type"] in ANTHROPIC_TYPES.values() and end.error["message"], end.error
    elif how is responses_event_stream:
        assert end.error["type"] == "error" and end.error["message"] and end.error["code"], end.error
    elif how is chat_stream:
        assert isinstance(end.error, dict) and end.error["message"] and end.error["type"], end.error
    assert not any(secret in json.dumps(end.error) for secret in PROVIDER_KEYS)


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("failure", ["error-event", "cut"])
def test_a_stream_that_fails_midway(server, mock, key, name, failure):
    """The text before the failure arrives; then the SDK raises (chat, Messages) or the API's own error
    event ends the stream (Responses' ``error``, Google's error object): never a made-up normal end;
    the trace says the stream broke."""
    how, model, dialect = STREAMS[name]
    first = FIRST_EVENTS[dialect](model)
    if failure == "error-event":
        mock.enqueue(Reply(sse=[*first, ERROR_EVENTS[dialect]]))
    else:
        mock.enqueue(Reply(sse=first + ["never sent"], cut_after=len(first)))
    end = how(server, key, model)
    assert end.text == "Hello"
    assert_stream_error(how, end)
    trace = server.trace(end.trace_id)
    assert (trace["status"], trace["outcome"]) == (200, "stream_broken"), trace
    assert trace["error_message"] and trace["error_type"], trace


@pytest.mark.parametrize("route", ["openai-chat→gemini", "gemini-native→gemini"])
def test_geminis_retry_delay_becomes_retry_after(server, mock, key, route):
    """Gemini's 429 says how long to wait in its body's RetryInfo, not in a header: the client gets it
    as ``retry-after`` (was: none, so the OpenAI SDK retried a per-minute quota after half a second)."""
    client, model, _, upstream_path = ROUTES[route]
    reply = gemini_error(429)
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.8s"}
    reply.json["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"}, retry_info]
    mock.enqueue(reply, reply)
    since = len(mock.requests)
    retries = 1 if client.dialect != "gemini" else 0
    seen = client.call(server, key, model, retries)
    assert seen.status == 429 and seen.headers["retry-after"] == "1"
    assert_sdk_class(client, seen)
    assert upstream_calls(mock, upstream_path, since) == 1 + retries
    assert_traced(server, seen, "upstream_error")


def stream_create(server: ServerProcess, how: Callable, key: str, model: str, retries: int) -> Seen:
    """A stream request the provider refused before it began: what the client's create raised or got."""
    if how is chat_stream:
        client = server.openai(key, max_retries=retries)
        return raised(lambda: client.chat.completions.create(model=model, messages=HELLO, stream=True))
    if how is responses_event_stream:
        client = server.openai(key, max_retries=retries)
        return raised(lambda: client.responses.create(model=model, input="hi", stream=True))
    if how is messages_stream:
        sdk = server.anthropic(key, max_retries=retries)
        return raised(lambda: sdk.messages.create(model=model, max_tokens=64, messages=HELLO, stream=True))
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
    status, headers, raw = server.request("POST", path, body, headers={"x-goog-api-key": key})
    return Seen(None, status, headers, json.loads(raw))


STREAM_CLIENTS = {
    chat_stream: OPENAI_CHAT,
    responses_event_stream: OPENAI_RESPONSES,
    messages_stream: ANTHROPIC_MESSAGES,
    gemini_native_stream: GEMINI_NATIVE,
}
ERROR_REPLIES = {
    "openai": openai_error,
    "responses": openai_error,
    "anthropic": anthropic_error,
    "gemini": gemini_error,
}


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("status", [429, 500])
def test_a_stream_the_provider_refuses_before_it_began(server, mock, key, name, status):
    """A stream request answered with an error status: an error answer (no stream) in the client's
    shape, which the SDK raises from ``create`` and retries, ``retry-after`` passed on."""
    how, model, dialect = STREAMS[name]
    client = STREAM_CLIENTS[how]
    reply = ERROR_REPLIES[dialect](status)
    mock.enqueue(*[Reply(status=status, json=reply.json, headers={"retry-after": "1"})] * 2)
    seen = stream_create(server, how, key, model, 1)
    assert seen.status == status and seen.headers["retry-after"] == "1"
    assert seen.headers["content-type"].startswith("application/json")
    assert_sdk_class(client, seen)
    assert_no_secret(seen)
    if dialect.replace("responses", "openai") != client.dialect:
        assert_shape(client, seen)
    assert mock.pending() == 0 if client.dialect != "gemini" else mock.pending() == 1  # the SDK retried once
    assert_traced(server, seen, "upstream_error")
