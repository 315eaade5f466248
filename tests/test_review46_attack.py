"""Review 46, an attacker's: this session's changes tried from the port, with a key of one's own.

Each test is one attack on a real server over the mock upstream (raw HTTP and the official SDKs):

- images the model drew (``image_generation_call`` items, a chat answer's ``images``): a provider's
  malformed, misplaced and countless images, an image item sent back without its image or naming
  another key's, a Gemini stream of malformed or deeply nested parts;
- a cut Gemini stream's bill when the client is the one who cuts it;
- a batch refused 409 ``budget_changed``: whether a client can make the server read its file again
  and again;
- the GenAI metrics over OTLP: a client's model names (long, new on each request, not text at all)
  against the attribute-set cap, refusals, and secrets in the exports.

The attacks that held are pinned as they hold; a defect's fix came with its failing test first.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import pytest
from conftest import ServerProcess, leave_stream, mock_env, served, wait_for
from mock_upstream import Reply
from otlp_collector import Receiver, attrs, points
from test_review42_events import check_responses

ADMIN = "admin-key-for-review46-attack-0123456789"
GEMINI_KEY = "AIza-test-0123456789abcdefREVIEW46ATK"
LOCAL_KEY = "sk-local-review46-attack-0123456789"
COLLECTOR_TOKEN = "otlp-collector-secret-review46-abcdef"
IMAGE_MODEL = "gemini-2.5-flash-image"
FLASH = "gemini-2.5-flash"
LOCAL = "local-drawer"  # an OpenAI-compatible provider's model: its chat answer's ``images`` are its own
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
PNG = base64.b64encode(PNG_BYTES).decode()
GOOD_URL = f"data:image/png;base64,{PNG}"


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_ENCRYPTION_KEY="review46-attack-encryption-secret-0123456789",
    )
    keys = {"alice": [], "bob": [], "budgeted": ["--budget-usd", "5", "--budget-period", "day"]}

    def add_local(srv: ServerProcess) -> None:
        added = srv.cli(
            "providers", "add", "local", "--kind", "openai-compatible", "--base-url", mock.url + "/v1",
            "--models", "local-", "--key-stdin", input=LOCAL_KEY,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr

    secrets = (GEMINI_KEY, LOCAL_KEY)
    with served(
        pyz_path, tmp_path_factory, "r46attack", env, keys, never_logged=secrets, before_start=add_local
    ) as srv:
        yield srv


def post(server: ServerProcess, who: str, path: str, body: Any) -> tuple[int, dict, bytes]:
    return server.request("POST", path, body, server.auth(who))


# -- a provider's images in a chat answer, to a Responses client ------------------------------------
def chat_answer(content: str, images: list) -> dict:
    """An OpenAI-compatible provider's chat answer carrying ``images`` (OpenRouter's shape)."""
    message = {"role": "assistant", "content": content, "images": images}
    return {
        "id": "chatcmpl-r46",
        "object": "chat.completion",
        "created": 1,
        "model": LOCAL,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def chat_chunks(deltas: list[dict]) -> list[str]:
    """A provider's chat stream of these deltas, then its finish and usage."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return json.dumps({"id": "chatcmpl-r46", "object": "chat.completion.chunk", "created": 1, "model": LOCAL,
                           "choices": [choice]})  # fmt: skip

    usage = {"id": "chatcmpl-r46", "object": "chat.completion.chunk", "created": 1, "model": LOCAL, "choices": [],
             "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}  # fmt: skip
    return [chunk({"role": "assistant", "content": ""}), *(chunk(d) for d in deltas), chunk({}, "stop"),
            json.dumps(usage), "[DONE]"]  # fmt: skip


def good(**extra: Any) -> dict:
    return {"type": "image_url", "image_url": {"url": GOOD_URL}, **extra}


# entries that are no image (each left out) and images whose text_offset is no place in the text
NOT_IMAGES = [
    5,
    "data:image/png;base64,AAAA",
    None,
    [GOOD_URL],
    {"image_url": GOOD_URL},
    {"image_url": {"url": 7}},
    {"image_url": {"url": "data:image/png;base64,"}},
    {"image_url": {"url": "data:text/html;base64,PGI+aGk8L2I+"}},
    {"image_url": {"url": "https://attacker.example/x.png"}},
    {"image_url": {"url": "data:image/png,notbase64"}},
    {"image_url": {"url": "data:image/png;base64"}},
]
ODD_OFFSETS = [-5, 10**30, 1.5, "3", True, None, [1], {"at": 1}, 2**63, -(2**63)]


def test_a_providers_malformed_images_are_left_out_and_odd_offsets_kept_in_the_text(server, mock):
    """Entries that are no base64 image (a number, a string, an http URL, another media type, an empty
    or unencoded data URL) are left out; an image's ``text_offset`` that is negative, huge, a float, a
    string, a bool or a list puts it at the text's start or end: never a 500, never text lost."""
    images = [*NOT_IMAGES, *(good(text_offset=o) for o in ODD_OFFSETS)]
    mock.clear_replies()
    mock.enqueue(Reply(json=chat_answer("Hello world", images)))
    status, _, raw = post(server, "alice", "/v1/responses", {"model": LOCAL, "input": "Draw", "store": False})
    assert status == 200, raw[:500]
    output = json.loads(raw)["output"]
    kinds = [(o["type"], o.get("content", [{}])[0].get("text") if o["type"] == "message" else None) for o in output]
    # -5 puts its image before the text; every other odd offset at its end (none goes back before the one
    # before it: -(2**63), last, stays after the text)
    image, text = ("image_generation_call", None), ("message", "Hello world")
    assert kinds == [image, text, *[image] * (len(ODD_OFFSETS) - 1)], kinds
    images_out = [o for o in output if o["type"] == "image_generation_call"]
    assert len(images_out) == len(ODD_OFFSETS)
    assert all(base64.b64decode(o["result"]) == PNG_BYTES and o["output_format"] == "png" for o in images_out)
    assert "".join(p["text"] for o in output if o["type"] == "message" for p in o["content"]) == "Hello world"
    assert len({o["id"] for o in output}) == len(output)


def test_a_providers_malformed_streamed_images_are_left_out(server, mock):
    """The same entries in a provider's stream: the raw Responses stream keeps its grammar, the
    images that are images come as items between the texts, and nothing else of them."""
    deltas = [{"content": "Hello "}, {"images": [*NOT_IMAGES, good(text_offset=-1)]}, {"content": "world"}]
    mock.clear_replies()
    mock.enqueue(Reply(sse=chat_chunks(deltas)))
    body = {"model": LOCAL, "input": "Draw", "store": False, "stream": True}
    status, _, raw = post(server, "alice", "/v1/responses", body)
    assert status == 200, raw[:500]
    final = check_responses(raw)
    assert [o["type"] for o in final["output"]] == ["message", "image_generation_call", "message"]
    assert base64.b64decode(final["output"][1]["result"]) == PNG_BYTES


def test_thousands_of_images_cost_the_server_little(server, mock):
    """A provider's answer of 3,000 images, each with a citation of the text before it (the pieces
    the images cut the text into each look through the citations): whole and streamed, every image
    comes out, in a bounded time of the server's CPU."""
    n = 3000
    text = "ab" * n
    images = [good(text_offset=2 * i) for i in range(n)]
    annotations = [
        {"type": "url_citation", "url_citation": {"url": f"https://e.example/{i}", "title": "t",
                                                  "start_index": 2 * i, "end_index": 2 * i + 1}}
        for i in range(n)
    ]  # fmt: skip
    answer = chat_answer(text, images)
    answer["choices"][0]["message"]["annotations"] = annotations
    mock.clear_replies()
    mock.enqueue(Reply(json=answer))
    before = server.cpu_seconds()
    status, _, raw = post(server, "alice", "/v1/responses", {"model": LOCAL, "input": "Draw", "store": False})
    whole_cpu = server.cpu_seconds() - before
    assert status == 200, raw[:500]
    output = json.loads(raw)["output"]
    assert sum(o["type"] == "image_generation_call" for o in output) == n
    cited = [a for o in output if o["type"] == "message" for p in o["content"] for a in p["annotations"]]
    assert len(cited) == n and cited[-1]["url"] == f"https://e.example/{n - 1}", cited[-1:]
    assert whole_cpu < 4, whole_cpu
    deltas = [d for i in range(n) for d in ({"content": "ab"}, {"images": [good()]})]
    mock.enqueue(Reply(sse=chat_chunks(deltas)))
    before = server.cpu_seconds()
    status, _, raw = post(server, "alice", "/v1/responses", {"model": LOCAL, "input": "Draw", "store": False,
                                                            "stream": True})  # fmt: skip
    stream_cpu = server.cpu_seconds() - before
    assert status == 200 and raw.count(b'"type":"response.image_generation_call.completed"') == n, raw[-300:]
    assert stream_cpu < 8, stream_cpu


# -- an image item sent back -------------------------------------------------------------------------
def gemini_answer(parts: list[dict], model: str = IMAGE_MODEL) -> dict:
    usage = {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 21}
    candidate = {"content": {"parts": parts, "role": "model"}, "index": 0, "finishReason": "STOP"}
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "r46"}


