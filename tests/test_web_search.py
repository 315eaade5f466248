"""Web search on Claude through the translated APIs, with the official openai SDK as client.

Chat Completions ``web_search_options`` and a Responses ``web_search`` tool become Anthropic's
web search server tool; Claude's searches (``server_tool_use``), their results and the
citations of its text come back as chat ``annotations`` and Responses ``web_search_call`` items
and ``url_citation`` annotations; each search is billed and held against budgets. The mock
answers a ``claude-*-websearch`` model that has a web search tool with two searches and two
cited text blocks, as Anthropic does (plain and streamed). Gemini keeps a 400 naming the field.
"""

from __future__ import annotations

import json

import openai
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, SEARCH_QUERIES, SEARCH_RESULTS, SEARCH_TEXTS, MockUpstream

from stockyard.pricing import WEB_SEARCH_UC

MODEL = "claude-haiku-4-5-websearch"
PRICED = [MODEL, *(f"{MODEL}-{i}" for i in range(8))]
RATES = (100_000_000, 200_000_000)  # µ¢ per 1M tokens: `prices set --input 1 --output 2`
BUDGETED = "budgeted-searches"
TEXT = "".join(SEARCH_TEXTS)
CITED = SEARCH_TEXTS[2:4]  # the two text blocks Claude cites, one result each
LOCATION = {"city": "Paris", "region": "Ile-de-France", "country": "FR", "timezone": "Europe/Paris"}
FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdefWEBSEARCH",
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY="AIza-test-0123456789abcdefGEMINI",
        GEMINI_BASE_URL=mock.url,
    )
    prices = [("prices", "set", model, "--input", "1", "--output", "2") for model in PRICED]
    keys = {"plain": [], BUDGETED: ["--budget-usd", "0.05", "--budget-period", "day"]}
    with served(pyz_path, tmp_path_factory, "websearch", env, keys, cli=prices) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai("plain")


def sent(mock: MockUpstream, model: str) -> dict:
    """The last Messages request the mock got for ``model``."""
    found = [r for r in mock.requests if r.path == "/v1/messages" and (r.json or {}).get("model") == model]
    assert found, f"no request for {model}"
    return found[-1].json


def ask(text: str = "weather in Paris?") -> list[dict]:
    return [{"role": "user", "content": text}]


def token_cost() -> int:
    return -(-(PROMPT_TOKENS * RATES[0] + COMPLETION_TOKENS * RATES[1]) // 1_000_000)


def cited_ranges() -> list[tuple[int, int]]:
    """Where the cited blocks sit in the whole answer text."""
    start = TEXT.index(CITED[0])
    return [(start, start + len(CITED[0])), (start + len(CITED[0]), start + len(CITED[0]) + len(CITED[1]))]


# --------------------------------------------------------------------------- chat completions


@pytest.mark.parametrize("stream", [False, True])
def test_chat_web_search_answers_with_url_citations_and_bills_each_search(server, client, mock, stream):
    model = f"{MODEL}-{int(stream)}"
    options = {"search_context_size": "low", "user_location": {"type": "approximate", "approximate": LOCATION}}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=ask(), web_search_options=options, stream=stream
    )
    if stream:
        chunks = list(raw.parse())
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        content = "".join(d.content or "" for d in deltas)
        annotations = [a for d in deltas for a in (d.model_extra or {}).get("annotations") or []]
        assert [a.pop("index") for a in annotations] == [0, 1]  # so the SDK's stream helper collects them
        searches = [s for d in deltas for s in (d.model_extra or {}).get("web_search_calls") or []]
        assert [s["index"] for s in searches] == [0, 1]
        assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "stop"
    else:
        message = raw.parse().choices[0].message
        content = message.content
        annotations = [a.model_dump() for a in message.annotations]
        searches = message.model_extra["web_search_calls"]
    assert content == TEXT  # the search blocks are not text
    assert [s["query"] for s in searches] == SEARCH_QUERIES
    assert [s["id"] for s in searches] == ["srvtoolu_mock1", "srvtoolu_mock2"]
    assert [s["sources"] for s in searches] == [[{"type": "url", "url": r["url"]}] for r in SEARCH_RESULTS]
    assert annotations == [
        {
            "type": "url_citation",
            "url_citation": {"url": result["url"], "title": result["title"], "start_index": a, "end_index": b},
        }
        for result, (a, b) in zip(SEARCH_RESULTS, cited_ranges())
    ]
    for (a, b), cited in zip(cited_ranges(), CITED):
        assert content[a:b] == cited
    body = sent(mock, model)
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3, "user_location": {}}
    tool["user_location"] = {"type": "approximate", **LOCATION}
    assert body["tools"] == [tool]
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["cost_status"] == "exact"
    assert trace["cost_uc"] == token_cost() + len(SEARCH_QUERIES) * WEB_SEARCH_UC  # a cent a search


