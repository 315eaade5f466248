"""Anthropic's Message Batches API through Stockyard with the official anthropic SDK, against the mock
upstream: create/retrieve/list/cancel/delete/results; results_url at Stockyard and results relayed;
ownership by client key (another key gets 404 and sees none of it in lists); budgets (used up → 429,
worst case → 429, a model without a price → 403); bad bodies → 400 in Anthropic's shape; a model
routed elsewhere → 400; the ended batch's cost recorded once at half the models' prices."""

from __future__ import annotations

import json
import re

import pytest
from anthropic import APIStatusError, BadRequestError, NotFoundError, PermissionDeniedError, RateLimitError
from conftest import ServerProcess, admitted_once_billed, mock_env, served, wait_for
from mock_upstream import CODE_OUTPUT, COMPLETION_TOKENS, MESSAGE_BATCHES, PROMPT_TOKENS, Reply
from rawhttp import connect, read_response

ADMIN = "admin-key-for-message-batches-0123456789"
MAX_BODY = 2_000_000
PLAIN, CACHED = "claude-batch-plain", "claude-batch-cached"  # the mock's names: priced explicitly below
# µ¢ per 1M tokens, as `prices set` stores USD 3 / 15 / 0.30 / 3.75 per 1M
RATES = {"input": 300_000_000, "output": 1_500_000_000, "cached": 30_000_000, "cache_write": 375_000_000}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY="sk-ant-test-batches-0123456789abcdef",
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_MAX_BODY_BYTES=str(MAX_BODY),
        STOCKYARD_BATCH_POLL="off",  # no background retrieves: a scripted reply reaches the call it is for
    )
    rates = ("--input", "3", "--output", "15", "--cached-input", "0.3", "--cache-write", "3.75")
    prices = [("prices", "set", model, *rates) for model in (PLAIN, CACHED)]
    keys = {
        "alice": [],
        "bob": [],
        "broke": ["--budget-usd", "0", "--budget-period", "day"],
        "tight": ["--budget-usd", "1", "--budget-period", "day"],
        "holder": ["--budget-usd", "1", "--budget-period", "day"],
        "plain-only": ["--models", PLAIN],
    }
    with served(pyz_path, tmp_path_factory, "msgbatches", env, keys, prices, ("sk-ant-test-batches",)) as srv:
        yield srv


