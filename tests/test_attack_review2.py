"""An attacker's review, part 2: one ordinary client key (a small budget, rpm/tpm, maybe a model
allow-list) against the money and the other tenants, on a real server. Each test names the hole
it closes."""

from __future__ import annotations

import io
import json

import openai
import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, served, wait_for
from mock_upstream import Reply, multipart_form
from openai import PermissionDeniedError, RateLimitError

from stockyard.pricing import PriceTable, Usage, cost_microcents

BODY_CAP = 1024
ANTHROPIC_KEY = "sk-ant-test-review2-0123456789abcdef"
FALLBACK_CHAINS = {
    "gpt-4o-mini": ["openai/gpt-4o"],
    "gpt-4.1-nano": ["openai/sy-unpriced-model"],
    "whisper-1": ["openai/sy-unpriced-whisper"],
    "dall-e-2": ["openai/dall-e-3"],  # twice the price an image
}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """OpenAI on the mock, the fallback module on (no retries), and keys of every kind."""
    env = {
        **base_env(cache_home),
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": mock.url + "/v1",
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": mock.url,
        "STOCKYARD_BODY_CAP_BYTES": str(BODY_CAP),  # trace bodies kept short
    }
    keys = {
        "mini": ["--models", "gpt-4o-mini"],
        "budgeted": ["--budget-usd", "5", "--budget-period", "day"],
        "plain": [],
        "big": ["--models", "big"],
        "tpm": ["--tpm", "20000"],
        "painter": ["--budget-usd", "2", "--budget-period", "day"],
    }
    setup = (
        ("modules", "set", "fallback", "retries=0", f"chains={json.dumps(FALLBACK_CHAINS)}"),
        ("modules", "enable", "fallback"),
        ("modules", "set", "userlimits", "budget_usd=1"),  # only requests naming an end user
        ("modules", "enable", "userlimits"),
        ("models", "add", "big", "--fallbacks", "gpt-4o"),
        (
            "models",
            "deploy",
            "big",
            "--provider",
            "openai",
            "--upstream-model",
            "gpt-4o-mini",
            "--name",
            "d1",
            "--rpm",
            "1",
        ),
    )
    with served(pyz_path, tmp_path_factory, "attack2", env, keys, setup) as srv:
        yield srv


def post(server: ServerProcess, who: str, path: str, body: dict) -> tuple[int, dict, dict]:
    status, headers, raw = server.request("POST", path, body, headers=server.auth(who))
    return status, headers, json.loads(raw)


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def after_a_failure(
    server: ServerProcess, mock, who: str, body: dict, user: str | None = None
) -> tuple[int, list[str]]:
    """A chat whose first attempt the provider answers 500: its status, and the models the
    provider was asked for (so: where it fell back to, if anywhere). Returns once its trace is
    written: a success is answered before its budget hold is settled, and the trace after."""
    mock.clear()
    mock.enqueue(Reply(status=500))
    headers = {**server.auth(who), **({"x-stockyard-user": user} if user else {})}
    status, answered, _ = server.request("POST", "/v1/chat/completions", body, headers=headers)
    server.trace(answered["x-stockyard-trace-id"])
    return status, models_sent(mock)


def models_sent(mock) -> list[str]:
    return [r.json.get("model") for r in mock.requests if isinstance(r.json, dict)]


# -- fallbacks are held to the key's allow-list and budget ------------------------------------------


def test_a_fallback_never_serves_a_model_the_key_may_not_use(server, mock):
    """Was: the allow-list was checked against the model the client named only; when that model
    failed, the fallback chain (or a model's fallbacks or larger-context model) served the request
    with any model, so a key limited to gpt-4o-mini got gpt-4o answers by sending requests that
    fail (a prompt too long for the small model moves it to the larger-context one)."""
    assert after_a_failure(server, mock, "mini", chat("gpt-4o-mini")) == (500, ["gpt-4o-mini"])
    # a key that may use gpt-4o still falls back to it
    assert after_a_failure(server, mock, "plain", chat("gpt-4o-mini")) == (200, ["gpt-4o-mini", "gpt-4o"])


def test_a_model_whose_deployments_are_full_never_falls_back_to_a_model_the_key_may_not_use(server, mock):
    """Was: when every deployment of a model was at its limits, the route step sent the request to
    the model's first fallback whatever the key's allow-list said."""
    mock.clear()
    assert post(server, "big", "/v1/chat/completions", chat("big"))[0] == 200  # the deployment's one rpm
    status, _, answer = post(server, "big", "/v1/chat/completions", chat("big"))
    assert status == 429, answer
    assert models_sent(mock) == ["gpt-4o-mini"]