def model_parts(mock) -> list[dict]:
    """The model's turns' parts in the last request Gemini was sent."""
    sent = mock.last(":generateContent").json
    return [p for c in sent["contents"] if c["role"] == "model" for p in c["parts"]]


@pytest.mark.parametrize("model", [IMAGE_MODEL, LOCAL], ids=["gemini", "openai-compatible"])
@pytest.mark.parametrize("result", [5, ["AAAA"], {"b64": "AAAA"}, "", True, 0], ids=repr)
def test_an_image_item_whose_result_is_no_image_is_a_clear_400(server, mock, model, result):
    """``result`` a number, a list, an object, empty, a bool: the 400 names it, to a provider that takes
    the image back and to one it is left out for alike; no provider is called."""
    item = {"type": "image_generation_call", "id": "ig_r46", "status": "completed", "result": result}
    mock.clear()
    body = {"model": model, "input": [{"role": "user", "content": "Draw"}, item, {"role": "user", "content": "Again"}]}
    status, _, raw = post(server, "alice", "/v1/responses", body)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert error["param"] in ("input[1].result", "input[1].id") and error["type"] == "invalid_request_error", error
    assert mock.requests == []


def test_many_image_items_sent_back_cost_the_server_little(server, mock):
    """5,000 image items in one body (each an assistant turn to Gemini): answered, in bounded CPU."""
    item = {"type": "image_generation_call", "id": "ig_r46", "status": "completed", "result": PNG}
    items = [{"role": "user", "content": "Draw"}, *[item] * 5000, {"role": "user", "content": "Again"}]
    mock.clear_replies()
    mock.enqueue(Reply(json=gemini_answer([{"text": "Seen."}])))
    before = server.cpu_seconds()
    status, _, raw = post(server, "alice", "/v1/responses", {"model": IMAGE_MODEL, "input": items, "store": False})
    assert status == 200, raw[:500]
    assert server.cpu_seconds() - before < 6
    assert model_parts(mock) == [{"inlineData": {"mimeType": "image/png", "data": PNG}}] * 5000


