"""Every item Anthropic bills is billed, on every route: review 44.

Anthropic bills more than input and output tokens, and its answers say so in ``usage``: cache
writes split by TTL (``cache_creation``: 5-minute at 1.25x the input rate, 1-hour at 2x), cache
reads (0.1x), web searches (``server_tool_use.web_search_requests``: $10 per 1,000), web fetches
(``web_fetch_requests``: free, only the fetched tokens cost), the speed and the geography that
served it (``speed: "fast"``: Opus 4.6 at 6x; ``inference_geo: "us"``: 1.1x from Opus 4.6 on), and
the prompt length (Sonnet 4 and 4.5 above 200k prompt tokens, cache reads and writes counted: every
token at the long-context rates, $6 / $22.50; Sonnet 4.6 and Opus 4.6 bill their whole 1M window
at the standard rates since 2026-03-13). A Message Batch bills its tokens at half price.

For each item, an Anthropic answer carrying it (whole and streamed) reaches Stockyard on the native
``/v1/messages`` route and through the OpenAI chat and Responses translations, and in a Message
Batch's results; the trace's ``cost_uc`` must be the one computed here by hand from Anthropic's
published rates (written out below, not read from prices.json), one rounding, half up. Budgets hold
the worst case a request can know beforehand: a web search tool's ``max_uses`` searches, a 1-hour
cache mark's 2x write rate, the long-context tier's rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import MESSAGE_BATCHES, Reply

ADMIN = "admin-key-for-review44-anthropic-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789REVIEW44ANTHROPIC"
HAIKU, SONNET45, SONNET46, OPUS46 = "claude-haiku-4-5", "claude-sonnet-4-5", "claude-sonnet-4-6", "claude-opus-4-6"
TEXT_PIECES = ["The answer ", "is forty-two, ", "as computed."]
TEXT = "".join(TEXT_PIECES)

# Anthropic's published rates, USD per 1M tokens: input, 5-minute cache write, 1-hour cache write,
# cache read, output (platform.claude.com pricing: writes 1.25x and 2x the input rate, reads 0.1x)
STANDARD = {
    HAIKU: ("1", "1.25", "2", "0.10", "5"),
    SONNET45: ("3", "3.75", "6", "0.30", "15"),
    SONNET46: ("3", "3.75", "6", "0.30", "15"),
    OPUS46: ("5", "6.25", "10", "0.50", "25"),
}
# Sonnet 4.5 above 200k prompt tokens (input + cache reads + cache writes): every token at these
LONG_CONTEXT = {SONNET45: (200_000, ("6", "7.50", "12", "0.60", "22.50"))}
MODES = {"fast": Fraction(6), "us": Fraction(11, 10)}  # Opus 4.6's fast mode; US-only inference
SEARCH_UC = 1_000_000  # a web search: $10 per 1,000, a cent (10⁶ µ¢) each


@dataclass(frozen=True)
class Item:
    """One billing item: the answer's counts as Anthropic reports them, and what else its usage says."""

    name: str
    model: str
    fresh: int = 1000  # input_tokens: not cached
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0
    output: int = 500
    searches: int = 0
    fetches: int = 0  # web_fetch_requests: free
    served: dict = field(default_factory=dict)  # speed, inference_geo, service_tier as the usage says them

    @property
    def prompt(self) -> int:
        return self.fresh + self.read + self.write_5m + self.write_1h

    @property
    def mode(self) -> Fraction:
        multiple = Fraction(1)
        if self.served.get("speed") == "fast":
            multiple *= MODES["fast"]
        if self.served.get("inference_geo") == "us":
            multiple *= MODES["us"]
        return multiple


