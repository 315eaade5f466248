"""Review 21: Anthropic's Messages API through Stockyard as an accountant and an attacker — one
ordinary client key (a small budget) passed through to an Anthropic provider and translated,
against the built pyz and the mock upstream, with the official ``anthropic`` SDK as the client.

Found and fixed: fast mode (``speed``) and US-only inference (``inference_geo``) held and billed at
the standard rates under a budget (``/v1/messages`` and message batches); a message batch's web
searches held and billed at half price; a long-context tier's rates chosen from the body at four
bytes a token; a compaction step's tokens (``usage.iterations``) never billed, and compaction not
held. Checked and sound: translated routes never carry a dearer mode to Claude; standard values pass.

Each test names the hole it closes and failed on the code it was written against, but those of
what was checked sound (standard values, clearing edits, the translated routes), which passed before too.
"""

from __future__ import annotations

import json

import anthropic
import pytest
from conftest import ServerProcess, mock_env, served

from stockyard.batch_costs import BatchTotal, anthropic_usage_of
from stockyard.pricing import WEB_SEARCH_UC, PriceTable

OPUS = "claude-opus-4-6"  # fast mode and inference_geo both apply to it


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-review21", ANTHROPIC_BASE_URL=mock.url)
    keys = {
        "budgeted": ["--budget-usd", "5", "--budget-period", "day"],
        "dime": ["--budget-usd", "0.08", "--budget-period", "day"],
        "dollar": ["--budget-usd", "1", "--budget-period", "day"],
        "open": [],
    }
    with served(pyz_path, tmp_path_factory, "attack21", env, keys) as srv:
        yield srv


def create(server: ServerProcess, extra: dict, beta: str | None = None, model: str = OPUS) -> anthropic.types.Message:
    """One small Messages call with the budgeted key, ``extra`` added to its body."""
    client = server.anthropic("budgeted")
    headers = {"anthropic-beta": beta} if beta else None
    return client.messages.create(
        model=model,
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
        extra_body=extra,
        extra_headers=headers,
    )


@pytest.mark.parametrize(
    "extra, beta, param, model",
    [
        ({"speed": "fast"}, "fast-mode-2026-02-01", "speed", "claude-opus-5-5"),  # its multiple: not published
        ({"inference_geo": "us"}, None, "inference_geo", "claude-haiku-4-5"),  # 1.1x from Opus 4.6 on only
    ],
)
def test_a_budgeted_key_cannot_ask_claude_for_a_dearer_mode(server, mock, extra, beta, param, model):
    """``speed: "fast"`` (fast mode) and ``inference_geo: "us"`` bill every token at a multiple of the
    price table's rates: passed through untouched, a budgeted key's request was held and billed at
    the standard rate — a $5 budget spent six times over on fast mode. A budget refuses them before
    the provider is asked where the table has no price for the mode (where it has, they are held
    and billed at it: tests/test_mode_billing.py)."""
    before = len(mock.requests)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        create(server, extra, beta, model)
    error = refused.value.body["error"]
    assert refused.value.status_code == 403 and param in error["message"], error
    assert refused.value.body["type"] == "error"
    assert len(mock.requests) == before


@pytest.mark.parametrize("extra", [{"speed": "standard"}, {"inference_geo": "global"}, {}])
def test_the_standard_mode_still_passes_a_budget(server, mock, extra):
    """The standard speed and the global geo are the price table's rates: a budget lets them through."""
    message = create(server, extra)
    assert message.content and mock.last("/v1/messages").json.get("model") == OPUS


@pytest.mark.parametrize(
    "model, extra", [("claude-opus-5-5", {"speed": "fast"}), ("claude-haiku-4-5", {"inference_geo": "us"})]
)
def test_a_message_batch_cannot_carry_a_dearer_mode_past_a_budget(server, mock, model, extra):
    """A message batch's requests are Messages requests: one with ``inference_geo: "us"`` (or fast
    mode) was held and billed at the batch rate of the standard price though Anthropic bills it at a
    multiple. A mode without a price is refused as ``/v1/messages`` refuses it, naming the request,
    before the provider is asked (a priced one is held and billed at its rate: test_review28)."""
    client = server.anthropic("budgeted")
    params = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **extra}
    before = len(mock.requests)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.batches.create(requests=[{"custom_id": "a", "params": params}])
    error = refused.value.body["error"]
    assert f"requests.0.params.{next(iter(extra))}" in error["message"], error
    assert len(mock.requests) == before