def test_an_answer_sent_back_to_an_openai_model_loses_the_searches(client, mock):
    """The message as the SDK gives it (``model_dump``) goes on to GPT: OpenAI's chat API refuses
    message fields it does not know, so ``web_search_calls`` stays behind; to Claude it is not sent."""
    message = client.chat.completions.create(model=f"{MODEL}-7", messages=ask(), web_search_options={})
    history = [*ask(), message.choices[0].message.model_dump(exclude_none=True), *ask("and tomorrow?")]
    client.chat.completions.create(model="gpt-4o-mini", messages=history)
    assert "web_search_calls" not in json.dumps(mock.last("/v1/chat/completions").json["messages"])
    client.chat.completions.create(model=f"{MODEL}-7", messages=history)
    assert "web_search_calls" not in json.dumps(sent(mock, f"{MODEL}-7")["messages"])


def test_the_sdks_chat_stream_helper_collects_the_annotations(client):
    with client.chat.completions.stream(model=f"{MODEL}-1", messages=ask(), web_search_options={}) as stream:
        message = stream.get_final_completion().choices[0].message
    assert message.content == TEXT
    cited = [
        (a.url_citation.url, message.content[a.url_citation.start_index : a.url_citation.end_index])
        for a in message.annotations
    ]
    assert cited == [(r["url"], text) for r, text in zip(SEARCH_RESULTS, CITED)]
    assert [s["query"] for s in message.model_extra["web_search_calls"]] == SEARCH_QUERIES


@pytest.mark.parametrize(
    "options, uses",
    [({}, 5), ({"search_context_size": "medium"}, 5), ({"search_context_size": "high"}, 10)],
)
def test_search_context_size_caps_the_searches(client, mock, options, uses):
    model = f"{MODEL}-size-{uses}-{len(options)}"
    client.chat.completions.create(model=model, messages=ask(), web_search_options=options)
    assert sent(mock, model)["tools"] == [{"type": "web_search_20250305", "name": "web_search", "max_uses": uses}]


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_calls_keep_their_indices_beside_searches(client, mock, stream):
    """Claude searched twice, then called the client's function: its call is tool_calls[0]; the
    search tool goes after the client's tools."""
    model = f"{MODEL}-tools-{int(stream)}"
    kwargs = dict(model=model, messages=ask(), tools=[FUNCTION], web_search_options={})
    if stream:
        calls = [
            call
            for chunk in client.chat.completions.create(**kwargs, stream=True)
            for choice in chunk.choices
            for call in choice.delta.tool_calls or []
        ]
        assert {c.index for c in calls} == {0}
        assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"city": "Paris"}
    else:
        message = client.chat.completions.create(**kwargs).choices[0].message
        assert [c.function.name for c in message.tool_calls] == ["get_weather"]
        assert message.content == TEXT
    assert [t.get("type", "function") for t in sent(mock, model)["tools"]] == ["function", "web_search_20250305"]


