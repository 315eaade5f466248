"""``tool_choice: allowed_tools`` on Claude and Gemini (Responses and chat clients), and a history's
calls of tools the request no longer offers: what reaches the provider, and what the client gets."""

from __future__ import annotations

import json

import pytest
from conftest import mock_env, served
from openai import BadRequestError, OpenAI

ADMIN = "admin-key-for-allowed-tools-tests-0123456789"
MODELS = ["claude-sonnet-4-5", "gemini-2.5-pro"]
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "name": "get_weather", "description": "the weather", "parameters": PARAMETERS}
TIME = {"type": "function", "name": "get_time", "description": "the time", "parameters": PARAMETERS}
CRM = {"type": "namespace", "name": "crm", "description": "the CRM", "tools": [{**WEATHER, "name": "lookup"}]}
SEARCH = {"type": "tool_search", "execution": "client", "description": "find more tools"}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        GEMINI_API_KEY="AIza-test-0123456789abcdefGEMINI",
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
    )
    with served(pyz_path, tmp_path_factory, "allowed", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    status, _, data = server.request("POST", "/api/keys", {"name": "allowed"}, headers=auth)
    assert status == 201, data
    return server.openai(json.loads(data)["key"])


def sent(mock, model: str) -> dict:
    """The body of the provider's last request for ``model``."""
    if model.startswith("claude"):
        return mock.last("/v1/messages").json
    return next(r for r in reversed(mock.requests) if r.path.startswith(f"/v1beta/models/{model}:")).json


def offered(body: dict) -> list[str]:
    """The function names a Claude or Gemini request declares."""
    if "contents" in body:
        return [d["name"] for t in body.get("tools", []) for d in t.get("functionDeclarations", [])]
    return [t["name"] for t in body.get("tools", [])]


def choice_sent(body: dict) -> dict | None:
    return body.get("tool_choice") if "messages" in body else body.get("toolConfig")


# allowed_tools entries → the chat function names they allow (in the order the request declares them)
ALLOWED = {
    "a plain tool": ([{"type": "function", "name": "get_time"}], ["get_time"]),
    "a namespace's tool": ([{"type": "function", "name": "lookup", "namespace": "crm"}], ["crm__lookup"]),
    "a whole namespace": ([{"type": "namespace", "name": "crm"}], ["crm__lookup"]),
    "two, as definitions": ([{**CRM["tools"][0], "namespace": "crm"}, TIME], ["get_time", "crm__lookup"]),
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", ["auto", "required"])
@pytest.mark.parametrize("case", list(ALLOWED))
def test_responses_allowed_tools_offers_only_those(client, mock, model, mode, case):
    """An Agents SDK ``allowed_tools`` tool_choice was a 400 unsupported_parameter on a translated model.
    Claude gets only the allowed tools (it has no way to offer a tool it may not call) with auto/any;
    Gemini, for ``required``, all its declarations with ANY limited by allowedFunctionNames (its prefix
    unchanged), and for ``auto`` only the allowed ones (allowedFunctionNames goes with ANY only)."""
    entries, names = ALLOWED[case]
    choice = {"type": "allowed_tools", "mode": mode, "tools": entries}
    answer = client.responses.create(model=model, input="go", tools=[WEATHER, TIME, CRM], tool_choice=choice)
    body = sent(mock, model)
    if model.startswith("claude"):
        assert offered(body) == names and choice_sent(body) == {"type": "any" if mode == "required" else "auto"}
    elif mode == "required":
        assert offered(body) == ["get_weather", "get_time", "crm__lookup"]
        assert choice_sent(body) == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": names}}
    else:
        assert offered(body) == names and choice_sent(body) == {"functionCallingConfig": {"mode": "AUTO"}}
    call = answer.output[-1]
    assert call.type == "function_call" and (call.namespace or "") + call.name in ("get_time", "crmlookup"), call
    assert answer.tool_choice.type == "allowed_tools"


UNDECLARED = {
    "no such tool": {"type": "function", "name": "nope"},
    "a namespace's tool without its namespace": {"type": "function", "name": "lookup"},
    "no such namespace": {"type": "namespace", "name": "erp"},
    "a tool the request cannot have here": {"type": "mcp", "server_label": "deepwiki"},
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", list(UNDECLARED))
def test_responses_allowed_tool_not_declared_is_a_400_before_the_provider(client, mock, model, case):
    before = len(mock.requests)
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [TIME, UNDECLARED[case]]}
    with pytest.raises(BadRequestError) as err:
        client.responses.create(model=model, input="go", tools=[WEATHER, TIME, CRM], tool_choice=choice)
    error = err.value.body
    assert (error["param"], error["code"]) == ("tool_choice.tools[1]", "invalid_tool_choice"), error
    assert len(mock.requests) == before


BAD_SHAPES = {
    "a mode of none": {"type": "allowed_tools", "mode": "none", "tools": [TIME]},
    "no tools": {"type": "allowed_tools", "mode": "auto", "tools": []},
    "tools not a list": {"type": "allowed_tools", "mode": "auto", "tools": "get_time"},
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_responses_allowed_tools_of_a_bad_shape_is_a_400(client, mock, case):
    before = len(mock.requests)
    with pytest.raises(BadRequestError) as err:
        client.responses.create(model=MODELS[0], input="go", tools=[WEATHER, TIME], tool_choice=BAD_SHAPES[case])
    assert err.value.body["code"] == "invalid_tool_choice", err.value.body
    assert err.value.body["param"].startswith("tool_choice"), err.value.body
    assert len(mock.requests) == before


def test_responses_allowed_web_search_keeps_it_and_leaving_it_out_drops_it(client, mock):
    """Claude's web search is a tool like the rest: allowed, it is offered; left out of the allowed
    tools, it is not."""
    tools = [WEATHER, TIME, {"type": "web_search"}]
    only_search = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]}
    client.responses.create(model=MODELS[0], input="go", tools=tools, tool_choice=only_search)
    assert offered(sent(mock, MODELS[0])) == ["web_search"]
    no_search = {"type": "allowed_tools", "mode": "auto", "tools": [TIME]}
    client.responses.create(model=MODELS[0], input="go", tools=tools, tool_choice=no_search)
    assert offered(sent(mock, MODELS[0])) == ["get_time"]


def chat_tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": name, "parameters": PARAMETERS}}


def chat_allowed(mode: str, *names: str) -> dict:
    tools = [{"type": "function", "function": {"name": n}} for n in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", ["auto", "required"])
def test_chat_allowed_tools_offers_only_those(client, mock, model, mode):
    """The chat API's allowed_tools (a 400 invalid_tool_choice on Claude and Gemini before) reaches
    them as the Responses one does."""
    tools = [chat_tool("get_weather"), chat_tool("get_time"), chat_tool("get_date")]
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "go"}],
        tools=tools,
        tool_choice=chat_allowed(mode, "get_date", "get_time"),
    )
    body = sent(mock, model)
    if model.startswith("claude"):
        assert offered(body) == ["get_time", "get_date"]
        assert choice_sent(body) == {"type": "any" if mode == "required" else "auto"}
    elif mode == "required":
        assert offered(body) == ["get_weather", "get_time", "get_date"]
        config = {"mode": "ANY", "allowedFunctionNames": ["get_time", "get_date"]}
        assert choice_sent(body) == {"functionCallingConfig": config}
    else:
        assert offered(body) == ["get_time", "get_date"]
        assert choice_sent(body) == {"functionCallingConfig": {"mode": "AUTO"}}
    assert answer.choices[0].message.tool_calls[0].function.name == "get_time"


