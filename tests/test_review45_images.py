"""A Gemini image model's images reach a Responses API client as OpenAI's own image items.

Google's image models (``gemini-2.5-flash-image``, "Nano Banana") answer with ``inlineData`` image parts
beside their text, and Google bills the image tokens. The chat route gave them as ``message.images``;
the Responses route over chat dropped them, whole and streamed, so the client paid for images it never
saw. Each is now an ``image_generation_call`` item (``result``: the image's base64, ``output_format`` from
its media type) where the model drew it among the text, streamed with the events OpenAI sends for one
(``output_item.added``, ``image_generation_call.in_progress`` / ``.generating`` / ``.completed``,
``output_item.done``). A stored turn carries its images back to Gemini as the model's own image parts.

Through a real server over the mock upstream, with the official ``openai`` SDK: the same answer whole
(``responses.create``) and streamed (``responses.stream(...).get_final_response()``), the raw stream held
to test_review42_events' grammar checker, the image bytes intact, the cost the usage says (as before).
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import Reply
from module_helpers import new_key
from test_review42_events import check_messages, check_responses

ADMIN = "admin-key-for-review45-images-0123456789"
GEMINI_KEY = "AIza-test-0123456789abcdefREVIEW45IMG"
ANTHROPIC_KEY = "sk-ant-test-0123456789REVIEW45IMAGES"
MODEL = "gemini-2.5-flash-image"  # priced: $0.30 input, $2.50 text output, $30 image output per 1M tokens
CLAUDE = "claude-haiku-4-5"
PROMPT, TEXT_OUT, IMAGE_OUT = 12, 9, 1290  # the provider's counts: one image is 1,290 output tokens
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + random.Random(45).randbytes(150_000)  # past the trace's 64 KB capture
JPEG_BYTES = b"\xff\xd8\xff\xe0" + random.Random(46).randbytes(3_000)
PNG, JPEG = base64.b64encode(PNG_BYTES).decode(), base64.b64encode(JPEG_BYTES).decode()
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


def image(data: str = PNG, mime: str = "image/png") -> dict:
    return {"inlineData": {"mimeType": mime, "data": data}}


def usage(images: int, final: bool = True) -> dict:
    """Gemini's usageMetadata, split by modality as Google bills an image model (cumulative: the
    last chunk's is the answer's)."""
    text, drawn = (TEXT_OUT, IMAGE_OUT * images) if final else (1, 0)
    return {
        "promptTokenCount": PROMPT,
        "candidatesTokenCount": text + drawn,
        "totalTokenCount": PROMPT + text + drawn,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT}],
        "candidatesTokensDetails": [
            {"modality": "TEXT", "tokenCount": text},
            {"modality": "IMAGE", "tokenCount": drawn},
        ],
    }


def answer(parts: list[dict], finish: str | None = "STOP", meta: dict | None = None) -> dict:
    candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": meta, "modelVersion": MODEL, "responseId": "r45"}


def drawn(parts: list[dict]) -> int:
    return sum(1 for p in parts if "inlineData" in p)


def whole(parts: list[dict]) -> Reply:
    """Gemini's whole answer: these parts."""
    return Reply(json=answer(parts, meta=usage(drawn(parts))))


def streamed(chunks: list[list[dict]]) -> Reply:
    """Gemini's stream: each list of parts a chunk, the last with the finish reason and final counts."""
    images = drawn([p for chunk in chunks for p in chunk])
    events = [answer(c, None, usage(images, False)) for c in chunks[:-1]]
    events.append(answer(chunks[-1], "STOP", usage(images)))
    return Reply(sse=[f"data: {json.dumps(e)}\n\n" for e in events])


def cost_uc(images: int) -> int:
    """The answer's cost in micro-cents at the shipped rates (input 30, text output 250, image output
    3,000 µ¢ a token): what it was before images reached Responses clients (billed from the usage)."""
    return PROMPT * 30 + TEXT_OUT * 250 + IMAGE_OUT * images * 3_000


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY=GEMINI_KEY,
        GEMINI_BASE_URL=mock.url,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    with served(pyz_path, tmp_path_factory, "r45images", env, never_logged=(GEMINI_KEY, ANTHROPIC_KEY)) as srv:
        yield srv


