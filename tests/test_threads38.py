"""Anthropic's message threads through Stockyard with the official anthropic SDK: owned per key, held at their size.

A Messages request with ``"thread": {"type": "create"}`` has Anthropic keep the conversation under its
reply's id; the next sends only its new messages with ``{"type": "continue", "previous_message_id": …}``.
Anthropic sees one owner (Stockyard's provider key), so Stockyard records each thread reply as the key's
(streamed: at ``message_start``) and answers a continue naming any other id — another key's or a made-up
one, the same — with Anthropic's ``thread_not_found`` 404 before any module or provider call. Anthropic
bills a continue the whole kept conversation as input, so its budget hold counts the thread's size (the
reply's input and output tokens, kept with its row) besides its own messages.
"""

from __future__ import annotations

import json

import anthropic
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import MockUpstream, Reply, anthropic_blocks_stream
from module_helpers import ADMIN_KEY, api, key_traces, put_module

ANTHROPIC_KEY = "sk-ant-test-threads-0123456789abcdefANTHROPICSECRET"
MODEL = "anthropic/claude-thread-model"  # the mock: 12 input tokens, 5 output
BILL_MAX = "anthropic/claude-thread-bill-max"  # the mock writes until max_tokens
PER_TOKEN_UC = 1_000  # both priced at $10 per 1M input and output tokens
BETA = ["message-threads-2026-08-12"]
CREATE = {"type": "create"}
HI = [{"role": "user", "content": "Hi"}]
MORE = [{"role": "user", "content": "And then?"}]
VERSION = {"anthropic-version": "2023-06-01", "anthropic-beta": BETA[0]}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN_KEY
    )
    keys = {"alice": [], "bob": [], "small": ["--budget-usd", "0.10", "--budget-period", "day"], "roomy": []}
    with served(pyz_path, tmp_path_factory, "threads38", env, keys, never_logged=(ANTHROPIC_KEY,)) as srv:
        for model in (MODEL, BILL_MAX):
            assert api(srv, "POST", "/api/prices", {"model": model, "input": "10", "output": "10"})[0] == 200
        yield srv


def create(server: ServerProcess, key: str, model: str = MODEL, **fields: object) -> anthropic.types.beta.BetaMessage:
    fields = {"max_tokens": 16, "messages": HI, "thread": CREATE, **fields}
    return server.anthropic(key).beta.messages.create(model=model, betas=BETA, **fields)  # type: ignore[arg-type]


def go_on(previous: str) -> dict:
    return {"type": "continue", "previous_message_id": previous}


def thread_row(server: ServerProcess, reply_id: str) -> dict | None:
    rows = server.db_rows(
        "SELECT o.kind, k.name, o.tokens FROM owned_objects o LEFT JOIN client_keys k ON k.id = o.key_id"
        " WHERE o.id = ?",
        (reply_id,),
    )
    return rows[0] if rows else None


def error_of(failure: pytest.ExceptionInfo) -> dict:
    body = failure.value.response.json()
    assert body["type"] == "error", body
    return body["error"]


def post(server: ServerProcess, path: str, body: dict, key: str = "bob") -> tuple[int, dict]:
    status, _, raw = server.request("POST", path, body, headers={**server.auth(key), **VERSION})
    return status, json.loads(raw)


def test_a_thread_goes_on_reply_after_reply_for_its_key(server: ServerProcess, mock: MockUpstream) -> None:
    first = create(server, "alice")
    assert thread_row(server, first.id) == {"kind": "message_thread", "name": "alice", "tokens": 12 + 5}
    second = create(server, "alice", messages=MORE, thread=go_on(first.id))
    third = create(server, "alice", messages=MORE, thread=go_on(second.id))  # a continue of a continue
    assert third.content[0].text == "Hello from mock"
    sent = [r.json for r in mock.requests if r.path.endswith("/v1/messages")][-3:]
    assert [b["thread"] for b in sent] == [CREATE, go_on(first.id), go_on(second.id)]  # passed through
    assert thread_row(server, third.id) == {"kind": "message_thread", "name": "alice", "tokens": 12 + 5}
    assert thread_row(server, first.id) is None and thread_row(server, second.id) is None  # one row a thread
    before = len(mock.requests)
    with pytest.raises(anthropic.NotFoundError) as failure:  # a reply continued already: Anthropic's is a 400
        create(server, "alice", messages=MORE, thread=go_on(first.id))
    assert error_of(failure)["details"] == {"error_code": "thread_not_found"} and mock.requests[before:] == []