def requests_for(*models: str, max_tokens: int = 16) -> list[dict]:
    return [
        {
            "custom_id": f"req-{i}",
            "params": {"model": m, "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
        for i, m in enumerate(models)
    ]


def traces(server: ServerProcess, endpoint: str) -> list[dict]:
    return server.db_rows("SELECT * FROM traces WHERE endpoint = ? ORDER BY ts_ms, id", (endpoint,))


def usage_rows(server: ServerProcess, batch_id: str) -> list[dict]:
    rows = server.db_rows(
        "SELECT t.*, b.request AS request_body FROM traces t LEFT JOIN trace_bodies b ON b.trace_id = t.id"
        " WHERE t.endpoint = 'message_batches.usage'"
    )
    return [r for r in rows if r["request_body"] is not None and batch_id.encode() in _inflate(r["request_body"])]


def _inflate(stored: bytes) -> bytes:
    import zlib

    try:
        return zlib.decompress(stored)
    except zlib.error:
        return bytes(stored)


def post(server: ServerProcess, who: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
    status, _, data = server.request(
        "POST",
        "/v1/messages/batches",
        body=body,
        raw=raw,
        headers={"x-api-key": server.keys[who], "anthropic-version": "2023-06-01"},
    )
    return status, json.loads(data)


def results(server: ServerProcess, who: str, batch_id: str) -> tuple[int, dict, bytes]:
    """A batch's results downloaded through Stockyard with ``who``'s key: (status, headers, body)."""
    return server.request("GET", f"/v1/messages/batches/{batch_id}/results", headers={"x-api-key": server.keys[who]})


def assert_anthropic_error(doc: dict, kind: str) -> str:
    assert doc["type"] == "error" and doc["error"]["type"] == kind, doc
    return doc["error"]["message"]


# -- the round trip ----------------------------------------------------------------------------


def test_create_retrieve_results_and_the_cost_recorded_once_at_half_price(server, mock):
    alice = server.anthropic("alice")
    mock.clear()
    batch = alice.messages.batches.create(requests=requests_for(PLAIN, PLAIN, CACHED, "claude-error-400"))
    assert batch.type == "message_batch" and batch.processing_status == "in_progress"
    assert batch.results_url is None and batch.id in MESSAGE_BATCHES.batches
    sent = mock.last("/v1/messages/batches")
    assert sent.method == "POST" and sent.headers["x-api-key"] == "sk-ant-test-batches-0123456789abcdef"
    assert [r["params"]["model"] for r in sent.json["requests"]] == [PLAIN, PLAIN, CACHED, "claude-error-400"]

    done = alice.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended"
    assert (done.request_counts.succeeded, done.request_counts.errored) == (3, 1)
    assert done.results_url == f"{server.url}/v1/messages/batches/{batch.id}/results"  # Stockyard's, not the mock's
    assert MESSAGE_BATCHES.batches[batch.id]["results_url"].startswith(mock.url)

    results = {r.custom_id: r.result for r in alice.messages.batches.results(batch.id)}
    assert sorted(results) == ["req-0", "req-1", "req-2", "req-3"]
    assert results["req-0"].type == "succeeded" and results["req-0"].message.usage.input_tokens == PROMPT_TOKENS
    assert results["req-3"].type == "errored"

    rows = wait_for(lambda: usage_rows(server, batch.id), timeout=30, what="the batch's usage row")
    assert len(rows) == 1
    row = rows[0]
    # 2 plain answers (12 input, 5 output) and 1 with cache reads (4 input, 8 read, 5 output); the error is free
    numerator = (
        2 * (PROMPT_TOKENS * RATES["input"] + COMPLETION_TOKENS * RATES["output"])
        + 4 * RATES["input"]
        + 8 * RATES["cached"]
        + COMPLETION_TOKENS * RATES["output"]
    )
    expected = (numerator + 10**6) // (2 * 10**6)  # half, in µ¢ (10⁻⁶ µ¢ units), rounded half up once
    assert expected == 15_570
    assert row["cost_uc"] == expected and row["cost_status"] == "exact" and row["provider"] == "anthropic"
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (3 * PROMPT_TOKENS, 15, 8)
    assert row["dialect"] == "anthropic" and row["model"] == f"{PLAIN},{CACHED}"
    alice_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'alice'")[0]["id"]
    assert row["key_id"] == alice_id
    assert server.db_rows("SELECT billed, kind FROM owned_objects WHERE id = ?", (batch.id,)) == [
        {"billed": 1, "kind": "message_batch"}
    ]

    alice.messages.batches.retrieve(batch.id)  # seen again: never a second row
    alice.messages.batches.list()
    list(alice.messages.batches.results(batch.id))
    wait_for(lambda: traces(server, "message_batches.results")[-1:], what="the results trace")
    assert len(usage_rows(server, batch.id)) == 1

    deleted = alice.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(NotFoundError):
        alice.messages.batches.retrieve(batch.id)
    assert len(usage_rows(server, batch.id)) == 1


def test_every_call_leaves_a_trace_costing_nothing(server):
    alice = server.anthropic("alice")
    batch = alice.messages.batches.create(requests=requests_for(PLAIN))
    alice.messages.batches.retrieve(batch.id)
    list(alice.messages.batches.results(batch.id))
    alice.messages.batches.list()
    for endpoint in ("create", "retrieve", "results", "list"):
        rows = wait_for(lambda e=endpoint: traces(server, f"message_batches.{e}"), what=endpoint)
        assert all(r["cost_uc"] == 0 and r["dialect"] == "anthropic" for r in rows if r["status"] == 200), endpoint


def test_results_are_relayed_as_a_stream_and_the_trace_keeps_their_size(server):
    alice = server.anthropic("alice")
    batch = alice.messages.batches.create(requests=requests_for(PLAIN, PLAIN))
    alice.messages.batches.retrieve(batch.id)
    status, headers, body = results(server, "alice", batch.id)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["custom_id"] for line in lines] == ["req-0", "req-1"]
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert trace["endpoint"] == "message_batches.results" and trace["cost_uc"] == 0


CODE_TOOL = {"type": "code_execution_20250825", "name": "code_execution"}
ASK = [{"role": "user", "content": "make a csv"}]


def code_requests(count: int) -> list[dict]:
    """``count`` requests running the code execution tool, and one plain request after them."""
    params = {"model": PLAIN, "max_tokens": 16, "tools": [CODE_TOOL], "messages": ASK}
    return [{"custom_id": f"code-{i}", "params": params} for i in range(count)] + requests_for(PLAIN)


def written_and_container(message) -> tuple[str, str]:
    """The file a result's code wrote and the container it ran in."""
    result = next(b for b in message.content if b.type == "bash_code_execution_tool_result")
    return result.content.content[0].file_id, message.container.id


def test_the_files_and_containers_a_batch_made_are_its_keys_once_its_results_are_read(server):
    """Was: a batch's results were relayed unread, so the file its code wrote was Anthropic's 404 to
    the batch's own key (downloaded, or named in a later message) and its container could not be
    run in again. Now reading the results through Stockyard claims them for the batch's key; another
    key still gets the 404 a missing object gets."""
    alice, bob = server.anthropic("alice"), server.anthropic("bob")
    batch = alice.messages.batches.create(requests=code_requests(3))
    assert alice.messages.batches.retrieve(batch.id).processing_status == "ended"
    results = {r.custom_id: r.result for r in alice.messages.batches.results(batch.id)}
    made = [written_and_container(results[f"code-{i}"].message) for i in range(3)]
    assert len({file_id for file_id, _ in made}) == 3 and len({c for _, c in made}) == 3
    for file_id, container in made:
        assert alice.beta.files.download(file_id).read() == CODE_OUTPUT
        assert alice.beta.files.retrieve_metadata(file_id).downloadable
        with pytest.raises(NotFoundError):
            bob.beta.files.download(file_id)
        upload = {"type": "container_upload", "file_id": file_id}  # a later message names the file
        again = alice.messages.create(
            model=PLAIN, max_tokens=16, tools=[CODE_TOOL], messages=[{"role": "user", "content": [upload]}],
            container=container,
        )  # fmt: skip
        assert again.container.id == container
        with pytest.raises(NotFoundError):
            bob.messages.create(model=PLAIN, max_tokens=16, tools=[CODE_TOOL], messages=ASK, container=container)
    listed = {f.id for f in alice.beta.files.list()}
    assert {file_id for file_id, _ in made} <= listed
    assert not {file_id for file_id, _ in made} & {f.id for f in bob.beta.files.list()}


def test_a_batchs_results_never_give_its_key_another_keys_file_or_container(server):
    """Results naming objects another key holds (as a provider's answer could) leave them with that
    key: a claim takes only what no key owns."""
    alice, bob = server.anthropic("alice"), server.anthropic("bob")
    theirs = bob.messages.create(model=PLAIN, max_tokens=16, tools=[CODE_TOOL], messages=ASK)
    bobs_file, bobs_container = written_and_container(theirs)
    batch = alice.messages.batches.create(requests=code_requests(1))
    alice.messages.batches.retrieve(batch.id)
    (line, plain) = MESSAGE_BATCHES.results[batch.id]
    doc = json.loads(line)
    doc["result"]["message"]["container"]["id"] = bobs_container
    doc["result"]["message"]["content"][1]["content"]["content"][0]["file_id"] = bobs_file
    MESSAGE_BATCHES.results[batch.id] = [json.dumps(doc), plain]
    named = written_and_container(next(iter(alice.messages.batches.results(batch.id))).result.message)
    assert named == (bobs_file, bobs_container)
    with pytest.raises(NotFoundError):
        alice.beta.files.download(bobs_file)
    with pytest.raises(NotFoundError):
        alice.messages.create(model=PLAIN, max_tokens=16, tools=[CODE_TOOL], messages=ASK, container=bobs_container)
    assert bob.beta.files.download(bobs_file).read() == CODE_OUTPUT
    assert (
        bob.messages.create(
            model=PLAIN, max_tokens=16, tools=[CODE_TOOL], messages=ASK, container=bobs_container
        ).container.id
        == bobs_container
    )


def test_cancel_then_delete(server):
    alice = server.anthropic("alice")
    batch = alice.messages.batches.create(requests=requests_for(PLAIN))
    assert alice.messages.batches.cancel(batch.id).processing_status == "canceling"
    ended = alice.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.canceled == 1
    assert [r.result.type for r in alice.messages.batches.results(batch.id)] == ["canceled"]
    assert alice.messages.batches.delete(batch.id).type == "message_batch_deleted"
    assert not server.db_rows("SELECT 1 FROM owned_objects WHERE id = ?", (batch.id,))


def test_a_batch_deleted_before_anyone_saw_it_end_is_billed_first(server):
    """Its results go with it: the delete records the cost while they still exist."""
    alice = server.anthropic("alice")
    batch = alice.messages.batches.create(requests=requests_for(PLAIN))
    alice.messages.batches.delete(batch.id)  # the mock ends it on the retrieve Stockyard makes first
    rows = usage_rows(server, batch.id)
    assert len(rows) == 1 and rows[0]["prompt_tokens"] == PROMPT_TOKENS and rows[0]["cost_uc"] > 0


def test_a_delete_is_refused_while_the_batch_state_cannot_be_read(server, mock):
    """Was: when the provider's status check failed (a 500, a 529 overload), the delete went ahead
    unrecorded: an ended batch's results, and its cost, were gone for good."""
    alice = server.anthropic("alice")
    batch = alice.messages.batches.create(requests=requests_for(PLAIN))
    mock.enqueue(Reply(status=500))  # the status check Stockyard makes before deleting
    status, _, data = server.request(
        "DELETE",
        f"/v1/messages/batches/{batch.id}",
        headers={"x-api-key": server.keys["alice"], "anthropic-version": "2023-06-01"},
    )
    assert status == 502 and "nothing was deleted" in assert_anthropic_error(json.loads(data), "api_error")
    assert server.db_rows("SELECT id FROM owned_objects WHERE id = ?", (batch.id,))  # still owned, still held
    alice.messages.batches.delete(batch.id)  # the provider answers again: recorded, then deleted
    assert len(usage_rows(server, batch.id)) == 1


def test_a_create_that_gets_no_answer_is_not_retried_by_the_sdk(pyz_path, cache_home, mock, tmp_path):
    """Was: a create whose answer never came (here: the provider takes 3 s, the read timeout is 1 s)
    answered a plain 504, so the SDK sent the batch again: two batches at the provider, neither
    owned nor billed. The answer now tells the SDK not to retry, and the log says what happened."""
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-slow-0123456789", ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", {**env, "STOCKYARD_UPSTREAM_TIMEOUT": "1"}).start()
    try:
        mock.clear()
        mock.clear_replies()
        mock.enqueue(Reply(hang_s=3))
        retrying = srv.anthropic("unused", max_retries=2)
        with pytest.raises(APIStatusError) as err:
            retrying.messages.batches.create(requests=requests_for(PLAIN))
        assert err.value.status_code == 504 and err.value.response.headers["x-should-retry"] == "false"
        assert "may have been created" in err.value.message
        assert len([r for r in mock.requests if r.method == "POST"]) == 1
    finally:
        srv.stop()
    assert "may run there unowned and unbilled" in srv.log


def test_results_url_without_a_host_header_names_the_address_and_port_reached(server):
    """HTTP/1.0 may send no Host: results_url was http://127.0.0.1/… (no port), a broken link."""
    batch = server.anthropic("alice").messages.batches.create(requests=requests_for(PLAIN))
    head = (
        f"GET /v1/messages/batches/{batch.id} HTTP/1.0\r\n"
        f"x-api-key: {server.keys['alice']}\r\nanthropic-version: 2023-06-01\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(head.encode())
        status, _, answer = read_response(sock)
    assert status == 200, answer
    url = json.loads(answer)["results_url"]  # the mock ends a batch when it is retrieved
    assert url == f"http://127.0.0.1:{server.port}/v1/messages/batches/{batch.id}/results"


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/llm/", "X-Forwarded-For": "203.0.113.9"}


def results_url_of(srv: ServerProcess, key: str, batch_id: str, headers: dict[str, str]) -> str:
    """The results_url a retrieve answers (the mock ends a batch when it is retrieved)."""
    asked = {"x-api-key": key, "anthropic-version": "2023-06-01", **headers}
    status, _, body = srv.request("GET", f"/v1/messages/batches/{batch_id}", headers=asked)
    assert status == 200, body
    return json.loads(body)["results_url"]


def test_results_url_follows_a_trusted_reverse_proxys_scheme_and_path_prefix(pyz_path, cache_home, mock, tmp_path):
    """Was: behind a proxy serving Stockyard under https://host/llm/, results_url lost the /llm
    prefix (the SDK's results() follows it: a 404). A trusted proxy's X-Forwarded-Prefix now
    counts; a prefix that is not a plain path is ignored."""
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-prefix-0123456789", ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", {**env, "STOCKYARD_TRUSTED_PROXIES": "127.0.0.1"})
    srv.start()
    try:
        batch = srv.anthropic("unused").messages.batches.create(requests=requests_for(PLAIN))
        path = f"/v1/messages/batches/{batch.id}/results"
        assert results_url_of(srv, "unused", batch.id, FORWARDED) == f"https://127.0.0.1:{srv.port}/llm{path}"
        for bad in ("//evil.example", "/a/../b", "https://evil.example", "/llm?x=1"):
            url = results_url_of(srv, "unused", batch.id, {**FORWARDED, "X-Forwarded-Prefix": bad})
            assert url == f"https://127.0.0.1:{srv.port}{path}", bad
    finally:
        srv.stop()


def test_results_url_ignores_forwarded_headers_from_an_untrusted_sender(server):
    batch = server.anthropic("alice").messages.batches.create(requests=requests_for(PLAIN))
    url = results_url_of(server, server.keys["alice"], batch.id, FORWARDED)
    assert url == f"{server.url}/v1/messages/batches/{batch.id}/results"


def test_list_shows_only_the_keys_own_batches_and_pages_honestly(server):
    alice, bob = server.anthropic("alice"), server.anthropic("bob")
    mine = []
    for _ in range(3):  # interleaved with another key's batches, which the pages skip
        mine.append(alice.messages.batches.create(requests=requests_for(PLAIN)).id)
        bob.messages.batches.create(requests=requests_for(PLAIN))
    newest_first = mine[::-1]
    first = alice.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == newest_first[:2] and first.has_more
    every = [b.id for b in alice.messages.batches.list(limit=2)]  # the SDK follows after_id
    assert every[:3] == newest_first and not set(every) & {b.id for b in bob.messages.batches.list(limit=1000)}
    newer = alice.messages.batches.list(limit=1, before_id=mine[0])
    assert [b.id for b in newer.data] == [mine[1]] and newer.has_more
    status, _, body = server.request(
        "GET", "/v1/messages/batches?limit=1001", headers={"x-api-key": server.keys["alice"]}
    )
    assert status == 400 and assert_anthropic_error(json.loads(body), "invalid_request_error")


def test_paging_from_another_keys_batch_says_nothing_of_it(server, mock):
    """``after_id`` or ``before_id`` naming another key's batch answers as one naming none that
    exists, unasked: the provider's page from it would show whether it exists and where it stands
    among the key's own."""
    alice, bob = server.anthropic("alice"), server.anthropic("bob")
    bobs = bob.messages.batches.create(requests=requests_for(PLAIN)).id
    target = alice.messages.batches.create(requests=requests_for(PLAIN)).id
    bob.messages.batches.create(requests=requests_for(PLAIN))
    for cursor in ("after_id", "before_id"):
        pages = {}
        for named in (target, "msgbatch_never_made"):
            mock.clear()
            status, _, body = server.request(
                "GET", f"/v1/messages/batches?{cursor}={named}", headers={"x-api-key": server.keys["bob"]}
            )
            assert status == 200, body
            pages[named] = json.loads(body)
            assert [r for r in mock.requests if r.path.startswith("/v1/messages/batches")] == []
        assert (
            pages[target]
            == pages["msgbatch_never_made"]
            == {
                "data": [],
                "has_more": False,
                "first_id": None,
                "last_id": None,
            }
        )
    assert bobs in [b.id for b in bob.messages.batches.list(limit=1000)]  # the key's own are listed still


# -- ownership -----------------------------------------------------------------------------------


def test_another_key_gets_404_as_for_an_id_nobody_has(server, mock):
    alice, bob = server.anthropic("alice"), server.anthropic("bob")
    batch = alice.messages.batches.create(requests=requests_for(PLAIN))
    mock.clear()
    messages = []
    for call in (bob.messages.batches.retrieve, bob.messages.batches.cancel, bob.messages.batches.delete):
        for batch_id in (batch.id, "msgbatch_nobody_has_this"):
            with pytest.raises(NotFoundError) as err:
                call(batch_id)
            messages.append(assert_anthropic_error(err.value.body, "not_found_error").replace(batch_id, "ID"))
    for batch_id in (batch.id, "msgbatch_nobody_has_this"):
        status, _, body = results(server, "bob", batch_id)
        assert status == 404
        messages.append(assert_anthropic_error(json.loads(body), "not_found_error").replace(batch_id, "ID"))
    assert len(set(messages)) == 1  # the same answer: existence does not leak
    assert not mock.requests  # and the provider was never asked
    assert batch.id not in [b.id for b in bob.messages.batches.list()]
    assert alice.messages.batches.retrieve(batch.id).id == batch.id


def test_open_mode_has_one_owner(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-open-0123456789", ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        sdk = srv.anthropic("unused")
        batch = sdk.messages.batches.create(requests=requests_for(PLAIN))
        assert batch.id in [b.id for b in sdk.messages.batches.list()]
        assert sdk.messages.batches.retrieve(batch.id).results_url.startswith(srv.url)
        assert srv.db_rows("SELECT key_id FROM owned_objects WHERE id = ?", (batch.id,)) == [{"key_id": ""}]
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


# -- routing ---------------------------------------------------------------------------------------


def test_a_provider_qualified_model_is_sent_under_the_providers_name(server, mock):
    mock.clear()
    server.anthropic("alice").messages.batches.create(requests=requests_for(f"anthropic/{PLAIN}", PLAIN))
    sent = mock.last("/v1/messages/batches")
    assert [r["params"]["model"] for r in sent.json["requests"]] == [PLAIN, PLAIN]


def test_a_model_served_by_a_non_anthropic_provider_is_refused(server, mock):
    mock.clear()
    with pytest.raises(BadRequestError) as err:
        server.anthropic("alice").messages.batches.create(requests=requests_for(PLAIN, "gpt-4o-mini"))
    message = err.value.body["error"]["message"]
    assert err.value.body["type"] == "error" and "requests.1.params.model" in message and "'openai'" in message
    assert not mock.requests


def test_a_key_with_a_model_allow_list_batches_only_its_models(server, mock):
    mock.clear()
    sdk = server.anthropic("plain-only")
    with pytest.raises(PermissionDeniedError) as err:
        sdk.messages.batches.create(requests=requests_for(PLAIN, CACHED))
    assert "requests.1.params.model" in err.value.body["error"]["message"]
    assert not mock.requests
    assert sdk.messages.batches.create(requests=requests_for(PLAIN)).id


# -- budgets ---------------------------------------------------------------------------------------


def test_a_used_up_budget_starts_no_batch(server, mock):
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        server.anthropic("broke").messages.batches.create(requests=requests_for(PLAIN))
    assert (
        err.value.body["type"] == "error"
        and err.value.body["error"]["type"] == "rate_limit_error"
        and err.value.body["error"]["details"] == {"error_code": "budget_exceeded"}
    )  # as /v1/messages answers
    assert err.value.response.headers["x-should-retry"] == "false"
    assert not mock.requests


def test_a_batch_whose_worst_case_passes_the_budget_is_refused(server, mock):
    """$1 left; 10 requests of up to 100,000 output tokens at $15/M, halved: up to $7.50."""
    mock.clear()
    tight = server.anthropic("tight")
    with pytest.raises(RateLimitError) as err:
        tight.messages.batches.create(requests=requests_for(*[PLAIN] * 10, max_tokens=100_000))
    assert "budget exceeded" in err.value.body["error"]["message"]
    assert not mock.requests
    # 10 requests of up to 10,000 output tokens: $1.50, halved $0.75 (and their input): within the budget
    assert tight.messages.batches.create(requests=requests_for(*[PLAIN] * 10, max_tokens=10_000)).id


def test_a_batch_is_refused_at_the_request_that_passes_what_the_budget_has_left(server, mock):
    """Was: every request of a batch was checked and priced before its worst case was compared with
    the budget (90,000 requests under a nearly spent budget: ~3 s of CPU a refusal). Now the running
    worst case is compared with what is left as it grows: a batch past it is the same 429 at that
    request, before the requests after it are read (a malformed one later is not reached)."""
    mock.clear()
    past = requests_for(*[PLAIN] * 10, max_tokens=100_000)  # up to $7.50 at the batch price; $1 left
    bad = {**past[0], "custom_id": "bad", "params": {**past[0]["params"], "max_tokens": "lots"}}
    headers = {"x-api-key": server.keys["tight"], "anthropic-version": "2023-06-01"}
    status, _, answer = server.request("POST", "/v1/messages/batches", {"requests": [*past, bad]}, headers)
    error = json.loads(answer)["error"]
    assert status == 429 and error["type"] == "rate_limit_error", answer
    assert error["details"] == {"error_code": "budget_exceeded"}, answer
    assert "budget exceeded" in error["message"] and "$1.00" in error["message"], error
    assert re.search(r"may cost at least \$[0-9.]+, its first (request|2 of 11 requests) alone", error["message"]), (
        error
    )
    assert not mock.requests
    # the malformed request alone, within the budget: its 400 (it was never a reason to refuse above)
    status, _, answer = server.request("POST", "/v1/messages/batches", {"requests": [bad]}, headers)
    assert status == 400 and "max_tokens" in json.loads(answer)["error"]["message"], answer


def test_an_unbilled_batch_holds_its_worst_case_until_it_is_billed(server, mock):
    """Was: checked, not held: any number of $0.75 batches started under a $1 budget."""
    holder = server.anthropic("holder")
    first = holder.messages.batches.create(requests=requests_for(*[PLAIN] * 10, max_tokens=10_000))
    mock.clear()
    with pytest.raises(RateLimitError) as err:
        holder.messages.batches.create(requests=requests_for(*[PLAIN] * 10, max_tokens=10_000))
    assert "budget exceeded" in err.value.body["error"]["message"] and not mock.requests
    assert holder.messages.batches.retrieve(first.id).processing_status == "ended"
    again = admitted_once_billed(
        server,
        first.id,
        lambda: holder.messages.batches.create(requests=requests_for(*[PLAIN] * 10, max_tokens=10_000)),
        RateLimitError,
    )
    assert again.id != first.id


def test_a_batch_request_with_provider_run_tools_nothing_bounds_is_refused_under_a_budget(server, mock):
    """As on /v1/messages: the MCP connector (or code execution, or an unbounded web fetch) brings
    in input no worst case bounds — in a batch, hundreds of requests at once."""
    mcp = [{"type": "url", "url": "https://mcp.example.com/sse", "name": "x"}]
    requests = requests_for(PLAIN)
    requests[0]["params"]["mcp_servers"] = mcp
    mock.clear()
    status, doc = post(server, "tight", {"requests": requests})
    assert status == 403 and "requests.0.params.mcp_servers" in assert_anthropic_error(doc, "permission_error")
    assert not mock.requests
    assert post(server, "alice", {"requests": requests})[0] == 200  # no budget: passed through


def test_a_model_without_a_price_under_a_budget_is_refused(server, mock):
    mock.clear()
    with pytest.raises(PermissionDeniedError) as err:
        server.anthropic("tight").messages.batches.create(requests=requests_for(PLAIN, "claude-no-price-anywhere"))
    assert "no price" in err.value.body["error"]["message"]
    assert not mock.requests
    status, doc = post(server, "tight", {"requests": requests_for("claude-no-price-anywhere")})
    assert status == 403 and assert_anthropic_error(doc, "permission_error")


# -- bad bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"requests": "not a list"}, "requests: must be a list"),
        ({"requests": {"custom_id": "a"}}, "requests: must be a list"),
        ({}, "requests: must be a list"),
        ({"requests": []}, "at least 1"),
        ({"requests": [*requests_for(PLAIN), *requests_for(PLAIN)]}, "'req-0' is used twice"),
        ({"requests": [{"custom_id": "a", "params": {"max_tokens": 5, "messages": []}}]}, "requests.0.params.model"),
        (
            {"requests": [{"custom_id": "a", "params": {"model": PLAIN, "messages": []}}]},
            "requests.0.params.max_tokens",
        ),
        ({"requests": [{"custom_id": "a b", "params": {"model": PLAIN, "max_tokens": 5}}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "x" * 65, "params": {"model": PLAIN, "max_tokens": 5}}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "a", "params": "no"}]}, "requests.0.params"),
        ({"requests": ["no"]}, "requests.0"),
        ({"requests": [{"custom_id": "a", "params": {"model": PLAIN, "max_tokens": -1}}]}, "max_tokens"),
        ({"requests": [{}] * 100_001}, "at most 100,000"),
        # a model name as /v1/messages checks it (proxy.checked_model_name): no NUL, at most 256 characters
        ({"requests": [{"custom_id": "a", "params": {"model": PLAIN + "\u0000", "max_tokens": 5}}]}, "params.model"),
        ({"requests": [{"custom_id": "a", "params": {"model": "c" * 300, "max_tokens": 5}}]}, "params.model"),
    ],
)
def test_bad_bodies_are_400_in_anthropics_shape(server, mock, body, says):
    mock.clear()
    status, doc = post(server, "alice", body)
    assert status == 400 and says in assert_anthropic_error(doc, "invalid_request_error")
    assert not [r for r in mock.requests if r.path.startswith("/v1/messages/batches")]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"requests": [], "requests": []}'])
