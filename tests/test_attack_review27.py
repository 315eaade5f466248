"""An attacker's and an accountant's review of the day's changes (writer byte bound, billing of
unclean ends, socket adoption, reservation-counting routing, chain walks reading turns only).

Each test is a hole found (failing before its fix) or a claim checked and found sound, said in
its docstring. Real parts: a server process of the pyz on its own database, the mock upstream.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import sqlite3
import threading
import time

import pytest
from conftest import TEST_STORE, ServerProcess, hold_database, mock_env, served, wait_for
from mock_upstream import MockUpstream, Reply, openai_error
from module_helpers import ADMIN_KEY, api, put_module
from test_attack_review16 import start
from test_responses_websocket import ADMIN, Raw, create
from test_websocket_sessions import completed, unseen_key

from stockyard.deployments import Deployment, Health, ModelRoute, Models
from stockyard.providers import Provider

SECRET = "enc-" + secrets.token_hex(16)
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def upstream():
    with MockUpstream() as mock:
        yield mock


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, upstream, tmp_path_factory):
    env = mock_env(cache_home, upstream, STOCKYARD_ADMIN_KEY=ADMIN_KEY, STOCKYARD_ENCRYPTION_KEY=SECRET)
    with served(pyz_path, tmp_path_factory, "attack27", env) as srv:
        yield srv


def deploy(server: ServerProcess, model_name: str, /, **fields) -> None:
    status, view = api(server, "POST", f"/api/models/{model_name}/deployments", fields)
    assert status == 201, view


def rpm_used(server: ServerProcess, model: str) -> dict[str, int]:
    _, listing = api(server, "GET", "/api/models")
    [found] = [m for m in listing["data"] if m["name"] == model]
    return {d["name"]: d["health"]["rpm_used"] for d in found["deployments"]}


def _dep(model: str, name: str, **kw) -> Deployment:
    return Deployment(model, name, Provider("p", "openai", "http://x"), "up", **kw)


# -- routing: a reservation held twice under one key --------------------------------------------


def test_a_model_planned_twice_in_one_request_gives_back_both_reservations():
    """Hole: a request's plans share one table of held reservations keyed by deployment, and a
    fallback named twice (the model's list and the fallback module's, or twice in one list) planned
    the same model again while its first reservations were still held (deployments a budget cannot
    count are held, not taken): the second overwrote the first, never given back. Its place in the
    rpm window stayed for a minute (a deployment never called refused requests at its rpm)
    and its ``reserved`` count for the server's life (least-busy and latency counted it busy)."""
    health = Health(clock=lambda: 0.0)
    pool = ModelRoute("pool", "least-busy", (_dep("pool", "p1", rpm=2), _dep("pool", "p2", rpm=2)))
    models = Models([ModelRoute("chat", "weighted", (_dep("chat", "a"),)), pool], health)
    request = models.plan(models.get("chat"), 10)
    for _ in range(2):  # "pool" reached twice as a fallback; each deployment held, not counted (proxy.model_candidates)
        held = list(models.plan(pool, 10, parent=request).deployments())
        assert [d.name for d in held] == ["p1", "p2"]
    request.release()  # the request's end (proxy.handle): neither was called
    assert [health.snapshot(d)["rpm_used"] for d in pool.deployments] == [0, 0], "neither was called"
    for _ in range(2):  # and each takes its two requests a minute
        assert sorted(d.name for d in models.plan(pool, 10).deployments()) == ["p1", "p2"]


def test_a_fallback_named_twice_leaves_no_reservation_behind_on_a_server(server, upstream):
    """The same hole through the proxy: a budgeted key's request whose deployment fails falls back
    to "pool" (named twice), whose unpriced deployments its budget cannot count: they are held, never
    called, and must all be given back when the request ends."""
    deploy(server, "chat", name="a", provider="openai", model="gpt-4o-mini")
    for name in ("p1", "p2"):
        deploy(server, "pool", name=name, provider="openai", model="attack27-unpriced", rpm=5)
    assert api(server, "PATCH", "/api/models/pool", {"strategy": "least-busy"})[0] == 200
    assert api(server, "PATCH", "/api/models/chat", {"fallbacks": ["pool", "pool"]})[0] == 200
    put_module(server, "budget", {})
    status, made = api(server, "POST", "/api/keys", {"name": "budgeted", "budget_usd": "1.00", "budget_period": "day"})
    assert status == 201, made
    upstream.enqueue(openai_error(500))
    body = {"model": "chat", "messages": HELLO}
    status, _, _ = server.request("POST", "/v1/chat/completions", body, server.auth(made["key"]))
    assert status == 500 and [r.json["model"] for r in upstream.requests] == ["gpt-4o-mini"], "pool never called"
    assert rpm_used(server, "pool") == {"p1": 0, "p2": 0}


# -- a departed client's call at SIGTERM ---------------------------------------------------------