def test_another_keys_thread_and_a_made_up_one_are_the_same_404_unasked(
    server: ServerProcess, mock: MockUpstream
) -> None:
    alices = create(server, "alice").id
    bob = server.anthropic("bob").beta.messages
    before = len(mock.requests)
    errors = []
    for previous in (alices, "msg_011madeupbybob"):
        with pytest.raises(anthropic.NotFoundError) as failure:
            bob.create(model=MODEL, max_tokens=16, messages=MORE, thread=go_on(previous), betas=BETA)
        errors.append(error_of(failure))
        with pytest.raises(anthropic.NotFoundError) as failure:  # a stream is refused before it starts
            with bob.stream(model=MODEL, max_tokens=16, messages=MORE, thread=go_on(previous), betas=BETA) as s:
                s.get_final_message()
        assert error_of(failure) == errors[-1]
        with pytest.raises(anthropic.NotFoundError) as failure:  # nor may a count say its size
            bob.count_tokens(model=MODEL, messages=MORE, betas=BETA, extra_body={"thread": go_on(previous)})
        assert error_of(failure) == errors[-1]
    assert mock.requests[before:] == []  # not one call reached the provider
    told = [{**e, "message": e["message"].replace(p, "ID")} for e, p in zip(errors, (alices, "msg_011madeupbybob"))]
    assert told[0] == told[1]  # another key's thread is told apart from no thread by nothing
    assert told[0]["type"] == "not_found_error" and told[0]["details"] == {"error_code": "thread_not_found"}
    columns = ("endpoint", "status", "provider")
    rows = wait_for(lambda: (found := key_traces(server, "bob", columns)) and len(found) >= 6 and found)
    assert rows == [{"endpoint": e, "status": 404, "provider": None} for e in ["messages"] * 2 + ["count_tokens"]] * 2
    with pytest.raises(anthropic.NotFoundError):  # a create naming a reply is held to the key's as well
        create(server, "bob", thread={"type": "create", "previous_message_id": alices})
    assert mock.requests[before:] == []
    assert create(server, "bob").id != alices  # bob's own thread


def test_a_streamed_reply_is_the_keys_from_its_start_and_sized_at_its_end(server: ServerProcess) -> None:
    client = server.anthropic("alice").beta.messages
    with client.stream(model=MODEL, max_tokens=16, messages=HI, thread=CREATE, betas=BETA) as stream:
        first = stream.get_final_message()
    assert thread_row(server, first.id) == {"kind": "message_thread", "name": "alice", "tokens": 12 + 5}
    with client.stream(model=MODEL, max_tokens=16, messages=MORE, thread=go_on(first.id), betas=BETA) as stream:
        second = stream.get_final_message()
    assert second.content[0].text == "Hello from mock"
    assert thread_row(server, second.id)["tokens"] == 17


def test_a_stream_cut_before_its_count_keeps_the_threads_worst_case(server: ServerProcess, mock: MockUpstream) -> None:
    """Cut after ``message_start``: the reply is the key's (the SDK starts a new thread after a cut
    stream, but another key must not go on from it either) at its input and the whole output cap."""
    events = anthropic_blocks_stream([{"type": "text", "text": "partly"}], 7001, "claude-thread-model")
    mock.enqueue(Reply(sse=events, cut_after=3))
    client = server.anthropic("alice").beta.messages
    with pytest.raises(anthropic.APIError):
        with client.stream(model=MODEL, max_tokens=300, messages=HI, thread=CREATE, betas=BETA) as stream:
            stream.get_final_message()
    assert thread_row(server, "msg_mock7001") == {"kind": "message_thread", "name": "alice", "tokens": 12 + 300}
    with pytest.raises(anthropic.NotFoundError):
        create(server, "bob", messages=MORE, thread=go_on("msg_mock7001"))