def alices_image(server: ServerProcess, mock) -> str:
    """The id of an image item of a response alice stored (translated from Gemini's answer)."""
    mock.clear_replies()
    mock.enqueue(
        Reply(json=gemini_answer([{"text": "Here: "}, {"inlineData": {"mimeType": "image/png", "data": PNG}}]))
    )
    status, _, raw = post(server, "alice", "/v1/responses", {"model": IMAGE_MODEL, "input": "Draw", "store": True})
    assert status == 200, raw[:500]
    [ident] = [o["id"] for o in json.loads(raw)["output"] if o["type"] == "image_generation_call"]
    return ident


def test_another_keys_image_item_is_not_read_by_reference_nor_by_id(server, mock):
    """Bob names alice's stored image item: by ``item_reference``, and as an image item without its
    image: each a 400, Gemini never sent her image. Alice's own reference puts her image back."""
    ident = alices_image(server, mock)
    for item in ({"type": "item_reference", "id": ident}, {"type": "image_generation_call", "id": ident}):
        mock.clear()
        body = {"model": IMAGE_MODEL, "input": [{"role": "user", "content": "Draw"}, item]}
        status, _, raw = post(server, "bob", "/v1/responses", body)
        assert status == 400 and json.loads(raw)["error"]["param"] in ("input[1].id", "input[1].result"), raw
        assert PNG.encode() not in raw and mock.requests == []
    mock.enqueue(Reply(json=gemini_answer([{"text": "Seen."}])))
    body = {
        "model": IMAGE_MODEL,
        "input": [{"role": "user", "content": "Draw"}, {"type": "item_reference", "id": ident}],
    }
    status, _, raw = post(server, "alice", "/v1/responses", body)
    assert status == 200, raw[:500]
    assert model_parts(mock) == [{"inlineData": {"mimeType": "image/png", "data": PNG}}]