@pytest.mark.parametrize("model", MODELS)
def test_chat_allowed_tool_not_declared_is_a_400_in_the_chat_shape(client, mock, model):
    before = len(mock.requests)
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "go"}],
            tools=[chat_tool("get_weather")],
            tool_choice=chat_allowed("auto", "get_weather", "nope"),
        )
    error = err.value.body
    assert (error["param"], error["code"]) == ("tool_choice.allowed_tools.tools[1]", "invalid_tool_choice"), error
    assert "'nope'" in error["message"]
    assert len(mock.requests) == before


# -- a history's calls of tools the request no longer offers -------------------------------------


def searched_then_dropped(client: OpenAI, model: str):
    """Turn 1: Codex's client-run tool search, which loaded nothing; turn 2 (by previous_response_id)
    offers no tools at all, so the stored history's tool_search call names a tool nobody declares."""
    call = {
        "type": "tool_search_call",
        "id": "tsc_1",
        "call_id": "call_ts1",
        "execution": "client",
        "arguments": {"query": "spawn agent"},
        "status": "completed",
    }
    output = {"type": "tool_search_output", "call_id": "call_ts1", "execution": "client", "tools": []}
    first = client.responses.create(
        model=model, input=[{"role": "user", "content": "hi"}, call, output], tools=[SEARCH]
    )
    return client.responses.create(model=model, previous_response_id=first.id, input="now just answer")


