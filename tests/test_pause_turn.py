"""Claude's paused turns (``stop_reason: "pause_turn"``) continued for chat and Responses clients.

A turn with web search that reaches Anthropic's server-side loop limit ends ``pause_turn``; the
documented handling is to send the request again with the answer so far, unchanged, as the
assistant's turn. A client of the Messages API does that itself (it gets the pause); a chat or
Responses client cannot, so Stockyard sends the follow-up calls and the client gets one answer:
the content, searches and citations of every call, one usage (summed), one stream; the trace
costs each call priced on its own, summed. Past ``proxy.MAX_CONTINUATIONS`` follow-ups, or when
the request's budget cannot hold another call, the answer ends incomplete (``length``).

The mock pauses a ``claude-*-websearch-pauseN`` model's turn N times (``mock_upstream.paused_content``)
and refuses a continuation that does not send the paused content back as it came.
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import openai
import pytest
from conftest import ServerProcess, mock_env, served
from mock_upstream import (
    COMPLETION_TOKENS,
    PAUSED_INPUT_TOKENS,
    PROMPT_TOKENS,
    SEARCH_QUERIES,
    SEARCH_TEXTS,
    THINKING_SIGNATURE,
    THINKING_TEXT,
    MockUpstream,
    Reply,
    anthropic_message,
    anthropic_stream,
    paused_content,
)

from stockyard.pricing import WEB_SEARCH_UC
from stockyard.proxy import MAX_CONTINUATIONS

BASE = "claude-haiku-4-5-websearch"
COST_MODEL = f"{BASE}-pause2-cost"  # priced so that each call rounds apart from the sum (see test)
BOUND_MODEL = f"{BASE}-pause9"  # pauses past the bound
SCRIPTED_MODEL = f"{BASE}-pause1-scripted"  # answered by the replies a test queues
TOOLS_MODEL = f"{BASE}-pause2-tools"  # a paused turn in a tool loop
MODELS = [
    *(f"{BASE}-pause2-{i}" for i in range(8)),
    TOOLS_MODEL,
    *(f"{BOUND_MODEL}-{i}" for i in range(4)),
    SCRIPTED_MODEL,
]
BUDGETED = "budgeted-pauses"
LIMITED = "two-a-minute"
SEARCH = {"search_context_size": "low"}  # 3 searches a call: what a budget holds for each


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdefPAUSETURN", ANTHROPIC_BASE_URL=mock.url
    )
    prices = [("prices", "set", model, "--input", "1", "--output", "2") for model in MODELS]
    prices.append(("prices", "set", COST_MODEL, "--input", "0.001", "--output", "1"))
    keys = {"plain": [], BUDGETED: ["--budget-usd", "0.045", "--budget-period", "day"], LIMITED: ["--rpm", "2"]}
    with served(pyz_path, tmp_path_factory, "pauseturn", env, keys, cli=prices) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai("plain")


def calls(mock: MockUpstream, model: str) -> list[dict]:
    """The Messages requests the mock got for ``model``, in order."""
    return [r.json for r in mock.requests if r.path == "/v1/messages" and (r.json or {}).get("model") == model]


def paused_text(pauses: int) -> str:
    return "".join(b["text"] for k in range(1, pauses + 1) for b in paused_content(k) if b["type"] == "text")


def paused_queries(pauses: int) -> list[str]:
    return [b["input"]["query"] for k in range(1, pauses + 1) for b in paused_content(k) if "input" in b]


def input_tokens(calls_made: int) -> int:
    """What the mock bills the calls of a turn as input: each paused answer sent back adds to the next."""
    return sum(PROMPT_TOKENS + PAUSED_INPUT_TOKENS * k for k in range(calls_made))


def cost_at(rates: tuple[int, int], calls_made: int, searches: int) -> int:
    """Each call priced on its own at ``rates`` (µ¢ per 1M tokens), rounded half up, summed."""
    each = [
        Fraction((PROMPT_TOKENS + PAUSED_INPUT_TOKENS * k) * rates[0] + COMPLETION_TOKENS * rates[1], 10**6)
        for k in range(calls_made)
    ]
    return sum(int(c + Fraction(1, 2)) for c in each) + searches * WEB_SEARCH_UC


def searched(client: openai.OpenAI, model: str, stream: bool) -> tuple[Any, list[str | None], str | None]:
    """A chat request with web search: the raw answer, its finish reasons and its text."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "weather?"}], web_search_options={}, stream=stream
    )
    if not stream:
        choice = raw.parse().choices[0]
        return raw, [choice.finish_reason], choice.message.content
    chunks = list(raw.parse())
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return raw, finishes, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def check_sent_back_as_documented(sent: list[dict]) -> None:
    """Each follow-up is the first request with the paused answers so far, unchanged and in order,
    as the assistant's last turn; nothing else differs."""
    first = sent[0]
    for k, follow in enumerate(sent[1:], 1):
        content = [block for i in range(1, k + 1) for block in paused_content(i)]
        assert follow == {**first, "messages": [*first["messages"], {"role": "assistant", "content": content}]}


