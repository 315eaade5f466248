"""Webhooks end to end: a receiver here gets signed, verifiable deliveries of every event kind,
a retry after a 500 and nothing more after a 200; the CLI, the API and the delivery log."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import served, wait_for
from mock_upstream import Reply
from module_helpers import ADMIN_KEY, api, chat, disable_all, module_env, put_module
from webhook_receiver import Receiver

from stockyard import webhooks
from stockyard.webhooks import REPLAY_WINDOW_S, verify

SECRET = "webhook-test-encryption-secret-0123456789"


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = module_env(cache_home, mock, STOCKYARD_ENCRYPTION_KEY=SECRET, STOCKYARD_BUDGET_WARN_PERCENT="50")
    with served(pyz_path, tmp_path_factory, "webhooks", env) as srv:
        status, _ = api(srv, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
        assert status == 200
        yield srv


@pytest.fixture(scope="module")
def hook(server, receiver) -> dict:
    """A JSON webhook for every event; its answer carries the secret."""
    status, body = api(server, "POST", "/api/webhooks", {"url": receiver.url, "events": ["all"]})
    assert status == 201, body
    assert body["secret"].startswith("whsec_") and body["events"] == list(webhooks.EVENTS)
    return body


@pytest.fixture(scope="module")
def auth(server) -> dict[str, str]:
    """Client keys exist in this server (budget tests make them): requests need one."""
    status, key = api(server, "POST", "/api/keys", {"name": "plain"})
    assert status == 201
    return server.auth(key["key"])


def assert_signed(hook: dict, headers: dict[str, str], body: bytes) -> None:
    signature = headers["x-stockyard-signature"]
    assert verify(hook["secret"], body, signature)
    assert not verify("whsec_wrong", body, signature)
    assert not verify(hook["secret"], body + b" ", signature), "the body is what is signed"
    t = int(signature.split(",")[0][2:])
    assert not verify(hook["secret"], body, signature, now=t + REPLAY_WINDOW_S + 1), "old signatures are refused"
    assert headers["x-stockyard-delivery"] == json.loads(body)["id"]


def test_the_secret_is_stored_encrypted_and_never_listed(server, hook):
    rows = server.db_rows("SELECT * FROM webhooks WHERE id = ?", (hook["id"],))
    assert rows[0]["secret_token"].startswith("v1:") and rows[0]["url_token"].startswith("v1:")
    assert hook["secret"] not in json.dumps(rows) and "/hook" not in json.dumps(rows), (
        "the URL's path may be a credential"
    )
    status, listing = api(server, "GET", "/api/webhooks")
    assert status == 200 and hook["secret"] not in json.dumps(listing) and "/hook" not in json.dumps(listing)
    assert [w["id"] for w in listing["webhooks"]] == [hook["id"]] and listing["webhooks"][0]["url"].endswith("/…")
    audit = server.db_rows("SELECT details FROM audit_log WHERE action = 'webhook.add'")
    assert len(audit) == 1 and hook["secret"] not in audit[0]["details"] and "/hook" not in audit[0]["details"]
    assert hook["secret"] not in server.log


@pytest.mark.parametrize(
    "body, message",
    [
        ({"url": "ftp://example.com/x", "events": ["all"]}, "http(s)"),
        ({"url": "http://user:pw@example.com/x", "events": ["all"]}, "credentials"),
        ({"url": "http://example.com/x", "events": ["budget.nope"]}, "unknown event"),
        ({"url": "http://example.com/x", "events": ["all"], "format": "xml"}, "format"),
        ({"url": "http://example.com/x", "events": ["all"], "error_rate_percent": 0}, "error_rate_percent"),
    ],
)
def test_bad_webhooks_are_refused(server, body, message):
    status, answer = api(server, "POST", "/api/webhooks", body)
    assert status == 400 and message in answer["error"]["message"]


def test_a_test_event_is_retried_after_a_500_and_sent_once_after_a_200(server, receiver, hook):
    receiver.statuses.append(500)
    status, queued = api(server, "POST", f"/api/webhooks/{hook['id']}/test")
    assert status == 202 and queued["queued"]
    got = receiver.wait("webhook.test", 2)
    assert [e[2]["id"] for e in got] == [queued["event_id"]] * 2, "the same event, retried"
    for headers, body, _ in got:
        assert_signed(hook, headers, body)
    # A second event delivered after it shows the queue moved on; the first was not sent again.
    status, second = api(server, "POST", f"/api/webhooks/{hook['id']}/test")
    receiver.wait("webhook.test", 3)
    assert [e[2]["id"] for e in receiver.events("webhook.test")] == [queued["event_id"]] * 2 + [second["event_id"]]
    wait_for(
        lambda: len(api(server, "GET", f"/api/webhooks/deliveries?webhook={hook['id']}")[1]["deliveries"]) >= 3,
        what="the delivery log",
    )
    log = api(server, "GET", f"/api/webhooks/deliveries?webhook={hook['id']}")[1]["deliveries"]
    counts = api(server, "GET", "/api/status")[1]["webhooks"]
    assert counts["count"] == 1 and counts["delivered"] >= 2 and counts["dropped"] == 0
    first = sorted((d for d in log if d["event_id"] == queued["event_id"]), key=lambda d: d["attempt"])
    assert [(d["attempt"], d["status"], d["outcome"]) for d in first] == [(1, 500, "retrying"), (2, 200, "delivered")]


def test_budget_warning_and_exhausted(server, receiver, hook):
    status, key = api(server, "POST", "/api/keys", {"name": "hooked", "budget_usd": "0.00001", "budget_period": "day"})
    assert status == 201
    body = {"model": "openai/mock-budget", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    auth = {"Authorization": f"Bearer {key['key']}"}
    assert server.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 200  # 500 µ¢: 50%
    # told before the next request: an answer goes before its settlement, and on PostgreSQL two settlements
    # landing in one writer batch are seen crossing 50% at 1000 µ¢ (the spend when it was noticed)
    (headers, raw, warning), *_ = receiver.wait("budget.warning")
    assert_signed(hook, headers, raw)
    assert warning["data"]["key_id"] == key["id"] and warning["data"]["threshold_percent"] == 50
    assert warning["data"]["spent_uc"] == 500 and warning["data"]["budget_uc"] == 1000
    assert server.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 200  # 1000 µ¢: spent
    assert server.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 429
    assert server.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 429
    (headers, raw, exhausted), *more = receiver.wait("budget.exhausted")
    assert len(receiver.events("budget.warning")) == 1, "once per budget, period and threshold"
    assert_signed(hook, headers, raw)
    assert exhausted["data"]["key_id"] == key["id"] and exhausted["data"]["spent_uc"] == 1000
    assert not more, "once per period, however many requests are refused"


def test_a_budget_used_up_by_a_request_in_flight_is_told_exhausted_when_it_is_spent(server, receiver, hook, mock):
    """A request refused while the spend that used the budget up was still a hold in flight (not yet
    spent) did not tell ``budget.exhausted``; with no request after the settlement, it was never told
    (on PostgreSQL, where the settlement lands with the writer, it went missing so under load). It is
    told once the spend reaches the budget, once."""
    made = {"name": "inflight", "budget_usd": "0.00001", "budget_period": "day"}
    status, key = api(server, "POST", "/api/keys", made)
    assert status == 201  # 1000 µ¢: two requests' cost
    body = {"model": "openai/mock-budget", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    auth = {"Authorization": f"Bearer {key['key']}"}
    assert server.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 200  # 500 µ¢ spent
    reached, release = threading.Event(), threading.Event()
    mock.enqueue(Reply(held=release, hang_started=reached))
    first: list[int] = []
    going = threading.Thread(target=lambda: first.append(server.request("POST", "/v1/chat/completions", body, auth)[0]))
    going.start()
    try:
        assert reached.wait(10)
        assert server.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 429  # held, not spent
    finally:
        release.set()
        going.join(30)
    assert first == [200]

    def told() -> list:
        return [e for e in receiver.events("budget.exhausted") if e[2]["data"]["key_id"] == key["id"]]

    [(headers, raw, exhausted)] = wait_for(told, what="budget.exhausted for the key")
    assert_signed(hook, headers, raw)
    assert exhausted["data"]["spent_uc"] == 1000 and exhausted["data"]["budget_uc"] == 1000
    assert server.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 429
    assert len(told()) == 1, "once per period"


def test_an_end_users_budget_warns_and_is_exhausted_naming_the_user(server, receiver, hook):
    status, key = api(server, "POST", "/api/keys", {"name": "reseller"})
    assert status == 201
    limits = {"budget_usd": "0.00001", "budget_period": "day"}
    put_module(server, "userlimits", {"overrides": {f"key:{key['id']}": limits}})
    try:
        body = {"model": "openai/mock-budget", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        headers = {"Authorization": f"Bearer {key['key']}", "x-stockyard-user": "carol"}
        statuses = [server.request("POST", "/v1/chat/completions", body, headers=headers)[0] for _ in range(4)]
        assert statuses == [200, 200, 429, 429]  # 500 µ¢ each against 1000
    finally:
        put_module(server, "userlimits", {}, enabled=False)

    def carols(kind: str) -> list:
        """Carol's events of ``kind``, once one came (the keys' budgets of the tests before tell theirs too)."""
        return wait_for(
            lambda: [e for e in receiver.events(kind) if e[2]["data"].get("user") == "carol"], what=f"carol's {kind}"
        )

    [(headers, raw, warning)] = carols("budget.warning")
    assert_signed(hook, headers, raw)
    assert warning["data"]["key_id"] == key["id"] and warning["data"]["within"] == f"key:{key['id']}"
    assert warning["data"]["threshold_percent"] == 50 and warning["data"]["spent_uc"] == 500
    assert "carol" in warning["summary"]
    [(headers, raw, exhausted)] = carols("budget.exhausted")
    assert_signed(hook, headers, raw)
    assert exhausted["data"]["user"] == "carol" and exhausted["data"]["spent_uc"] == 1000
    assert exhausted["data"]["budget_uc"] == 1000 and exhausted["data"]["scope"].endswith("|carol")


def test_key_expiring_within_the_days(server, receiver, hook):
    import datetime

    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)).strftime("%Y-%m-%d")
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)).strftime("%Y-%m-%d")
    status, key = api(server, "POST", "/api/keys", {"name": "expiring", "expires": soon})
    assert status == 201
    assert api(server, "POST", "/api/keys", {"name": "not-yet", "expires": later})[0] == 201
    (headers, raw, event), *more = receiver.wait("key.expiring")
    assert_signed(hook, headers, raw)
    assert event["data"]["key_id"] == key["id"] and event["data"]["key_name"] == "expiring" and not more


def test_breaker_opening_and_closing(server, receiver, hook, mock, auth):
    put_module(
        server,
        "fallback",
        {
            "chains": {"gpt-4o-mini": ["groq/gpt-4o-mini"]},
            "retries": 0,
            "breaker_failures": 1,
            "breaker_cooldown_s": 0.1,
        },
    )
    try:
        mock.enqueue(Reply(status=500))
        assert chat(server, headers=auth)[0] == 200  # openai fails, groq answers: openai's breaker opens
        (headers, raw, opened), *_ = receiver.wait("breaker.opened")
        assert_signed(hook, headers, raw)
        assert opened["data"] == {"provider": "openai", "model": "gpt-4o-mini"}  # breakers are per provider/model
        # After the cooldown the next request probes openai, which answers: the breaker closes.
        wait_for(
            lambda: chat(server, headers=auth)[0] == 200 and receiver.events("breaker.closed"), what="breaker.closed"
        )
        assert receiver.events("breaker.closed")[0][2]["data"] == {"provider": "openai", "model": "gpt-4o-mini"}
    finally:
        disable_all(server)


def test_error_rate_over_the_threshold_once(server, receiver, mock, auth):
    status, only_errors = api(
        server,
        "POST",
        "/api/webhooks",
        {
            "url": receiver.url + "?errors",
            "events": ["error_rate.high"],
            "error_rate_percent": 50,
            "error_window_min": 1,
            "error_min_requests": 5,
        },
    )
    assert status == 201
    for _ in range(30):
        assert chat(server, model="openai/mock-error-500", headers=auth)[0] == 500
    wait_for(
        lambda: [e for e in receiver.events("error_rate.high") if e[2]["data"]["threshold_percent"] == 50],
        15,
        "error_rate.high",
    )
    mine = [e for e in receiver.events("error_rate.high") if e[2]["data"]["threshold_percent"] == 50]
    assert len(mine) == 1 and mine[0][2]["data"]["errors"] >= 30
    assert_signed(only_errors, mine[0][0], mine[0][1])


def test_slack_format_and_the_cli(server, receiver):
    add = server.cli("webhooks", "add", receiver.url + "?slack", "--events", "breaker.opened", "--format", "slack")
    assert add.returncode == 0, add.stderr
    hook_id = add.stdout.split()[2]
    secret = add.stdout.strip().split()[-1]
    assert secret.startswith("whsec_")
    listed = server.cli("webhooks", "list", "--json")
    assert hook_id in listed.stdout and secret not in listed.stdout
    before = len(receiver.events())
    test = server.cli("webhooks", "test", hook_id)
    assert test.returncode == 0 and test.stdout.startswith("delivered: HTTP 200"), test.stdout + test.stderr
    headers, raw, body = receiver.events()[before]
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "Stockyard: a test event", "verbatim": True}}
    assert body == {"text": "Stockyard: a test event", "blocks": [section]}
    assert verify(secret, raw, headers["x-stockyard-signature"])
    deliveries = server.cli("webhooks", "deliveries", "--webhook", hook_id, "--json")
    rows = [json.loads(line) for line in deliveries.stdout.splitlines()]
    assert [(r["event"], r["status"], r["outcome"]) for r in rows] == [("webhook.test", 200, "delivered")]
    assert server.cli("webhooks", "remove", hook_id).returncode == 0
    assert hook_id not in server.cli("webhooks", "list").stdout
    wait_for(lambda: api(server, "POST", f"/api/webhooks/{hook_id}/test")[0] == 404, what="the server reloads")


def test_admin_key_is_required(server):
    status, _, _ = server.request("GET", "/api/webhooks")
    assert status == 401
    assert ADMIN_KEY not in server.log


def test_secrets_are_bound_to_their_row_and_survive_a_rotation(tmp_path):
    """In process, through the CLI's path (no writer thread): swap tokens, then rotate the master secret."""
    from stockyard.operations import Operations
    from stockyard.operations import providers as provider_ops
    from stockyard.operations import webhooks as webhook_ops
    from stockyard.store import Store, db

    db.open_and_migrate(tmp_path / "w.db")[0].close()
    store = Store(tmp_path / "w.db")
    ops = Operations(store, "cli:test", SECRET)
    a, secret_a = webhook_ops.add(ops, {"url": "http://127.0.0.1:9/a", "events": "all"})
    b, secret_b = webhook_ops.add(ops, {"url": "http://127.0.0.1:9/b", "events": "key.expiring"})
    loaded = {h.id: h for h in webhook_ops.load(store.read(), SECRET)}
    assert (loaded[a["id"]].secret, loaded[b["id"]].secret) == (secret_a, secret_b)
    assert webhook_ops.load(store.read(), "another-secret-0123456789abcdef") == []
    new = "the-new-master-secret-0123456789"
    provider_ops.rotate_secret(store, "cli:test", SECRET, new)
    assert {h.id: h.secret for h in webhook_ops.load(store.read(), new)} == {a["id"]: secret_a, b["id"]: secret_b}
    conn = store.read()
    tokens = dict(conn.execute("SELECT id, secret_token FROM webhooks"))
    urls = dict(conn.execute("SELECT id, url_token FROM webhooks"))
    store.write(lambda c: c.execute("UPDATE webhooks SET url_token = ? WHERE id = ?", (tokens[a["id"]], a["id"])))
    assert [h.id for h in webhook_ops.load(store.read(), new)] == [b["id"]], "a secret token is not a URL token"
    store.write(lambda c: c.execute("UPDATE webhooks SET url_token = ? WHERE id = ?", (urls[a["id"]], a["id"])))
    assert {h.id: h.url for h in webhook_ops.load(store.read(), new)} == {
        a["id"]: "http://127.0.0.1:9/a",
        b["id"]: "http://127.0.0.1:9/b",
    }
    store.write(lambda c: c.execute("UPDATE webhooks SET secret_token = ? WHERE id = ?", (tokens[b["id"]], a["id"])))
    assert [h.id for h in webhook_ops.load(store.read(), new)] == [b["id"]], (
        "a token moved to another row does not open"
    )


