"""Gemini-native routes: Google's own API (/v1beta/models/{model}:method) through Stockyard.

Raw HTTP, as the google-genai SDK and REST clients send it: the client key in
``x-goog-api-key`` or ``?key=``, the model and the method in the URL. One keyed server per
module routes ``gemini-*`` to the session mock as the Gemini provider and ``gpt-*`` to it as
OpenAI. Each test uses its own model name; the mock takes the model from the URL path.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import CACHED_TOKENS, PROMPT_TOKENS, TEXT, MockUpstream, Recorded, Reply
from rawhttp import connect, read_response

GEMINI_KEY = "AIza-native-0123456789abcdefPROVIDERSECRET"
OPENAI_KEY = "sk-native-openai-0123456789abcdef"
PRICED = ["gemini-native-plain", "gemini-native-sse", "gemini-native-array", "gemini-native-cached-reasoning"]
CONTENTS = [{"role": "user", "parts": [{"text": "Hello"}]}]
UC_PER_TOKEN = {"input": 100, "cached": 50, "output": 200}  # $1, $0.50, $2 per 1M tokens in µ¢ per token


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, OPENAI_API_KEY=OPENAI_KEY, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url)
    rates = ("--input", "1", "--output", "2", "--cached-input", "0.5", "--reasoning", "2")
    cli = [("prices", "set", model, *rates) for model in PRICED]  # the mock's names are no real model's
    cli += [
        ("modules", "set", "alias", "aliases.house-embedder=gemini-native-embedder"),
        ("modules", "enable", "alias"),
    ]
    with served(pyz_path, tmp_path_factory, "gnative", env, {"genai": []}, cli=cli) as proc:
        KEYS["genai"] = proc.keys["genai"]
        yield proc


KEYS: dict[str, str] = {}


@pytest.fixture(scope="module")
def key(server) -> str:
    return KEYS["genai"]


def gemini(
    server: ServerProcess, method: str, path: str, body: dict | None = None, key: str | None = None
) -> tuple[int, dict, bytes]:
    """One request as Google's clients send it: the key in x-goog-api-key."""
    headers = {"x-goog-api-key": key} if key else {}
    return server.request(method, path, body, headers=headers)


def sent(mock: MockUpstream, model: str) -> Recorded:
    """The newest request the mock got for ``model``: with the provider's key, in a header only."""
    for req in reversed(mock.requests):
        if req.path.startswith(f"/v1beta/models/{model}:"):
            assert req.headers["x-goog-api-key"] == GEMINI_KEY
            assert "key" not in req.query and "authorization" not in req.headers and "x-api-key" not in req.headers
            return req
    raise AssertionError(f"mock saw no Gemini request for {model}")


def cost(prompt: int, output: int, cached: int = 0) -> int:
    rates = UC_PER_TOKEN
    return (prompt - cached) * rates["input"] + cached * rates["cached"] + output * rates["output"]


def google_error(raw: bytes, status: int, name: str) -> str:
    """The message of a Google-shaped error body, after checking its shape."""
    error = json.loads(raw)["error"]
    assert (error["code"], error["status"]) == (status, name), error
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


# --------------------------------------------------------------------------- generateContent


def test_generate_content_passes_through_and_is_priced(server, key, mock) -> None:
    model = "gemini-native-plain"
    body = {"contents": CONTENTS, "generationConfig": {"temperature": 0.2, "maxOutputTokens": 64}}
    status, headers, raw = gemini(server, "POST", f"/v1beta/models/{model}:generateContent", body, key)
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["candidates"][0]["content"]["parts"] == [{"text": TEXT}]
    assert answer["usageMetadata"]["promptTokenCount"] == PROMPT_TOKENS
    assert sent(mock, model).json == body  # forwarded as it came
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["dialect"], trace["status"]) == ("generate", "gemini", 200)
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT_TOKENS, 5)
    assert trace["cost_uc"] == cost(PROMPT_TOKENS, 5) and trace["cost_status"] == "exact"