def test_another_keys_image_at_openai_is_not_named_by_its_id(server, mock):
    """An image OpenAI keeps (alice's passed-through response's ``image_generation_call``): bob's image
    item naming it without its ``result`` is refused before OpenAI, which would read it to the model
    under the one provider key, and so is the same item kept in bob's conversation (OpenAI's model, or
    Gemini's, which takes no image without its image); alice's goes through."""
    drawn = {"id": "ig_r46openai_alice", "type": "image_generation_call", "status": "completed", "result": PNG}
    answer = {
        "id": "resp_r46openai_alice",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4o",
        "output": [drawn],
        "usage": {"input_tokens": 5, "output_tokens": 5, "total_tokens": 10},
    }
    mock.clear_replies()
    mock.enqueue(Reply(json=answer))
    status, _, raw = post(server, "alice", "/v1/responses", {"model": "gpt-4o", "input": "Draw", "store": True})
    assert status == 200, raw[:500]
    named = {"type": "image_generation_call", "id": drawn["id"]}
    body = {
        "model": "gpt-4o",
        "input": [{"role": "user", "content": "Draw"}, named, {"role": "user", "content": "Again"}],
    }
    mock.clear()
    status, _, raw = post(server, "bob", "/v1/responses", body)
    assert status == 400 and json.loads(raw)["error"]["param"] == "input[1].id", raw
    assert mock.requests == []
    for model in ("gpt-4o", IMAGE_MODEL):  # the item kept in bob's conversation, sent as its history
        status, _, raw = post(server, "bob", "/v1/conversations", {"items": [named]})
        assert status == 200, raw  # kept: it is checked when sent
        conversation = json.loads(raw)["id"]
        turn = {"model": model, "conversation": conversation, "input": "Again"}
        status, _, raw = post(server, "bob", "/v1/responses", turn)
        assert status == 400 and "no item with id 'ig_r46openai_alice'" in json.loads(raw)["error"]["message"], raw
        assert mock.requests == []
    mock.enqueue(Reply(json={**answer, "id": "resp_r46openai_alice2", "output": []}))
    status, _, raw = post(server, "alice", "/v1/responses", body)
    assert status == 200, raw[:500]
    assert mock.last("/v1/responses").json["input"][1] == named


# -- a Gemini stream's malformed, nested and countless parts ----------------------------------------
def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"a": value}
    return value


def gemini_chunk(parts: Any, finish: str | None = None, counted: int | None = None) -> str:
    """One streamed Gemini chunk of these ``parts`` (as given: they may be no list of parts at all)."""
    candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    doc: dict = {"candidates": [candidate], "modelVersion": FLASH, "responseId": "r46s"}
    if counted is not None:
        doc["usageMetadata"] = {
            "promptTokenCount": 12,
            "candidatesTokenCount": counted,
            "totalTokenCount": 12 + counted,
        }
    return json.dumps(doc)