@pytest.mark.parametrize(
    "options, param",
    [
        ({"search_context_size": "huge"}, "web_search_options.search_context_size"),
        ({"filters": {"allowed_domains": ["example.com"]}}, "web_search_options.filters"),
        ({"user_location": {"type": "exact", "exact": {}}}, "web_search_options.user_location"),
        (
            {"user_location": {"type": "approximate", "approximate": {"street": "1 rue"}}},
            "web_search_options.user_location.approximate.street",
        ),
        ("yes", "web_search_options"),
    ],
)
def test_what_claude_cannot_search_with_is_400_naming_it(server, mock, options, param):
    before = len(mock.requests)
    body = {"model": f"{MODEL}-bad", "messages": ask(), "web_search_options": options}
    headers = server.auth("plain")
    status, _, raw = server.request("POST", "/v1/chat/completions", body, headers=headers)
    assert status == 400, raw
    assert json.loads(raw)["error"]["param"] == param
    assert len(mock.requests) == before


def test_a_function_named_web_search_beside_claudes_search_is_400_naming_tools(client, mock):
    """Claude's search tool is named web_search: a client function of that name would make two
    tools of one name, which Anthropic refuses without saying which."""
    before = len(mock.requests)
    named = {**FUNCTION, "function": {**FUNCTION["function"], "name": "web_search"}}
    with pytest.raises(openai.BadRequestError) as failure:
        client.chat.completions.create(model=MODEL, messages=ask(), tools=[named], web_search_options={})
    assert failure.value.body["param"] == "tools" and "'web_search'" in failure.value.body["message"]
    assert len(mock.requests) == before


def test_gemini_still_refuses_web_search_naming_the_field(client, mock):
    before = len(mock.requests)
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="gemini-2.5-flash", messages=ask(), web_search_options={})
    assert chat.value.body["param"] == "web_search_options" and "web search" in chat.value.body["message"]
    with pytest.raises(openai.BadRequestError) as responses:
        client.responses.create(model="gemini-2.5-flash", input="news?", tools=[{"type": "web_search"}])
    assert responses.value.body["param"] == "web_search_options" and "web_search" in responses.value.body["message"]
    assert len(mock.requests) == before


# --------------------------------------------------------------------------- Responses API


def check_responses_output(response, streamed: bool = False) -> None:
    """Plain: the searches, then the whole text in one message (the chat answer's order is lost);
    streamed: items in the order Claude wrote them, the text before the searches a message of its own."""
    kinds = [o.type for o in response.output]
    searched = ["web_search_call"] * len(SEARCH_QUERIES)
    assert kinds == (["message", *searched, "message"] if streamed else [*searched, "message"])
    searches = [o for o in response.output if o.type == "web_search_call"]
    assert [(s.status, s.action.type, s.action.query) for s in searches] == [
        ("completed", "search", q) for q in SEARCH_QUERIES
    ]
    assert [s.action.sources for s in searches] == [None] * len(SEARCH_QUERIES)  # not asked for
    assert all(s.id.startswith("ws_") for s in searches)
    assert response.output_text == TEXT
    parts = [p for o in response.output if o.type == "message" for p in o.content]
    annotations = [(p.text, a) for p in parts for a in p.annotations]
    assert [(a.type, a.url, a.title, text[a.start_index : a.end_index]) for text, a in annotations] == [
        ("url_citation", r["url"], r["title"], cited) for r, cited in zip(SEARCH_RESULTS, CITED)
    ]


def test_responses_web_search_plain(server, client, mock):
    model = f"{MODEL}-2"
    tool = {"type": "web_search", "search_context_size": "high", "user_location": {"type": "approximate", **LOCATION}}
    raw = client.responses.with_raw_response.create(model=model, input="weather in Paris?", tools=[tool])
    response = raw.parse()
    check_responses_output(response)
    searched = sent(mock, model)["tools"]
    assert searched == [
        {
            "type": "web_search_20250305",
            "name": "web_search",
            "max_uses": 10,
            "user_location": {"type": "approximate", **LOCATION},
        }
    ]
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["cost_uc"] == token_cost() + len(SEARCH_QUERIES) * WEB_SEARCH_UC