def test_a_failed_thread_request_records_nothing(server: ServerProcess, mock: MockUpstream) -> None:
    """No reply id, nothing to continue: the provider's refusal leaves no row (and a continue of the
    thread it named goes on from where it was)."""
    first = create(server, "alice")
    count = "SELECT count(*) AS n FROM owned_objects WHERE kind = 'message_thread'"
    before, asked = server.db_rows(count)[0]["n"], len(mock.requests)
    mock.enqueue(Reply(status=529))
    with pytest.raises(anthropic.APIStatusError):
        create(server, "alice", messages=MORE, thread=go_on(first.id))
    assert len(mock.requests) == asked + 1 and server.db_rows(count)[0]["n"] == before
    assert create(server, "alice", messages=MORE, thread=go_on(first.id)).content


def test_a_continue_is_held_at_its_threads_size(server: ServerProcess, mock: MockUpstream) -> None:
    """``small`` has $0.10 (10,000,000 µ¢): a create writing 6,000 tokens spends ~$0.06; the continue's
    own messages and 10 tokens fit in what is left, the 6,012 tokens Anthropic bills again as its input do
    not: refused before the provider is asked. Sent without the thread, the same turn fits."""
    first = create(server, "small", BILL_MAX, max_tokens=6_000)
    assert thread_row(server, first.id)["tokens"] == 12 + 6_000
    before = len(mock.requests)
    with pytest.raises(anthropic.RateLimitError) as failure:
        create(server, "small", BILL_MAX, max_tokens=10, messages=MORE, thread=go_on(first.id))
    error = error_of(failure)  # Anthropic's type for a 429, the reason in details (errors.ANTHROPIC_TYPES)
    assert (error["type"], error["details"]["error_code"]) == ("rate_limit_error", "budget_exceeded"), error
    assert mock.requests[before:] == []
    unthreaded = server.anthropic("small").messages.create(model=BILL_MAX, max_tokens=10, messages=MORE)
    assert unthreaded.usage.output_tokens == 10


def test_a_continues_cost_is_its_usage_exactly(server: ServerProcess) -> None:
    first = create(server, "roomy", BILL_MAX, max_tokens=6_000)
    second = create(server, "roomy", BILL_MAX, max_tokens=10, messages=MORE, thread=go_on(first.id))
    columns = ("status", "cost_uc", "cost_status")
    rows = wait_for(lambda: (found := key_traces(server, "roomy", columns)) and len(found) >= 2 and found)
    usage = second.usage
    billed = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    expected = (billed + usage.output_tokens) * PER_TOKEN_UC
    assert rows[-1] == {"status": 200, "cost_uc": expected, "cost_status": "exact"}


MALFORMED = [
    {"type": "fork", "previous_message_id": "msg_x"},
    {"type": "continue"},
    {"type": "continue", "previous_message_id": 5},
    {"type": "continue", "previous_message_id": ""},
    "continue",
    [CREATE],
]


