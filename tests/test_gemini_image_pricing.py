"""Gemini's image models (Nano Banana) billed as Google bills them: the image output tokens at the
model's image output rate (``media_output``), the text output at the text rate, the input at the
input rate — from ``usageMetadata.candidatesTokensDetails`` (per modality), through a real server
and the mock upstream, native (generateContent, streamGenerateContent) and translated (chat).

Shipped rates (USD per 1M tokens → µ¢ per token): gemini-2.5-flash-image $0.30 input (30),
$2.50 text output (250), $30 image output (3,000), 1,290 tokens an image; gemini-3-pro-image-preview
$2 input (200), $12 text output (1,200), $120 image output (12,000), 1,120 tokens an image at 1K.
"""

from __future__ import annotations

import http.client
import json

import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import COMPLETION_TOKENS, GEMINI_IMAGE_B64, PROMPT_TOKENS, TEXT, Reply, gemini_image_part

GEMINI_KEY = "AIza-image-0123456789abcdefPROVIDERSECRET"
ADMIN = "admin-key-for-gemini-image-tests-0123"
CONTENTS = [{"role": "user", "parts": [{"text": "Draw a banana"}]}]
FLASH_IMAGE, PRO_IMAGE = "gemini-2.5-flash-image", "gemini-3-pro-image-preview"
FLASH_TOKENS, PRO_TOKENS = 1290, 1120  # one image's output tokens (the mock's, Google's)
KEYS: dict[str, str] = {}


def flash_cost(text_out: int = COMPLETION_TOKENS, image_out: int = FLASH_TOKENS) -> int:
    return PROMPT_TOKENS * 30 + text_out * 250 + image_out * 3_000


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, GEMINI_API_KEY=GEMINI_KEY, GEMINI_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN)
    # an operator's override: its image output rate set with `prices set` like every other rate
    rates = ("--input", "1", "--output", "2", "--media-output", "40")
    override = ("prices", "set", "gemini-2.5-flash-image-preview", *rates)
    keys = {"gimage": [], "gimage-budget": ["--budget-usd", "0.03", "--budget-period", "month"]}
    with served(pyz_path, tmp_path_factory, "gimage", env, keys, cli=[override]) as proc:
        KEYS["plain"], KEYS["budget"] = proc.keys["gimage"], proc.keys["gimage-budget"]
        yield proc


def generate(server: ServerProcess, model: str, body: dict, key: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"x-goog-api-key": key or KEYS["plain"]}
    return server.request("POST", f"/v1beta/models/{model}:generateContent", body, headers=headers)


def stream(server: ServerProcess, path: str, body: dict, auth: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {**(auth or {"x-goog-api-key": KEYS["plain"]}), "Content-Type": "application/json"}
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def parts_of(answer: dict) -> list[dict]:
    return answer["candidates"][0]["content"]["parts"]


def test_an_image_answer_bills_its_image_tokens_at_the_image_rate(server) -> None:
    status, headers, raw = generate(server, FLASH_IMAGE, {"contents": CONTENTS})
    assert status == 200, raw
    answer = json.loads(raw)
    assert parts_of(answer) == [{"text": TEXT}, gemini_image_part()]  # relayed as Google sent it
    details = answer["usageMetadata"]["candidatesTokensDetails"]
    assert {"modality": "IMAGE", "tokenCount": FLASH_TOKENS} in details
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS + FLASH_TOKENS)
    assert (trace["cost_uc"], trace["cost_status"]) == (flash_cost(), "exact")


def test_gemini_3_pro_image_bills_at_its_own_rates(server) -> None:
    status, headers, raw = generate(server, PRO_IMAGE, {"contents": CONTENTS})
    assert status == 200, raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    expected = PROMPT_TOKENS * 200 + COMPLETION_TOKENS * 1_200 + PRO_TOKENS * 12_000
    assert (trace["cost_uc"], trace["cost_status"]) == (expected, "exact")


def test_an_sse_stream_bills_the_image_of_its_last_chunk(server) -> None:
    path = f"/v1beta/models/{FLASH_IMAGE}:streamGenerateContent?alt=sse"
    status, headers, raw = stream(server, path, {"contents": CONTENTS})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert parts_of(events[-1]) == [gemini_image_part()] and events[-1]["candidates"][0]["finishReason"] == "STOP"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["stream"], trace["cost_uc"], trace["cost_status"]) == (1, flash_cost(), "exact")


def test_a_json_array_stream_is_billed_the_same(server) -> None:
    status, headers, raw = stream(server, f"/v1beta/models/{FLASH_IMAGE}:streamGenerateContent", {"contents": CONTENTS})
    assert status == 200, raw
    assert parts_of(json.loads(raw)[-1]) == [gemini_image_part()]
    assert server.trace(headers["x-stockyard-trace-id"])["cost_uc"] == flash_cost()


def test_a_text_only_answer_of_an_image_model_is_billed_at_the_text_rate(server) -> None:
    body = {"contents": CONTENTS, "generationConfig": {"responseModalities": ["TEXT"]}}
    status, headers, raw = generate(server, FLASH_IMAGE, body)
    assert status == 200, raw
    assert parts_of(json.loads(raw)) == [{"text": TEXT}]
    assert server.trace(headers["x-stockyard-trace-id"])["cost_uc"] == flash_cost(image_out=0)