HOSTILE_PARTS = {
    "strings and nulls": ["text", 5, None],
    "a part's text a number": [{"text": 7}],
    "an image of no data": [{"inlineData": {"mimeType": "image/png", "data": 5}}, {"inlineData": "x"}],
    "an image of no media type": [{"inlineData": {"mimeType": 5, "data": PNG}}],
    "a call that is a string": [{"functionCall": "get_weather"}],
    "a call's args a list": [{"functionCall": {"name": "f", "args": [1, 2]}}],
    "parts an object": {"text": "x"},
    "parts a string": "Hello",
    "call args nested deep": [{"functionCall": {"name": "f", "args": nested(900)}}],
    "thought text an object": [{"thought": True, "text": {"x": 1}}],
}
ROUTES = {
    "chat": ("/v1/chat/completions", {"model": FLASH, "messages": [{"role": "user", "content": "Hi"}], "stream": True}),
    "responses": ("/v1/responses", {"model": FLASH, "input": "Hi", "stream": True, "store": False}),
    "native": (f"/v1beta/models/{FLASH}:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "Hi"}]}]}),
}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("parts", list(HOSTILE_PARTS))
def test_a_gemini_streams_malformed_parts_end_no_stream_in_a_500(server, mock, route, parts):
    """A chunk of parts that are not Gemini's between two good ones: the stream goes on (the good text
    reaches the client), it ends, and its trace is no 500 (the module's log holds no traceback)."""
    chunks = [gemini_chunk([{"text": "Hello "}]), gemini_chunk(HOSTILE_PARTS[parts]),
              gemini_chunk([{"text": "world"}], "STOP", 20)]  # fmt: skip
    mock.clear_replies()
    mock.enqueue(Reply(sse=[f"data: {c}\n\n" for c in chunks]))
    path, body = ROUTES[route]
    status, headers, raw = post(server, "alice", path, body)
    assert status == 200, raw[:500]
    assert b"Hello " in raw and b"world" in raw, raw[-500:]
    if route == "responses":
        check_responses(raw)
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["status"] == 200 and trace["completion_tokens"] == 20, trace


def test_a_chunk_of_countless_parts_costs_little(server, mock):
    """A chunk of 100,000 tiny parts, text and calls (note_uncounted walks them, image_runs cuts them,
    each run is translated): the stream answers in bounded CPU on every route."""
    parts = [{"text": "x"} if i % 2 else {"functionCall": {"name": "f", "args": {"i": i}}} for i in range(100_000)]
    for route in ROUTES:
        mock.clear_replies()
        mock.enqueue(Reply(sse=[f"data: {gemini_chunk(parts)}\n\n", f"data: {gemini_chunk([], 'STOP', 20)}\n\n"]))
        path, body = ROUTES[route]
        before = server.cpu_seconds()
        status, _, raw = post(server, "alice", path, body)
        took = server.cpu_seconds() - before
        assert status == 200, raw[:500]
        assert took < 10, (route, took)


# -- a cut Gemini stream's bill, when the client cuts it ---------------------------------------------
def thoughts_then_text(text: str) -> list[str]:
    """Gemini's stream: 500 thought tokens counted (no output count yet) with a thought summary, then
    ``text`` under the same count, then a little more text: none of it counted until the last chunk."""
    usage = {"promptTokenCount": 12, "thoughtsTokenCount": 500, "totalTokenCount": 512}
    summary = gemini_chunk([{"text": "Thinking.", "thought": True}])
    docs = [
        json.loads(summary),
        json.loads(gemini_chunk([{"text": text}])),
        json.loads(gemini_chunk([{"text": "more"}])),
    ]
    for doc in docs:
        doc["usageMetadata"] = usage
    docs.append(json.loads(gemini_chunk([{"text": "."}], "STOP", 1003)))  # what the provider counts in the end
    return [f"data: {json.dumps(doc)}\n\n" for doc in docs]


@pytest.mark.parametrize("route", ["chat", "native"])
def test_a_client_that_cuts_a_gemini_stream_pays_its_thoughts_and_the_text_it_got(server, mock, route):
    """The client reads 4,000 characters after 500 thought tokens were counted and closes its socket
    before the chunk that counts the output: billed the thoughts and the text (1,000 tokens) beside
    them, 1,500 (one more for the chunk read as the close was found), not the larger of the two."""
    text = "word " * 799 + "ENDS!"
    gate, hung_up = threading.Event(), threading.Event()
    mock.clear_replies()
    mock.enqueue(Reply(sse=thoughts_then_text(text), held=gate, held_after=2, hang_s=60, hang_after=3, hung_up=hung_up))
    path, body = ROUTES[route]
    body = {**body, "max_tokens": 2000} if route == "chat" else {**body, "generationConfig": {"maxOutputTokens": 2000}}
    try:
        trace_id = leave_stream(server, path, body, b"ENDS!", server.keys["alice"])
    finally:
        gate.set()
    assert hung_up.wait(15), "the provider's connection was closed when the client's was found gone"
    trace = wait_for(lambda: server.trace(trace_id), 15, "the trace")
    assert (trace["outcome"], trace["cost_status"]) == ("client_disconnected", "estimate"), trace
    assert 1500 <= trace["completion_tokens"] <= 1501, trace


# -- the 409 budget_changed: a batch read again and again? --------------------------------------------
def batch_file(server: ServerProcess, who: str, lines: int) -> str:
    asked = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "r46"}], "max_tokens": 16}
    line = {"method": "POST", "url": "/v1/chat/completions", "body": asked}
    data = b"".join(json.dumps({**line, "custom_id": f"r46-{i}"}).encode() + b"\n" for i in range(lines))
    made = server.openai(who).files.create(file=("b.jsonl", io.BytesIO(data)), purpose="batch")
    return made.id