def test_a_body_that_is_no_json_object_is_400(server, raw):
    status, doc = post(server, "alice", raw=raw)
    assert status == 400 and assert_anthropic_error(doc, "invalid_request_error")


def test_a_body_over_the_size_limit_is_413_in_anthropics_shape(server):
    filler = "x" * (MAX_BODY + 1000)
    status, doc = post(server, "alice", {"requests": [{"custom_id": "a", "params": {"model": PLAIN, "pad": filler}}]})
    assert status == 413 and assert_anthropic_error(doc, "request_too_large")


def test_no_key_is_401_in_anthropics_shape(server):
    status, _, body = server.request("POST", "/v1/messages/batches", body={"requests": requests_for(PLAIN)})
    assert status == 401 and json.loads(body)["type"] == "error"


def test_wrong_method_is_405_with_allow(server):
    status, headers, body = server.request(
        "POST", "/v1/messages/batches/msgbatch_x", headers={"x-api-key": server.keys["alice"]}
    )
    assert status == 405 and headers["allow"] == "GET, HEAD, DELETE" and json.loads(body)["type"] == "error"


def scripted_results(alice, lines_before: list[str]) -> tuple[str, list[str]]:
    """A code execution batch of alice's whose results the mock answers with ``lines_before`` put
    before its own lines; (batch id, every line)."""
    batch = alice.messages.batches.create(requests=code_requests(1))
    alice.messages.batches.retrieve(batch.id)
    MESSAGE_BATCHES.results[batch.id] = [*lines_before, *MESSAGE_BATCHES.results[batch.id]]
    return batch.id, MESSAGE_BATCHES.results[batch.id]