def test_usage_without_a_split_bills_every_output_token_at_the_text_rate(server, mock) -> None:
    # no candidatesTokensDetails: nothing says which tokens were the image's (today's behaviour)
    usage = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": 1_300, "totalTokenCount": 1_312}
    candidate = {"content": {"parts": [gemini_image_part()], "role": "model"}, "finishReason": "STOP", "index": 0}
    mock.enqueue(Reply(json={"candidates": [candidate], "usageMetadata": usage, "modelVersion": FLASH_IMAGE}))
    status, headers, raw = generate(server, FLASH_IMAGE, {"contents": CONTENTS})
    assert status == 200, raw
    assert server.trace(headers["x-stockyard-trace-id"])["cost_uc"] == flash_cost(text_out=1_300, image_out=0)


def test_an_override_sets_the_image_output_rate(server) -> None:
    status, headers, raw = generate(server, "gemini-2.5-flash-image-preview", {"contents": CONTENTS})
    assert status == 200, raw
    expected = PROMPT_TOKENS * 100 + COMPLETION_TOKENS * 200 + FLASH_TOKENS * 4_000  # $1, $2, $40 per 1M
    assert server.trace(headers["x-stockyard-trace-id"])["cost_uc"] == expected
    listed = [json.loads(line) for line in server.cli("prices", "list", "--json").stdout.splitlines()]
    row = next(r for r in listed if r["model"] == "gemini-2.5-flash-image-preview")
    assert (row["source"], row["media_output_uc"], row["usd_per_1m"]["media_output"]) == (
        "override",
        4 * 10**9,
        "$40.00",
    )
    shipped = next(r for r in listed if r["model"] == FLASH_IMAGE)
    assert (shipped["source"], shipped["media_output_uc"]) == ("shipped", 3 * 10**9)
    # the admin API takes the same field
    admin = {"Authorization": f"Bearer {ADMIN}"}
    rates = {"model": "house-image", "input": "1", "output": "2", "media_output": "45"}
    status, _, raw = server.request("POST", "/api/prices", rates, headers=admin)
    assert status == 200 and json.loads(raw)["usd_per_1m"]["media_output"] == "$45.00", raw
    status, _, raw = server.request("POST", "/api/prices", {**rates, "media_output": "-1"}, headers=admin)
    assert status == 400 and b"media_output" in raw, raw


def test_a_budget_holds_the_output_cap_at_the_image_rate(server) -> None:
    # $0.03 left: 1,300 output tokens at the text rate ($0.00325) would fit, at the image rate ($0.039) not
    body = {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 1_300}}
    status, _, raw = generate(server, FLASH_IMAGE, body, KEYS["budget"])
    assert status == 429, raw
    assert json.loads(raw)["error"]["status"] == "RESOURCE_EXHAUSTED"
    body = {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 100}}  # at most 100 × $30/1M
    status, _, raw = generate(server, FLASH_IMAGE, body, KEYS["budget"])
    assert status == 200, raw


CHAT_IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + GEMINI_IMAGE_B64}}


def test_a_chat_request_to_an_image_model_gets_its_image_and_is_billed_the_same(server) -> None:
    chat = {"model": f"gemini/{FLASH_IMAGE}", "messages": [{"role": "user", "content": "Draw a banana"}]}
    headers = {"Authorization": f"Bearer {KEYS['plain']}"}
    status, got, raw = server.request("POST", "/v1/chat/completions", chat, headers=headers)
    assert status == 200, raw
    answer = json.loads(raw)
    message = answer["choices"][0]["message"]
    drawn = {**CHAT_IMAGE, "text_offset": len(TEXT)}  # as chat image models send theirs, and where it was drawn
    assert (message["content"], message["images"]) == (TEXT, [drawn])
    assert answer["usage"]["completion_tokens"] == COMPLETION_TOKENS + FLASH_TOKENS
    trace = server.trace(got["x-stockyard-trace-id"])
    assert (trace["cost_uc"], trace["cost_status"]) == (flash_cost(), "exact")
    status, got, raw = stream(server, "/v1/chat/completions", {**chat, "stream": True}, headers)
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]
    chunks = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    assert "".join(d.get("content") or "" for d in deltas) == TEXT
    assert [d["images"] for d in deltas if "images" in d] == [[{"index": 0, **drawn}]]  # numbered for the SDKs
    assert server.trace(got["x-stockyard-trace-id"])["cost_uc"] == flash_cost()


def chat_with_modalities(server: ServerProcess, modalities: object) -> tuple[int, dict, bytes]:
    chat = {
        "model": f"gemini/{FLASH_IMAGE}",
        "messages": [{"role": "user", "content": "Draw"}],
        "modalities": modalities,
    }
    return server.request("POST", "/v1/chat/completions", chat, headers={"Authorization": f"Bearer {KEYS['plain']}"})


@pytest.mark.parametrize(
    ("modalities", "sent", "image"),
    [(["image", "text"], ["IMAGE", "TEXT"], True), (["text"], ["TEXT"], False)],
)
def test_chat_modalities_reach_gemini_as_response_modalities(server, mock, modalities, sent, image) -> None:
    """OpenRouter's way to ask a chat image model for images (``modalities``) is Gemini's
    ``generationConfig.responseModalities``: it was a 400 ("text only") before."""
    status, got, raw = chat_with_modalities(server, modalities)
    assert status == 200, raw
    received = mock.last(":generateContent")
    assert received is not None and received.json["generationConfig"]["responseModalities"] == sent
    message = json.loads(raw)["choices"][0]["message"]
    assert ("images" in message) is image
    expected = flash_cost() if image else flash_cost(image_out=0)
    assert server.trace(got["x-stockyard-trace-id"])["cost_uc"] == expected


@pytest.mark.parametrize("modalities", [["audio"], ["text", "audio"], "image", [], [1]])
def test_chat_modalities_gemini_cannot_give_are_a_400_naming_the_field(server, modalities) -> None:
    status, _, raw = chat_with_modalities(server, modalities)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert (error["param"], error["code"]) == ("modalities", "unsupported_field")