@pytest.mark.parametrize("who", ["bob", "budgeted"])
def test_a_batch_is_read_once_a_create_and_never_refused_409_without_a_budget_change(server, mock, who):
    """The 409 ``budget_changed`` (send the batch again) comes only when a budget begins to count the key
    while its file is read: a key no budget counts (bob) and a key whose budget counted it all along
    (budgeted) are never sent it, so no client can make the server read a file over and over for
    nothing; each create reads the file once. The budgeted key's batch is priced and held."""
    file_id = batch_file(server, who, 2000)
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for _ in range(3):
        mock.clear()
        status, _, raw = post(server, who, "/v1/batches", body)
        assert status == 200, raw[:500]
        reads = [r for r in mock.requests if r.path.endswith(f"/files/{file_id}/content")]
        assert len(reads) == 1, [r.path for r in mock.requests]
        held = server.db_rows("SELECT held_uc FROM owned_objects WHERE id = ?", (json.loads(raw)["id"],))
        assert (held[0]["held_uc"] > 0) == (who == "budgeted"), held


# -- the GenAI metrics over OTLP: a client's model names against the collector ------------------------
SERIES = 4  # STOCKYARD_OTLP_METRICS_MAX_SERIES of the metrics server
PROMPT_SECRET = "prompt-text-r46-never-an-attribute"


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def metered(pyz_path, cache_home, mock, tmp_path_factory, receiver):
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_OTLP_ENDPOINT=receiver.url,
        STOCKYARD_OTLP_HEADERS=f"authorization=Bearer {COLLECTOR_TOKEN}",
        STOCKYARD_OTLP_METRICS_INTERVAL="0.2",
        STOCKYARD_OTLP_METRICS_MAX_SERIES=str(SERIES),
    )
    secrets = (GEMINI_KEY, COLLECTOR_TOKEN)
    with served(
        pyz_path, tmp_path_factory, "r46metrics", env, {"mallory": [], "carol": []}, never_logged=secrets
    ) as srv:
        yield srv


def latest_export(receiver: Receiver, requests: int) -> dict:
    """The first export counting at least ``requests`` requests in all (they are cumulative)."""

    def counted(export: dict) -> int:
        return sum(int(p["count"]) for _, p in points(export, "gen_ai.server.request.duration"))

    def found():
        with receiver.lock:
            exports = list(receiver.metric_exports)
        return next((e for e in reversed(exports) if counted(e) >= requests), None)

    return wait_for(found, 20, f"an export of {requests} requests")


def requests_counted(server: ServerProcess) -> int:
    """Requests the server has finished, as its /metrics counts them (every status)."""
    status, _, text = server.request("GET", "/metrics")
    assert status == 200
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.decode().splitlines()
        if line.startswith("stockyard_requests_total{")
    )