def test_a_message_batchs_web_searches_are_billed_whole():
    """A message batch halves token prices; Anthropic states no discount on its web search fee (as
    OpenAI states none on its tools', which batches bill whole). The searches' fee sat in the usage
    priced at the batch rate, so each search of a batch was billed half a cent."""
    usage = {"input_tokens": 1000, "output_tokens": 100, "server_tool_use": {"web_search_requests": 3}}
    line = {"custom_id": "a", "result": {"type": "succeeded", "message": {"model": "claude-haiku-4-5", "usage": usage}}}
    total = BatchTotal(anthropic_usage_of)
    table = PriceTable.load()
    total.add(json.dumps(line).encode(), lambda m, mode: table.lookup_mode(m, None, mode, "anthropic"))
    tokens = (1000 * 100_000_000 + 100 * 500_000_000) // 2 // 1_000_000  # $1/M in, $5/M out, halved: µ¢
    assert total.cost() == tokens + 3 * WEB_SEARCH_UC


def test_a_message_batch_holds_its_web_searches_whole(server, mock):
    """The hold of a batch request with a web search tool halved its searches with its tokens: ten
    searches ($0.10 at the fee) were held at $0.05, so an $0.08 budget let them start."""
    client = server.anthropic("dime")
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 10}
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "tools": [tool],
        "messages": [{"role": "user", "content": "weather?"}],
    }
    before = len(mock.requests)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.batches.create(requests=[{"custom_id": "a", "params": params}])
    assert refused.value.body["error"]["details"] == {"error_code": "budget_exceeded"}, refused.value.body
    assert len(mock.requests) == before


def test_a_prompt_that_may_pass_the_long_context_threshold_is_held_at_the_tier(server, mock):
    """The hold picked Claude's long-context tier from the body at four bytes a token, but Claude's
    tokenizer writes English at about 3.5 (and can spend a token on a byte): this 780 KB prompt was
    held as 195,000 tokens at Sonnet 4.5's standard rates (~$0.73) on a $1 budget, while Anthropic
    counts some 220,000 and bills every token at the tier's — input twice, output 1.5x (~$1.40).
    A prompt whose bytes may be more tokens than the threshold is held at the tier's rates."""
    client = server.anthropic("dollar")
    text = "the quick brown fox jumps over the lazy dog " * 17_700  # ~780 KB: 195k tokens at 4 bytes
    before = len(mock.requests)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=1, messages=[{"role": "user", "content": text}])
    assert refused.value.body["error"]["details"] == {"error_code": "budget_exceeded"}, refused.value.body
    assert len(mock.requests) == before


def test_a_compaction_step_is_billed(server, mock):
    """Server-side compaction (``compact_20260112``) summarises the conversation in a sampling step of
    its own, billed by Anthropic but left out of the top-level usage: only ``usage.iterations``
    counts it. Stockyard read the top-level alone, so the summary step — here 180,000 input and 3,500
    output tokens — cost nothing in the trace."""
    client = server.anthropic("open")
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"context_management": {"edits": [{"type": "compact_20260112"}]}},
        extra_headers={"anthropic-beta": "compact-2026-01-12"},
    )
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (180_000 + 12, 3_500 + 5), trace
    # $1 per 1M input and $5 per 1M output on Haiku 4.5: 180,012 × 100 + 3,505 × 500 µ¢
    assert trace["cost_uc"] == 180_012 * 100 + 3_505 * 500, trace


def test_a_budget_refuses_compaction_it_cannot_hold(server, mock):
    """A compaction step reads the whole prompt once more and writes a summary no ``max_tokens``
    bounds (and a server tool loop may compact more than once), but the hold counted the prompt once
    and the answer's cap: a budgeted key's request was held at less than it may cost. Refused under a
    budget, as code execution is, before the provider is asked."""
    client = server.anthropic("budgeted")
    before = len(mock.requests)
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"context_management": {"edits": [{"type": "compact_20260112"}]}},
            extra_headers={"anthropic-beta": "compact-2026-01-12"},
        )
    error = refused.value.body["error"]
    assert "context_management" in error["message"] and "compact_20260112" in error["message"], error
    assert len(mock.requests) == before


def test_context_edits_that_only_clear_still_pass_a_budget(server, mock):
    """Clearing old tool results or thinking (``clear_tool_uses_…``) only makes the prompt smaller."""
    client = server.anthropic("budgeted")
    message = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    )
    assert message.content


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_a_dearer_mode_never_rides_a_translation_to_claude(server, mock, path):
    """The OpenAI-shaped routes build Claude's request field by field: ``speed`` and ``inference_geo``
    sent there reach Claude neither as sent nor at all (a 400 naming them, or left out)."""
    body = {"model": "claude-haiku-4-5", "speed": "fast", "inference_geo": "us", "max_tokens": 16}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"input": "hi"})
    if "responses" in path:
        body["max_output_tokens"] = body.pop("max_tokens")
    mock.clear()
    status, _, raw = server.request("POST", path, body, headers=server.auth("open"))
    sent = [c.json for c in mock.requests if c.path.endswith("/v1/messages")]
    assert status == 400 or (status == 200 and sent), (status, raw[:300])
    assert all("speed" not in s and "inference_geo" not in s for s in sent), sent