def test_a_result_nested_past_the_parsers_depth_is_relayed_whole_and_the_rest_still_claimed(server):
    """Was: a result line nested deeper than Python's JSON parser goes (a tool call's input the model
    was asked to nest: the prompt is the client's) raised RecursionError in the claim, midway
    through the relay: a traceback, and the client's download cut short. Now that line names
    nothing and the results go on whole; the lines after it are still claimed."""
    alice = server.anthropic("alice")
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    nested = (
        '{"custom_id":"deep","result":{"type":"succeeded","message":{"id":"msg_deep","type":"message",'
        '"role":"assistant","model":"%s","container":{"id":"container_deep"},"content":[{"type":"tool_use",'
        '"id":"toolu_deep","name":"nest","input":%s}],"stop_reason":"tool_use","stop_sequence":null,'
        '"usage":{"input_tokens":1,"output_tokens":1}}}}' % (PLAIN, deep)
    )
    batch_id, lines = scripted_results(alice, [nested])
    status, _, body = results(server, "alice", batch_id)
    assert status == 200 and body == "".join(line + "\n" for line in lines).encode()
    file_id = json.loads(lines[1])["result"]["message"]["content"][1]["content"]["content"][0]["file_id"]
    assert alice.beta.files.download(file_id).read() == CODE_OUTPUT
    assert "Traceback" not in server.log and "RecursionError" not in server.log