def note_of(server: ServerProcess, trace_id: str) -> str:
    return server.trace(trace_id)["error_message"] or ""


# --------------------------------------------------------------------------- chat completions


@pytest.mark.parametrize("stream", [False, True])
def test_chat_gets_one_answer_of_every_call_of_a_paused_turn(server, client, mock, stream):
    model = f"{BASE}-pause2-{int(stream)}"
    options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "weather?"}], web_search_options={}, **options
    )
    if stream:
        chunks = list(raw.parse())
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert [d.role for d in deltas if d.role] == ["assistant"]  # one message: no second start
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        usages = [c.usage for c in chunks if c.usage is not None]
        assert len(usages) == 1 and chunks[-1].usage is usages[0]
        usage = usages[0]
        content = "".join(d.content or "" for d in deltas)
        searches = [s for d in deltas for s in (d.model_extra or {}).get("web_search_calls") or []]
        assert [s.pop("index") for s in searches] == [0, 1, 2, 3]
        annotations = [a for d in deltas for a in (d.model_extra or {}).get("annotations") or []]
        assert [a.pop("index") for a in annotations] == [0, 1, 2, 3]
    else:
        completion = raw.parse()
        assert completion.choices[0].finish_reason == "stop"
        message, usage = completion.choices[0].message, completion.usage
        content, searches = message.content, message.model_extra["web_search_calls"]
        annotations = [a.model_dump() for a in message.annotations]
    assert content == paused_text(2) + "".join(SEARCH_TEXTS)
    assert [s["query"] for s in searches] == paused_queries(2) + SEARCH_QUERIES
    assert [s["id"] for s in searches] == ["srvtoolu_pause1", "srvtoolu_pause2", "srvtoolu_mock1", "srvtoolu_mock2"]
    for a in annotations:  # each citation over its own block of the whole text
        cited = content[a["url_citation"]["start_index"] : a["url_citation"]["end_index"]]
        assert cited.startswith(("Found part", "Paris is", " It will"))
    assert (usage.prompt_tokens, usage.completion_tokens) == (input_tokens(3), 3 * COMPLETION_TOKENS)
    sent = calls(mock, model)
    assert len(sent) == 3
    check_sent_back_as_documented(sent)
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (input_tokens(3), 3 * COMPLETION_TOKENS)
    assert trace["cost_uc"] == cost_at((100_000_000, 200_000_000), 3, searches=4)
    assert "continued it with 2 follow-up call(s)" in trace["error_message"]
    assert trace["status"] == 200