def test_reasoning_and_cached_tokens_are_priced(server, key) -> None:
    model = "gemini-native-cached-reasoning"
    status, headers, raw = gemini(
        server, "POST", f"/v1beta/models/{model}:generateContent", {"contents": CONTENTS}, key
    )
    assert status == 200, raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["completion_tokens"], trace["reasoning_tokens"], trace["cached_tokens"]) == (8, 3, CACHED_TOKENS)
    assert trace["cost_uc"] == cost(PROMPT_TOKENS, 8, CACHED_TOKENS)


def test_gemini_3_pro_preview_is_priced_from_the_shipped_table(server, key) -> None:
    # its shipped price, not an override: $2 input, $12 output per 1M → 200 and 1,200 µ¢ a token
    model = "gemini-3-pro-preview"
    status, headers, raw = gemini(
        server, "POST", f"/v1beta/models/{model}:generateContent", {"contents": CONTENTS}, key
    )
    assert status == 200, raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["cost_uc"], trace["cost_status"]) == (PROMPT_TOKENS * 200 + 5 * 1_200, "exact")


def test_v1_paths_and_provider_prefixed_models_work_too(server, key, mock) -> None:
    status, _, raw = gemini(server, "POST", "/v1/models/gemini-native-v1:generateContent", {"contents": CONTENTS}, key)
    assert status == 200, raw
    assert sent(mock, "gemini-native-v1").path == "/v1beta/models/gemini-native-v1:generateContent"
    path = "/v1beta/models/gemini/gemini-native-named:generateContent"  # provider/model, as routing knows it
    status, _, raw = gemini(server, "POST", path, {"contents": CONTENTS}, key)
    assert status == 200, raw
    assert sent(mock, "gemini-native-named").json == {"contents": CONTENTS}
    path = "/v1beta/models/models%2Fgemini-native-resource:countTokens"  # Google's resource name, encoded
    status, _, raw = gemini(server, "POST", path, {"contents": CONTENTS}, key)
    assert status == 200, raw
    assert sent(mock, "gemini-native-resource").path == "/v1beta/models/gemini-native-resource:countTokens"


# --------------------------------------------------------------------------- streams


