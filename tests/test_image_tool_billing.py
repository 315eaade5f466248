"""Images a model makes inside an answer: what they are billed, whole or cut.

The Responses API's hosted ``image_generation`` tool:
OpenAI bills the tool's image apart from the mainline model's ``usage``: in the response's
``tool_usage.image_gen``, image output tokens at the image model's rates (gpt-image-1 by default:
$40 per 1M), each partial image 100 more. A whole answer is billed from it; a stream cut before
``response.completed`` (the provider broke, or the client left right after the image) is billed
each image it relayed as its image model's largest image (``imagegen.largest_image``) at the same rates, and
each partial image its 100 tokens — not the text alone, which left the image, the dear part, free.

A chat image model's own images (OpenRouter's ``delta.images``) are in its ``usage``; a chat stream
cut before its usage chunk is billed each image it relayed as the largest image, as its output.
"""

from __future__ import annotations

import threading

import pytest
from conftest import leave_stream, wait_for
from mock_upstream import (
    COMPLETION_TOKENS,
    IMAGE_B64,
    IMAGE_GEN_INPUT_TOKENS,
    IMAGE_GEN_OUTPUT_TOKENS,
    PARTIAL_IMAGE_TOKENS,
    PROMPT_TOKENS,
    Reply,
)

USD = 10**8  # µ¢
# gpt-4o-mini (the mainline model) and gpt-image-1 (the tool's image model), µ¢ per token
MINI_IN, MINI_OUT = 15 * USD // 10**8, 60 * USD // 10**8  # $0.15 and $0.60 per 1M
IMAGE_IN, IMAGE_OUT = 5 * USD // 10**6, 40 * USD // 10**6  # $5 and $40 per 1M
LARGEST_IMAGE = 6240  # imagegen.IMAGE_OUTPUT_TOKENS: gpt-image-1's largest image
# Events of the mock's stream with the tool: created, in_progress, the image item's added,
# in_progress, generating, [partials], completed and done (the image), then the message's seven,
# then response.completed.
IMAGE_DONE = 6  # the index of the image's output_item.done without partial images


def draw(partials: int = 0, stream: bool = True, **settings) -> dict:
    tool: dict = {"type": "image_generation", **settings}
    if partials:
        tool["partial_images"] = partials
    return {"model": "gpt-4o-mini", "input": "draw a cat", "tools": [tool], "stream": stream}


def post(server, body: dict) -> tuple[int, dict, bytes]:
    return server.request("POST", "/v1/responses", body)


@pytest.mark.parametrize("stream", [False, True])
def test_a_whole_answer_bills_its_image_at_the_image_models_rates(openai_server, stream):
    """Was: only ``usage`` was read, the mainline model's text; ``tool_usage.image_gen`` (the
    image, ~$0.04 here) was never billed, cut or not."""
    status, headers, raw = post(openai_server, draw(stream=stream))
    assert status == 200 and IMAGE_B64.encode() in raw, raw[:300]
    trace = openai_server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "ok" and trace["cost_status"] == "exact", trace
    text = PROMPT_TOKENS * MINI_IN + COMPLETION_TOKENS * MINI_OUT
    image = IMAGE_GEN_INPUT_TOKENS * IMAGE_IN + IMAGE_GEN_OUTPUT_TOKENS * IMAGE_OUT
    assert trace["cost_uc"] == text + image, (trace["cost_uc"], text, image)


def test_an_image_from_a_tool_model_without_a_price_leaves_the_cost_unknown(openai_server):
    """Unknown is never guessed: the tool named a model the price table does not know, so what its
    image cost is not known, and neither is the answer's. Was: billed at gpt-image-1's rates."""
    status, headers, raw = post(openai_server, draw(stream=False, model="gpt-image-2"))
    assert status == 200 and IMAGE_B64.encode() in raw, raw[:300]
    trace = openai_server.trace(headers["x-stockyard-trace-id"])
    assert (trace["cost_status"], trace["cost_uc"]) == ("unknown", None), trace


def test_a_stream_the_provider_cuts_before_its_end_bills_the_image_and_the_text(openai_server, mock):
    """The attacker's case from the provider's side: text and the final image went out, then the
    stream broke before ``response.completed``. Was billed its text alone (~$0.000005)."""
    mock.enqueue(Reply(cut_after=IMAGE_DONE + 9))  # everything but response.completed
    status, headers, raw = post(openai_server, draw())
    assert status == 200 and b'"revised_prompt"' in raw and b"response.output_text.delta" in raw, raw[:300]
    assert b'"type":"response.completed"' not in raw
    trace = openai_server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and trace["cost_status"] == "estimate", trace
    assert trace["cost_uc"] >= LARGEST_IMAGE * IMAGE_OUT, trace["cost_uc"]
    # the text's events are past the trace's capture (behind the image): their bytes / 4, ~600;
    # the image's base64 (~100,000 tokens at four bytes) is not billed as text as well
    assert trace["completion_tokens"] < len(IMAGE_B64) // 4 // 100, trace["completion_tokens"]


