"""Background Responses (``background: true``) billed exactly their real usage, once.

The real pyz against the mock upstream, which runs a background response as OpenAI does
(``mock_upstream._background_look``: ``queued`` when made, ``in_progress`` at the first retrieve,
``completed`` with its usage at the next; streamed to its end; cancelled with the usage made so
far), with the official ``openai`` SDK as the client. gpt-4o-mini: 15 µ¢ a token in, 60 out.
Runs on PostgreSQL too (``STOCKYARD_TEST_STORE=postgresql``).
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import TEST_STORE, ServerProcess, mock_env, served, wait_for
from mock_upstream import BACKGROUND_CANCEL_OUTPUT, COMPLETION_TOKENS, PROMPT_TOKENS, Reply
from module_helpers import key_traces, new_key

ADMIN = "admin-secret-for-background-tests"
MODEL = "gpt-4o-mini"
IN_UC, OUT_UC = 15, 60  # gpt-4o-mini's µ¢ a token
BUDGET_UC = 303_000  # $0.00303: five worst cases of 1,000 output tokens and a few in


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    """Nobody looks but the clients (the batch watch off)."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off")
    with served(pyz_path, tmp_path_factory, "background", env) as srv:
        yield srv


def usage_rows(server: ServerProcess, name: str) -> list[dict]:
    rows = key_traces(server, name, ("endpoint", "cost_uc", "cost_status"))
    return [row for row in rows if row["endpoint"] == "responses.usage"]


def cost_of(usage) -> int:
    return usage.input_tokens * IN_UC + usage.output_tokens * OUT_UC


def test_a_background_response_is_billed_once_across_polls_a_stream_and_a_cancel(server, mock):
    """Its POST costs 0 (nothing used yet, no estimate); the retrieve that sees it in progress bills
    nothing; the stream that runs it to its end bills its usage once, before the end event reaches
    the client; the retrieves and the cancel after that bill nothing more."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.responses.create(model=MODEL, input="a long job", background=True)
    assert made.status == "queued" and made.usage is None
    assert client.responses.retrieve(made.id).status == "in_progress"
    assert usage_rows(server, name) == []
    events = list(client.responses.retrieve(made.id, stream=True))
    assert events[-1].type == "response.completed", events
    usage = events[-1].response.usage
    assert usage is not None and usage.output_tokens > 0
    (billed,) = usage_rows(server, name)  # written before the end event went out
    assert billed == {"endpoint": "responses.usage", "cost_uc": cost_of(usage), "cost_status": "exact"}
    assert client.responses.retrieve(made.id).status == "completed"
    assert client.responses.cancel(made.id).status == "completed"
    assert client.responses.retrieve(made.id).usage == usage
    rows = wait_for(lambda: (r := key_traces(server, name)) and len(r) >= 7 and r, what="seven traces")
    assert len(rows) == 7, rows  # create, retrieve, stream, its bill, retrieve, cancel, retrieve
    assert [r["endpoint"] for r in rows].count("responses.usage") == 1, rows
    assert rows[0]["endpoint"] == "responses" and (rows[0]["cost_uc"], rows[0]["cost_status"]) == (0, "exact")
    assert sum(r["cost_uc"] for r in rows) == cost_of(usage), rows


def test_a_cancelled_background_response_is_billed_what_the_provider_reports(server, mock):
    """A cancel before its end: the usage the cancel's answer reports (what it made so far), once."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.responses.create(model=MODEL, input="a job to stop", background=True)
    cancelled = client.responses.cancel(made.id)
    assert cancelled.status == "cancelled" and cancelled.usage.output_tokens == BACKGROUND_CANCEL_OUTPUT
    (billed,) = usage_rows(server, name)
    assert billed["cost_uc"] == cost_of(cancelled.usage)
    assert client.responses.retrieve(made.id).status == "cancelled"
    assert len(usage_rows(server, name)) == 1


