"""Batch lines for OpenAI's Images API, held and priced as those calls are.

OpenAI's Batch API takes ``/v1/images/generations`` and ``/v1/images/edits`` lines (its OpenAPI
spec's batch ``endpoint`` enum; GPT image models, at half their price). Was: ``LINE_ENDPOINTS``
knew chat, completions, embeddings, responses and moderations only, so an image line was held as a
chat call (its prompt and the default output cap: four high images of $1 held as $0.08), and its
result line, whose images answer names no model, was priced at no model (an unknown cost). A line
for an endpoint no batch hold here can count (``/v1/videos``, ``/v1/images/variations``, …) was held
as a chat call too; it is now a 400 naming the line. In process (the real App, ledger and writer)
on both stores.
"""

from __future__ import annotations

import json

import pytest
from conftest import OPENAI_KEY
from mock_upstream import FILES, IMAGE_TEXT_OUTPUT_TOKENS, IMAGE_USAGE
from test_batch_holds import room

from stockyard import config
from stockyard.app import App
from stockyard.batch_costs import BATCH_PRICE, openai_output
from stockyard.context import RequestContext, Route
from stockyard.errors import ProxyError
from stockyard.operations import keys as key_ops

DOLLAR = 100_000_000  # µ¢
GPT_IMAGE_1 = {"input": 500, "media_input": 1000, "output": 4000}  # µ¢ a token: $5, $10, $40 per 1M
GPT_IMAGE_15 = {"input": 500, "media_input": 800, "output": 1000, "media_output": 3200}  # $5, $8, $10, $32
WRAPPER_UC = 64 * GPT_IMAGE_1["input"]  # the line around the body: at most 64 more input tokens
FOUR_HIGH = {"model": "gpt-image-1", "prompt": "a lighthouse", "n": 4, "quality": "high", "size": "1024x1536"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> str:
    return str(tmp_path / "stockyard.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def app(db, mock):
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": mock.url + "/v1", "STOCKYARD_BATCH_POLL": "off"}
    app = App(config.load({"db": db}, env=env), env=env)
    ops = app.ops("test")
    _, app.test_key = key_ops.create_key(ops, {"name": "painter", "budget_usd": "10", "budget_period": "day"})
    _, app.other_key = key_ops.create_key(ops, {"name": "other"})
    app.reload()
    yield app
    app.close()


def request_of(app: App, key: str | None = None) -> RequestContext:
    ctx = RequestContext("batches", "openai", "127.0.0.1", {"authorization": f"Bearer {key or app.test_key}"})
    app.gate.authenticate(ctx)
    return ctx


def line_of(body: dict, url: object) -> bytes:
    return json.dumps({"custom_id": "r0", "method": "POST", "url": url, "body": body}).encode() + b"\n"


def line_worst(app: App, body: dict, url: object) -> int | None:
    """A one-line batch file's worst case (µ¢ at the batch price), as the upload and the create check it."""
    return app.files._check_batch_lines(
        request_of(app), app.registry().by_name["openai"], iter([line_of(body, url)]), room
    )


def direct_worst(app: App, body: dict, endpoint: str) -> int:
    """What a budget holds for the same call sent to its endpoint (full price)."""
    one = RequestContext(endpoint, "openai", "127.0.0.1", {})
    one.body, one.raw = body, json.dumps(body).encode()
    route = Route(app.registry().by_name["openai"], body["model"])
    found = app.path.pricer.worst_case(one, route, body["model"], app.path.settings.default_max_tokens)
    assert found is not None
    return found


def held_as_the_call(app: App, body: dict, url: str, endpoint: str) -> int:
    """The line's hold, asserted to be what the same call holds at the batch price (plus its wrapper)."""
    line, half = line_worst(app, body, url), -(-direct_worst(app, body, endpoint) * BATCH_PRICE[0] // BATCH_PRICE[1])
    assert line is not None and half <= line <= half + WRAPPER_UC, (line, half)
    return line


def test_an_image_generation_line_holds_the_images_it_asks_for(app):
    """Four high 1024x1536 images of gpt-image-1: 4 × 6,240 tokens at $40 per 1M, $0.9984, half of it
    in a batch. Held as a chat call it was the prompt and four choices of 4,096 output tokens: ~$0.33."""
    line = held_as_the_call(app, FOUR_HIGH, "/v1/images/generations", "image_generations")
    assert line >= 4 * 6240 * GPT_IMAGE_1["output"] // 2
    chat_sized = line_worst(app, FOUR_HIGH, "/v1/chat/completions")
    assert chat_sized is not None and chat_sized < 4 * 4200 * GPT_IMAGE_1["output"] // 2 < line


def test_a_json_edit_line_holds_its_images_as_the_edit_does(app):
    """Each image a JSON edit names (and its mask) is held as an image sent, beside the images it makes."""
    images = [{"image_url": f"https://images.example/{i}.png"} for i in range(3)]
    body = {"model": "gpt-image-1.5", "prompt": "add a hat", "images": images, "mask": images[0], "quality": "low"}
    three = held_as_the_call(app, body, "/v1/images/edits", "image_edits")
    one = held_as_the_call(app, {**body, "images": images[:1]}, "/v1/images/edits", "image_edits")
    assert three > one


@pytest.mark.parametrize(
    "edit, where",
    [
        ({"prompt": "no images"}, "'images' is required"),
        ({"prompt": "x", "images": [{"url": "https://images.example/a.png"}]}, "images[0]"),
        ({"prompt": "x", "images": [{"file_id": ""}]}, "images[0].file_id"),
        ({"prompt": "x", "images": [{"image_url": "https://a.example/a.png"}], "mask": "nope"}, "mask"),
    ],
)
def test_a_malformed_json_edit_line_is_a_400_naming_the_line(app, edit, where):
    with pytest.raises(ProxyError) as refused:
        line_worst(app, {"model": "gpt-image-1", **edit}, "/v1/images/edits")
    assert refused.value.status == 400 and refused.value.param == "file"
    assert "line 1 of the batch file" in refused.value.message and where in refused.value.message


@pytest.mark.parametrize("member", ["images", "mask"])
def test_a_json_edit_line_may_name_only_the_keys_own_files(app, member):
    other = request_of(app, app.other_key)
    app.ownership.claim("file-theirs", "file", other.key_id, "openai")
    app.ownership.claim("file-mine", "file", request_of(app).key_id, "openai")
    body = {"model": "gpt-image-1", "prompt": "x", "images": [{"file_id": "file-mine"}]}
    named = [{"file_id": "file-theirs"}] if member == "images" else {"file_id": "file-theirs"}
    theirs = {**body, member: named}
    with pytest.raises(ProxyError) as refused:
        line_worst(app, theirs, "/v1/images/edits")
    assert refused.value.status == 404 and "file-theirs" in refused.value.message
    assert "(line 1 of the batch file)" in refused.value.message
    assert line_worst(app, body, "/v1/images/edits")  # its own: held


@pytest.mark.parametrize("url", ["/v1/videos", "/v1/images/variations", "/v1/audio/speech", "/v1/nope", 42])
def test_a_line_for_an_endpoint_a_batch_hold_cannot_count_is_refused_naming_it(app, url):
    with pytest.raises(ProxyError) as refused:
        line_worst(app, FOUR_HIGH, url)
    assert refused.value.status == 400 and refused.value.param == "file"
    assert refused.value.message.startswith("line 1 of the batch file")
    assert refused.value.code == "unsupported_batch_endpoint"


def test_azure_lines_name_their_endpoints_without_v1(app):
    """Azure OpenAI's batch lines say ``/chat/completions``: held as the chat calls they are."""
    hello = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for body, url in ((hello, "/chat/completions"), (FOUR_HIGH, "/images/generations")):
        azure, openai = line_worst(app, body, url), line_worst(app, body, "/v1" + url)
        assert azure is not None and openai is not None and abs(azure - openai) <= WRAPPER_UC  # "/v1": its bytes


def bill_images(app: App, batch_id: str, model: str, usage: bool = True) -> dict:
    """An images batch ended with one answered line (an images answer: no model in it, as OpenAI's;
    its usage unless not ``usage``); its owner sees it: the usage trace it left."""
    answer: dict = {"created": 1, "data": [{"b64_json": "AA=="}]}
    if usage:
        answer["usage"] = mock_image_usage(model)
    line = {"id": "batch_req_1", "custom_id": "r0", "response": {"status_code": 200, "body": answer}, "error": None}
    with FILES.lock:
        output = FILES.add_file("out.jsonl", "batch_output", json.dumps(line).encode() + b"\n")
    provider = app.registry().by_name["openai"]
    app.ownership.claim(batch_id, "batch", request_of(app).key_id, "openai")
    batch = {"id": batch_id, "endpoint": "/v1/images/generations", "model": model, "output_file_id": output["id"]}
    app.batch_costs.record_now(request_of(app), provider, openai_output(provider, batch))
    sql = "SELECT * FROM traces WHERE endpoint = 'batches.usage' AND model = ?"
    return dict(app.store.read().execute(sql, (model,)).fetchone())


def mock_image_usage(model: str) -> dict:
    """The mock's images usage: gpt-image-1.5 splits its output into image and text tokens."""
    if model != "gpt-image-1.5":
        return IMAGE_USAGE
    images, text = IMAGE_USAGE["output_tokens"], IMAGE_TEXT_OUTPUT_TOKENS
    details = {"image_tokens": images, "text_tokens": text}
    return {**IMAGE_USAGE, "output_tokens": images + text, "output_tokens_details": details}


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1.5"])
def test_an_image_batchs_results_are_priced_as_image_answers(app, model):
    """Each result line at its model's image rates (text and image input apart; gpt-image-1.5's image
    output at $32, its text at $10), the batch's model being the one its answers leave unsaid."""
    rates = GPT_IMAGE_1 if model == "gpt-image-1" else GPT_IMAGE_15
    text_in, image_in = IMAGE_USAGE["input_tokens_details"].values()
    drawn = IMAGE_USAGE["output_tokens"] * rates.get("media_output", rates["output"])
    full = text_in * rates["input"] + image_in * rates["media_input"] + drawn
    if model == "gpt-image-1.5":
        full += IMAGE_TEXT_OUTPUT_TOKENS * rates["output"]
    row = bill_images(app, f"batch_{model}", model)
    assert row["cost_status"] == "exact" and row["model"] == model
    assert full % 2 == 0 and row["cost_uc"] == full * BATCH_PRICE[0] // BATCH_PRICE[1]


def test_an_image_answer_without_its_usage_leaves_the_batch_cost_unknown(app):
    """Was (once image lines were read at all): an answered line without usage counted nothing, so the
    batch cost 0. The images endpoint records such an answer's cost as unknown; so does a batch."""
    row = bill_images(app, "batch_no_usage", "gpt-image-1", usage=False)
    assert row["cost_status"] == "unknown" and row["cost_uc"] is None