@pytest.fixture(scope="module")
def key(server) -> str:
    return new_key(server, ADMIN)[0]


def summary(response: Any) -> list[tuple]:
    """A response's items as the client reads them (ids aside: each response has its own)."""
    out = []
    for item in response.output:
        if item.type == "message":
            out.append(("message", item.status, [p.text for p in item.content]))
        elif item.type == "image_generation_call":
            out.append(("image", item.status, item.output_format, base64.b64decode(item.result)))
        else:
            out.append((item.type, item.status, item.name, item.arguments))
    return out


def both_ways(server: ServerProcess, mock, key: str, parts: list[dict], chunks: list[list[dict]], **asked: Any):
    """The Responses answer whole and streamed (the SDK's accumulator), the provider answering the same."""
    client = server.openai(key)
    body = {"model": MODEL, "input": "Draw a banana", "store": False, **asked}
    mock.clear_replies()
    mock.enqueue(whole(parts))
    made = client.responses.create(**body)
    mock.enqueue(streamed(chunks))
    with client.responses.stream(**body) as stream:
        accumulated = stream.get_final_response()
    assert mock.pending() == 0
    return made, accumulated


def raw_stream(server: ServerProcess, mock, key: str, chunks: list[list[dict]], **asked: Any) -> tuple[dict, dict]:
    """The raw Responses stream, held to its grammar: (its final response, its trace)."""
    mock.clear_replies()
    mock.enqueue(streamed(chunks))
    body = {"model": MODEL, "input": "Draw a banana", "store": False, "stream": True, **asked}
    status, headers, raw = server.request("POST", "/v1/responses", body, server.auth(key))
    assert status == 200, raw[:500]
    return check_responses(raw), server.trace(headers["x-stockyard-trace-id"])


def test_an_image_between_the_text_whole_and_streamed(server, mock, key):
    """Text, an image, more text: three items in that order both ways, the image's bytes intact."""
    parts = [{"text": "Here is your banana: "}, image(), {"text": "Enjoy."}]
    chunks = [[{"text": "Here is "}], [{"text": "your banana: "}], [image()], [{"text": "Enjoy."}]]
    made, accumulated = both_ways(server, mock, key, parts, chunks)
    assert (
        summary(accumulated)
        == summary(made)
        == [
            ("message", "completed", ["Here is your banana: "]),
            ("image", "completed", "png", PNG_BYTES),
            ("message", "completed", ["Enjoy."]),
        ]
    )
    assert made.output[1].id.startswith("ig_") and made.output_text == "Here is your banana: Enjoy."
    final, _ = raw_stream(server, mock, key, chunks)
    assert [item["type"] for item in final["output"]] == ["message", "image_generation_call", "message"]


def test_two_images_one_before_the_text_and_one_chunk_holding_text_and_image(server, mock, key):
    """An image first, then text and a JPEG in one streamed chunk (the chunk's own order kept)."""
    parts = [image(), {"text": "And a second one:"}, image(JPEG, "image/jpeg")]
    chunks = [[image()], [{"text": "And a second one:"}, image(JPEG, "image/jpeg")]]
    made, accumulated = both_ways(server, mock, key, parts, chunks)
    assert (
        summary(accumulated)
        == summary(made)
        == [
            ("image", "completed", "png", PNG_BYTES),
            ("message", "completed", ["And a second one:"]),
            ("image", "completed", "jpeg", JPEG_BYTES),
        ]
    )
    final, trace = raw_stream(server, mock, key, chunks)
    assert [item.get("output_format") for item in final["output"]] == ["png", None, "jpeg"]
    assert (trace["cost_uc"], trace["cost_status"]) == (cost_uc(2), "exact")