@pytest.mark.parametrize("thread", MALFORMED, ids=[json.dumps(t) for t in MALFORMED])
def test_a_malformed_thread_is_a_400_unasked(server: ServerProcess, mock: MockUpstream, thread: object) -> None:
    before = len(mock.requests)
    status, answer = post(server, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": HI, "thread": thread})
    assert status == 400 and answer["error"]["type"] == "invalid_request_error", answer
    assert answer["error"]["message"].startswith("thread.")
    assert mock.requests[before:] == []


def test_a_thread_in_a_message_batch_is_refused_as_threads_refuse_a_request(
    server: ServerProcess, mock: MockUpstream
) -> None:
    alices = create(server, "alice").id
    before = len(mock.requests)
    for thread in (CREATE, go_on(alices)):
        params = {"model": MODEL, "max_tokens": 8, "messages": HI, "thread": thread}
        status, answer = post(server, "/v1/messages/batches", {"requests": [{"custom_id": "one", "params": params}]})
        assert status == 400, answer
        assert answer["error"]["details"] == {"error_code": "thread_unsupported_request"}
        assert answer["error"]["message"].startswith("requests.0.params.thread: ")
    assert mock.requests[before:] == []


def test_a_thread_request_is_never_answered_from_the_cache(server: ServerProcess, mock: MockUpstream) -> None:
    """Each is a turn Anthropic keeps under a new reply id: a replayed answer would keep none. Nor is a
    request asking for diagnostics (a replay's comparison would be stale; under a shared scope, another key's)."""
    put_module(server, "cache", {}, enabled=True)
    try:
        plain = [server.anthropic("alice").messages.create(model=MODEL, max_tokens=9, messages=HI) for _ in range(2)]
        assert plain[0].id == plain[1].id  # the cache is on
        replies = [create(server, "alice", max_tokens=9) for _ in range(2)]
        assert replies[0].id != replies[1].id
        assert all(thread_row(server, r.id)["name"] == "alice" for r in replies)
        diagnosed = {"diagnostics": {"previous_message_id": None}}  # its answer compares it with a reply before
        asked = server.anthropic("alice").messages
        twice = [asked.create(model=MODEL, max_tokens=9, messages=HI, extra_body=diagnosed) for _ in range(2)]
        assert twice[0].id != twice[1].id
    finally:
        put_module(server, "cache", {}, enabled=False)


def test_open_mode_is_one_owner(pyz_path, cache_home, mock, tmp_path_factory) -> None:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("threads38open") / "stockyard.db", env).start()
    try:
        client = srv.anthropic("sk-anything").beta.messages
        first = client.create(model=MODEL, max_tokens=8, messages=HI, thread=CREATE, betas=BETA)
        second = client.create(model=MODEL, max_tokens=8, messages=MORE, thread=go_on(first.id), betas=BETA)
        assert second.content[0].text == "Hello from mock"
        before = len(mock.requests)
        with pytest.raises(anthropic.NotFoundError):
            client.create(model=MODEL, max_tokens=8, messages=MORE, thread=go_on("msg_011madeup"), betas=BETA)
        assert mock.requests[before:] == []
        wait_for(lambda: srv.db_rows("SELECT key_id FROM owned_objects WHERE id = ?", (second.id,)) == [{"key_id": ""}])
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def test_a_threads_size_is_a_count_not_bytes_for_the_long_context_tier() -> None:
    """The kept size is Anthropic's own count: a long-context tier (Claude Sonnet 4.5 above 200k tokens)
    is chosen by it as it is, not by the most a tokenizer could make of bytes (a token a byte), which
    would have held a 60k-token thread's continue at the tier's double rates."""
    from stockyard.context import RequestContext
    from stockyard.estimate import request_cost
    from stockyard.pricing import Price

    tier = Price(input=6_000_000, cached_input=600_000, cache_write=7_500_000, output=22_500_000)
    price = Price(3_000_000, 300_000, 3_750_000, 15_000_000, long_context_above=200_000, long_context=tier)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": MORE, "thread": go_on("msg_1")}
    ctx = RequestContext("messages", "anthropic", "127.0.0.1", {}, raw=json.dumps(body).encode(), body=body)
    alone = request_cost(ctx, price, 4096)
    ctx.thread_tokens = 60_000
    assert request_cost(ctx, price, 4096) == alone + 60_000 * 3_750_000 // 1_000_000  # the dearest standard rate
    ctx.thread_tokens = 210_000  # above the tier: every token at its rates
    assert request_cost(ctx, price, 4096) > (210_000 * 7_500_000 + 10 * 22_500_000) // 1_000_000
