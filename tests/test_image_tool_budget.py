"""Budgets hold the Responses ``image_generation`` tool's images before the request goes upstream.

OpenAI bills the tool's images apart from the model's usage (``tool_usage.image_gen``, at the image
model's rates: gpt-image-1, $40 per 1M output tokens), so a budget's hold must count them too, else
every request in flight under a budget may make images the budget never held: 20 concurrent
requests on a key with room for one image all got theirs.

A request's hold is read from the refusal of a key whose budget is 1 µ¢: its message says what
the request "may cost up to", exactly (``budgets.BudgetExceeded.error``). gpt-4o-mini, the
mainline model, holds its input at $0.15 per 1M (15 µ¢ a token: its dearest input rate, four
bytes of the body a token) and its output at $0.60 (60 µ¢); the images are held at gpt-image-1's
$40 (4,000 µ¢ a token), each at gpt-image-1's tokens for its quality and size (OpenAI's image
generation guide: low 1024x1024 272 ... high 1024x1536 6,240), each partial image 100 more.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import (
    COMPLETION_TOKENS,
    IMAGE_GEN_INPUT_TOKENS,
    IMAGE_GEN_OUTPUT_TOKENS,
    IMAGE_TEXT_OUTPUT_TOKENS,
    IMAGE_USAGE,
    PROMPT_TOKENS,
    Reply,
)

ADMIN = "admin-key-for-image-budget-tests-0123456789"
USD = 10**8  # µ¢
MINI_IN, MINI_OUT = 15, 60  # gpt-4o-mini, µ¢ a token
IMAGE_IN, IMAGE_OUT = 500, 4000  # gpt-image-1, µ¢ a token
CAP = 16  # max_output_tokens of every request here
REFUSAL = r"\$([0-9.]+) spent(, \$[0-9.]+ held by requests in flight)?, .* may cost up to \$([0-9.]+)"
ONLY_IMAGES = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "image_generation"}]}
FORCED = {"type": "image_generation"}
ONLY_SEARCH = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)
    with served(pyz_path, tmp_path_factory, "imgbudget", env) as srv:
        yield srv


@pytest.fixture
def slow_upstream(mock):
    """Answers take 300 ms, so the burst's requests are in flight together."""
    mock.delay_ms = 300
    yield mock
    mock.delay_ms = 0


_names = iter(range(1_000_000))


def make_key(server: ServerProcess, budget_usd: str) -> tuple[str, str]:
    """A key with a ``total`` budget: (secret, id)."""
    fields = {"name": f"img{next(_names)}", "budget_usd": budget_usd, "budget_period": "total"}
    status, _, data = server.request("POST", "/api/keys", fields, headers={"Authorization": f"Bearer {ADMIN}"})
    body = json.loads(data)
    assert status == 201, body
    return body["key"], body["id"]


def draw(tool: dict | None = None, **fields) -> dict:
    """A Responses request offering the image tool (``tool``: its settings; None: no tool)."""
    body: dict = {"model": "gpt-4o-mini", "input": "draw a cat", "max_output_tokens": CAP}
    if tool is not None:
        body["tools"] = [{"type": "image_generation", **tool}]
    return {**body, **fields}


def post(server: ServerProcess, secret: str, body: dict) -> tuple[int, dict, dict]:
    status, headers, data = server.request("POST", "/v1/responses", body, headers={"Authorization": f"Bearer {secret}"})
    return status, headers, json.loads(data)


def usd(text: str) -> int:
    return int(Decimal(text) * USD)


def refusal(server: ServerProcess, secret: str, body: dict) -> tuple[int, int, bool]:
    """(spent, what the request may cost, whether requests in flight hold any) from its 429."""
    status, _, answer = post(server, secret, body)
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", (status, answer)
    message = answer["error"]["message"]
    found = re.search(REFUSAL, message)
    assert found, message
    return usd(found[1]), usd(found[3]), found[2] is not None


def held(server: ServerProcess, body: dict) -> int:
    """What ``body`` holds against a budget: the amount a key with a 1 µ¢ budget is refused for."""
    secret, _ = make_key(server, "0.00000001")
    return refusal(server, secret, body)[1]