def test_ids_a_result_names_outside_the_code_execution_tools_places_are_claimed_by_no_one(server, mock):
    """The model echoing ids the client's prompt chose — in its text, a tool call's input, a server
    tool call's input — and results that did not succeed (errored, canceled, expired: no message the
    tool wrote) claim nothing: only a code execution result's files and the message's own
    ``container`` are what the tool made. (Sound when reviewed; kept as a guard.)"""
    alice = server.anthropic("alice")
    import anthropic

    upstream = anthropic.Anthropic(base_url=mock.url, api_key="sk-ant-test-batches-0123456789abcdef", max_retries=0)
    loose = upstream.messages.create(model=PLAIN, max_tokens=16, tools=[CODE_TOOL], messages=ASK)
    loose_file, loose_container = written_and_container(loose)  # made at the provider, no key's
    output = {"type": "bash_code_execution_output", "file_id": loose_file}
    echoed = {
        "custom_id": "echo",
        "result": {
            "type": "succeeded",
            "message": {
                "id": "msg_echo", "type": "message", "role": "assistant", "model": PLAIN, "container": None,
                "content": [
                    {"type": "text", "text": json.dumps({"content": [output], "container": {"id": loose_container}})},
                    {"type": "tool_use", "id": "toolu_1", "name": "f",
                     "input": {"file_id": loose_file, "container": {"id": loose_container}, "content": [output]}},
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "bash_code_execution",
                     "input": {"command": "cat", "file_id": loose_file, "container": loose_container}},
                ],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        },
    }  # fmt: skip
    unsucceeded = [
        {"custom_id": kind, "result": {"type": kind, "message": loose.model_dump(mode="json")}}
        for kind in ("errored", "canceled", "expired")
    ]
    batch_id, _ = scripted_results(alice, [json.dumps(line) for line in (echoed, *unsucceeded)])
    assert len(list(alice.messages.batches.results(batch_id))) == 6
    with pytest.raises(NotFoundError):
        alice.beta.files.retrieve_metadata(loose_file)
    with pytest.raises(NotFoundError):
        alice.messages.create(model=PLAIN, max_tokens=16, tools=[CODE_TOOL], messages=ASK, container=loose_container)