def test_emit_never_blocks_a_full_queue_drops_and_counts():
    """A receiver that never answers cannot hold a request: events queue, and past the bound are dropped."""

    class NoStore:
        def submit(self, job) -> None:
            pass

    d = webhooks.Dispatcher(NoStore())  # type: ignore[arg-type]  # the thread is not started: nothing drains
    d.use([webhooks.Hook("wh_1", "http://127.0.0.1:9/", frozenset({"breaker.opened"}), "json", "s")])
    assert d.emit("budget.warning", {}, "nobody listens") is None and d.dropped == 0, "no subscriber: nothing queued"
    ids = [d.emit("breaker.opened", {"provider": "p"}, "x") for _ in range(webhooks.QUEUE_MAX + 5)]
    assert all(ids[: webhooks.QUEUE_MAX]) and ids[webhooks.QUEUE_MAX :] == [None] * 5
    assert d.dropped == 5


def test_stop_wakes_the_delivery_thread_instead_of_waiting_out_its_poll():
    """Was: ``stop`` set a flag the thread saw only when its wait on the queue (up to a second)
    ran out, so every shutdown of a server took a second longer than it needed."""
    looked = threading.Event()

    class Store:
        def submit(self, job) -> None:
            pass

        def read(self):
            looked.set()  # the periodic check ran: the thread goes on to wait on its queue
            raise RuntimeError("no database here")

    d = webhooks.Dispatcher(Store())  # type: ignore[arg-type]
    d.use([webhooks.Hook("wh_1", "http://127.0.0.1:9/", frozenset({"key.expiring"}), "json", "s")])
    d.start()
    assert looked.wait(10)
    d.stop(timeout=0.5)  # its wait on the queue is a second: only the wake-up ends it in time
    assert not d._thread.is_alive()