def text_hold(body: dict) -> int:
    """The mainline model's part of the hold: the body's bytes at four a token, and the output cap."""
    return -(-len(json.dumps(body)) // 4) * MINI_IN + CAP * MINI_OUT


@pytest.mark.parametrize(
    "body, image_tokens",
    [
        # no tool, or a tool the request forbids: the text alone, as before images were held
        (draw(), 0),
        (draw(tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}]), 0),
        (draw({}, tool_choice="none"), 0),
        (draw({}, tool_choice=ONLY_SEARCH), 0),
        # max_tool_calls bounds the images; the tool's quality and size price each
        (draw({"quality": "low", "size": "1024x1024"}, max_tool_calls=1), 272),
        (draw({"quality": "medium", "size": "1536x1024", "partial_images": 2}, max_tool_calls=3), 3 * (1568 + 200)),
        (draw({"quality": "high", "size": "1024x1024"}, max_tool_calls=2, tool_choice=FORCED), 2 * 4160),
        # auto or unset: the dearest (high, 1024x1536); without max_tool_calls, ten images
        (draw({"quality": "auto", "size": "auto", "partial_images": None}, max_tool_calls=1), 6240),
        (draw({}), 10 * 6240),
        (draw({"quality": "low"}, max_tool_calls=2, tool_choice=ONLY_IMAGES), 2 * 408),
        # a size the table lacks (gpt-image-2's flexible ones): by its area, at least the largest
        (draw({"quality": "high", "size": "2048x1536"}, max_tool_calls=1), 2 * 6240),
    ],
)
def test_the_hold_is_the_text_and_the_images_the_tool_may_make(server, body, image_tokens):
    """Was: the text alone, whatever the tool could draw (the cases without images were already so)."""
    assert held(server, body) == text_hold(body) + image_tokens * IMAGE_OUT


def test_a_burst_of_image_requests_stays_within_the_budget(server, slow_upstream):
    """Was: a key with room for one image had all 20 concurrent requests admitted (each holding its
    text, ~$0.0012), and each made its image (~$0.042): ~$0.85 spent of a $0.30 budget."""
    budget = 30_000_000  # $0.30: one image held at its dearest ($0.2496) fits, two do not
    secret, key_id = make_key(server, "0.30")
    body = draw({}, max_tool_calls=1, stream=True)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: post_stream(server, secret, body), range(20)))
    admitted = [r for r in results if r == 200]
    assert admitted and all(r in (200, 429) for r in results), results

    def traces() -> list[dict]:
        return server.db_rows("SELECT cost_uc, cost_status FROM traces WHERE key_id = ? AND outcome = 'ok'", (key_id,))

    wait_for(lambda: len(traces()) == len(admitted), what="the admitted requests' traces")
    costs = traces()
    # each billed exactly: its text and its image (the mock's: medium 1024x1024, 1,056 tokens)
    one = PROMPT_TOKENS * MINI_IN + COMPLETION_TOKENS * MINI_OUT
    one += IMAGE_GEN_INPUT_TOKENS * IMAGE_IN + IMAGE_GEN_OUTPUT_TOKENS * IMAGE_OUT
    assert all(c["cost_status"] == "exact" and c["cost_uc"] == one for c in costs), (costs, one)
    spent = sum(c["cost_uc"] for c in costs)
    assert spent <= budget, (len(admitted), spent)
    # every hold settled to its cost, none left: a request past the budget is refused for the
    # spend alone (the ledger's spend is the traces' sum, nothing held by requests in flight)
    wait_for(lambda: not refusal(server, secret, draw({}, max_tool_calls=2))[2], what="the holds settled")
    ledger_spent, _, _ = refusal(server, secret, draw({}, max_tool_calls=2))
    assert ledger_spent == spent


def post_stream(server: ServerProcess, secret: str, body: dict) -> int:
    status, _, _ = server.request("POST", "/v1/responses", body, headers={"Authorization": f"Bearer {secret}"})
    return status


# gpt-image-1-mini, µ¢ a token (OpenAI's model page, developers.openai.com/api/docs/models/gpt-image-1-mini:
# text in $2, cached text $0.20, image in $2.50, image out $8 per 1M). Its largest image is held at
# 6,500 tokens: $0.052, the page's price of a high-quality 1024x1536 image, at $8 per 1M.
MINI_IMAGE_TEXT_IN, MINI_IMAGE_IMAGE_IN, MINI_IMAGE_OUT = 200, 250, 800
MINI_IMAGE = {"model": "gpt-image-1-mini"}
IMAGES_BODY = {"model": "gpt-image-1-mini", "prompt": "a cat", "quality": "high", "size": "1024x1536"}