def test_a_new_model_name_a_request_stays_in_the_attribute_set_cap(metered, mock, receiver):
    """Mallory sends 40 chat requests, each naming a model of its own (some 250 characters long, near
    the 256 a model name may have), which the OpenAI route passes on: every instrument keeps at most
    its cap of attribute sets and one overflow series, each model name at most 100 characters, the
    overflow counted in /metrics; the requests were answered in their usual time (the meter's work is
    a few dict updates). Once at the cap, every key's measurements go to the overflow series until
    the process restarts (as /metrics puts them under model="_other"): bounded, not per tenant."""
    timings = []
    for n in range(40):
        model = f"openai/gpt-r46-{n}-" + ("x" * 230 if n % 4 == 0 else "")
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        started = time.monotonic()
        status, _, raw = post(metered, "mallory", "/v1/chat/completions", body)
        timings.append(time.monotonic() - started)
        assert status == 200, raw[:300]
    export = latest_export(receiver, 40)
    [rm] = export["resourceMetrics"]
    for metric in rm["scopeMetrics"][0]["metrics"]:
        series = points(export, metric["name"])
        # token usage has a series per token type: at most the cap of each (input, output) and one overflow
        assert len(series) <= SERIES + 1, (metric["name"], len(series))
        for a, _ in series:
            for name in ("gen_ai.request.model", "gen_ai.response.model"):
                assert len(a.get(name, "")) <= 100, a
    assert sum(int(p["count"]) for a, p in points(export, "gen_ai.server.request.duration")) >= 40
    status, _, text = metered.request("GET", "/metrics")
    overflow = next(x for x in text.decode().splitlines() if x.startswith("stockyard_otlp_metric_overflow_total "))
    assert float(overflow.split()[1]) >= 40 - SERIES
    assert sorted(timings)[len(timings) // 2] < 1.0, timings


@pytest.mark.parametrize("auth", ["none", "unknown key"])
def test_refusals_name_no_model_in_the_metrics(metered, receiver, auth):
    """Requests without a key, or with one the server does not know, each naming a model of its own:
    counted, under no model (the client's word is all there is), so they take no attribute set."""
    headers = {} if auth == "none" else {"Authorization": "Bearer sk-sy-r46-no-such-key"}
    before = requests_counted(metered)
    for n in range(10):
        body = {"model": f"gpt-r46-refused-{auth}-{n}", "messages": [{"role": "user", "content": "hi"}]}
        status, _, raw = metered.request("POST", "/v1/chat/completions", body, headers)
        assert status == 401, raw
    export = latest_export(receiver, before + 10)
    for metric in export["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]:
        for a, _ in points(export, metric["name"]):
            assert not any("refused" in str(v) for v in a.values()), a


@pytest.mark.parametrize(
    "model", [["gpt-4o-mini"], {"name": "gpt-4o-mini"}, 5, None, "gpt-4o-mini\n\r\u2028", "gpt-\ud800-mini"], ids=repr
)
def test_a_model_that_is_no_name_is_a_400_or_measured_and_the_meter_keeps_working(metered, receiver, model):
    """A model that is a list, an object, a number, null, or a name of line breaks or a lone surrogate:
    the client gets its answer (a 400 where the name is no string), the meter records the request
    (never its 'could not record metrics' error), and the export stays JSON the collector reads."""
    before = requests_counted(metered)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    status, _, raw = post(metered, "carol", "/v1/chat/completions", body)
    assert status in (200, 400, 404), raw
    if not isinstance(model, str):
        assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error", raw
    latest_export(receiver, before + 1)
    assert "could not record metrics" not in metered.log and "could not build the OTLP metrics" not in metered.log


def test_no_secret_or_prompt_reaches_the_metrics(metered, mock, receiver):
    """What a collector of the metrics is sent names no client key (its secret, id or name), no end
    user, no prompt text and no provider key; the collector's own token is sent as a header only."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT_SECRET}], "user": "enduser-r46"}
    before = requests_counted(metered)
    status, headers, raw = post(metered, "carol", "/v1/chat/completions", body)
    assert status == 200, raw[:300]
    latest_export(receiver, before + 1)
    with receiver.lock:
        sent = json.dumps(receiver.metric_exports)
        auth = {h.get("authorization") for h in receiver.headers}
    key_ids = [row["id"] for row in metered.db_rows("SELECT id FROM client_keys")]
    for secret in (*metered.keys.values(), *metered.keys, *key_ids, PROMPT_SECRET, "enduser-r46", GEMINI_KEY,
                   COLLECTOR_TOKEN):  # fmt: skip
        assert secret not in sent, secret
    assert auth == {f"Bearer {COLLECTOR_TOKEN}"}


@pytest.mark.parametrize("route", ["chat", "native"])
def test_a_cut_gemini_stream_of_non_ascii_text_bills_its_thoughts_and_the_text(server, mock, route):
    """Thoughts, then text that is not ASCII (the client asked for Chinese), the stream cut before the
    chunk that counts the output: the text relayed past the count went at four characters a token
    while everything else here is four bytes a token (a Chinese character is 3 bytes of UTF-8), so
    the text alone, read as bytes, outweighed thoughts and text read as characters and the thoughts
    were not billed: 500 thought tokens and 12,000 bytes (3,000 tokens) were billed 3,003, not 3,500."""
    text = "字" * 4000  # 12,000 bytes of UTF-8, as Google sends it (not \\u-escaped)
    usage = {"promptTokenCount": 12, "thoughtsTokenCount": 500, "totalTokenCount": 512}
    docs = [
        json.loads(gemini_chunk([{"text": "Thinking.", "thought": True}])),
        json.loads(gemini_chunk([{"text": text}])),
    ]
    for doc in docs:
        doc["usageMetadata"] = usage
    mock.clear_replies()
    mock.enqueue(Reply(sse=[f"data: {json.dumps(d, ensure_ascii=False)}\n\n" for d in docs], cut_after=2))
    path, body = ROUTES[route]
    body = {**body, "max_tokens": 8000} if route == "chat" else {**body, "generationConfig": {"maxOutputTokens": 8000}}
    status, headers, raw = post(server, "alice", path, body)
    assert status == 200 and raw.decode().count("字") == 4000, raw[:300]
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["outcome"], trace["cost_status"]) == ("stream_broken", "estimate"), trace
    assert trace["completion_tokens"] == 500 + 12_000 // 4, trace


# -- a background response's queued answer -----------------------------------------------------------
def test_a_background_response_is_its_keys_at_once_and_no_one_elses(server, mock):
    """A background response's queued answer waits for its row's commit: retrieved at once it is found
    for its key (never a 404 of a row not yet written), and for another key it is a 404 (retrieve,
    cancel, delete), never its answer; the provider is never asked for it on the other key's behalf."""
    mock.clear_replies()
    body = {"model": "gpt-4o-mini", "input": "Hi", "background": True}
    status, _, raw = post(server, "alice", "/v1/responses", body)
    assert status == 200, raw[:500]
    made = json.loads(raw)
    assert made["status"] in ("queued", "in_progress"), made
    path = f"/v1/responses/{made['id']}"
    status, _, raw = server.request("GET", path, None, server.auth("alice"))
    assert status == 200 and json.loads(raw)["id"] == made["id"], raw
    mock.clear()
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("DELETE", "")):
        status, _, raw = server.request(method, path + suffix, None, server.auth("bob"))
        assert status == 404 and json.loads(raw)["error"]["code"] == "not_found", (method, raw)
    assert [r.path for r in mock.requests if made["id"] in r.path] == []


def peak_rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    status = open(f"/proc/{server.proc.pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_24_mb_image_reaches_a_responses_client_whole(server, mock, stream):
    """Gemini draws an image of 24 MB of base64 (a provider's answer has no size cap here): the
    Responses client gets it whole, its bytes intact, in a few seconds of the server's CPU, its peak
    memory grown by a small multiple of it. Streamed, its one event took 8 s of CPU: each 64 KB read of
    the socket copied, rewrote and searched all of the event read so far (``upstream._EventSplit``),
    quadratic in the event's size (a 4K image of Gemini 3 Pro Image is tens of MB)."""
    data = base64.b64encode(b"\x89PNG" + bytes(18_000_000)).decode()
    parts = [{"text": "Big: "}, {"inlineData": {"mimeType": "image/png", "data": data}}, {"text": "done."}]
    mock.clear_replies()
    if stream:
        chunks = [gemini_chunk(parts[:1]), gemini_chunk(parts[1:2]), gemini_chunk(parts[2:], "STOP", 30)]
        mock.enqueue(Reply(sse=[f"data: {c}\n\n" for c in chunks]))
    else:
        mock.enqueue(Reply(json=gemini_answer(parts)))
    before = peak_rss_mb(server)
    cpu = server.cpu_seconds()
    body = {"model": IMAGE_MODEL, "input": "Draw", "store": False, "stream": stream}
    status, _, raw = post(server, "alice", "/v1/responses", body)
    assert status == 200, raw[:300]
    final = check_responses(raw) if stream else json.loads(raw)
    assert [o["type"] for o in final["output"]] == ["message", "image_generation_call", "message"]
    assert final["output"][1]["result"] == data
    took, grown = server.cpu_seconds() - cpu, peak_rss_mb(server) - before
    assert took < 4, took
    assert grown < 12 * len(data) / 1e6, grown


def test_a_tool_call_of_countless_fragments_costs_the_server_little(server, mock):
    """A provider streams one tool call's arguments in 60,000 fragments of 4 bytes (a model writing a
    file through a tool, 240 KB): a Responses client over chat gets them all, in bounded CPU."""
    n = 60_000
    head = {"index": 0, "id": "call_r46", "type": "function", "function": {"name": "write", "arguments": ""}}
    piece = {"tool_calls": [{"index": 0, "function": {"arguments": "abcd"}}]}
    chunks = chat_chunks([{"tool_calls": [head]}, *[piece] * n])
    tools = [{"type": "function", "name": "write", "parameters": {"type": "object", "properties": {}}}]
    body = {"model": LOCAL, "input": "Write", "store": False, "stream": True, "tools": tools}
    mock.clear_replies()
    mock.enqueue(Reply(sse=chunks))
    before = server.cpu_seconds()
    status, _, raw = post(server, "alice", "/v1/responses", body)
    took = server.cpu_seconds() - before
    assert status == 200, raw[:300]
    final = check_responses(raw)
    assert [o["arguments"] for o in final["output"] if o["type"] == "function_call"] == ["abcd" * n]
    assert took < 8, took  # 1.4 s here; three times the fragments, 4.9 s: linear