def test_a_budgeted_key_never_falls_back_to_a_model_without_a_price(server, mock):
    """Was: a budgeted key is refused a model without a price (it could not be counted), but a
    fallback to one served it: its cost was unknown (NULL) and the budget never saw it."""
    assert after_a_failure(server, mock, "budgeted", chat("gpt-4.1-nano")) == (500, ["gpt-4.1-nano"])
    # a key without a budget keeps its fallback
    sent = ["gpt-4.1-nano", "sy-unpriced-model"]
    assert after_a_failure(server, mock, "plain", chat("gpt-4.1-nano")) == (200, sent)


def media_models_sent(mock) -> list[str]:
    """The model of each request the provider got, JSON or multipart."""
    return [r.json["model"] if isinstance(r.json, dict) else multipart_form(r)[0]["model"] for r in mock.requests]


def test_a_budgeted_media_request_falls_back_only_to_what_its_budget_counts(server, mock):
    """Was: a media request's fallbacks were not held to the budget (``proxy.counted`` let every
    one through): a budgeted whisper-1 transcription fell back to a model without a price (its
    cost unknown, never reaching the budget), and dall-e-2 images to dall-e-3 at twice what was held."""
    made = server.cli("keys", "create", "--name", "media-fallback", "--budget-usd", "3", "--budget-period", "day")
    assert made.returncode == 0, made.stderr
    auth = {"Authorization": f"Bearer {made.stdout.strip()}"}
    wait_for(lambda: server.request("GET", "/v1/models", headers=auth)[0] == 200, what="the new key")
    client = server.openai(made.stdout.strip())
    audio = ("a.wav", b"RIFF" + b"x" * 3000, "audio/wav")

    def after_a_failure(call) -> tuple[int, list[str]]:
        mock.clear()
        mock.enqueue(Reply(status=500))
        try:
            call()
            status = 200
        except openai.APIStatusError as exc:
            status = exc.status_code
        return status, media_models_sent(mock)

    assert after_a_failure(lambda: client.audio.transcriptions.create(model="whisper-1", file=audio)) == (
        500,
        ["whisper-1"],
    )
    # dall-e-2 1024x1024: $0.02 an image; dall-e-3 $0.04
    assert after_a_failure(lambda: client.images.generate(model="dall-e-2", prompt="x", n=100)) == (
        500,
        ["dall-e-2"],
    ), "$2 held; dall-e-3's $4 is past the $3 budget"
    assert after_a_failure(lambda: client.images.generate(model="dall-e-2", prompt="x", n=50)) == (
        200,
        ["dall-e-2", "dall-e-3"],
    ), "$2 at dall-e-3 fits"
    plain = server.openai("plain")
    assert after_a_failure(lambda: plain.audio.transcriptions.create(model="whisper-1", file=audio)) == (
        200,
        ["whisper-1", "sy-unpriced-whisper"],
    ), "a key without a budget keeps its fallback"
    mock.clear_replies()


def test_a_fallback_to_a_dearer_model_first_holds_its_worst_case(server, mock):
    """Was: the budget held the worst case at the first model's price only, so a fallback to a
    dearer model (gpt-4o-mini → gpt-4o: 16× the output price) could cost far more than was held,
    every request in flight at once."""
    # gpt-4o without a tier is held at its priority rates (1.7x: a project may default to priority)
    body = {**chat("gpt-4o-mini"), "max_tokens": 1_000_000}  # $0.60 at gpt-4o-mini, $17 at gpt-4o
    assert after_a_failure(server, mock, "budgeted", body) == (500, ["gpt-4o-mini"])  # $17 > the $5 budget
    body["max_tokens"] = 250_000  # $4.25 at gpt-4o: it fits, and is held until the request ends
    assert after_a_failure(server, mock, "budgeted", body) == (200, ["gpt-4o-mini", "gpt-4o"])
    assert post(server, "budgeted", "/v1/chat/completions", {**chat("gpt-4o"), "max_tokens": 250_000})[0] == 200


@pytest.mark.parametrize("tier, status", [("priority", 403), ("scale", 403), ("flex", 200), ("default", 200)])
def test_a_budgeted_key_cannot_ask_for_a_dearer_service_tier(server, tier, status):
    """Was: ``service_tier: priority`` went to OpenAI as sent and was billed there at about twice
    the standard rates, while Stockyard counted the standard price against the budget."""
    got, _, answer = post(server, "budgeted", "/v1/chat/completions", {**chat("gpt-4o-mini"), "service_tier": tier})
    assert got == status, answer
    if status == 403:
        assert answer["error"]["code"] == "service_tier_not_budgeted"