def test_claude_history_calls_with_no_tools_declare_them_offering_none(client, mock):
    """Claude refuses tool_use/tool_result blocks in a request that defines no tools (its 400 reached the
    client). The tools the history called are declared, and tool_choice none keeps the model off them."""
    answer = searched_then_dropped(client, MODELS[0])
    assert answer.output[-1].type == "message", answer.output
    body = sent(mock, MODELS[0])
    assert [b["name"] for m in body["messages"] for b in m["content"] if b["type"] == "tool_use"] == ["tool_search"]
    assert offered(body) == ["tool_search"] and choice_sent(body) == {"type": "none"}


def test_gemini_history_calls_with_no_tools_go_as_they_are(client, mock):
    """Gemini takes a history's function calls without their declarations: nothing is added."""
    answer = searched_then_dropped(client, MODELS[1])
    assert answer.output[-1].type == "message", answer.output
    body = sent(mock, MODELS[1])
    calls = [p["functionCall"]["name"] for c in body["contents"] for p in c["parts"] if "functionCall" in p]
    assert calls == ["tool_search"] and offered(body) == [] and "toolConfig" not in body


def test_chat_history_with_no_tools_reaches_claude(client, mock):
    """A chat client summarizing its conversation with its tools left out (OpenCode's compaction)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a"}'}}
    messages = [
        {"role": "user", "content": "read a"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "the file"},
        {"role": "user", "content": "summarize"},
    ]
    answer = client.chat.completions.create(model=MODELS[0], messages=messages)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    body = sent(mock, MODELS[0])
    assert offered(body) == ["read_file"] and choice_sent(body) == {"type": "none"}


def test_allowed_tools_leaving_out_a_tool_the_history_called(client, mock):
    """allowed_tools narrowing Claude's tools below the history's calls: the history goes as it is
    (Claude takes calls of tools it is not given, once it is given some)."""
    call = {"type": "function_call", "call_id": "call_w", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    result = {"type": "function_call_output", "call_id": "call_w", "output": "sunny"}
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [TIME]}
    history = [{"role": "user", "content": "weather, then time"}, call, result]
    answer = client.responses.create(model=MODELS[0], input=history, tools=[WEATHER, TIME], tool_choice=choice)
    assert answer.output[-1].type == "message"
    body = sent(mock, MODELS[0])
    assert offered(body) == ["get_time"]
    assert [b["name"] for m in body["messages"] for b in m["content"] if b["type"] == "tool_use"] == ["get_weather"]


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "function", "name": "n" * 30_000},
        {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "n" * 30_000}]},
    ],
)
def test_a_refusal_quotes_at_most_100_characters_of_a_client_name(client, choice):
    """A name the request does not declare is echoed cut: a 30 KB name is not sent back whole."""
    with pytest.raises(BadRequestError) as err:
        client.responses.create(model=MODELS[0], input="go", tools=[TIME], tool_choice=choice)
    message = err.value.body["message"]
    assert "n" * 100 in message and "n" * 101 not in message, len(message)