def test_thinking_blocks_go_back_with_the_paused_answers(client, mock):
    """With thinking on each answer starts with its signed thinking block: sent back where it was."""
    model = f"{BASE}-pause2-thinking"
    completion = client.chat.completions.create(
        model=model,
        max_tokens=4096,
        reasoning_effort="low",
        messages=[{"role": "user", "content": "weather?"}],
        web_search_options={},
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    thinking = {"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE}
    assert message.model_extra["thinking_blocks"] == [thinking] * 3
    sent = calls(mock, model)
    assert len(sent) == 3
    assert sent[2]["messages"][-1] == {
        "role": "assistant",
        "content": [thinking, *paused_content(1), thinking, *paused_content(2)],
    }


@pytest.mark.parametrize("stream", [False, True])
def test_the_cost_is_each_calls_cost_summed(server, client, mock, stream):
    """At $0.001/$1 per 1M tokens the three calls cost 501.2, 511.2 and 521.2 µ¢: each rounded,
    1,533 µ¢; the summed usage priced once would be 1,534."""
    raw = client.chat.completions.with_raw_response.create(
        model=COST_MODEL, messages=[{"role": "user", "content": "weather?"}], web_search_options={}, stream=stream
    )
    if stream:
        list(raw.parse())
    else:
        raw.parse()
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    rates = (100_000, 100_000_000)
    assert cost_at(rates, 3, searches=0) == 1533
    assert trace["cost_status"] == "exact"
    assert trace["cost_uc"] == cost_at(rates, 3, searches=4)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_past_the_bound_ends_incomplete(server, client, mock, stream):
    model = f"{BOUND_MODEL}-{int(stream)}"
    raw, finishes, content = searched(client, model, stream)
    assert finishes == ["length"]
    assert content == paused_text(MAX_CONTINUATIONS + 1)
    sent = calls(mock, model)
    assert len(sent) == MAX_CONTINUATIONS + 1
    check_sent_back_as_documented(sent)
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["cost_uc"] == cost_at((100_000_000, 200_000_000), MAX_CONTINUATIONS + 1, MAX_CONTINUATIONS + 1)
    note = trace["error_message"]
    assert f"continued it with {MAX_CONTINUATIONS} follow-up call(s)" in note
    assert f"paused again after {MAX_CONTINUATIONS} follow-up calls" in note and "finish_reason length" in note


@pytest.mark.parametrize("stream", [False, True])
def test_a_follow_up_the_provider_refuses_ends_the_answer_incomplete(server, client, mock, stream):
    """Claude pauses, the follow-up is answered 529: the client gets the answer so far, ``length``,
    billed for the call that answered; the trace says why."""
    model = SCRIPTED_MODEL
    asked = {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": []}
    first = Reply(sse=anthropic_stream(asked, 1, model)) if stream else Reply(json=anthropic_message(asked, 1, model))
    mock.enqueue(first, Reply(status=529))
    raw, finishes, content = searched(client, model, stream)
    assert (finishes, content) == (["length"], paused_text(1))
    assert mock.pending() == 0  # both calls made
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert "the follow-up call was answered 529" in trace["error_message"]
    assert "continued it" not in trace["error_message"]
    assert trace["prompt_tokens"] == PROMPT_TOKENS and trace["status"] == 200


@pytest.fixture(scope="module")
def impatient(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    """A server that waits a second for a provider's bytes (``STOCKYARD_UPSTREAM_TIMEOUT``)."""
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdefPAUSETURN",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_UPSTREAM_TIMEOUT="1",
    )
    price = ("prices", "set", SCRIPTED_MODEL, "--input", "1", "--output", "2")
    with served(pyz_path, tmp_path_factory, "impatient", env, cli=[price]) as proc:
        yield proc


@pytest.mark.parametrize("stream", [False, True])
def test_a_follow_up_that_times_out_is_billed_its_input(impatient, mock, stream):
    """Claude pauses and the follow-up call, sent, never answers: the provider may bill what it was
    sent (the request and the answer so far), so the trace adds that input as an estimate to the
    first call's exact cost (it added nothing)."""
    model = SCRIPTED_MODEL
    asked = {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": []}
    first = Reply(sse=anthropic_stream(asked, 1, model)) if stream else Reply(json=anthropic_message(asked, 1, model))
    mock.enqueue(first, Reply(hang_s=5))
    raw, finishes, content = searched(impatient.openai("unused"), model, stream)
    assert (finishes, content) == (["length"], paused_text(1))
    trace = impatient.trace(raw.headers["x-stockyard-trace-id"])
    assert "the follow-up call failed" in trace["error_message"] and "continued it with 1" in trace["error_message"]
    sent = trace["prompt_tokens"] - PROMPT_TOKENS  # the follow-up's input, estimated
    assert sent > PAUSED_INPUT_TOKENS and trace["completion_tokens"] == COMPLETION_TOKENS
    assert trace["cost_uc"] == cost_at((100_000_000, 200_000_000), 1, searches=1) + sent * 100
    assert trace["cost_status"] == "estimate" and trace["usage_estimated"] == 1


def test_a_whole_follow_up_whose_body_breaks_is_billed_its_input(server, client, mock):
    """Claude pauses a whole answer's turn, and the follow-up's head says 200 but its body breaks
    off: that answer was made, and the provider bills it, so its input (the request and the answer
    so far) is billed as an estimate on top of the first call's exact cost, as a first call whose
    body breaks is (it was billed nothing: taken for a call that gave nothing)."""
    model = SCRIPTED_MODEL
    asked = {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": []}
    mock.enqueue(
        Reply(json=anthropic_message(asked, 1, model)), Reply(json=anthropic_message(asked, 1, model), cut_after=20)
    )
    raw, finishes, content = searched(client, model, stream=False)
    assert (finishes, content) == (["length"], paused_text(1))
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert "the follow-up call broke" in trace["error_message"] and "continued it with 1" in trace["error_message"]
    sent = trace["prompt_tokens"] - PROMPT_TOKENS  # the follow-up's input, estimated
    assert sent > PAUSED_INPUT_TOKENS and trace["completion_tokens"] == COMPLETION_TOKENS
    assert trace["cost_uc"] == cost_at((100_000_000, 200_000_000), 1, searches=1) + sent * 100
    assert trace["cost_status"] == "estimate" and trace["usage_estimated"] == 1


def test_a_follow_up_stream_that_breaks_before_its_first_event_is_billed_its_input(server, client, mock):
    """Claude pauses a streamed turn, and the follow-up's stream breaks before its first event: the
    provider was sent the request and the answer so far, so that input is billed as an estimate on
    top of the first call's exact cost (the follow-up was billed nothing)."""
    model = SCRIPTED_MODEL
    asked = {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": []}
    mock.enqueue(Reply(sse=anthropic_stream(asked, 1, model)), Reply(sse=[], cut_after=0))
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "weather?"}], web_search_options={}, stream=True
    )
    with pytest.raises(openai.APIError, match="stream broke"):
        list(raw.parse())  # the first call's answer, then the follow-up's error event
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken"
    sent = trace["prompt_tokens"] - PROMPT_TOKENS  # the follow-up's input, estimated
    assert sent > PAUSED_INPUT_TOKENS and trace["completion_tokens"] == COMPLETION_TOKENS
    assert trace["cost_uc"] == cost_at((100_000_000, 200_000_000), 1, searches=1) + sent * 100
    assert trace["cost_status"] == "estimate" and trace["usage_estimated"] == 1


def test_a_follow_up_stream_cut_midway_is_billed_the_text_it_relayed_alone(server, client, mock):
    """The follow-up's stream breaks after its first words: its input is the count its start gave,
    its output the text it relayed at four characters a token — not the first call's text again."""
    model = SCRIPTED_MODEL
    asked = {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": []}
    mock.enqueue(Reply(sse=anthropic_stream(asked, 1, model)), Reply(cut_after=4))
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "weather?"}], web_search_options={}, stream=True
    )
    chunks = []
    with pytest.raises(openai.APIError, match="stream broke"):
        for chunk in raw.parse():
            chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(paused_text(1)) and len(text) > len(paused_text(1))
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert trace["outcome"] == "stream_broken" and trace["usage_estimated"] == 1
    assert trace["completion_tokens"] == COMPLETION_TOKENS + -(-(len(text) - len(paused_text(1))) // 4)


def test_a_budget_holds_each_follow_up_or_the_turn_ends_there(server, mock):
    """$0.045: the first call holds 3 searches ($0.03) and costs one; a follow-up needs what the turn
    cost so far and its own worst case ($0.01 + $0.03) held too, which fits; the next ($0.02 +
    $0.03) does not: the answer ends incomplete after two calls, and the budget is charged for them."""
    model = f"{BASE}-pause2-5"
    budgeted = server.openai(BUDGETED)
    raw = budgeted.chat.completions.with_raw_response.create(
        model=model, max_tokens=10, messages=[{"role": "user", "content": "weather?"}], web_search_options=SEARCH
    )
    assert raw.parse().choices[0].finish_reason == "length"
    assert len(calls(mock, model)) == 2
    trace = server.trace(raw.headers["x-stockyard-trace-id"])
    assert "the budget cannot hold another call" in trace["error_message"]
    assert trace["cost_uc"] == cost_at((100_000_000, 200_000_000), 2, searches=2)
    # the budget was charged the two calls ($0.02…): a request holding 3 searches ($0.03) no longer fits,
    # a plain one does (the turn's extra holds were given back)
    headers = server.auth(BUDGETED)
    plain = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    status, _, body = server.request("POST", "/v1/chat/completions", {**plain, "web_search_options": SEARCH}, headers)
    assert status == 429 and json.loads(body)["error"]["code"] == "budget_exceeded", body
    status, _, body = server.request("POST", "/v1/chat/completions", plain, headers)
    assert status == 200, body


def test_a_continued_turn_is_one_request_to_the_rate_limit(server, mock):
    """Two requests a minute: two turns of three calls each go through, the third request is the 429."""
    model = f"{BASE}-pause2-4"
    limited = server.openai(LIMITED)
    ask = {"model": model, "messages": [{"role": "user", "content": "weather?"}], "web_search_options": {}}
    for _ in range(2):
        assert limited.chat.completions.create(**ask).choices[0].finish_reason == "stop"
    assert len(calls(mock, model)) == 6
    with pytest.raises(openai.RateLimitError) as refused:
        limited.chat.completions.create(**ask)
    assert refused.value.body["code"] == "rate_limit_exceeded"


# --------------------------------------------------------------------------- Responses API


def check_responses(response, pauses: int, finished: bool = True) -> None:
    """Every call's searches and text in one response (a finished turn's last call searched twice)."""
    searches = [o for o in response.output if o.type == "web_search_call"]
    assert [s.action.query for s in searches] == paused_queries(pauses) + (SEARCH_QUERIES if finished else [])
    assert response.output_text == paused_text(pauses) + ("".join(SEARCH_TEXTS) if finished else "")


@pytest.mark.parametrize("stream", [False, True])
def test_responses_gets_one_response_of_every_call(server, client, mock, stream):
    model = f"{BASE}-pause2-{2 + int(stream)}"
    if stream:
        with client.responses.stream(model=model, input="weather?", tools=[{"type": "web_search"}]) as events:
            kinds = [e.type for e in events]
            response = events.get_final_response()
        assert kinds.count("response.created") == 1 and kinds.count("response.completed") == 1
        assert kinds[-1] == "response.completed"
        trace_id = None
    else:
        raw = client.responses.with_raw_response.create(model=model, input="weather?", tools=[{"type": "web_search"}])
        response, trace_id = raw.parse(), raw.headers["x-stockyard-trace-id"]
    assert response.status == "completed"
    check_responses(response, 2)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (input_tokens(3), 3 * COMPLETION_TOKENS)
    sent = calls(mock, model)
    assert len(sent) == 3
    check_sent_back_as_documented(sent)
    if trace_id is not None:
        assert server.trace(trace_id)["cost_uc"] == cost_at((100_000_000, 200_000_000), 3, searches=4)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_past_the_bound_is_incomplete(server, client, mock, stream):
    model = f"{BOUND_MODEL}-{2 + int(stream)}"
    raw = client.responses.with_raw_response.create(
        model=model, input="weather?", tools=[{"type": "web_search"}], stream=stream
    )
    if stream:
        events = list(raw.parse())
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    else:
        response = raw.parse()
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"  # the Responses API's reason for a cut answer
    check_responses(response, MAX_CONTINUATIONS + 1, finished=False)
    assert len(calls(mock, model)) == MAX_CONTINUATIONS + 1
    assert "finish_reason length" in note_of(server, raw.headers["x-stockyard-trace-id"])


# Codex CLI 0.171's tool loop with ``web_search = "live"`` on a pausing Claude model: after its shell tool's
# output, the turn is paused and continued; each follow-up still carries that output before the paused answer,
# so the model answers it (the mock called the tool again, for ever, when it looked only at the last message).
CODEX_TOOL_LOOP = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
    {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": '{"cmd": "date"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "Sat Dec  5"},
]
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Run a command", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
    {"type": "web_search", "external_web_access": True},
]  # fmt: skip


def test_a_paused_turn_after_a_tool_output_answers_it(client, mock):
    model = TOOLS_MODEL
    with client.responses.stream(model=model, input=CODEX_TOOL_LOOP, tools=CODEX_TOOLS, store=False) as events:
        response = events.get_final_response()
    assert response.status == "completed"
    assert [o.type for o in response.output if o.type not in ("web_search_call", "message")] == []
    assert response.output_text.endswith("".join(SEARCH_TEXTS))
    sent = calls(mock, model)
    assert len(sent) == 3 and all(s["messages"][2]["content"][-1]["type"] == "tool_result" for s in sent)
    check_sent_back_as_documented(sent)


# --------------------------------------------------------------------------- the Messages API: passed through


@pytest.mark.parametrize("stream", [False, True])
def test_a_messages_client_gets_the_pause_itself(server, mock, stream):
    model = f"{BASE}-pause2-{6 + int(stream)}"
    client = server.anthropic("plain")
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    asked = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "weather?"}], "tools": [tool]}
    if stream:
        with client.messages.stream(**asked) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**asked)
    assert message.stop_reason == "pause_turn"
    assert [b.type for b in message.content] == [b["type"] for b in paused_content(1)]
    assert len(calls(mock, model)) == 1