# -- background responses --------------------------------------------------------------------------


QUEUED = {"id": "resp_bg1", "object": "response", "status": "queued", "model": "gpt-4o", "output": [], "usage": None}
BACKGROUND = {"model": "gpt-4o", "input": "write a novel", "background": True, "max_output_tokens": 15000}


@pytest.mark.parametrize("who, user, stream", [("budgeted", None, True), ("plain", "eve", True)])
def test_a_budget_refuses_a_background_response_it_cannot_follow(server, mock, who, user, stream):
    """Was: a background response answers at once (``queued``, no usage) and runs at the provider
    afterwards; its cost was estimated from the few bytes of that first answer, so a budgeted key
    (or end user) ran any number of them nearly free. A key's and an end user's budget now hold one
    until it is billed (``test_background_responses``, ``test_budget_durable``); a streamed one (its
    stream bills it; cut, it would run on unbilled) they still refuse."""
    mock.clear()
    mock.enqueue(Reply(json=QUEUED))
    headers = {**server.auth(who), **({"x-stockyard-user": user} if user else {})}
    status, _, raw = server.request("POST", "/v1/responses", {**BACKGROUND, "stream": stream}, headers=headers)
    assert status == 403, raw
    assert json.loads(raw)["error"]["code"] == "background_not_budgeted"
    assert mock.requests == []
    mock.clear_replies()


def test_a_background_response_keeps_its_worst_case_in_the_tpm_window(server, mock):
    """Was: the tpm window was corrected to the usage of the ``queued`` answer (an estimate of a
    few tokens), so a key with 20,000 tpm started background responses of 15,000 tokens each
    as fast as it liked."""
    mock.enqueue(Reply(json=QUEUED), Reply(json=QUEUED))
    assert post(server, "tpm", "/v1/responses", BACKGROUND)[0] == 200
    status, _, answer = post(server, "tpm", "/v1/responses", BACKGROUND)
    assert status == 429, answer
    mock.clear_replies()


# -- batches ---------------------------------------------------------------------------------------


def batch_file(model: str, lines: int, max_tokens: int) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    line = {"method": "POST", "url": "/v1/chat/completions", "body": body}
    return b"".join((json.dumps({"custom_id": str(i), **line}) + "\n").encode() for i in range(lines))


def test_a_batch_is_held_to_what_the_budget_has_left_and_to_priced_models(server):
    """Was: a batch could start whenever some budget was left (its cost is known only when it
    ends), so a key with $5 a day ran batches of any size; and a batch of a model without a price
    ran too (a budgeted key is refused such a model in a request), its cost never counted."""
    client = server.openai("budgeted")

    def start(data: bytes):
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        return client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    with pytest.raises(RateLimitError) as err:  # 20 × 100,000 tokens of gpt-4o at half price: $10
        start(batch_file("gpt-4o", 20, 100_000))
    assert err.value.body["code"] == "budget_exceeded"
    with pytest.raises(PermissionDeniedError) as denied:
        start(batch_file("sy-unpriced-model", 1, 10))
    assert denied.value.body["code"] == "model_not_priced"
    assert start(batch_file("gpt-4o", 2, 100_000)).id.startswith("batch")  # $1: it fits


# -- answers without usage -------------------------------------------------------------------------