def test_a_result_naming_more_ids_than_one_statement_takes_is_claimed_whole(server):
    """Was: the ids a chunk's lines named were looked up in one statement (``Ownership.taken``), so a
    result naming more than the database takes parameters (SQLite's compiled limit, here 250000;
    32767 through pg8000) raised midway through the relay: the download cut short, a traceback. Now
    looked up ``OWNER_CHUNK`` at a time, as ``first_of_another`` does: the results go on whole and
    every id no key held is the batch's key's."""
    alice = server.anthropic("alice")
    count = 250_001
    outputs = ",".join('{"type":"bash_code_execution_output","file_id":"file_many%06d"}' % i for i in range(count))
    many = (
        '{"custom_id":"many","result":{"type":"succeeded","message":{"id":"msg_many","type":"message",'
        '"role":"assistant","model":"%s","container":null,"content":[{"type":"bash_code_execution_tool_result",'
        '"tool_use_id":"srvtoolu_many","content":{"type":"bash_code_execution_result","stdout":"","stderr":"",'
        '"return_code":0,"content":[%s]}}],"stop_reason":"end_turn","stop_sequence":null,'
        '"usage":{"input_tokens":1,"output_tokens":1}}}}' % (PLAIN, outputs)
    )
    batch_id, lines = scripted_results(alice, [many])
    status, _, body = results(server, "alice", batch_id)
    assert status == 200 and body == "".join(line + "\n" for line in lines).encode()
    rows = server.db_rows("SELECT COUNT(*) AS n FROM owned_objects WHERE id LIKE 'file_many%' AND key_id <> ''")
    assert rows == [{"n": count}]
    assert "Traceback" not in server.log