def images_post(server: ServerProcess, secret: str, body: dict) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {secret}"}
    status, headers, data = server.request("POST", "/v1/images/generations", body, headers=headers)
    return status, headers, json.loads(data)


def test_a_budgeted_key_generates_with_gpt_image_1_mini_billed_exactly(server):
    """Was: gpt-image-1-mini had no price: a budgeted key was refused (403 model_not_priced)."""
    secret, _ = make_key(server, "1.00")
    status, headers, answer = images_post(server, secret, IMAGES_BODY)
    assert status == 200 and answer["data"][0]["b64_json"], answer
    trace = server.trace(headers["x-stockyard-trace-id"])
    # the mock's usage: 10 text and 40 image tokens in, 4,160 image tokens out
    expected = 10 * MINI_IMAGE_TEXT_IN + 40 * MINI_IMAGE_IMAGE_IN + 4160 * MINI_IMAGE_OUT
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", expected), trace


def test_an_images_request_to_the_mini_holds_its_own_largest_image(server):
    """n images of the mini, each at its largest (6,500 tokens at $8: $0.052), not gpt-image-1's
    (6,240 at $40: $0.2496); the body's bytes at the dearest input rate (image input, $2.50)."""
    secret, _ = make_key(server, "0.00000001")
    body = {**IMAGES_BODY, "n": 3}
    status, _, answer = images_post(server, secret, body)
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", answer
    found = re.search(REFUSAL, answer["error"]["message"])
    assert found, answer
    inputs = -(-len(json.dumps(body)) // 4) * MINI_IMAGE_IMAGE_IN
    assert usd(found[3]) == inputs + 3 * 6500 * MINI_IMAGE_OUT


@pytest.mark.parametrize(
    "tool, image_tokens",
    [
        ({**MINI_IMAGE, "quality": "low", "size": "1024x1024"}, 625),  # $0.005 at $8 per 1M
        ({**MINI_IMAGE, "quality": "medium", "size": "1536x1024", "partial_images": 1}, 1875 + 100),
        ({**MINI_IMAGE, "quality": "high", "size": "1024x1536"}, 6500),
        ({**MINI_IMAGE, "quality": "auto"}, 6500),  # auto or unset: the mini's dearest
        ({**MINI_IMAGE, "quality": "high", "size": "2048x1536"}, 2 * 6500),  # by its area
    ],
)
def test_the_image_tool_naming_the_mini_holds_the_minis_images(server, tool, image_tokens):
    """Was: held at gpt-image-1's tokens and rate ($40 per 1M), whatever model the tool named."""
    body = draw(tool, max_tool_calls=1)
    assert held(server, body) == text_hold(body) + image_tokens * MINI_IMAGE_OUT


def test_the_image_tool_naming_the_mini_is_billed_at_the_minis_rates(server):
    """Was: the tool's images were billed at gpt-image-1's rates when the tool named the mini."""
    secret, _ = make_key(server, "1.00")
    status, headers, answer = post(server, secret, draw(MINI_IMAGE, max_tool_calls=1))
    assert status == 200 and answer["status"] == "completed", answer
    trace = server.trace(headers["x-stockyard-trace-id"])
    text = PROMPT_TOKENS * MINI_IN + COMPLETION_TOKENS * MINI_OUT
    # the mock's tool_usage.image_gen: its input all text, its output all image
    image = IMAGE_GEN_INPUT_TOKENS * MINI_IMAGE_TEXT_IN + IMAGE_GEN_OUTPUT_TOKENS * MINI_IMAGE_OUT
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", text + image), trace


# gpt-image-1.5, µ¢ a token: text in $5, image in $8, text out $10, image out $32 per 1M (OpenAI's
# pricing as imagine.art/blogs/gpt-image-1-5-pricing and llmreference.com/model/gpt-image-1.5
# quote it; fal.ai and Runware: text in $5, text out $10, image in $8). Its usage splits its output
# (``output_tokens_details``): the image's tokens at $32, the text it writes at $10. Its published
# per-image prices are gpt-image-1's tokens at $32 (high 1024x1536: 6,240 tokens, $0.1997 ~ $0.20).
V15_TEXT_IN, V15_IMAGE_IN, V15_TEXT_OUT, V15_IMAGE_OUT = 500, 800, 1000, 3200
V15 = {"model": "gpt-image-1.5"}
V15_BODY = {"model": "gpt-image-1.5", "prompt": "a cat", "quality": "high", "size": "1024x1536"}
DEFAULT_MAX_TOKENS = 4096  # STOCKYARD_DEFAULT_MAX_TOKENS: the text an image may come with, held


def test_a_budgeted_key_generates_with_gpt_image_1_5_billed_exactly(server):
    """Its image output at $32, its text output at $10. Was: no price (403 model_not_priced)."""
    secret, _ = make_key(server, "1.00")
    status, headers, answer = images_post(server, secret, V15_BODY)
    assert status == 200 and answer["data"][0]["b64_json"], answer
    trace = server.trace(headers["x-stockyard-trace-id"])
    # the mock's usage: 10 text and 40 image tokens in; 4,160 image and 180 text tokens out
    expected = 10 * V15_TEXT_IN + 40 * V15_IMAGE_IN + 4160 * V15_IMAGE_OUT + IMAGE_TEXT_OUTPUT_TOKENS * V15_TEXT_OUT
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", expected), trace


def test_gpt_image_1_5_without_an_output_split_bills_its_output_as_image(server, mock):
    """A usage without ``output_tokens_details`` says only how many tokens came out: on the Images
    API they are the image's (the spec's older ``output_tokens``: "image tokens in the output
    image"), so at $32 — never the text's $10, below what the hold was taken at."""
    usage = dict(IMAGE_USAGE)
    mock.enqueue(Reply(json={"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}], "usage": usage}))
    secret, _ = make_key(server, "1.00")
    status, headers, answer = images_post(server, secret, V15_BODY)
    assert status == 200, answer
    trace = server.trace(headers["x-stockyard-trace-id"])
    expected = 10 * V15_TEXT_IN + 40 * V15_IMAGE_IN + 4160 * V15_IMAGE_OUT
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", expected), trace


def test_gpt_image_1_without_an_output_split_is_billed_as_before(server):
    """gpt-image-1's usage (no ``output_tokens_details``): every output token at its $40."""
    secret, _ = make_key(server, "1.00")
    status, headers, answer = images_post(server, secret, {**V15_BODY, "model": "gpt-image-1"})
    assert status == 200, answer
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", 10 * IMAGE_IN + 40 * 1000 + 4160 * IMAGE_OUT), trace


def test_an_images_request_to_gpt_image_1_5_holds_its_images_and_their_text(server):
    """n images, each its largest (6,240 tokens at $32) and the text it may write beside it (the
    default output cap at $10: OpenAI states no bound on it), so the bill never exceeds the hold."""
    secret, _ = make_key(server, "0.00000001")
    body = {**V15_BODY, "n": 3}
    status, _, answer = images_post(server, secret, body)
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", answer
    found = re.search(REFUSAL, answer["error"]["message"])
    assert found, answer
    inputs = -(-len(json.dumps(body)) // 4) * V15_IMAGE_IN
    assert usd(found[3]) == inputs + 3 * 6240 * V15_IMAGE_OUT + 3 * DEFAULT_MAX_TOKENS * V15_TEXT_OUT


@pytest.mark.parametrize(
    "tool, image_tokens",
    [
        ({**V15, "quality": "low", "size": "1024x1024"}, 272),  # $0.009 at $32 per 1M
        ({**V15, "quality": "high", "size": "1536x1024", "partial_images": 1}, 6208 + 100),
        ({**V15, "quality": "auto"}, 6240),
    ],
)
def test_the_image_tool_naming_gpt_image_1_5_holds_its_images_and_their_text(server, tool, image_tokens):
    """Each image at $32, with the default output cap of text beside it at $10."""
    body = draw(tool, max_tool_calls=1)
    assert held(server, body) == text_hold(body) + image_tokens * V15_IMAGE_OUT + DEFAULT_MAX_TOKENS * V15_TEXT_OUT


def test_the_image_tool_naming_gpt_image_1_5_is_billed_at_its_rates(server):
    """``tool_usage.image_gen``'s image output at $32, its text output at $10."""
    secret, _ = make_key(server, "1.00")
    status, headers, answer = post(server, secret, draw(V15, max_tool_calls=1))
    assert status == 200 and answer["status"] == "completed", answer
    trace = server.trace(headers["x-stockyard-trace-id"])
    text = PROMPT_TOKENS * MINI_IN + COMPLETION_TOKENS * MINI_OUT
    image = IMAGE_GEN_INPUT_TOKENS * V15_TEXT_IN + IMAGE_GEN_OUTPUT_TOKENS * V15_IMAGE_OUT
    image += IMAGE_TEXT_OUTPUT_TOKENS * V15_TEXT_OUT
    assert (trace["cost_status"], trace["cost_uc"]) == ("exact", text + image), trace


IMAGE_MEDIA_IN = 1000  # gpt-image-1's dearest input rate ($10 per 1M image input), µ¢ a token


@pytest.mark.parametrize(
    "fields, per_image, image_in, image_out, text_out",
    [
        ({"model": "gpt-image-1", "quality": "low", "size": "1024x1024"}, 272, IMAGE_MEDIA_IN, IMAGE_OUT, 0),
        (
            {"model": "gpt-image-1", "quality": "medium", "size": "1536x1024", "n": 2, "partial_images": 2},
            1568 + 200,
            IMAGE_MEDIA_IN,
            IMAGE_OUT,
            0,
        ),
        ({"model": "gpt-image-1", "quality": "auto", "size": "auto"}, 6240, IMAGE_MEDIA_IN, IMAGE_OUT, 0),
        (
            {"model": "gpt-image-1-mini", "quality": "low", "size": "1024x1024", "n": 3},
            625,
            MINI_IMAGE_IMAGE_IN,
            800,
            0,
        ),
        (
            {"model": "gpt-image-1.5", "quality": "medium", "size": "1024x1024"},
            1056,
            V15_IMAGE_IN,
            V15_IMAGE_OUT,
            DEFAULT_MAX_TOKENS * V15_TEXT_OUT,
        ),
    ],
)
def test_an_images_request_holds_each_image_at_its_quality_and_size(
    server, fields, per_image, image_in, image_out, text_out
):
    """As the image tool's images are held: by the request's ``quality`` and ``size`` (and partial
    images), in the model's own table. Was: every image at the model's largest (a low-quality
    gpt-image-1 square, $0.011, held at $0.25: a key with less left was refused it)."""
    secret, _ = make_key(server, "0.00000001")
    body = {"prompt": "a cat", **fields}
    status, _, answer = images_post(server, secret, body)
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", answer
    found = re.search(REFUSAL, answer["error"]["message"])
    assert found, answer
    n = fields.get("n", 1)
    inputs = -(-len(json.dumps(body)) // 4) * image_in
    assert usd(found[3]) == inputs + n * (per_image * image_out + text_out)


def test_a_refusal_of_an_uncapped_image_tool_says_to_set_max_tool_calls(server):
    """Without ``max_tool_calls`` the tool is held at ten images (~$2.50): the refusal names the way
    to hold fewer, and only then."""
    secret, _ = make_key(server, "0.00000001")
    status, _, answer = post(server, secret, draw({}))
    assert status == 429, answer
    assert "set max_tool_calls" in answer["error"]["message"]
    for capped in (draw({}, max_tool_calls=1), draw()):
        status, _, answer = post(server, secret, capped)
        assert status == 429 and "max_tool_calls" not in answer["error"]["message"], answer


def test_an_image_tool_naming_an_unpriced_model_is_refused_under_a_budget(server):
    """As the Images API refuses a model with no price under a budget: the tool's images could not be
    counted. Was: held and billed at gpt-image-1's rates, a guess (gpt-image-2 draws larger images)."""
    secret, _ = make_key(server, "1.00")
    status, _, answer = post(server, secret, draw({"model": "gpt-image-2"}, max_tool_calls=1))
    assert status == 403 and answer["error"]["code"] == "model_not_priced", answer
    assert "gpt-image-2" in answer["error"]["message"]
    status, _, answer = post(server, secret, draw({"model": "gpt-image-2"}, tool_choice="none"))
    assert status == 200, answer  # no image can be made: nothing to price