def test_a_background_response_that_ended_unseen_is_billed_before_its_delete(server, mock):
    """A delete takes the response, and its usage, away at the provider: one that ended since its key
    last looked is retrieved and billed first."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.responses.create(model=MODEL, input="a job to forget", background=True)
    assert client.responses.retrieve(made.id).status == "in_progress"
    client.responses.delete(made.id)
    (billed,) = usage_rows(server, name)
    assert billed["cost_uc"] == PROMPT_TOKENS * IN_UC + COMPLETION_TOKENS * OUT_UC  # what the mock reports


def test_a_background_response_deleted_while_it_runs_is_cancelled_and_billed_first(server, mock):
    """A delete of one still running would take its usage away while the provider goes on billing it
    (it was never billed, and its hold went back after 30 days: free tokens): it is cancelled first,
    so the provider stops and its cancel's answer states what it used, billed once; then deleted."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.responses.create(model=MODEL, input="a job to drop", background=True, max_output_tokens=1000)
    client.responses.delete(made.id)
    (billed,) = usage_rows(server, name)
    assert billed["cost_uc"] == PROMPT_TOKENS * IN_UC + BACKGROUND_CANCEL_OUTPUT * OUT_UC, billed
    cancels = [r for r in mock.requests if r.method == "POST" and r.path == f"/v1/responses/{made.id}/cancel"]
    assert len(cancels) == 1
    rows = server.db_rows("SELECT billed FROM owned_objects WHERE id = ?", (made.id,))
    assert rows == [{"billed": 1}]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_another_keys_background_response_is_404_and_never_reaches_the_provider(server, mock):
    """Key B cannot retrieve, stream, cancel or delete key A's background response (OpenAI's 404), and
    none of it reaches the provider: A's response runs on unbilled, and is billed to A when A looks."""
    secret_a, name_a = new_key(server, ADMIN)
    secret_b, name_b = new_key(server, ADMIN)
    a, b = server.openai(secret_a), server.openai(secret_b)
    made = a.responses.create(model=MODEL, input="A's job", background=True)
    before = len(mock.requests)
    for attempt in (
        lambda: b.responses.retrieve(made.id),
        lambda: list(b.responses.retrieve(made.id, stream=True)),
        lambda: b.responses.cancel(made.id),
        lambda: b.responses.delete(made.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert [r.path for r in mock.requests[before:] if made.id in r.path] == []
    assert usage_rows(server, name_a) == [] and usage_rows(server, name_b) == []
    a.responses.retrieve(made.id)  # in progress
    done = a.responses.retrieve(made.id)
    assert done.status == "completed"
    assert [r["cost_uc"] for r in usage_rows(server, name_a)] == [cost_of(done.usage)]
    assert usage_rows(server, name_b) == []


def test_a_background_response_is_billed_at_the_tier_that_served_it(server, mock):
    """Priced as any Responses answer: at the rates of the ``service_tier`` it says served it
    (gpt-4o in priority: 1.7 times its 250 µ¢ a token in and 1,000 out)."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.responses.create(model="gpt-4o", input="a priority job", background=True, service_tier="priority")
    client.responses.retrieve(made.id)
    done = client.responses.retrieve(made.id)
    assert done.status == "completed" and done.service_tier == "priority"
    (billed,) = usage_rows(server, name)
    assert billed["cost_uc"] == done.usage.input_tokens * 425 + done.usage.output_tokens * 1700


def test_a_budgeted_keys_burst_of_background_responses_cannot_overspend(server, mock):
    """A budgeted key may start background responses: each holds its worst case (at its
    max_output_tokens: 1,000 × 60 µ¢ and its few input tokens) from its start until it is billed,
    so of 100 started at once only the 5 whose worst cases fit run, the rest are 429 and never
    reach the provider; once they ended and were retrieved, their real costs replace the holds."""
    secret, name = new_key(server, ADMIN, budget_usd="0.00303", budget_period="total")
    body = {"model": MODEL, "input": "a long job", "background": True, "max_output_tokens": 1000}
    before = len(mock.requests)
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(lambda _: start(server, secret, body), range(100)))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 5 and statuses.count(429) == 95, statuses
    assert {json.loads(raw)["error"]["code"] for status, _, raw in answers if status == 429} == {"budget_exceeded"}
    assert sum(1 for r in mock.requests[before:] if r.path == "/v1/responses") == 5
    status, _, raw = start(server, secret, body)
    assert status == 429, raw  # the five still hold their worst cases: nothing was settled to the queued answers
    client = server.openai(secret)
    ended = []
    for _, _, raw in (a for a in answers if a[0] == 200):
        response_id = json.loads(raw)["id"]
        client.responses.retrieve(response_id)  # in progress
        ended.append(client.responses.retrieve(response_id))  # completed: billed
    real = sum(cost_of(r.usage) for r in ended)
    assert sum(r["cost_uc"] for r in usage_rows(server, name)) == real
    held = server.db_rows(
        "SELECT DISTINCT held_uc, billed FROM owned_objects"
        " WHERE kind = 'background_response' AND id IN (?, ?, ?, ?, ?)",
        tuple(r.id for r in ended),
    )
    assert [h["billed"] for h in held] == [1], held
    worst = held[0]["held_uc"]
    assert 5 * worst <= BUDGET_UC < 6 * worst
    room = 0  # their real costs replaced their holds: what is left is the budget less those
    while start(server, secret, body)[0] == 200:
        room += 1
    assert room == (BUDGET_UC - real) // worst, (room, real, worst)


def test_a_projects_budget_holds_its_keys_background_responses(server, mock):
    """A project's budget holds what every key of it starts in the background: of 20 started at once
    by two keys of the project (neither with a budget of its own) only the 5 that fit run; once one is
    billed (its key's retrieve), its real cost replaces its hold and the other key may start one more."""
    project = f"bgp-{secrets.token_hex(4)}"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    status, _, raw = server.request(
        "PUT", f"/api/projects/{project}/budget", {"budget_usd": "0.00303", "period": "total"}, headers=admin
    )
    assert status == 200, raw
    keys = [new_key(server, ADMIN, project=project)[0] for _ in range(2)]
    body = {"model": MODEL, "input": "a long job", "background": True, "max_output_tokens": 1000}
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda i: (keys[i % 2], start(server, keys[i % 2], body)), range(20)))
    ran = [(secret, json.loads(raw)["id"]) for secret, (status, _, raw) in answers if status == 200]
    assert len(ran) == 5, [a[1][0] for a in answers]
    assert all(start(server, secret, body)[0] == 429 for secret in keys)
    secret, response_id = ran[0]
    client = server.openai(secret)
    client.responses.retrieve(response_id)  # in progress
    assert client.responses.retrieve(response_id).status == "completed"  # billed: the project has room again
    other = keys[1] if secret == keys[0] else keys[0]
    assert start(server, other, body)[0] == 200


def test_a_turn_after_a_billed_background_response_holds_its_history(server, mock):
    """A turn naming a passed-through previous response holds what continuing it costs (the provider
    bills its whole conversation as input: as many tokens as its last turn used). A background
    response was kept with its queued answer, which has no usage: a turn after it held no history at
    all, so a budgeted key could chain long background turns held at their new input alone. Once it
    is billed its usage is kept with it, and a turn after it holds as one after a synchronous one."""
    secret, _ = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    client = server.openai(secret)
    sync = client.responses.create(model=MODEL, input="a first turn")
    made = client.responses.create(model=MODEL, input="a first turn", background=True)
    client.responses.retrieve(made.id)  # in progress
    done = client.responses.retrieve(made.id)
    assert done.status == "completed" and done.usage.total_tokens == sync.usage.total_tokens > 0
    follow = {"model": MODEL, "input": "and then?", "background": True, "max_output_tokens": 100}
    after_sync = json.loads(start(server, secret, {**follow, "previous_response_id": sync.id})[2])["id"]
    after_bg = json.loads(start(server, secret, {**follow, "previous_response_id": made.id})[2])["id"]
    held = {
        r["id"]: r["held_uc"]
        for r in server.db_rows("SELECT id, held_uc FROM owned_objects WHERE id IN (?, ?)", (after_sync, after_bg))
    }
    assert held[after_bg] == held[after_sync] > 0, held


def test_a_background_response_whose_client_left_mid_post_is_still_recorded_and_held(server, mock):
    """A client that resets its connection once its background POST reached the provider: the provider
    made the response and runs it, so the answer Stockyard still reads records it as the key's, with
    its hold, and it is billed when it ends (not left running free)."""
    secret, name = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    marker = f"left-{secrets.token_hex(4)}"
    body = json.dumps({"model": MODEL, "input": marker, "background": True, "max_output_tokens": 100}).encode()
    mock.delay_ms = 400
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        client.sendall(
            f"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sent = wait_for(
            lambda: next((r for r in mock.requests if r.path == "/v1/responses" and marker in str(r.body)), None),
            what="the POST at the provider",
        )
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert sent is not None
        rows = wait_for(
            lambda: server.db_rows(
                "SELECT o.id, o.held_uc, o.billed FROM owned_objects o JOIN client_keys k ON k.id = o.key_id"
                " WHERE k.name = ? AND o.kind = 'background_response'",
                (name,),
            ),
            what="the response recorded as the key's",
        )
    finally:
        mock.delay_ms = 0
    ((response_id, held, billed),) = [(r["id"], r["held_uc"], r["billed"]) for r in rows]
    assert held > 0 and billed == 0
    api = server.openai(secret)
    api.responses.retrieve(response_id)  # in progress
    done = api.responses.retrieve(response_id)
    assert [r["cost_uc"] for r in usage_rows(server, name)] == [cost_of(done.usage)]


def test_a_refused_background_post_gives_its_hold_back(server, mock):
    """A background POST the provider refuses (400) started nothing: its hold goes back at once, so
    five refused then leave room for the five worst cases the budget fits."""
    secret, name = new_key(server, ADMIN, budget_usd="0.00303", budget_period="total")
    body = {"model": MODEL, "input": "a long job", "background": True, "max_output_tokens": 1000}
    for _ in range(5):
        mock.enqueue(Reply(status=400, json={"error": {"message": "no", "type": "invalid_request_error"}}))
        assert start(server, secret, body)[0] == 400
    assert [start(server, secret, body)[0] for _ in range(6)] == [200] * 5 + [429]
    assert usage_rows(server, name) == []


def test_a_background_response_without_max_output_tokens_holds_the_models_ceiling(server, mock):
    """Without ``max_output_tokens`` the provider may write up to the model's own ceiling (gpt-4o-mini:
    16,384 tokens in the price table), so that is what its budget holds, not the 4,096 default."""
    secret, _ = new_key(server, ADMIN, budget_usd="10", budget_period="total")
    status, _, raw = start(server, secret, {"model": MODEL, "input": "a long job", "background": True})
    assert status == 200, raw
    (row,) = server.db_rows("SELECT held_uc FROM owned_objects WHERE id = ?", (json.loads(raw)["id"],))
    assert 16_384 * OUT_UC <= row["held_uc"] < 16_384 * OUT_UC + 1_000 * IN_UC, row


def start(server: ServerProcess, secret: str, body: dict) -> tuple[int, dict, bytes]:
    """POST a Responses request with the key: (status, headers, body)."""
    return server.request("POST", "/v1/responses", body, headers={"Authorization": f"Bearer {secret}"})


def test_a_background_responses_hold_outlives_a_restart(pyz_path, cache_home, mock, tmp_path):
    """What a running background response holds is in the database with it (``owned_objects.held_uc``),
    so a restart loads it again; billing it after the restart replaces it with its real cost."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="off")
    body = {"model": MODEL, "input": "a long job", "background": True, "max_output_tokens": 1000}
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        secret, _ = new_key(srv, ADMIN, budget_usd="0.00303", budget_period="total")
        made = [start(srv, secret, body) for _ in range(5)]
        assert [status for status, _, _ in made] == [200] * 5, made
        assert start(srv, secret, body)[0] == 429
    finally:
        srv.stop()
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        assert start(srv, secret, body)[0] == 429  # the five holds, loaded again
        client, first = srv.openai(secret), json.loads(made[0][2])["id"]
        client.responses.retrieve(first)  # in progress
        assert client.responses.retrieve(first).status == "completed"  # billed: its hold replaced
        assert start(srv, secret, body)[0] == 200
    finally:
        srv.stop()


def test_a_background_response_nobody_retrieves_is_billed_by_the_watch(pyz_path, cache_home, mock, tmp_path):
    """The batch watch looks at unbilled background responses every ``STOCKYARD_BATCH_POLL`` as their
    owner would: one whose client never asks again is still billed, once."""
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN, STOCKYARD_BATCH_POLL="1s")
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        secret, name = new_key(srv, ADMIN)
        made = srv.openai(secret).responses.create(model=MODEL, input="fire and forget", background=True)
        (billed,) = wait_for(lambda: usage_rows(srv, name), timeout=20, what="the watch's bill")
        looked = [r for r in mock.requests if r.method == "GET" and r.path == f"/v1/responses/{made.id}"]
        assert len(looked) >= 2  # in progress, then completed
        done = srv.openai(secret).responses.retrieve(made.id)
        assert billed["cost_uc"] == cost_of(done.usage)
        assert len(usage_rows(srv, name)) == 1
    finally:
        srv.stop()


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="replicas share a PostgreSQL store")
def test_two_replicas_streaming_and_retrieving_one_response_bill_it_once(server, pyz_path, cache_home, mock):
    """A second replica on the same database: both see the response end at once (one streams it, the
    other retrieves it, many times over); the bill is written by whichever marks it billed first."""
    replica = ServerProcess(server.pyz, server.db, server.env).start()
    try:
        secret, name = new_key(server, ADMIN)
        made = server.openai(secret).responses.create(model=MODEL, input="a shared job", background=True)
        server.openai(secret).responses.retrieve(made.id)  # in progress
        with ThreadPoolExecutor(max_workers=8) as pool:
            looks = [
                pool.submit(lambda s=s: list(s.openai(secret).responses.retrieve(made.id, stream=True))[-1].response)
                if i % 2
                else pool.submit(lambda s=s: s.openai(secret).responses.retrieve(made.id))
                for i, s in enumerate([server, replica] * 4)
            ]
            seen = [f.result() for f in looks]
        (billed,) = usage_rows(server, name)
        assert billed["cost_uc"] == cost_of(seen[-1].usage)
    finally:
        replica.stop()


def test_a_background_bill_names_its_end_user_without_a_budget(server, mock):
    """The end user a background POST names (its ``user``) is its bill's, with no end-user budget
    holding it (``userlimits`` off): the ``responses.usage`` trace names the user, and
    ``/api/costs?by=user`` counts its cost under that user."""
    secret, name = new_key(server, ADMIN)
    client = server.openai(secret)
    made = client.responses.create(model=MODEL, input="a job for u1", background=True, user="u1")
    client.responses.retrieve(made.id)  # in progress
    done = client.responses.retrieve(made.id)
    assert done.status == "completed"
    rows = key_traces(server, name, ("endpoint", "cost_uc", "end_user"))
    assert [(r["end_user"], r["cost_uc"]) for r in rows if r["endpoint"] == "responses.usage"] == [
        ("u1", cost_of(done.usage))
    ]

    def u1_spend() -> int:
        status, _, raw = server.request("GET", "/api/costs?by=user", headers={"Authorization": f"Bearer {ADMIN}"})
        assert status == 200, raw
        return sum(r["cost_uc"] for r in json.loads(raw)["rows"] if r["user"] == "u1")

    wait_for(lambda: u1_spend() == cost_of(done.usage), what="u1's billed background response")