def test_a_results_download_cut_midway_leaves_no_traceback_and_a_second_reader_gets_it_whole(server):
    """Two readers of the same results, one of which hangs up after the first bytes: no traceback,
    the other gets every line, and what the lines name is the key's once (no duplicate rows)."""
    alice = server.anthropic("alice")
    pad = "p" * 4000
    filler = [json.dumps({"custom_id": f"pad-{i}", "result": {"type": "expired"}, "pad": pad}) for i in range(500)]
    batch_id, lines = scripted_results(alice, filler)
    ask = (
        f"GET /v1/messages/batches/{batch_id}/results HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"x-api-key: {server.keys['alice']}\r\n\r\n"
    )
    sock = connect(server)
    sock.sendall(ask.encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sock.close()
    status, _, body = results(server, "alice", batch_id)
    assert status == 200 and body == "".join(line + "\n" for line in lines).encode()
    file_id = json.loads(lines[-2])["result"]["message"]["content"][1]["content"]["content"][0]["file_id"]
    assert server.db_rows("SELECT key_id FROM owned_objects WHERE id = ?", (file_id,)) == [
        {"key_id": server.db_rows("SELECT key_id FROM owned_objects WHERE id = ?", (batch_id,))[0]["key_id"]}
    ]
    wait_for(lambda: server.log.count(f"{batch_id}/results") >= 2, what="both reads logged")
    assert "Traceback" not in server.log