def stream(
    server: ServerProcess, path: str, key: str, body: dict, headers: dict | None = None
) -> tuple[int, dict, list[bytes]]:
    """A streamed answer read with http.client, chunk by chunk as the server sends them."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        sent_headers = {"x-goog-api-key": key, "Content-Type": "application/json", **(headers or {})}
        conn.request("POST", path, json.dumps(body), sent_headers)
        resp = conn.getresponse()
        chunks = []
        while piece := resp.read1(65536):
            chunks.append(piece)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, chunks
    finally:
        conn.close()


def test_sse_stream_is_relayed_and_priced(server, key, mock) -> None:
    model = "gemini-native-sse"
    status, headers, chunks = stream(
        server, f"/v1beta/models/{model}:streamGenerateContent?alt=sse", key, {"contents": CONTENTS}
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in b"".join(chunks).decode().split("\n") if line.startswith("data: ")]
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == TEXT
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    req = sent(mock, model)
    assert req.query == {"alt": "sse"} and req.json == {"contents": CONTENTS}
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["stream"] == 1 and trace["cost_uc"] == cost(PROMPT_TOKENS, 5)


def test_json_array_stream_is_googles_array_form(server, key, mock) -> None:
    model = "gemini-native-array"
    status, headers, chunks = stream(
        server, f"/v1beta/models/{model}:streamGenerateContent", key, {"contents": CONTENTS}
    )
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert headers["transfer-encoding"] == "chunked"
    raw = b"".join(chunks)
    assert raw.startswith(b"[{") and raw.endswith(b"}\n]") and raw.count(b"\n,\r\n") == 2
    items = json.loads(raw)
    assert "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in items) == TEXT
    assert sent(mock, model).query == {"alt": "sse"}  # asked upstream as SSE, whatever the client reads
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["cost_uc"] == cost(PROMPT_TOKENS, 5)


def test_json_array_elements_leave_as_they_arrive(server, key, mock) -> None:
    piece = {"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]}
    last = {"candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}, "finishReason": "STOP"}]}
    mock.enqueue(Reply(sse=[json.dumps(piece), json.dumps(last)], sse_delay_ms=1500))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        path = "/v1beta/models/gemini-native-slow:streamGenerateContent"
        conn.request("POST", path, json.dumps({"contents": CONTENTS}), {"x-goog-api-key": key})
        resp = conn.getresponse()
        started = time.monotonic()
        first = resp.read1(65536)
        first_at = time.monotonic() - started
        rest = resp.read()
        end_at = time.monotonic() - started
    finally:
        conn.close()
    assert first == b"[" + json.dumps(piece).encode()  # the first element, before the second exists
    assert end_at - first_at > 1.0
    assert json.loads(first + rest) == [piece, last]


def test_a_broken_json_array_stream_ends_with_a_google_error(server, key, mock) -> None:
    first = json.dumps({"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]})
    mock.enqueue(Reply(sse=[first, first], cut_after=1))
    status, _, chunks = stream(
        server, "/v1beta/models/gemini-native-broken:streamGenerateContent", key, {"contents": CONTENTS}
    )
    items = json.loads(b"".join(chunks))
    assert status == 200 and items[0]["candidates"][0]["content"]["parts"] == [{"text": "Hel"}]
    assert items[-1]["error"]["status"] == "UNAVAILABLE"


# --------------------------------------------------------------------------- countTokens, embeddings


def test_count_tokens_is_free(server, key, mock) -> None:
    model = "gemini-native-count"
    body = {"generateContentRequest": {"model": "models/someone-else", "contents": CONTENTS}}
    status, headers, raw = gemini(server, "POST", f"/v1beta/models/{model}:countTokens", body, key)
    assert status == 200 and json.loads(raw)["totalTokens"] == PROMPT_TOKENS
    # Google wants the inner model to be the URL's: it is the one the request was routed to
    assert sent(mock, model).json["generateContentRequest"]["model"] == f"models/{model}"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["endpoint"] == "count_tokens" and not trace["cost_uc"]


def test_embed_content(server, key, mock) -> None:
    model = "gemini-native-embedding"
    body = {"content": {"parts": [{"text": "sixteen chars ok"}]}, "outputDimensionality": 4}
    status, headers, raw = gemini(server, "POST", f"/v1beta/models/{model}:embedContent", body, key)
    assert status == 200, raw
    assert len(json.loads(raw)["embedding"]["values"]) == 4
    assert sent(mock, model).json == body
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["endpoint"], trace["prompt_tokens"], trace["usage_estimated"]) == ("embeddings", 4, 1)


def test_batch_embed_contents_pins_each_model(server, key, mock) -> None:
    model = "gemini-native-batch-embedding"
    requests = [{"model": "models/other", "content": {"parts": [{"text": t}]}} for t in ("a", "b", "c")]
    status, _, raw = gemini(server, "POST", f"/v1beta/models/{model}:batchEmbedContents", {"requests": requests}, key)
    assert status == 200, raw
    assert len(json.loads(raw)["embeddings"]) == 3
    assert [r["model"] for r in sent(mock, model).json["requests"]] == [f"models/{model}"] * 3


def test_an_alias_routes_and_the_body_names_the_routed_model(server, key, mock) -> None:
    requests = [{"model": "models/house-embedder", "content": {"parts": [{"text": "hi"}]}}]
    path = "/v1beta/models/house-embedder:batchEmbedContents"
    status, headers, raw = gemini(server, "POST", path, {"requests": requests}, key)
    assert status == 200, raw
    assert headers["x-stockyard-routed-model"] == "gemini-native-embedder"
    assert sent(mock, "gemini-native-embedder").json["requests"][0]["model"] == "models/gemini-native-embedder"


# --------------------------------------------------------------------------- models


def test_models_list_and_get(server, key) -> None:
    status, _, raw = gemini(server, "GET", "/v1beta/models", key=key)
    assert status == 200, raw
    listed = json.loads(raw)["models"]
    names = [m["name"] for m in listed]
    assert "models/gemini-2.5-flash" in names and "models/gemini-embedding-001" in names
    assert not any("gpt" in n for n in names)  # only what the Gemini routes can serve
    flash = next(m for m in listed if m["name"] == "models/gemini-2.5-flash")
    assert "generateContent" in flash["supportedGenerationMethods"]
    assert flash["displayName"] == "Gemini 2.5 Flash", "the provider's own display name, as its listing gives it"
    status, _, raw = gemini(server, "GET", "/v1beta/models?pageSize=1", key=key)
    page = json.loads(raw)
    assert status == 200 and len(page["models"]) == 1 and page["nextPageToken"]
    status, _, raw = gemini(server, "GET", f"/v1beta/models?pageSize=1&pageToken={page['nextPageToken']}", key=key)
    assert status == 200 and json.loads(raw)["models"][0]["name"] == names[1]
    status, _, raw = gemini(server, "GET", "/v1beta/models/gemini-2.5-flash", key=key)
    assert status == 200 and json.loads(raw)["name"] == "models/gemini-2.5-flash"
    assert json.loads(raw)["displayName"] == "Gemini 2.5 Flash"
    status, _, raw = gemini(server, "GET", "/v1beta/models/gpt-4o-mini", key=key)
    google_error(raw, 404, "NOT_FOUND")
    assert gemini(server, "GET", "/v1beta/models")[0] == 401


def test_v1_models_answers_google_clients_in_googles_shape(server, key) -> None:
    # google-genai uses v1 by default: a request with a Google-style key is a Google client
    status, _, raw = gemini(server, "GET", "/v1/models", key=key)
    assert status == 200 and "models/gemini-2.5-flash" in [m["name"] for m in json.loads(raw)["models"]]
    status, _, raw = server.request("GET", f"/v1/models/gemini-2.5-flash?key={key}")
    assert status == 200 and json.loads(raw)["name"] == "models/gemini-2.5-flash"
    status, _, raw = gemini(server, "GET", "/v1/models", key="sk-sy-wrong")
    google_error(raw, 401, "UNAUTHENTICATED")
    status, _, raw = server.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert status == 200 and json.loads(raw)["object"] == "list"  # an OpenAI client: OpenAI's list


# --------------------------------------------------------------------------- keys and errors


def test_key_in_the_query_works_and_is_never_kept(server, key, mock) -> None:
    model = "gemini-native-query-key"
    status, headers, raw = server.request(
        "POST", f"/v1beta/models/{model}:generateContent?key={key}", {"contents": CONTENTS}
    )
    assert status == 200, raw
    server.trace(headers["x-stockyard-trace-id"])  # committed
    wait_for(lambda: f"POST /v1beta/models/{model}:generateContent 200" in server.log, what="the access log line")
    assert key not in server.log and GEMINI_KEY not in server.log
    for name in ("stockyard.db", "stockyard.db-wal"):
        path = server.db.parent / name
        if path.exists():
            data = path.read_bytes()
            assert key.encode() not in data and GEMINI_KEY.encode() not in data
    for req in mock.requests:
        assert key not in req.path and key not in json.dumps(req.query) and key.encode() not in req.body
        assert all(key not in value for value in req.headers.values())


def test_two_different_keys_are_refused(server, key) -> None:
    path = "/v1beta/models/gemini-native-x:generateContent?key=sk-sy-another"
    status, _, raw = gemini(server, "POST", path, {"contents": CONTENTS}, key)
    google_error(raw, 401, "UNAUTHENTICATED")


def test_no_key_is_refused_before_the_body_arrives(server, key) -> None:
    with connect(server) as sock:
        head = (
            "POST /v1beta/models/gemini-native-nokey:generateContent HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n"
        )
        sock.sendall(head.encode())
        status, _, raw = read_response(sock, timeout=5)
    assert google_error(raw, 401, "UNAUTHENTICATED").startswith("a client key is required")
    status, _, raw = gemini(server, "POST", "/v1beta/models/gemini-native-x:generateContent", {}, "sk-sy-wrong")
    google_error(raw, 401, "UNAUTHENTICATED")


def test_a_model_of_another_provider_kind_is_a_google_400(server, key, mock) -> None:
    before = len(mock.requests)
    status, _, raw = gemini(server, "POST", "/v1beta/models/gpt-4o-mini:generateContent", {"contents": CONTENTS}, key)
    assert status == 400
    assert "'openai'" in google_error(raw, 400, "INVALID_ARGUMENT")
    assert len(mock.requests) == before  # nothing went upstream


def test_errors_are_in_googles_shape(server, key) -> None:
    status, _, raw = gemini(server, "POST", "/v1beta/models/gemini-native-x:generateContent", None, key)
    google_error(raw, 400, "INVALID_ARGUMENT")  # no JSON body
    status, _, raw = gemini(server, "POST", "/v1beta/models/gemini-native-x:fly", {}, key)
    google_error(raw, 404, "NOT_FOUND")
    status, _, raw = gemini(server, "POST", "/v1beta/models/mystery-model:generateContent", {}, key)
    assert "mystery-model" in google_error(raw, 404, "NOT_FOUND")  # routes to no provider
    status, _, raw = gemini(server, "POST", "/v1beta/models/..:generateContent", {"contents": CONTENTS}, key)
    google_error(raw, 400, "INVALID_ARGUMENT")
    status, _, raw = gemini(server, "GET", "/v1beta/models/gemini-native-x:generateContent", key=key)
    google_error(raw, 405, "INVALID_ARGUMENT")
    bearer = {"Authorization": f"Bearer {key}"}  # an OpenAI client: a fine-tuned model's id has colons
    status, _, raw = server.request("GET", "/v1/models/ft:davinci", headers=bearer)
    answer = json.loads(raw)
    assert status != 405 and ("error" not in answer or "type" in answer["error"])  # not a Gemini route
    body = {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": "lots"}}
    status, _, raw = gemini(server, "POST", "/v1beta/models/gemini-native-x:generateContent", body, key)
    assert "generationConfig.maxOutputTokens" in google_error(raw, 400, "INVALID_ARGUMENT")
    with connect(server) as sock:  # a body over the limit (32 MiB) is refused from its length
        head = (
            "POST /v1beta/models/gemini-native-x:generateContent HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"x-goog-api-key: {key}\r\nContent-Length: {33 << 20}\r\n\r\n"
        )
        sock.sendall(head.encode())
        status, _, raw = read_response(sock, timeout=5)
    google_error(raw, 413, "INVALID_ARGUMENT")


def test_upstream_errors_pass_through(server, key) -> None:
    status, _, raw = gemini(
        server, "POST", "/v1beta/models/gemini-error-429:generateContent", {"contents": CONTENTS}, key
    )
    google_error(raw, 429, "RESOURCE_EXHAUSTED")


def test_worst_case_counts_candidates_times_their_cap(server) -> None:
    limited = server.create_keys({"genai-tpm": ["--tpm", "1000"]})["genai-tpm"]
    config = {"maxOutputTokens": 600, "candidateCount": 1}
    path = "/v1beta/models/gemini-native-tpm:generateContent"
    status, _, raw = wait_for(
        lambda: (
            (r := gemini(server, "POST", path, {"contents": CONTENTS, "generationConfig": config}, limited))[0] != 401
            and r
        )
    )
    assert status == 200, raw
    config = {"maxOutputTokens": 600, "candidateCount": 2}  # 1,200 output tokens may be billed
    status, _, raw = gemini(server, "POST", path, {"contents": CONTENTS, "generationConfig": config}, limited)
    assert "1000 tokens per minute" in google_error(raw, 429, "RESOURCE_EXHAUSTED")


def test_a_key_limited_to_other_models_gets_a_google_403(server) -> None:
    limited = server.create_keys({"genai-models": ["--models", "gemini-2.5-pro"]})["genai-models"]
    path = "/v1beta/models/gemini-native-other:generateContent"
    status, _, raw = wait_for(
        lambda: (r := gemini(server, "POST", path, {"contents": CONTENTS}, limited))[0] != 401 and r
    )
    google_error(raw, 403, "PERMISSION_DENIED")


def test_a_broken_sse_stream_ends_with_a_google_error_event(server, key, mock) -> None:
    first = json.dumps({"candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}]})
    mock.enqueue(Reply(sse=[first, first], cut_after=1))
    path = "/v1beta/models/gemini-native-broken-sse:streamGenerateContent?alt=sse"
    status, headers, chunks = stream(server, path, key, {"contents": CONTENTS})
    events = [json.loads(line[6:]) for line in b"".join(chunks).decode().split("\n") if line.startswith("data: ")]
    assert status == 200 and events[0]["candidates"][0]["content"]["parts"] == [{"text": "Hel"}]
    assert events[-1]["error"]["code"] == 502 and events[-1]["error"]["status"] == "UNAVAILABLE"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken"


def test_embeddings_are_cached_when_the_cache_is_on(server, key, mock) -> None:
    """Last in this file: the cache stays on for the module's server."""
    assert server.cli("modules", "enable", "cache").returncode == 0
    path = "/v1beta/models/gemini-native-cached-embedding:embedContent"
    body = {"content": {"parts": [{"text": "same words"}]}}

    def cached() -> bool:
        return gemini(server, "POST", path, body, key)[1].get("x-stockyard-cache") == "hit"

    wait_for(cached, what="a cache hit")
    before = len(mock.requests)
    status, headers, raw = gemini(server, "POST", path, body, key)
    assert status == 200 and headers["x-stockyard-cache"] == "hit" and json.loads(raw)["embedding"]["values"]
    assert len(mock.requests) == before