def test_a_receiver_answering_a_byte_at_a_time_cannot_hold_the_delivery_thread(monkeypatch):
    """Was: the 10 s timeout was per read, so a receiver sending its answer a byte every few
    seconds held the one delivery thread (every webhook behind it) for as long as it liked. Now a
    delivery has TIMEOUT_S in all (0.5 s here), and the answer that comes after is not taken."""
    import socket

    monkeypatch.setattr(webhooks, "TIMEOUT_S", 0.5)
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: yes\r\nContent-Length: 0\r\n\r\n":
                if done.wait(0.1):  # one byte every 0.1 s: each read is quick, the whole takes ~5 s
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    hook = webhooks.Hook("wh_1", f"http://127.0.0.1:{listener.getsockname()[1]}/", frozenset({"all"}), "json", "s")
    try:
        status, error = webhooks.post(hook, b"{}", {"Content-Type": "application/json"})
    finally:
        done.set()
        thread.join()
        listener.close()
    assert status is None and error is not None and "within 0.5 s" in error


def test_a_refused_webhook_url_is_not_echoed(server):
    """A webhook URL may be a credential (Slack's): one refused for its scheme was repeated in the
    error, which reaches the admin's terminal and CI logs."""
    secret_url = "ftp://hooks.slack.example/services/T000/B000/XXXXsecretXXXX"
    status, body = api(server, "POST", "/api/webhooks", {"url": secret_url, "events": ["all"]})
    assert status == 400 and "XXXXsecretXXXX" not in json.dumps(body), body