def test_a_call_going_on_for_a_departed_client_ends_with_the_drain_and_is_billed_its_input(
    pyz_path, cache_home, tmp_path
):
    """Checked, found sound: a non-streamed call goes on after its client left (``Cancel.leave``),
    but SIGTERM still ends it at the end of ``STOCKYARD_SHUTDOWN_GRACE`` (the provider holding it
    for a minute): the server exits 0 within the grace and its cut, and the trace, written, bills
    what the provider was sent as an estimate (it went out, no usage came back)."""
    with MockUpstream() as slow:
        env = mock_env(cache_home, slow, STOCKYARD_SHUTDOWN_GRACE="1s")
        srv = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        reached = threading.Event()
        slow.enqueue(Reply(hang_s=60, hang_started=reached))
        body = json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode()
        client = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert reached.wait(10)
        client.close()
        wait_for(lambda: srv.metric("clients_left_waiting_total") == 1, 10, "the server saw the client leave")
        started = time.monotonic()
        assert srv.stop(signal.SIGTERM) == 0
        took = time.monotonic() - started
        assert took < 8, f"the drain took {took:.1f}s"
        (row,) = srv.db_rows("SELECT outcome, prompt_tokens, completion_tokens, cost_status FROM traces")
        assert row["outcome"] == "client_disconnected"
        inputs = -(-len(body) // 4)
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost_status"]) == (inputs, 0, "estimate")
        assert "Traceback" not in srv.log


# -- the writer's bytes: one sender's large bodies -------------------------------------------------


def test_one_keys_large_bodies_cannot_strip_another_keys_traces_of_theirs(pyz_path, cache_home, mock, tmp_path):
    """Hole: the bodies the writer may hold (``STOCKYARD_WRITER_QUEUE_MB``) were one pool, taken
    first come: a key sending large bodies while the writer is behind (a long search-index insert:
    measured, 32 threads of 240 KB cache hits, free, left another key's 60 KB traces waiting 2 s
    each and 8 of 40 without their bodies) filled it, and every other key's traces then waited and
    went without theirs. Now one sender (a key, else an address) may hold a quarter of it: past
    that its own traces go without their bodies, and another's still fit. The disk is held here
    (another connection's write transaction) so nothing is written meanwhile."""
    limits = {"STOCKYARD_WRITER_QUEUE_MB": "1", "STOCKYARD_BUSY_TIMEOUT_MS": "15000"}
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY, **limits)
    srv = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
    try:
        keys = {}
        for name in ("sender", "other"):
            status, made = api(srv, "POST", "/api/keys", {"name": name})
            assert status == 201, made
            keys[name] = made
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "the quick brown fox " * 15_000}]}
        release = hold_database(srv.db)  # the writer is behind: nothing commits until it ends
        try:
            statuses: list[int] = []

            def send(name: str) -> None:
                statuses.append(srv.request("POST", "/v1/chat/completions", body, srv.auth(keys[name]["key"]))[0])

            senders = [threading.Thread(target=send, args=("sender",)) for _ in range(6)]
            for t in senders:
                t.start()
            for t in senders:
                t.join(30)
            wait_for(lambda: srv.metric("trace_bodies_unstored_total") >= 2, what="the sender's bodies past its room")
            held, unstored = srv.metric("writer_queue_bytes"), srv.metric("trace_bodies_unstored_total")
            send("other")
            wait_for(  # its trace queued whole, or without its body after waiting for room
                lambda: srv.metric("writer_queue_bytes") > held or srv.metric("trace_bodies_unstored_total") > unstored,
                what="the other key's trace queued",
            )
            assert statuses == [200] * 7
        finally:
            release()
        sql = "SELECT t.key_id, b.trace_id IS NOT NULL AS body FROM traces t "
        sql += "LEFT JOIN trace_bodies b ON b.trace_id = t.id"
        rows = wait_for(lambda: len(r := srv.db_rows(sql)) == 7 and r, what="every request's trace")
        kept = {name: sum(r["body"] for r in rows if r["key_id"] == keys[name]["id"]) for name in keys}
        assert kept["other"] == 1, "the other key's trace keeps its body"
        assert 1 <= kept["sender"] <= 2, kept  # its first fits alone; past its quarter, its own go without
        wait_for(lambda: srv.metric("writer_queue_bytes") == 0, what="the bytes freed once written")
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


# -- a chain's history read turn by turn without each turn's whole answer ------------------------


def test_a_chain_rebuilt_from_turns_read_without_their_answers_is_the_whole_conversation(
    pyz_path, cache_home, mock, tmp_path
):
    """Checked, found sound (both stores): ``Conversations.find(turn_only=True)`` reads a chain's
    earlier turns without their stored answer. Five translated turns (every other one streamed,
    each the next at once, so the one before is often still pending in memory): the provider is
    sent every earlier input and answer, in order, and nothing else; the whole answer of each
    turn is still what GET returns."""
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY="sk-ant-test-attack27-0123456789", ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
    try:
        previous, texts = None, []
        for turn in range(5):
            body = {"model": "claude-haiku-4-5", "input": f"question {turn}", "stream": turn % 2 == 1}
            if previous:
                body["previous_response_id"] = previous
            status, _, answer = srv.request("POST", "/v1/responses", body)
            assert status == 200, answer[:300]
            sent = mock.last("/v1/messages").json["messages"]
            said = [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in sent]
            assert said[0::2] == [f"question {k}" for k in range(turn + 1)], said
            assert said[1::2] == texts, "each earlier answer, in order"
            previous = next(e for e in _events(answer) if e.get("type") in (None, "response.completed"))
            previous = previous.get("response", previous)
            texts.append(previous["output"][0]["content"][0]["text"])
            previous = previous["id"]
        status, _, whole = srv.request("GET", f"/v1/responses/{previous}")
        assert status == 200 and json.loads(whole)["output"][0]["content"][0]["text"] == texts[-1]
    finally:
        srv.stop()
    assert "Traceback" not in srv.log