# --------------------------------------------------------------------------- Gemini CLI

GEMINI_CLI = json.loads((Path(__file__).parent / "gemini_cli_turns.json").read_text())


def cli_chunk(parts: list[dict], finish: str | None = None, usage: dict | None = None) -> str:
    candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    chunk: dict = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash", "responseId": "cli1"}
    if usage:
        chunk["usageMetadata"] = usage
    return json.dumps(chunk)


def sse_events(chunks: list[bytes]) -> list[dict]:
    return [json.loads(line[6:]) for line in b"".join(chunks).decode().split("\n") if line.startswith("data: ")]


TURN_USAGE = [
    {"promptTokenCount": 100, "candidatesTokenCount": 10, "thoughtsTokenCount": 4, "totalTokenCount": 114},
    {"promptTokenCount": 150, "candidatesTokenCount": 8, "cachedContentTokenCount": 64, "totalTokenCount": 158},
]


def test_gemini_cli_tool_loop_replayed(server, key, mock) -> None:
    """Gemini CLI 0.61.0's two requests of a read_file loop (tests/gemini_cli_turns.json, captured
    through Stockyard): the first with its 16 tools and thinking config, then the tool result with
    the call echoed under Google's stand-in signature. Both pass through as sent, their SSE answers
    come back event by event (a thought part, the call, the text), and each turn is priced."""
    model, path = "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    thought = {"text": "Reading it.", "thought": True}
    call = {"functionCall": {"name": "read_file", "args": {"file_path": "notes.txt"}}}
    answer = [{"text": "The secret word"}, {"text": " is pumpkin."}]
    mock.enqueue(
        Reply(sse=[cli_chunk([thought]), cli_chunk([call], "STOP", TURN_USAGE[0])]),
        Reply(sse=[cli_chunk(answer[:1]), cli_chunk(answer[1:], "STOP", TURN_USAGE[1])]),
    )
    request = GEMINI_CLI["request"]
    replies, traces = [], []
    for contents in [request["contents"][:1], request["contents"]]:
        body = {**request, "contents": contents}
        status, headers, chunks = stream(server, path, key, body, GEMINI_CLI["headers"])
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        replies.append(sse_events(chunks))
        assert sent(mock, model).json == body  # tools, thinking config, call ids and signatures as sent
        traces.append(server.trace(headers["x-stockyard-trace-id"]))
    assert [[p for e in events for p in e["candidates"][0]["content"]["parts"]] for events in replies] == [
        [thought, call],
        answer,
    ]
    assert [events[-1]["usageMetadata"] for events in replies] == TURN_USAGE
    counted = [(t["prompt_tokens"], t["completion_tokens"], t["reasoning_tokens"]) for t in traces]
    assert counted == [(100, 14, 4), (150, 8, 0)]
    # gemini-2.5-flash: $0.30 in, $0.03 cached, $2.50 out per 1M = 30, 3, 250 µ¢ a token; thoughts are output
    assert [t["cost_uc"] for t in traces] == [100 * 30 + 14 * 250, 86 * 30 + 64 * 3 + 8 * 250]