def test_responses_web_search_stream_through_the_sdk_helper(server, client, mock):
    model = f"{MODEL}-3"
    with client.responses.stream(model=model, input="weather?", tools=[{"type": "web_search_preview"}]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    check_responses_output(final, streamed=True)
    kinds = [e.type for e in events]
    for step in ("in_progress", "searching", "completed"):
        assert kinds.count(f"response.web_search_call.{step}") == len(SEARCH_QUERIES)
    assert kinds.count("response.output_text.annotation.added") == len(CITED)
    # each web_search_call: added, in_progress, searching, completed, done, in that order, nothing between
    for i, kind in enumerate(kinds):
        if kind == "response.web_search_call.in_progress":
            assert kinds[i - 1 : i + 4] == [
                "response.output_item.added",
                "response.web_search_call.in_progress",
                "response.web_search_call.searching",
                "response.web_search_call.completed",
                "response.output_item.done",
            ]
    added = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert [e.annotation_index for e in added] == [0, 1]
    message = final.output[added[0].output_index]
    assert [a.model_dump() for a in message.content[added[0].content_index].annotations] == [
        e.annotation.model_dump() for e in added
    ]
    assert sent(mock, model)["tools"][0]["max_uses"] == 5  # medium, OpenAI's default size


def test_responses_web_search_raw_stream_events_parse(server, client):
    tools = [{"type": "web_search"}]
    raw = client.responses.with_raw_response.create(model=f"{MODEL}-4", input="weather?", tools=tools, stream=True)
    events = list(raw.parse())
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert all(type(e).__name__ != "BaseModel" for e in events)  # every event one of the SDK's types
    check_responses_output(events[-1].response, streamed=True)
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["cost_uc"] == token_cost() + len(SEARCH_QUERIES) * WEB_SEARCH_UC  # the count from message_delta


def test_web_search_call_items_sent_back_are_accepted_and_left_out(client, mock):
    """Codex (store=false) sends every output item back: the web_search_call items are accepted,
    and only the text reaches Claude (it holds what the searches found)."""
    model = f"{MODEL}-5"
    first = client.responses.create(model=model, input="weather?", tools=[{"type": "web_search"}], store=False)
    items = [o.model_dump(exclude_none=True) for o in first.output]
    assert [i["type"] for i in items] == ["web_search_call", "web_search_call", "message"]
    client.responses.create(
        model=model, input=[{"role": "user", "content": "weather?"}, *items, {"role": "user", "content": "thanks"}]
    )
    messages = sent(mock, model)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "web_search" not in json.dumps(messages)


def test_a_stored_conversation_with_searches_continues(client, mock):
    """previous_response_id: the stored web_search_call items are history Claude does not get."""
    model = f"{MODEL}-8"
    first = client.responses.create(model=model, input="weather?", tools=[{"type": "web_search"}])
    answer = client.responses.create(model=model, previous_response_id=first.id, input="thanks")
    assert answer.status == "completed"
    messages = sent(mock, model)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [{"type": "text", "text": TEXT}]


def test_a_responses_web_search_filter_is_400_naming_it(client, mock):
    before = len(mock.requests)
    tool = {"type": "web_search", "filters": {"allowed_domains": ["example.com"]}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=f"{MODEL}-6", input="x", tools=[tool])
    assert caught.value.body["param"] == "tools[0].filters"
    assert len(mock.requests) == before


# --------------------------------------------------------------------------- budgets


def test_a_budget_holds_every_search_the_request_allows(server, mock):
    """A $0.05 budget: ten searches ($0.10) cannot be held, three ($0.03) can, for chat's
    web_search_options and a Responses web_search tool alike; nothing reaches Claude when refused."""
    headers = server.auth(BUDGETED)
    chat = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": ask()}
    responses = {"model": "claude-haiku-4-5", "max_output_tokens": 16, "input": "weather?"}
    for path, body, search in (
        ("/v1/chat/completions", chat, lambda size: {"web_search_options": {"search_context_size": size}}),
        ("/v1/responses", responses, lambda size: {"tools": [{"type": "web_search", "search_context_size": size}]}),
    ):
        before = len(mock.requests)
        status, _, raw = server.request("POST", path, {**body, **search("high")}, headers=headers)
        assert status == 429 and json.loads(raw)["error"]["code"] == "budget_exceeded", raw
        assert len(mock.requests) == before
        status, _, raw = server.request("POST", path, {**body, **search("low")}, headers=headers)
        assert status == 200, raw


def test_the_estimate_counts_the_searches_each_shape_allows():
    from stockyard.estimate import WEB_SEARCHES_UNCAPPED, web_searches

    assert web_searches({"web_search_options": {}}) == 5
    assert web_searches({"web_search_options": {"search_context_size": "low"}}) == 3
    assert web_searches({"web_search_options": {"search_context_size": "odd"}}) == WEB_SEARCHES_UNCAPPED
    assert web_searches({"tools": [{"type": "web_search", "search_context_size": "high"}]}) == 10
    assert web_searches({"tools": [{"type": "web_search_preview_2025_03_11"}]}) == 5
    assert web_searches({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}) == WEB_SEARCHES_UNCAPPED
    assert web_searches({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]}) == 2