ITEMS = [
    Item("cache-writes-by-ttl", HAIKU, read=300, write_5m=700, write_1h=400),
    Item("cache-read", HAIKU, read=5000),
    Item("web-searches", HAIKU, searches=3),
    Item("web-fetches-free", HAIKU, fetches=2),
    Item("searches-and-fetches", HAIKU, searches=1, fetches=4),
    # 150k + 40k + 10k + 5k = 205k prompt tokens: above 200k, all at the long-context rates
    Item("long-context", SONNET45, fresh=150_000, read=40_000, write_5m=10_000, write_1h=5_000),
    Item("at-200k-standard", SONNET45, fresh=160_000, read=40_000),  # exactly 200k: not above
    Item("sonnet-4-6-1m-flat", SONNET46, fresh=300_000, read=100_000, write_1h=50_000),
    Item("fast-mode", OPUS46, read=300, write_1h=400, served={"speed": "fast"}),
    Item("us-only", OPUS46, read=300, write_5m=200, searches=1, served={"inference_geo": "us"}),
    Item("fast-and-us", OPUS46, served={"speed": "fast", "inference_geo": "us"}),
    Item("global-standard", OPUS46, served={"speed": "standard", "inference_geo": "global"}),
    # the tier that served it: Priority Tier is billed by commitment (no per-token rate to apply)
    Item("service-tier-priority", HAIKU, served={"service_tier": "priority"}),
]


def rates(item: Item) -> tuple[Fraction, ...]:
    model_rates = STANDARD[item.model]
    tier = LONG_CONTEXT.get(item.model)
    if tier is not None and item.prompt > tier[0]:
        model_rates = tier[1]
    return tuple(Fraction(r) for r in model_rates)


def token_cost(item: Item) -> Fraction:
    """µ¢ of the tokens, not yet rounded: each count at its published rate, times the mode's multiple."""
    fresh, write_5m, write_1h, read, output = rates(item)
    per_m = item.fresh * fresh + item.write_5m * write_5m + item.write_1h * write_1h + item.read * read
    return (per_m + item.output * output) * 100 * item.mode  # tokens × USD/1M × 10⁸ µ¢/USD / 10⁶


def rounded(uc: Fraction) -> int:
    return int(uc + Fraction(1, 2))  # half up


def hand_cost(item: Item, batch: bool = False) -> int:
    """µ¢: the tokens (half in a batch) rounded once, and the web searches a cent each (whole in a
    batch: Anthropic's batch discount is on tokens)."""
    return rounded(token_cost(item) * (Fraction(1, 2) if batch else 1)) + item.searches * SEARCH_UC


def test_the_hand_computation_itself():
    # long context: 150k × 6 + 10k × 7.50 + 5k × 12 + 40k × 0.60 + 500 × 22.50
    # = 900_000 + 75_000 + 60_000 + 24_000 + 11_250 = 1_070_250 $/1M → × 100 µ¢
    assert hand_cost(ITEMS[5]) == 107_025_000
    # at 200k, the standard rates: 160k × 3 + 40k × 0.30 + 500 × 15 = 499_500 → 49_950_000 µ¢
    assert hand_cost(ITEMS[6]) == 49_950_000
    # fast mode: (1000 × 5 + 300 × 0.50 + 400 × 10 + 500 × 25) × 6 = 21_650 × 6 = 129_900 → 12_990_000
    assert hand_cost(ITEMS[8]) == 12_990_000
    # US-only: (5000 + 150 + 1250 + 12_500) × 1.1 = 20_790 → 2_079_000 µ¢, and a search's cent
    assert hand_cost(ITEMS[9]) == 2_079_000 + 1_000_000
    # a batch halves the tokens: cache writes by TTL on Haiku 4.5:
    # 1000 + 700 × 1.25 + 400 × 2 + 300 × 0.10 + 2500 = 5205 → 520_500 µ¢, half 260_250
    assert (hand_cost(ITEMS[0]), hand_cost(ITEMS[0], batch=True)) == (520_500, 260_250)


# --------------------------------------------------------------------------- Anthropic's answers


def usage_of(item: Item) -> dict:
    """The whole answer's usage, as Anthropic writes it."""
    usage: dict = {
        "input_tokens": item.fresh,
        "cache_creation_input_tokens": item.write_5m + item.write_1h,
        "cache_read_input_tokens": item.read,
        "output_tokens": item.output,
        "cache_creation": {"ephemeral_5m_input_tokens": item.write_5m, "ephemeral_1h_input_tokens": item.write_1h},
        **item.served,
    }
    if item.searches or item.fetches:
        usage["server_tool_use"] = {"web_search_requests": item.searches, "web_fetch_requests": item.fetches}
    return usage


def message(item: Item) -> dict:
    return {
        "id": "msg_r44",
        "type": "message",
        "role": "assistant",
        "model": item.model,
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage_of(item),
    }


def sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def stream(item: Item) -> list[str]:
    """message_start with the input counts and what served it (output 1), the text, message_delta
    with the output count and the server tools' requests, as Anthropic streams them."""
    usage = usage_of(item)
    start = {k: v for k, v in usage.items() if k != "server_tool_use"}
    began = {**message(item), "content": [], "stop_reason": None, "usage": {**start, "output_tokens": 1}}
    events = [sse("message_start", {"message": began})]
    events.append(sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
    for piece in TEXT_PIECES:
        events.append(sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}))
    events.append(sse("content_block_stop", {"index": 0}))
    final = {k: v for k, v in usage.items() if k in ("output_tokens", "server_tool_use")}
    events.append(sse("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": final}))
    return events + [sse("message_stop", {})]


# --------------------------------------------------------------------------- the server and its routes


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_BATCH_POLL="off",  # no background retrieves: the test's retrieve bills the batch
        STOCKYARD_MAX_BODY_BYTES=str(4_000_000),
    )
    day = ["--budget-period", "day"]
    keys = {
        "alice": [],
        "searcher": ["--budget-usd", "0.30", *day],
        "cacher": ["--budget-usd", "0.16", *day],
        "long": ["--budget-usd", "0.35", *day],
        "fetcher": ["--budget-usd", "0.40", *day],
        "batcher": ["--budget-usd", "0.30", *day],
    }
    with served(pyz_path, tmp_path_factory, "review44", env, keys, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


ROUTES = ["messages", "chat", "responses"]
HELLO = [{"role": "user", "content": "What is the answer?"}]


def call(server: ServerProcess, route: str, model: str, stream_it: bool, who: str = "alice", **extra: object):
    """The route's client request at ``model`` (``extra``: its other fields): status, body, trace id."""
    if route == "chat":
        path, body = "/v1/chat/completions", {"model": model, "messages": HELLO, "stream": stream_it}
    elif route == "messages":
        path, body = "/v1/messages", {"model": model, "max_tokens": 1000, "messages": HELLO, "stream": stream_it}
    else:
        path, body = "/v1/responses", {"model": model, "input": "What is the answer?", "stream": stream_it}
    auth = {"Authorization": f"Bearer {server.secret(who)}"}
    status, headers, data = server.request("POST", path, {**body, **extra}, headers=auth)
    return status, data, headers.get("x-stockyard-trace-id", "")


def trace(server: ServerProcess, trace_id: str) -> dict:
    def read() -> dict | None:
        status, _, data = server.request("GET", f"/api/traces/{trace_id}", headers={"Authorization": f"Bearer {ADMIN}"})
        return json.loads(data) if status == 200 else None

    found = wait_for(read, what=f"trace {trace_id}")
    return found.get("trace", found)


def billed(server: ServerProcess, mock, route: str, item: Item, stream_it: bool) -> dict:
    mock.clear_replies()
    mock.enqueue(Reply(sse=stream(item)) if stream_it else Reply(json=message(item)))
    status, data, trace_id = call(server, route, item.model, stream_it)
    assert status == 200, data[:500]
    assert TEXT_PIECES[1].encode() in data  # the answer reached the client
    row = trace(server, trace_id)
    return {name: row[name] for name in COLUMNS}


COLUMNS = ("prompt_tokens", "cached_tokens", "cache_write_tokens", "cost_uc", "cost_status", "served_mode")


def expected(item: Item) -> dict:
    return {
        "prompt_tokens": item.prompt,
        "cached_tokens": item.read,
        "cache_write_tokens": item.write_5m + item.write_1h,
        "cost_uc": hand_cost(item),
        "cost_status": "exact",
        "served_mode": served_mode(item),
    }


def served_mode(item: Item) -> str | None:
    speed, geo = item.served.get("speed"), item.served.get("inference_geo")
    named = [v for v, standard in ((speed, "standard"), (geo, "global")) if v not in (None, standard)]
    return "/".join(named) or None


MATRIX = [pytest.param(r, i, id=f"{r}-{i.name}") for r in ROUTES for i in ITEMS]


@pytest.mark.parametrize(("route", "item"), MATRIX)
def test_each_billed_item_costs_what_anthropic_bills_whole_and_streamed(server, mock, route, item):
    whole = billed(server, mock, route, item, stream_it=False)
    streamed = billed(server, mock, route, item, stream_it=True)
    assert (whole, streamed) == (expected(item), expected(item))


# --------------------------------------------------------------------------- a Message Batch's results


def batch_line(custom_id: str, item: Item) -> str:
    return json.dumps({"custom_id": custom_id, "result": {"type": "succeeded", "message": message(item)}})


def batch_usage_row(server: ServerProcess, batch_id: str) -> dict:
    def rows() -> list[dict]:
        found = server.db_rows(
            "SELECT t.cost_uc, t.cost_status, t.prompt_tokens, b.request FROM traces t"
            " LEFT JOIN trace_bodies b ON b.trace_id = t.id WHERE t.endpoint = 'message_batches.usage'"
        )
        return [r for r in found if r["request"] is not None and batch_id.encode() in inflate(r["request"])]

    found = wait_for(rows, timeout=30, what="the batch's usage row")
    assert len(found) == 1
    return found[0]


def inflate(stored: bytes) -> bytes:
    import zlib

    try:
        return zlib.decompress(stored)
    except zlib.error:
        return bytes(stored)


def ended_with(mock, batch_id: str, lines: list[str]) -> None:
    """The mock's batch ended with these result lines (as Anthropic would write them)."""
    with MESSAGE_BATCHES.lock:
        batch = MESSAGE_BATCHES.batches[batch_id]
        MESSAGE_BATCHES.results[batch_id] = lines
        counts = {"processing": 0, "succeeded": len(lines), "errored": 0, "canceled": 0, "expired": 0}
        batch.update(
            processing_status="ended",
            request_counts=counts,
            ended_at="2026-12-07T00:00:00.000000Z",
            results_url=f"{mock.url}/v1/messages/batches/{batch_id}/results",
        )


def test_a_message_batch_bills_every_item_at_half_its_token_price(server, mock):
    alice = server.anthropic("alice")
    items = [i for i in ITEMS if "fast" not in i.served.get("speed", "")]  # no fast mode in a batch
    asked = [
        {"custom_id": f"r-{n}", "params": {"model": i.model, "max_tokens": 1000, "messages": HELLO}}
        for n, i in enumerate(items)
    ]
    batch = alice.messages.batches.create(requests=asked)
    ended_with(mock, batch.id, [batch_line(f"r-{n}", i) for n, i in enumerate(items)])
    assert alice.messages.batches.retrieve(batch.id).processing_status == "ended"
    row = batch_usage_row(server, batch.id)
    # each line priced on its own (its own tier and mode), the token parts summed and halved once
    tokens = sum((token_cost(i) for i in items), Fraction(0))
    searches = sum(i.searches for i in items) * SEARCH_UC
    assert row["cost_status"] == "exact"
    assert row["cost_uc"] == rounded(tokens / 2) + searches
    assert row["prompt_tokens"] == sum(i.prompt for i in items)


def test_a_batch_line_bills_the_searches_its_content_shows(server, mock):
    # a line whose usage leaves out server_tool_use but whose content shows a search that ran: billed
    # as /v1/messages bills the same answer (``anthropic.with_searches``)
    alice = server.anthropic("alice")
    item = Item("plain", HAIKU)
    answer = message(item)
    answer["content"] = [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "answer"}},
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_1",
            "content": [{"type": "web_search_result", "url": "https://example.com/", "title": "x"}],
        },
        *answer["content"],
    ]
    batch = alice.messages.batches.create(
        requests=[{"custom_id": "s", "params": {"model": HAIKU, "max_tokens": 1000, "messages": HELLO}}]
    )
    ended_with(mock, batch.id, [json.dumps({"custom_id": "s", "result": {"type": "succeeded", "message": answer}})])
    alice.messages.batches.retrieve(batch.id)
    row = batch_usage_row(server, batch.id)
    assert row["cost_uc"] == hand_cost(item, batch=True) + SEARCH_UC