def test_an_image_and_a_tool_call(server, mock, key):
    """Text, an image, then a call: the call last, every item completed (only a message or call can be cut)."""
    call = {"functionCall": {"id": "call_r45", "name": "get_weather", "args": {"city": "Zürich"}}}
    parts = [{"text": "A map first."}, image(), call]
    chunks = [[{"text": "A map first."}], [image()], [call]]
    made, accumulated = both_ways(server, mock, key, parts, chunks, tools=TOOLS)
    assert (
        summary(accumulated)
        == summary(made)
        == [
            ("message", "completed", ["A map first."]),
            ("image", "completed", "png", PNG_BYTES),
            ("function_call", "completed", "get_weather", '{"city": "Z\\u00fcrich"}'),
        ]
    )
    final, _ = raw_stream(server, mock, key, chunks, tools=TOOLS)
    assert [item["type"] for item in final["output"]] == ["message", "image_generation_call", "function_call"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_cost_is_the_usages_as_on_the_chat_route(server, mock, key, stream):
    """Images were billed before they reached the client: the Responses trace costs what the same answer
    costs on the chat route, the usage's text and image tokens at their rates."""
    parts = [{"text": "Here."}, image()]
    traces = {}
    for path, body in (
        ("/v1/responses", {"model": MODEL, "input": "Draw", "store": False}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Draw"}]}),
    ):
        mock.clear_replies()
        mock.enqueue(streamed([[{"text": "Here."}], [image()]]) if stream else whole(parts))
        status, headers, raw = server.request("POST", path, {**body, "stream": stream}, server.auth(key))
        assert status == 200, raw[:500]
        assert PNG.encode() in raw  # the image reached the client, whole
        traces[path] = server.trace(headers["x-stockyard-trace-id"])
    for trace in traces.values():
        assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT, TEXT_OUT + IMAGE_OUT)
        assert (trace["cost_uc"], trace["cost_status"]) == (cost_uc(1), "exact")


def test_chat_clients_get_where_each_image_was_drawn(server, mock, key):
    """The chat answer's ``images`` entries say where in the text the model drew each (``text_offset``),
    whole and accumulated from the stream alike: what the Responses translation orders them by."""
    client = server.openai(key)
    asked = {"model": MODEL, "messages": [{"role": "user", "content": "Draw"}]}
    mock.clear_replies()
    mock.enqueue(whole([{"text": "Ab"}, image(), {"text": "cd"}, image(JPEG, "image/jpeg")]))
    made = client.chat.completions.create(**asked).choices[0].message
    mock.enqueue(streamed([[{"text": "A"}], [{"text": "b"}, image(), {"text": "cd"}], [image(JPEG, "image/jpeg")]]))
    with client.chat.completions.stream(**asked) as stream:
        accumulated = stream.get_final_completion().choices[0].message
    expected = [(2, f"data:image/png;base64,{PNG}"), (4, f"data:image/jpeg;base64,{JPEG}")]
    for message in (made, accumulated):
        images = message.model_extra["images"]
        assert [(i["text_offset"], i["image_url"]["url"]) for i in images] == expected
        assert message.content == "Abcd"


def model_turn(server: ServerProcess, mock) -> list[dict]:
    """The parts of the model's turn in the last request Gemini was sent."""
    sent = mock.last(":generateContent")
    turns = [c for c in sent.json["contents"] if c["role"] == "model"]
    assert len(turns) == 1, sent.json["contents"]
    return turns[0]["parts"]


def test_a_stored_image_turn_goes_back_to_gemini_as_the_models_image(server, mock, key):
    """``store: true``, then ``previous_response_id``: Gemini is sent its own answer back, the image as
    its image part between the texts; the same when the client sends the items back itself."""
    client = server.openai(key)
    parts = [{"text": "Here: "}, image(), {"text": "Done."}]
    mock.clear_replies()
    mock.enqueue(whole(parts))
    first = client.responses.create(model=MODEL, input="Draw a banana", store=True)
    assert [item.type for item in first.output] == ["message", "image_generation_call", "message"]
    mock.enqueue(whole([{"text": "Made it yellower."}]))
    second = client.responses.create(model=MODEL, input="Make it yellower", previous_response_id=first.id)
    assert second.output_text == "Made it yellower."
    assert model_turn(server, mock) == parts
    mock.enqueue(whole([{"text": "Again."}]))
    items = [*(item.model_dump(exclude_none=True) for item in first.output), {"role": "user", "content": "Again"}]
    again = client.responses.create(model=MODEL, input=[{"role": "user", "content": "Draw a banana"}, *items])
    assert again.output_text == "Again." and model_turn(server, mock) == parts


def test_an_image_item_sent_to_claude_is_left_out(server, mock, key):
    """Claude's chat shape takes no image from the assistant: the item is left out, never a 400 or 500."""
    client = server.openai(key)
    mock.clear_replies()
    mock.enqueue(whole([{"text": "Here: "}, image()]))
    first = client.responses.create(model=MODEL, input="Draw a banana", store=False)
    items = [item.model_dump(exclude_none=True) for item in first.output]
    assert [item["type"] for item in items] == ["message", "image_generation_call"]
    asked = [{"role": "user", "content": "Draw a banana"}, *items, {"role": "user", "content": "Describe it"}]
    answer = client.responses.create(model=CLAUDE, input=asked, store=False)
    assert answer.status == "completed"
    sent = mock.last("/v1/messages").json
    assert "iVBOR" not in json.dumps(sent) and [m["role"] for m in sent["messages"]][-2:] == ["assistant", "user"]


@pytest.mark.parametrize(
    "ident, param",
    [("ig_" + "ab" * 24 + "_1", "input[0].result"), ("ig_openais", "input[0].id")],
    ids=["stockyards id", "another id"],
)
def test_an_image_item_without_its_image_is_a_clear_400(server, key, ident, param):
    """An image item without its ``result``: with an id Stockyard made, a 400 naming the field; with
    another, it names an image a provider keeps, which this key holds none of (the 400 naming its id)."""
    item = {"type": "image_generation_call", "id": ident, "status": "completed", "result": None}
    body = {"model": MODEL, "input": [item, {"role": "user", "content": "Again"}]}
    status, _, raw = server.request("POST", "/v1/responses", body, server.auth(key))
    assert status == 400 and json.loads(raw)["error"]["param"] == param, raw


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_messages_client_gets_the_text_and_the_trace_says_the_image_was_left_out(server, mock, key, stream):
    """Anthropic's Messages API has no image output block: the answer is the text (not a made-up block or
    a note in the model's words), and the trace says an image was left out."""
    mock.clear_replies()
    mock.enqueue(streamed([[{"text": "Here."}], [image()]]) if stream else whole([{"text": "Here."}, image()]))
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Draw"}], "stream": stream}
    status, headers, raw = server.request("POST", "/v1/messages", body, server.auth(key))
    assert status == 200, raw[:500]
    message = check_messages(raw) if stream else json.loads(raw)
    assert [(b["type"], b["text"]) for b in message["content"]] == [("text", "Here.")]
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert "image(s) the model drew left out" in trace["error_message"]
    assert (trace["cost_uc"], trace["status"]) == (cost_uc(1), 200)


@pytest.mark.parametrize("named", ["webp", None, ["png"], "tiff"], ids=["webp", "none", "a list", "unknown"])
def test_an_image_items_format_names_its_media_type(server, mock, key, named):
    """An image item sent back goes to Gemini as the media type its ``output_format`` names, else PNG
    (a value that is no format of OpenAI's is not the client's 500)."""
    item = {"type": "image_generation_call", "id": "ig_x", "status": "completed", "result": PNG, "output_format": named}
    mock.clear_replies()
    mock.enqueue(whole([{"text": "Seen."}]))
    body = {"model": MODEL, "input": [{"role": "user", "content": "Draw"}, item, {"role": "user", "content": "Again"}]}
    status, _, raw = server.request("POST", "/v1/responses", body, server.auth(key))
    assert status == 200, raw
    assert model_turn(server, mock) == [image(PNG, "image/webp" if named == "webp" else "image/png")]


def test_a_tool_outputs_image_goes_before_a_drawn_image_sent_back():
    """Was: an ``image_generation_call`` item after a function output skipped the flush of that
    output's attached images, which went after the model's image (out of the turn's order)."""
    from stockyard.providers.responses import chat_messages

    shot = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    items = [
        {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [shot]},
        {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "QkJCQg=="},
    ]
    roles = [m["role"] for m in chat_messages(items, "input", "gemini", "gemini")]
    assert roles == ["assistant", "tool", "user", "assistant"], roles
