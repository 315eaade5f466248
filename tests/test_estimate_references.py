"""The parts of a budget's worst case a body names without carrying them: images and files by
reference (URL, file id), each at the model's largest image since their bytes are not in the
body the estimate counts, and the searches a web search tool allows."""

from __future__ import annotations

import json

import pytest

from stockyard.estimate import IMAGE_INPUT_TOKENS, image_tokens, referenced_images
from stockyard.pricing import PriceTable

URL = "https://example.com/cat.png"
INLINE = "data:image/png;base64,iVBORw0KGgo="


def count(body: dict) -> int:
    return referenced_images(body, json.dumps(body).encode())


@pytest.mark.parametrize(
    "parts, expected",
    [
        ([{"type": "image_url", "image_url": {"url": URL}}], 1),  # chat
        ([{"type": "image_url", "image_url": {"url": INLINE}}], 0),  # inline: its bytes are counted
        ([{"type": "input_image", "image_url": URL}, {"type": "input_image", "file_id": "file-1"}], 2),  # Responses
        ([{"type": "input_image", "image_url": INLINE}], 0),
        ([{"type": "input_file", "file_id": "file-1"}, {"type": "input_file", "file_data": "JVBERi0="}], 1),
        ([{"type": "file", "file": {"file_id": "file-1"}}], 1),  # chat, a PDF
        ([{"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}}], 0),
        ([{"type": "image", "source": {"type": "url", "url": URL}}], 1),  # Anthropic
        ([{"type": "document", "source": {"type": "file", "file_id": "file_1"}}], 1),
        ([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}], 0),
        ([{"type": "text", "text": "image"}, {"type": "text", "text": "an image_url"}], 0),  # words, not parts
    ],
)
def test_parts_by_reference_are_counted_inline_ones_are_not(parts, expected):
    assert count({"model": "m", "messages": [{"role": "user", "content": parts}]}) == expected


def test_gemini_file_parts_are_counted():
    body = {
        "contents": [{"parts": [{"text": "what is this"}, {"fileData": {"fileUri": URL, "mimeType": "image/png"}}]}]
    }
    assert count(body) == 1
    assert count({"contents": [{"parts": [{"file_data": {"file_uri": URL}}]}]}) == 1
    assert count({"contents": [{"parts": [{"inlineData": {"data": "iVBO", "mimeType": "image/png"}}]}]}) == 0


def test_each_image_costs_the_models_largest():
    table = PriceTable.load()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": URL}}] * 3}]}
    raw = json.dumps(body).encode()
    assert image_tokens(body, raw, table.lookup("gpt-4o-mini", "openai")) == 3 * 48_169  # 8 tiles at 2,833 + 5,667
    assert image_tokens(body, raw, table.lookup("gpt-4o", "openai")) == 3 * IMAGE_INPUT_TOKENS


def test_web_search_tools_hold_their_max_uses():
    from stockyard.estimate import WEB_SEARCHES_UNCAPPED, web_searches

    search = {"type": "web_search_20250305", "name": "web_search"}
    function = {"name": "lookup", "input_schema": {"type": "object"}}
    assert web_searches({"tools": [function]}) == 0
    assert web_searches({"tools": [{**search, "max_uses": 3}, function]}) == 3
    assert web_searches({"tools": [search]}) == WEB_SEARCHES_UNCAPPED  # no limit of its own
    assert web_searches({"tools": [{**search, "max_uses": "3"}]}) == WEB_SEARCHES_UNCAPPED
    assert web_searches({"tools": "web_search"}) == 0


def test_provider_run_tools_whose_cost_nothing_bounds_are_named():
    from stockyard.estimate import fetched_tokens, unbounded_server_tools

    fetch = {"type": "web_fetch_20250910", "name": "web_fetch"}
    assert unbounded_server_tools({"tools": [{"name": "lookup", "input_schema": {}}]}) is None
    assert "mcp_servers" in unbounded_server_tools({"mcp_servers": [{"type": "url", "url": URL, "name": "x"}]})
    assert "container hour" in unbounded_server_tools({"tools": [{"type": "code_execution_20250825"}]})
    assert "max_content_tokens" in unbounded_server_tools({"tools": [{**fetch, "max_uses": 5}]})
    assert "max_content_tokens" in unbounded_server_tools(
        {"tools": [{**fetch, "max_uses": "5", "max_content_tokens": 9}]}
    )
    bounded = {"tools": [{**fetch, "max_uses": 5, "max_content_tokens": 20_000}]}
    assert unbounded_server_tools(bounded) is None and fetched_tokens(bounded) == 100_000
    assert unbounded_server_tools({"mcp_servers": []}) is None  # an empty list calls nothing


def test_a_bounded_web_fetch_is_held_as_input():
    from stockyard.context import RequestContext
    from stockyard.errors import ANTHROPIC
    from stockyard.estimate import request_cost

    price = PriceTable.load().lookup("claude-haiku-4-5", "anthropic")
    body = {"model": "claude-haiku-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "read"}]}
    fetch = {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 10, "max_content_tokens": 100_000}

    def cost(b: dict) -> int:
        ctx = RequestContext("messages", ANTHROPIC, "127.0.0.1", {})
        ctx.body, ctx.raw = b, json.dumps(b).encode()
        return request_cost(ctx, price, 4096)

    # a million fetched tokens at Haiku 4.5's dearest input rate ($1.25 a cache write): about $1.25 more
    assert cost({**body, "tools": [fetch]}) - cost(body) >= 1_000_000 * 125_000_000 // 10**6


@pytest.mark.parametrize(
    ("dialect", "endpoint", "marks"),
    [
        ("anthropic", "messages", {"cache_control": {"type": "ephemeral", "ttl": "1h"}}),
        ("openai", "chat", {"prompt_cache_retention": "24h"}),
    ],
)
def test_a_long_lived_cache_write_is_held_at_its_rate(dialect: str, endpoint: str, marks: dict) -> None:
    """Was: the hold took a 5-minute write (1.25× input) as the dearest input, while a 1-hour write
    (asked by ``ttl: 1h``, or by ``prompt_cache_retention: 24h``, which Stockyard turns into 1-hour
    marks) bills 2×: a budget could be overrun by the difference on every request in flight."""
    from stockyard.context import RequestContext
    from stockyard.estimate import request_cost

    price = PriceTable.load().lookup("claude-haiku-4-5", "anthropic")  # $1 input, $1.25 5-minute write
    prompt = "word " * 20_000
    body = {"model": "claude-haiku-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": prompt}]}

    def cost(b: dict) -> int:
        ctx = RequestContext(endpoint, dialect, "127.0.0.1", {})
        ctx.body, ctx.raw = b, json.dumps(b).encode()
        return request_cost(ctx, price, 4096)

    short, long = cost(body), cost({**body, **marks})
    assert long >= short * 1.55  # the input part at 2× instead of 1.25× (1.6× but for the one output token)