@pytest.mark.parametrize(
    ("settings", "image_uc"),
    [
        # the mini: its largest (6,500 tokens: $0.052, its model page's price of a high 1024x1536
        # image) at its $8 per 1M. Was: gpt-image-1's largest at gpt-image-1's $40
        ({"model": "gpt-image-1-mini"}, 6500 * 800),
        # gpt-image-1.5: its largest (6,240 tokens) at its image output rate, $32 per 1M ($0.19968),
        # not its text output rate, $10
        ({"model": "gpt-image-1.5"}, 6240 * 3200),
        # the image made is the one the tool asked for: its quality and size in the tool model's
        # table (as the hold counts it). Was: the model's largest (23 times a low 1024x1024's 272)
        ({"quality": "low", "size": "1024x1024"}, 272 * IMAGE_OUT),
        ({"quality": "medium", "size": "1536x1024"}, 1568 * IMAGE_OUT),
    ],
)
def test_a_cut_stream_bills_its_image_as_the_tool_asked_for_it(openai_server, mock, settings, image_uc):
    mock.enqueue(Reply(cut_after=IMAGE_DONE + 9))
    status, headers, raw = post(openai_server, draw(**settings))
    assert status == 200 and b'"type":"response.completed"' not in raw, raw[:300]
    trace = openai_server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and trace["cost_status"] == "estimate", trace
    # the text (its bytes / 4 at gpt-4o-mini's rates) is far below a cent
    assert image_uc <= trace["cost_uc"] < image_uc + 1_000_000, (trace["cost_uc"], image_uc)


def leave_and_go_on(server, mock, body: dict, sent: int, seen: bytes) -> str:
    """The provider sends ``sent`` events and waits; the client leaves once ``seen`` arrived; the
    provider sends one more event (the server's write to the client fails: it is gone), then
    waits for the server to hang up before sending the rest (its ``response.completed``)."""
    gate, hung_up = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=gate, held_after=sent, hang_s=60, hang_after=sent + 1, hung_up=hung_up))
    trace_id = leave_stream(server, "/v1/responses", body, seen)
    gate.set()
    assert hung_up.wait(15), "the provider's connection was closed when the client's was found gone"
    return trace_id


def test_a_client_that_closes_right_after_the_image_pays_for_it(openai_server, mock):
    """The attacker's case: the client closes its socket as soon as the image's event arrived,
    before the text and ``response.completed``. Was billed as having written nothing."""
    trace_id = leave_and_go_on(openai_server, mock, draw(), IMAGE_DONE + 1, b'"revised_prompt"')
    trace = wait_for(lambda: openai_server.trace(trace_id), 15, "the trace")
    assert trace["outcome"] == "client_disconnected" and trace["cost_status"] == "estimate", trace
    assert trace["cost_uc"] >= LARGEST_IMAGE * IMAGE_OUT, trace["cost_uc"]


def test_a_client_that_leaves_after_a_partial_image_pays_for_the_image(openai_server, mock):
    """Only partial images went out: the image was being made, and its last partial can be near
    the final one, so the image is billed as made, and each partial relayed its 100 tokens."""
    trace_id = leave_and_go_on(openai_server, mock, draw(partials=3), 6, b'"partial_image_index":0')  # 1 of 3
    trace = wait_for(lambda: openai_server.trace(trace_id), 15, "the trace")
    assert trace["outcome"] == "client_disconnected" and trace["cost_status"] == "estimate", trace
    image = (LARGEST_IMAGE + PARTIAL_IMAGE_TOKENS) * IMAGE_OUT
    assert image <= trace["cost_uc"] < image + (LARGEST_IMAGE * IMAGE_OUT) // 10, trace["cost_uc"]


# -- a chat image model's own images (``modalities: ["image", "text"]``) -----------------------------


def chat_draw() -> dict:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "draw a cat"}],
        "modalities": ["image", "text"],
        "stream": True,
    }


def test_a_chat_stream_cut_after_its_image_bills_the_image_as_output(openai_server, mock):
    """The image's delta, the text, then the provider broke before the usage chunk: was billed
    the text (~4 tokens); the image's data URL, not a text value, counted for nothing."""
    mock.enqueue(Reply(cut_after=5))  # the image's delta, role, three words: not the finish nor the usage
    status, headers, raw = openai_server.request("POST", "/v1/chat/completions", chat_draw())
    assert status == 200 and IMAGE_B64.encode() in raw and b"mock" in raw, raw[:300]
    trace = openai_server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and trace["cost_status"] == "estimate", trace
    # the text's chunks are past the capture (behind the image): their bytes / 4, ~280
    assert LARGEST_IMAGE <= trace["completion_tokens"] < LARGEST_IMAGE + 1000, trace["completion_tokens"]
    assert trace["cost_uc"] >= LARGEST_IMAGE * MINI_OUT, trace["cost_uc"]


def test_a_chat_stream_cut_right_after_its_image_bills_the_image_not_its_bytes(openai_server, mock):
    """Only the image's delta went out (the capture holds its first 256 KB): was billed nothing (its
    empty ``content`` read as a text of no characters); now one image, and not its ~400 KB of base64
    / 4 (~100,000 tokens) as the bytes of a stream without text either."""
    mock.enqueue(Reply(cut_after=1))
    status, headers, raw = openai_server.request("POST", "/v1/chat/completions", chat_draw())
    assert status == 200 and IMAGE_B64.encode() in raw, raw[:300]
    trace = openai_server.trace(headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken", trace
    assert LARGEST_IMAGE <= trace["completion_tokens"] < LARGEST_IMAGE + 100, trace["completion_tokens"]


def test_a_whole_chat_answer_with_an_image_is_billed_its_usage(openai_server):
    """With its usage the answer is billed exactly, its image included in the model's count."""
    status, headers, raw = openai_server.request("POST", "/v1/chat/completions", {**chat_draw(), "stream": False})
    assert status == 200 and IMAGE_B64.encode() in raw
    trace = openai_server.trace(headers["x-stockyard-trace-id"])
    assert trace["cost_status"] == "exact" and trace["completion_tokens"] == COMPLETION_TOKENS, trace