def test_a_garbled_streamed_search_query_leaves_the_answer_whole() -> None:
    """A search whose streamed input is not JSON (cut or garbled by the provider) has no query;
    the stream goes on to its text and its end instead of failing mid-answer."""
    from test_anthropic import stream_chunks

    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    chunks = stream_chunks(
        [
            event({"type": "message_start", "message": {"id": "m", "model": "claude", "usage": {"input_tokens": 1}}}),
            event({"type": "content_block_start", "index": 0, "content_block": search}),
            event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": '{"query": "par'},
                }
            ),
            event({"type": "content_block_stop", "index": 0}),
            event({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            event({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Sunny."}}),
            event({"type": "content_block_stop", "index": 1}),
            event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
            event({"type": "message_stop"}),
        ]
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    assert [d["web_search_calls"] for d in deltas if "web_search_calls" in d] == [
        [{"index": 0, "id": "srvtoolu_1", "query": ""}]
    ]
    assert "".join(d.get("content") or "" for d in deltas) == "Sunny."
    ends = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
    assert ends == ["stop"]


def search_stream(cut: bool) -> list[bytes]:
    """Claude searches twice, a third search fails (not billed), then it answers; ``cut``: the
    stream ends before its message_delta, whose usage holds the count."""

    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    start = {"id": "m", "model": "claude", "usage": {"input_tokens": 10, "output_tokens": 1}}
    events = [event({"type": "message_start", "message": start})]
    for i, query in enumerate(["paris weather", "paris forecast"]):
        use = {"type": "server_tool_use", "id": f"srvtoolu_{i}", "name": "web_search", "input": {"query": query}}
        found = {"type": "web_search_tool_result", "tool_use_id": f"srvtoolu_{i}", "content": SEARCH_RESULTS[:1]}
        for j, block in enumerate((use, found)):
            events.append(event({"type": "content_block_start", "index": 2 * i + j, "content_block": block}))
            events.append(event({"type": "content_block_stop", "index": 2 * i + j}))
    failed = {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"}
    events.append(
        event(
            {
                "type": "content_block_start",
                "index": 4,
                "content_block": {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_x", "content": failed},
            }
        )
    )
    events.append(event({"type": "content_block_stop", "index": 4}))
    text = {"type": "text", "text": "Sunny."}
    events += [
        event({"type": "content_block_start", "index": 5, "content_block": text}),
        event({"type": "content_block_stop", "index": 5}),
    ]
    if not cut:
        usage = {"output_tokens": 9}  # a usage without its server_tool_use count
        events.append(event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}))
        events.append(event({"type": "message_stop"}))
    return events


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("cut", [False, True])
def test_searches_that_ran_are_billed_when_the_usage_does_not_count_them(native, cut) -> None:
    """A stream cut before its message_delta (a client that leaves once the text is out) or a
    usage without ``server_tool_use`` still bills each search that returned results (an error
    result is not billed), through translation and pass-through alike."""
    from stockyard.context import RequestContext
    from stockyard.providers.anthropic import AnthropicNativeStream, AnthropicToOpenAIStream

    ctx = RequestContext("messages" if native else "chat", "anthropic" if native else "openai", "127.0.0.1", {})
    translator = (AnthropicNativeStream if native else AnthropicToOpenAIStream)(ctx)
    for event in search_stream(cut):
        translator.feed(event)
    assert ctx.attempt.usage.fees_uc == 2 * WEB_SEARCH_UC


@pytest.mark.parametrize("native", [False, True])
def test_a_plain_answer_without_its_search_count_bills_each_search(native) -> None:
    from stockyard.context import RequestContext
    from stockyard.providers.anthropic import AnthropicChatAdapter, AnthropicNativeAdapter

    found = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": SEARCH_RESULTS[:1]}
    use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}
    message = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [use, found, {"type": "text", "text": "Sunny."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 9},
    }
    ctx = RequestContext("messages" if native else "chat", "anthropic" if native else "openai", "127.0.0.1", {})
    (AnthropicNativeAdapter() if native else AnthropicChatAdapter()).parse(ctx, json.dumps(message).encode())
    assert ctx.attempt.usage.fees_uc == WEB_SEARCH_UC


def test_odd_citations_from_a_provider_stay_inside_the_text() -> None:
    """A citation's title that is not a string is left empty (chat's url_citation title is one);
    indices a chat provider wrote outside its text (negative, past the end) are brought inside
    it on the Responses API, plain and streamed; a ``web_search_calls`` that is not a list is none."""
    from stockyard.providers import responses
    from stockyard.providers.anthropic import message_to_choice

    cited = {"type": "web_search_result_location", "url": "https://a.example", "title": {"nested": 1}}
    choice = message_to_choice({"content": [{"type": "text", "text": "Sunny.", "citations": [cited]}]})
    assert choice["message"]["annotations"][0]["url_citation"]["title"] == ""

    where = {"url": "https://a.example", "title": "A", "start_index": -5, "end_index": 10**30}
    annotation = {"type": "url_citation", "url_citation": where}
    message = {"role": "assistant", "content": "Sunny.", "annotations": [annotation], "web_search_calls": 7}
    chat = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    response = responses.from_chat(chat, {"model": "m"}, "resp_x", 1)
    assert [o["type"] for o in response["output"]] == ["message"]
    part = response["output"][0]["content"][0]
    assert (part["annotations"][0]["start_index"], part["annotations"][0]["end_index"]) == (0, len("Sunny."))

    stream = responses.ChatToResponsesStream({"model": "m"}, "resp_x", 1, "m")
    delta = {"content": "Sunny.", "web_search_calls": 7}
    stream.feed({"choices": [{"index": 0, "delta": delta}]})
    stream.feed({"choices": [{"index": 0, "delta": {"annotations": [annotation]}, "finish_reason": "stop"}]})
    stream.finish()
    part = stream.response["output"][0]["content"][0]
    assert (part["annotations"][0]["start_index"], part["annotations"][0]["end_index"]) == (0, len("Sunny."))


@pytest.mark.parametrize("live", [True, False])
def test_codex_web_search_tool_with_external_web_access(server, client, mock, live):
    """Codex CLI 0.171.0's search tool, ``{"type": "web_search", "external_web_access": …}`` (true with
    ``web_search = "live"`` or full access, false for its default cached search in a sandbox): true is
    what Claude's search does, live, and goes as its web search tool (it was a 400 naming the field).
    False asks for searches without the live web, which Claude's cannot do: the tool is left out and
    the trace says so (it was a 400, so Codex's default configuration failed every request)."""
    model = f"{MODEL}-codex-{live}"
    tool = {"type": "web_search", "external_web_access": live}
    raw = client.responses.with_raw_response.create(model=model, input="weather in Paris?", tools=[tool])
    assert raw.parse().status == "completed"
    note = server.trace(raw.headers["x-stockyard-trace-id"])["error_message"] or ""
    if not live:
        assert "tools" not in sent(mock, model) and "web search left out" in note and 'web_search = "live"' in note
        return
    assert "web search left out" not in note
    assert sent(mock, model)["tools"] == [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]


def test_codex_default_cached_search_on_gemini_is_left_out(server, client, mock):
    """Codex CLI's default configuration (cached search) on a Gemini model: the search is left out
    and noted, not a 400 on every request (Gemini has no web search through translation; a live
    search asked for is still a 400 naming web_search_options)."""
    model = "gemini-2.5-flash-codex-cached"
    tool = {"type": "web_search", "external_web_access": False}
    raw = client.responses.with_raw_response.create(model=model, input="weather in Paris?", tools=[tool])
    assert raw.parse().status == "completed"
    assert "tools" not in mock.last(model).json
    assert "web search left out" in server.trace(raw.headers["x-stockyard-trace-id"])["error_message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=model, input="weather in Paris?", tools=[{"type": "web_search"}])
    assert caught.value.body["param"] == "web_search_options"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_sources_when_include_asks_for_them(client, stream):
    """Was: include ["web_search_call.action.sources"] was accepted and no sources came back."""
    ask = {"model": f"{MODEL}-4", "input": "weather?", "tools": [{"type": "web_search"}]}
    ask["include"] = ["web_search_call.action.sources"]
    if stream:
        with client.responses.stream(**ask) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**ask)
    searches = [o for o in response.output if o.type == "web_search_call"]
    assert [[src.url for src in s.action.sources] for s in searches] == [[r["url"]] for r in SEARCH_RESULTS]


def failed_search_events() -> list[bytes]:
    """Claude's search answered an error (no results; not billed), then Claude answers."""

    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    use = {"type": "server_tool_use", "id": "srvtoolu_9", "name": "web_search", "input": {"query": "paris"}}
    error = {"type": "web_search_tool_result_error", "error_code": "too_many_requests"}
    failed = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_9", "content": error}
    blocks = [use, failed, {"type": "text", "text": "I could not search."}]
    start = {"id": "m", "model": "claude", "usage": {"input_tokens": 10, "output_tokens": 1}}
    events = [event({"type": "message_start", "message": start})]
    for i, block in enumerate(blocks):
        events.append(event({"type": "content_block_start", "index": i, "content_block": block}))
        events.append(event({"type": "content_block_stop", "index": i}))
    events.append(event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}))
    return [*events, event({"type": "message_stop"})]


def test_a_failed_search_is_failed_not_completed() -> None:
    """Was: a search Claude's tool answered with an error came back as a completed search."""
    from test_anthropic import stream_chunks

    from stockyard.providers import responses
    from stockyard.providers.anthropic import message_to_choice

    chunks = stream_chunks([e.decode() for e in failed_search_events()])
    entries = [s for c in chunks if c.get("choices") for s in c["choices"][0]["delta"].get("web_search_calls") or []]
    assert entries == [{"index": 0, "id": "srvtoolu_9", "query": "paris", "status": "failed"}]
    blocks = [json.loads(e[6:])["content_block"] for e in failed_search_events() if b"content_block_start" in e]
    message = message_to_choice({"content": blocks, "stop_reason": "end_turn"})["message"]
    assert message["web_search_calls"] == [{"id": "srvtoolu_9", "query": "paris", "status": "failed"}]
    response = responses.from_chat({"choices": [{"message": message, "finish_reason": "stop"}]}, {}, "resp_x", 1)
    assert [(o["type"], o["status"]) for o in response["output"]][0] == ("web_search_call", "failed")