# --------------------------------------------------------------------------- budgets hold the worst case


def admitted(server: ServerProcess, mock, who: str, model: str, **extra: object) -> int:
    """The status of a request under ``who``'s budget (answered by the mock's default when admitted)."""
    mock.clear_replies()
    status, data, _ = call(server, "messages", model, False, who=who, **extra)
    if status == 429:
        assert json.loads(data)["error"]["type"] in ("rate_limit_error", "budget_exceeded"), data[:300]
    if status == 403:
        assert b"the budget on this key cannot be enforced" in data, data[:300]
    return status


def search_tool(uses: int) -> list[dict]:
    return [{"type": "web_search_20250305", "name": "web_search", "max_uses": uses}]


def test_a_budget_holds_a_web_search_tools_max_uses_searches(server, mock):
    # $0.30 left: 40 searches may cost $0.40 (tokens: under a cent) → refused; 20 ($0.20) → admitted
    assert admitted(server, mock, "searcher", HAIKU, tools=search_tool(40), max_tokens=100) == 429
    assert admitted(server, mock, "searcher", HAIKU, tools=search_tool(20), max_tokens=100) == 200


def fetch_tool(uses: int, tokens: int | None) -> list[dict]:
    tool = {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": uses}
    return [{**tool, "max_content_tokens": tokens}] if tokens else [tool]


def test_a_budget_holds_a_web_fetch_tools_pages_as_input_and_refuses_an_unbounded_one(server, mock):
    # a fetch is free, its pages are input: 4 × 100k tokens at Haiku 4.5's dearest input rate (a
    # 5-minute write, $1.25/1M) is $0.50, above the $0.40 budget; 2 pages ($0.25) are under it
    assert admitted(server, mock, "fetcher", HAIKU, tools=fetch_tool(4, 100_000), max_tokens=100) == 429
    assert admitted(server, mock, "fetcher", HAIKU, tools=fetch_tool(2, 100_000), max_tokens=100) == 200
    # pages of any size: nothing bounds it (403, permission_error in Anthropic's shape)
    assert admitted(server, mock, "fetcher", HAIKU, tools=fetch_tool(2, None), max_tokens=100) == 403


def cached_prompt(ttl: str | None) -> list[dict]:
    """A ~100k-token prompt (400,000 bytes) marked for the cache, with ``ttl`` when given."""
    mark: dict = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    text = "word " * 80_000
    return [{"role": "user", "content": [{"type": "text", "text": text, "cache_control": mark}]}]


def test_a_budget_holds_a_one_hour_cache_mark_at_twice_the_input_rate(server, mock):
    # Haiku 4.5, ~100k input tokens: held at the 5-minute write rate ($1.25/1M) ~$0.125, under the
    # $0.16 budget; at the 1-hour rate ($2/1M) ~$0.20, above it
    assert admitted(server, mock, "cacher", HAIKU, messages=cached_prompt("1h"), max_tokens=100) == 429
    assert admitted(server, mock, "cacher", HAIKU, messages=cached_prompt(None), max_tokens=100) == 200


def test_a_budget_holds_a_prompt_that_may_pass_200k_at_the_long_context_rates(server, mock):
    # ~75k tokens at four bytes a token, but up to 300k at a byte a token: Sonnet 4.5 may bill them all
    # at its long-context rates ($7.50/1M 5-minute writes, the dearest input: ~$0.56, above the $0.35
    # budget); Sonnet 4.6 bills its whole 1M window at its standard rates ($3.75/1M: ~$0.28, under it)
    prompt = [{"role": "user", "content": "word " * 60_000}]
    assert admitted(server, mock, "long", SONNET45, messages=prompt, max_tokens=100) == 429
    assert admitted(server, mock, "long", SONNET46, messages=prompt, max_tokens=100) == 200


def test_a_message_batch_is_held_its_requests_searches_whole(server, mock):
    # a batch halves tokens, not the search fee: 40 searches ($0.40) pass the $0.30 budget, 20 do not
    def create(uses: int) -> int:
        params = {"model": HAIKU, "max_tokens": 100, "messages": HELLO, "tools": search_tool(uses)}
        status, _, data = server.request(
            "POST",
            "/v1/messages/batches",
            {"requests": [{"custom_id": "s", "params": params}]},
            headers={"x-api-key": server.secret("batcher"), "anthropic-version": "2023-06-01"},
        )
        assert status in (200, 429), data[:300]
        return status

    assert create(40) == 429
    assert create(20) == 200