def test_a_stream_without_usage_is_estimated_from_all_it_relayed_not_from_the_trace_body(server, mock):
    """Was: an answer without usage (a provider that ignores ``include_usage``, a stream the client
    cut before its usage chunk) was estimated from the trace body, which keeps only
    STOCKYARD_BODY_CAP_BYTES (none at 0): a long answer was billed as a short one."""
    text = "word " * 4000  # 20,000 bytes relayed
    delta = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": []}
    events = [
        json.dumps({**delta, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}),
        json.dumps({**delta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        "[DONE]",
    ]
    mock.enqueue(Reply(sse=events))
    body = {**chat("gpt-4o-mini"), "stream": True, "max_tokens": 10_000}
    status, headers, raw = server.request("POST", "/v1/chat/completions", body, headers=server.auth("budgeted"))
    assert status == 200 and text.encode() in raw
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["usage_estimated"] == 1 and trace["cost_status"] == "estimate"
    assert trace["completion_tokens"] >= len(text) // 4 > BODY_CAP


def test_anthropic_one_hour_cache_writes_cost_twice_the_input_rate():
    """Was: every cache write was priced at the 5-minute rate (1.25× input), so a client marking
    its prompt ``cache_control: {"ttl": "1h"}`` (billed 2× input) was under-counted by 37.5 %."""
    price = PriceTable.load().lookup("claude-sonnet-4-5", "anthropic")
    assert price is not None
    reported = {  # 100k tokens: below the model's 200k long-context tier
        "input_tokens": 10,
        "cache_creation_input_tokens": 100_000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 100_000},
        "output_tokens": 0,
    }
    usage = Usage.from_anthropic(reported)
    assert usage.cache_write_tokens == usage.cache_write_long_tokens == 100_000
    assert cost_microcents(price, usage) == cost_microcents(price, Usage(prompt_tokens=10)) + 60 * 10**6  # $0.60
    five_minutes = {**reported, "cache_creation": {"ephemeral_5m_input_tokens": 100_000}}
    assert (
        cost_microcents(price, Usage.from_anthropic(five_minutes))
        == cost_microcents(price, Usage(prompt_tokens=10)) + 375 * 10**5
    )  # $0.375


def test_a_predicted_output_is_reserved_at_the_output_rate(server, mock):
    """Was: a ``prediction``'s tokens were reserved as input only, but the ones the model does not
    use are billed as output (beyond max_tokens): at gpt-4o, 4× the input rate."""
    prediction = {"type": "content", "content": "x" * 2_000_000}  # 500,000 tokens: $1.25 as input, $6.25 in all
    body = {**chat("gpt-4o"), "max_tokens": 1, "prediction": prediction}
    mock.clear()
    status, _, answer = post(server, "budgeted", "/v1/chat/completions", body)
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", answer
    assert mock.requests == []


def test_token_priced_images_are_reserved_at_their_largest_size(server, mock):
    """Was: a token-priced image model (gpt-image-1) was reserved at the default output cap (4096
    tokens) per image, but a high-quality 1536x1024 image is 6,240 output tokens: ten of them
    cost $2.50 at $40/M, and a $2 budget let them through."""
    client = server.openai("painter")
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        client.images.generate(model="gpt-image-1", prompt="a cat", n=10, quality="high", size="1536x1024")
    assert err.value.body["code"] == "budget_exceeded"
    assert mock.requests == []


TWICE_MODEL = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini"}'
TWICE_NESTED = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a","content":"b"}]}'
TWICE_CAP = b'{"model":"gpt-4o-mini","max_tokens":10,"max_tokens":100000,"messages":[]}'


@pytest.mark.parametrize(
    "path, raw, shape",
    [
        ("/v1/chat/completions", TWICE_MODEL, "openai"),  # the allow-list read the last "model"
        ("/v1/chat/completions", TWICE_NESTED, "openai"),  # nested: a file id checked as one, relayed as two
        ("/v1/messages", TWICE_CAP, "anthropic"),  # the budget read one cap, a provider may read the other
    ],
)
def test_a_body_naming_a_member_twice_is_refused_before_any_check(server, mock, path, raw, shape):
    """Was: the body was relayed as sent while the proxy read the last of two equal names; JSON
    parsers differ on which counts, so what the allow-list, caps and file checks saw need not be
    what the provider read."""
    mock.clear()
    status, _, data = server.request(
        "POST",
        path,
        raw=raw,
        headers={**server.auth("mini"), "content-type": "application/json"},
    )
    answer = json.loads(data)
    assert status == 400 and mock.requests == []
    if shape == "anthropic":
        assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    else:
        assert answer["error"]["code"] == "duplicate_key"
    assert "twice" in json.dumps(answer)


def test_tpm_counts_the_tokens_of_a_failed_attempt_the_provider_billed(server, mock):
    """Was: the window was corrected to the last attempt's usage only, so tokens a failed attempt
    used (and reported) before a fallback answered were never counted against the key's tpm."""
    made = server.cli("keys", "create", "--name", "tpm-attempts", "--tpm", "20000")
    assert made.returncode == 0, made.stderr
    auth = {"Authorization": f"Bearer {made.stdout.strip()}"}
    wait_for(lambda: server.request("GET", "/v1/models", headers=auth)[0] == 200, what="the new key")
    body = chat("gpt-4o-mini")  # about 31 tokens at admission; the mock's answers use 17
    billed = {"prompt_tokens": 19_980, "completion_tokens": 0, "total_tokens": 19_980}
    mock.enqueue(Reply(status=500, json={"error": {"message": "boom", "type": "server_error"}, "usage": billed}))
    status, headers, _ = server.request("POST", "/v1/chat/completions", body, headers=auth)
    assert status == 200, "the fallback answered"
    traced = server.trace(headers["x-stockyard-trace-id"])  # traced after the window's correction
    assert traced["attempt"] == 2
    status, _, data = server.request("POST", "/v1/chat/completions", body, headers=auth)
    assert status == 429, "19,980 + 17 counted: no room for another 31"
    mock.clear_replies()


def test_an_end_users_budget_holds_a_dearer_fallback_too(server, mock):
    """Was: only the key's and project's budgets held a dearer fallback's worst case; under an end
    user's budget alone a fallback from gpt-4o-mini to gpt-4o could cost 16× what was held."""
    body = {**chat("gpt-4o-mini"), "max_tokens": 150_000}  # $0.09 at gpt-4o-mini, $1.50 at gpt-4o
    assert after_a_failure(server, mock, "plain", body, user="frank") == (500, ["gpt-4o-mini"]), (
        "frank's $1 cannot hold gpt-4o's worst case"
    )
    body["max_tokens"] = 50_000  # $0.50 at gpt-4o: it fits
    assert after_a_failure(server, mock, "plain", body, user="frank") == (200, ["gpt-4o-mini", "gpt-4o"])
    mock.clear_replies()


@pytest.mark.parametrize(
    "who, user, model",
    [
        ("budgeted", None, "gpt-5-pro"),  # $5: 272,000 output tokens at $120/M is $32.64 (4,096 was $0.49)
        ("plain", "gina", "gpt-5"),  # an end user's $1: 128,000 at $10/M is $1.28 (4,096 was $0.04)
    ],
)
def test_a_request_without_an_output_cap_holds_the_models_own_ceiling(server, mock, who, user, model):
    """Was: a request that set no max_tokens held STOCKYARD_DEFAULT_MAX_TOKENS (4,096) of output,
    but OpenAI writes up to the model's ceiling then, so each request in flight could pass the
    budget by up to 30× what it held. Now the price table's max_output_tokens is held."""
    headers = {**server.auth(who), **({"x-stockyard-user": user} if user else {})}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    mock.clear()
    status, _, raw = server.request("POST", "/v1/chat/completions", body, headers=headers)
    assert status == 429 and json.loads(raw)["error"]["code"] == "budget_exceeded", raw
    assert mock.requests == []
    status, _, raw = server.request("POST", "/v1/chat/completions", {**body, "max_tokens": 1000}, headers=headers)
    assert status == 200, raw  # a cap the budget can hold: served


def test_images_named_by_url_are_held_at_the_models_largest_image(server, mock):
    """Was: an image by URL counted as its URL's bytes (~15 tokens), but gpt-4o-mini bills an
    image at up to 48,169 tokens: 800 of them are $5.78 against a $5 budget, held as $0.002."""

    def body(images: int) -> dict:
        parts = [{"type": "image_url", "image_url": {"url": f"https://example.com/{i}.png"}} for i in range(images)]
        return {**chat("gpt-4o-mini"), "messages": [{"role": "user", "content": parts}]}

    mock.clear()
    status, _, answer = post(server, "budgeted", "/v1/chat/completions", body(800))
    assert status == 429 and answer["error"]["code"] == "budget_exceeded", answer
    assert mock.requests == []
    assert post(server, "budgeted", "/v1/chat/completions", body(100))[0] == 200  # $0.72: it fits


def test_a_web_search_tool_holds_its_searches_against_the_budget(server, mock):
    """Was: Anthropic bills each search of its web_search tool ($0.01) and the budget held only
    the tokens: a request allowing 600 searches ($6) got past a $5 budget."""
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 600}
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    mock.clear()
    status, _, answer = post(server, "budgeted", "/v1/messages", {**body, "tools": [tool]})
    assert status == 429 and answer["error"]["type"] == "rate_limit_error", answer
    assert answer["error"]["details"] == {"error_code": "budget_exceeded"}, answer
    assert mock.requests == []
    assert post(server, "budgeted", "/v1/messages", {**body, "tools": [{**tool, "max_uses": 5}]})[0] == 200


@pytest.mark.parametrize(
    "extra",
    [
        {"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "x"}]},
        {"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
        {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 3}]},
    ],
)
def test_provider_run_tools_a_budget_cannot_bound_are_refused_under_one(server, mock, extra):
    """Was: the MCP connector, code execution and a web fetch without bounds held nothing for what
    the provider fetches or runs: a request holding cents could cost dollars."""
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **extra}
    mock.clear()
    status, _, answer = post(server, "budgeted", "/v1/messages", body)
    assert status == 403 and answer["error"]["type"] == "permission_error", answer
    assert "server_tool" in json.dumps(answer) or "cannot be enforced" in answer["error"]["message"]
    assert mock.requests == []