def _events(answer: bytes) -> list[dict]:
    """A whole answer's JSON, or a stream's events."""
    if answer.lstrip().startswith(b"{"):
        return [json.loads(answer)]
    return [json.loads(line[5:]) for line in answer.decode().splitlines() if line.startswith("data:")]


# -- WebSocket sockets adopting what they stored before their key was known -----------------------


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gpt-4o-mini"])
def test_sockets_of_two_unseen_keys_each_adopt_only_their_own_turns(
    pyz_path, cache_home, mock, tmp_path_factory, model
):
    """Checked, found sound: two sockets opened in open mode (their keys committed unseen), each
    with a turn stored as nobody's, and an open-mode HTTP turn stored as nobody's too. Once the
    server knows the keys, each socket's next turn continues its own response, and naming the
    other socket's (or the HTTP turn's) is the not-found error event: adoption takes only what the
    socket itself stored, never another's, and the keyless HTTP response stays nobody's."""
    server = start(pyz_path, cache_home, mock, tmp_path_factory, "adopt27")
    try:
        secrets_ = {name: unseen_key(server, name) for name in ("alice", "mallory")}
        status, _, answer = server.request("POST", "/v1/responses", {"model": model, "input": "open"})
        assert status == 200
        open_id = json.loads(answer)["id"]
        raws = {name: Raw(server, secret) for name, secret in secrets_.items()}
        assert all(raw.status == 101 for raw in raws.values())
        firsts = {name: completed(raw, create(model, f"{name} first"))["id"] for name, raw in raws.items()}
        status, _, _ = server.request("POST", "/api/keys", {"name": "another"}, {"Authorization": f"Bearer {ADMIN}"})
        assert status == 201  # the keys are known now
        mallory = raws["mallory"]
        for stolen in (firsts["alice"], open_id):
            mallory.send_json(create(model, "steal", previous_response_id=stolen))
            refused = mallory.until("response.completed")[-1]
            assert refused["type"] == "error" and refused["status"] == 404, refused
        for name, raw in raws.items():
            assert completed(raw, create(model, f"{name} second", previous_response_id=firsts[name]))
        for name, secret in secrets_.items():
            other = firsts["mallory" if name == "alice" else "alice"]
            auth = {"Authorization": f"Bearer {secret}"}
            assert server.request("GET", f"/v1/responses/{firsts[name]}", headers=auth)[0] == 200
            assert server.request("GET", f"/v1/responses/{other}", headers=auth)[0] == 404
            assert server.request("GET", f"/v1/responses/{open_id}", headers=auth)[0] == 404
        for raw in raws.values():
            raw.close()
    finally:
        server.stop()
    assert "Traceback" not in server.log


# -- a deployment's tpm: an attempt that went out and never answered ---------------------------------


def test_a_deployment_call_that_timed_out_after_going_out_keeps_its_tokens_in_the_tpm_window(
    pyz_path, cache_home, tmp_path
):
    """Hole: a deployment's attempt that timed out after its request went out is billed its input
    (the provider may count it) but gave its tokens back to the deployment's tpm window (0, as a
    429's, which the provider does not count), so Stockyard sent past the provider's quota. Now
    the reservation's estimate stays, as for a stream that reported no usage."""
    with MockUpstream() as slow:
        env = mock_env(cache_home, slow, STOCKYARD_ADMIN_KEY=ADMIN_KEY, STOCKYARD_ENCRYPTION_KEY=SECRET)
        srv = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
        try:
            deploy(srv, "chat", name="a", provider="openai", model="gpt-4o-mini", tpm=1_000_000)
            put_module(srv, "timeout", {"models": {"chat": 0.5, "openai/gpt-4o-mini": 0.5}})
            reached = threading.Event()
            slow.enqueue(Reply(hang_s=5, hang_started=reached))
            status, _, _ = srv.request("POST", "/v1/chat/completions", {"model": "chat", "messages": HELLO})
            assert status == 504 and reached.is_set()
            _, listing = api(srv, "GET", "/api/models")
            [model] = [m for m in listing["data"] if m["name"] == "chat"]
            assert model["deployments"][0]["health"]["tpm_used"] > 0, "the call went out: its tokens count"
        finally:
            srv.stop()
    assert "Traceback" not in srv.log
