"""Webhook events a server stops before delivering are written down, not lost without a trace.

Found under load (issue 24): a burst crossed a key's 50% and 80% budget warnings while the
receiver was slow; the server was stopped (SIGTERM) during the first delivery. The 80% warning,
still queued, was never sent, and nothing said so: no row in the delivery log, no log line, while
``budget_warnings`` recorded it as told, so no restart would send it either. Retries and queued
events live in memory (README); now each one the stop leaves is logged as ``abandoned`` in
``webhook_deliveries`` (``webhooks deliveries`` shows it) and the log says which events were not
delivered, so an operator knows to look.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

from conftest import ServerProcess, open_database, wait_for
from module_helpers import api, start_server

from stockyard.store import Store
from stockyard.times import to_iso
from stockyard.webhooks import (
    BACKOFF_S,
    RESUME_SLACK_S,
    TIMEOUT_S,
    Dispatcher,
    Hook,
    claim_left,
    log_delivery,
    take_claimed,
    take_retry,
    verify,
)

SECRET = "webhook-stop-encryption-secret-0123456789"
QUEUED = 3  # test events sent: the first held by the receiver, the others queued behind it


class SilentReceiver:
    """A receiver that accepts each delivery and never answers it (until closed), or, once told to
    answer, answers each with ``status`` and keeps what it got (one delivery per connection)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.arrived = threading.Event()
        self.status = 0  # 0: silent
        self.got: list[tuple[dict[str, str], bytes]] = []
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.status:
                self._answer(conn)
                continue
            self._held.append(conn)
            self.arrived.set()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            head = [line.decode().rstrip("\r\n") for line in iter(f.readline, b"\r\n")]
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
            self.got.append((headers, f.read(int(headers["content-length"]))))
            conn.sendall(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())

    def let_go(self) -> None:
        """The deliveries held so far end unanswered."""
        for conn in self._held:
            conn.close()
        self._held = []

    def close(self) -> None:
        self.listener.close()
        self.let_go()


def again(server: ServerProcess) -> ServerProcess:
    """The next server on a stopped one's database."""
    return ServerProcess(server.pyz, server.db, server.env).start()


def rows(db, sql: str) -> list[dict]:
    """The rows ``sql`` reads from a server's database (stopped or running)."""
    conn = open_database(db)
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def deliveries(db) -> list[dict]:
    return rows(db, "SELECT * FROM webhook_deliveries ORDER BY id")


def queue_tests(server, receiver: SilentReceiver) -> tuple[dict, list[str]]:
    """A webhook for every event and ``QUEUED`` test events for it, the first one reaching the receiver
    (which holds it unanswered): the webhook and the events' ids."""
    status, hook = api(server, "POST", "/api/webhooks", {"url": receiver.url, "events": ["all"]})
    assert status == 201, hook
    sent = []
    for _ in range(QUEUED):
        status, body = api(server, "POST", f"/api/webhooks/{hook['id']}/test")
        assert status == 202, body
        sent.append(body["event_id"])
    assert receiver.arrived.wait(10), "the first delivery reached the receiver"
    return hook, sent


def test_events_left_undelivered_at_a_stop_are_logged_as_abandoned_and_sent_by_the_next_start(
    pyz_path, cache_home, mock, tmp_path_factory
):
    receiver = SilentReceiver()
    server = start_server(pyz_path, cache_home, mock, tmp_path_factory, "webhookstop", STOCKYARD_ENCRYPTION_KEY=SECRET)
    try:
        hook, sent = queue_tests(server, receiver)
        server.stop()
        rows = deliveries(server.db)
        assert [(r["webhook_id"], r["event"], r["outcome"]) for r in rows] == [
            (hook["id"], "webhook.test", "abandoned")
        ] * QUEUED, rows
        assert sorted(r["event_id"] for r in rows) == sorted(sent)
        assert "3 webhook deliveries were not made (webhook.test)" in server.log, server.log[-2000:]
        assert "Traceback" not in server.log

        receiver.let_go()
        receiver.status = 200
        server = again(server)  # the same database: the next server sends what the stop left, once each
        wait_for(lambda: len(receiver.got) >= QUEUED, what="the abandoned deliveries sent again")
        got = [json.loads(body) for _, body in receiver.got]
        assert sorted(e["id"] for e in got) == sorted(sent) and {e["type"] for e in got} == {"webhook.test"}
        for headers, body in receiver.got:  # signed afresh, with the same delivery id
            assert verify(hook["secret"], body, headers["x-stockyard-signature"])
            assert headers["x-stockyard-delivery"] == json.loads(body)["id"]
        assert "resuming 3 deliveries a stopped server left" in server.log
        wait_for(lambda: sum(r["outcome"] == "delivered" for r in deliveries(server.db)) == QUEUED, what="logged")
        status, listed = api(server, "GET", "/api/webhooks/deliveries")
        assert status == 200 and "event_json" not in listed["deliveries"][0]
        server.stop()
        server = again(server)  # nothing left: nothing sent twice
        assert api(server, "GET", "/readyz")[0] == 200
    finally:
        server.stop()
        receiver.close()
    assert len(receiver.got) == QUEUED and "resuming" not in server.log.split("listening on")[-1]
    assert "Traceback" not in server.log


def outbox(db) -> list[dict]:
    return rows(db, "SELECT * FROM webhook_outbox ORDER BY created_at")


def test_events_queued_at_a_crash_are_sent_by_the_next_start_once_each_as_made(
    pyz_path, cache_home, mock, tmp_path_factory
):
    """The receiver takes the first delivery and never answers; two more events wait behind it. The
    server is killed (SIGKILL: nothing written at the end), the receiver comes back, the server is
    started again (over a minute later, for the event being sent: ``take_first``): every event
    arrives, once, with its id and its body as it was made (its first ``created_at``). Before, they
    were in memory only and lost without a row."""
    receiver = SilentReceiver()
    server = start_server(pyz_path, cache_home, mock, tmp_path_factory, "webhookkill", STOCKYARD_ENCRYPTION_KEY=SECRET)
    try:
        hook, sent = queue_tests(server, receiver)
        wait_for(lambda: len(outbox(server.db)) == QUEUED, what="the events in the outbox")
        made = {row["event_id"]: json.loads(row["event_json"]) for row in outbox(server.db)}
        server.stop(signal.SIGKILL)
        assert deliveries(server.db) == []  # the crash logged nothing
        # the first event's row, taken as its attempt began, is dated to a minute after that attempt's
        # end (a server starting before could not tell it from a live server's): the restart comes later
        now = to_iso(datetime.now(timezone.utc))
        assert sum(row["created_at"] > now for row in outbox(server.db)) == 1
        server.db_write("UPDATE webhook_outbox SET created_at = ? WHERE created_at > ?", (now, now))

        receiver.let_go()
        receiver.status = 200
        server = again(server)
        wait_for(lambda: len(receiver.got) >= QUEUED, what="the events the crash left sent")
        got = {json.loads(body)["id"]: json.loads(body) for _, body in receiver.got}
        assert sorted(got) == sorted(sent) and got == made  # each as it was made: its id, its created_at
        for headers, body in receiver.got:
            assert verify(hook["secret"], body, headers["x-stockyard-signature"])
        wait_for(lambda: sum(r["outcome"] == "delivered" for r in deliveries(server.db)) == QUEUED, what="logged")
        assert outbox(server.db) == []
        server.stop()
        server = again(server)  # nothing left: nothing sent twice
        assert api(server, "GET", "/readyz")[0] == 200
    finally:
        server.stop()
        receiver.close()
    assert len(receiver.got) == QUEUED and "Traceback" not in server.log


def test_a_retry_a_crashed_server_left_is_made_by_the_next_one(pyz_path, cache_home, mock, tmp_path_factory):
    receiver = SilentReceiver()
    receiver.status = 500
    server = start_server(pyz_path, cache_home, mock, tmp_path_factory, "webhookcrash", STOCKYARD_ENCRYPTION_KEY=SECRET)
    try:
        status, hook = api(server, "POST", "/api/webhooks", {"url": receiver.url, "events": ["all"]})
        assert status == 201, hook
        status, body = api(server, "POST", f"/api/webhooks/{hook['id']}/test")
        assert status == 202, body
        wait_for(lambda: [r["outcome"] for r in deliveries(server.db)] == ["retrying"], what="the first attempt")
        server.stop(signal.SIGKILL)  # a crash during the backoff: nothing written at the end
        # its retry is long overdue (as if the server had stayed down for ten minutes)
        conn = open_database(server.db)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE webhook_deliveries SET ts = ?", (to_iso(datetime.now(timezone.utc) - timedelta(minutes=10)),)
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        receiver.status = 200
        server = again(server)
        wait_for(lambda: len(receiver.got) == 2, what="the retry")
        assert [json.loads(b)["id"] for _, b in receiver.got] == [body["event_id"]] * 2
        wait_for(
            lambda: (
                [(r["attempt"], r["outcome"]) for r in deliveries(server.db)]
                == [(1, "retrying"), (2, "resumed"), (2, "delivered")]  # claimed, then made
            ),
            what="the log",
        )
    finally:
        server.stop()
        receiver.close()
    assert "Traceback" not in server.log


def test_a_left_delivery_is_claimed_once_and_a_retry_only_once_overdue(database):
    """What the resume reads and claims, on each store: two servers starting at once (two claims) send a
    left delivery once; a retry its server may still make is not taken; an older attempt is not resumed."""
    database.open_and_migrate()
    conn = database.connect()
    now = datetime.now(timezone.utc)
    since, ago = to_iso(now - timedelta(days=1)), lambda s: to_iso(now - timedelta(seconds=s))
    event = {"id": "evt_1", "type": "webhook.test", "created_at": ago(600), "summary": "s", "data": {}}

    def log(hook: str, attempt: int, ts: str, outcome: str, kept: dict | None) -> None:
        conn.execute("BEGIN IMMEDIATE")
        log_delivery(
            conn, (hook, kept and kept["id"] or "evt_1", "webhook.test", attempt, ts, None, "x", 0, outcome), kept
        )
        conn.execute("COMMIT")

    log("wh_a", 1, ago(600), "retrying", event)
    log("wh_a", 2, ago(500), "abandoned", event)  # the first row gives its copy up: only the last is resumed
    log("wh_b", 1, ago(30), "retrying", event)  # due in 1 s + 10 s of timeout: its server may retry it yet
    log("wh_gone", 1, ago(600), "abandoned", event)  # a webhook removed since

    def claim() -> list:
        conn.execute("BEGIN IMMEDIATE")
        got = claim_left(conn, ["wh_a", "wh_b"], since, now.timestamp() - RESUME_SLACK_S, 100, now=ago(0))
        conn.execute("COMMIT")
        return got

    assert claim() == [("wh_a", event, 2)]
    assert claim() == []  # claimed: a second server finds nothing
    log("wh_c", 1, ago(600), "retrying", event)  # long overdue, but its server is making the retry now:
    conn.execute("BEGIN IMMEDIATE")
    assert take_retry(conn, "wh_c", "evt_1", 1, ago(0))  # its row renewed, its copy kept
    conn.execute("COMMIT")
    assert claim_left(conn, ["wh_c"], since, now.timestamp() - RESUME_SLACK_S, 100, now=ago(0)) == []  # not overdue now
    assert claim_left(conn, ["wh_c"], since, now.timestamp() + 3600, 100, now=ago(0)) == [
        ("wh_c", event, 2)
    ]  # a crash cut it
    assert not take_retry(conn, "wh_c", "evt_1", 1, ago(0))  # claimed: its server lets it go
    mine = frozenset({("wh_b", "evt_1")})  # the claiming server's own retry: left for it to take (take_retry)
    assert claim_left(conn, ["wh_b"], since, now.timestamp() + 3600, 100, mine, now=ago(0)) == []
    later = claim_left(conn, ["wh_b"], since, now.timestamp() + 3600, 100, now=ago(0))  # an hour on: overdue
    assert later == [("wh_b", event, 2)]
    conn.close()


def test_a_retry_its_own_server_makes_late_is_sent_by_one_server_only(database):
    """Was: the checking server (a group's first worker, or a replica) resumed a retry a minute
    overdue as if its server were gone, while that server was only late: its one delivery thread
    held by slow receivers (10 s each: seven of them make a retry 70 s late). Both then sent the
    event, each retrying it on its own. Now the server making a retry takes the row's kept copy in
    the database first, as a resuming one does: whichever takes it sends it, the other lets it go.
    Two dispatchers on one database stand for the two servers; the checking one's clock runs
    ahead by the 70 s the late one's thread would be held."""
    database.open_and_migrate()
    flaky, slow = SilentReceiver(), SilentReceiver()
    flaky.status = 500  # the first attempt fails: a retry waits
    hooks = [
        Hook("wh_flaky", flaky.url, frozenset({"all"}), "json", "s1"),
        Hook("wh_slow", slow.url, frozenset(), "json", "s2"),
    ]
    late, checking = Store(database), Store(database)
    late_one = Dispatcher(late, checks=False)
    ahead = RESUME_SLACK_S + TIMEOUT_S + BACKOFF_S[1] + 10
    checker = Dispatcher(checking, clock=lambda: time.time() + ahead, checks=True)
    try:
        for d in (late_one, checker):
            d.use(hooks)
        late_one.start()
        first = late_one.emit("webhook.test", {}, "a test", only="wh_flaky")
        wait_for(lambda: [r["outcome"] for r in deliveries_in(database)] == ["retrying"], what="the first attempt")
        retry_due = time.monotonic() + BACKOFF_S[0]  # at the latest
        late_one.emit("webhook.test", {}, "a test", only="wh_slow")
        assert slow.arrived.wait(10), "the late server's thread is held by the slow receiver"
        flaky.status, answered = 200, len(flaky.got)
        checker.start()  # at its start it resumes what it finds overdue
        wait_for(lambda: len(flaky.got) > answered, what="the checking server's resume")
        wait_for(lambda: time.monotonic() > retry_due, what="the late server's retry to be due")  # its backoff
        slow.status = 500
        slow.let_go()  # the late server's thread goes on: its retry of the first event is due
        last = late_one.emit("webhook.test", {}, "a test", only="wh_flaky")  # sent after that retry
        wait_for(lambda: last in ids(flaky.got), what="the late server's next event")
        assert ids(flaky.got[answered:]) == [first, last], "the first event delivered once"
    finally:
        late_one.stop()
        checker.stop()
        late.close()
        checking.close()
        flaky.close()
        slow.close()


def ids(got: list[tuple[dict[str, str], bytes]]) -> list[str]:
    return [json.loads(body)["id"] for _, body in got]


def deliveries_in(database) -> list[dict]:
    conn = database.connect()
    try:
        rows = conn.execute("SELECT webhook_id, event_id, attempt, outcome FROM webhook_deliveries ORDER BY id")
        return [dict(zip(("webhook_id", "event_id", "attempt", "outcome"), r)) for r in rows]
    finally:
        conn.close()


TESTS = frozenset({"webhook.test"})


def test_a_retry_goes_to_the_webhook_as_configured_now(database, caplog):
    """Was: a retry went to the webhook as it was when its event was queued, with its URL and secret
    then: one whose URL was moved (a receiver retired, a leaked Slack URL replaced) or whose secret
    was rotated still got the event at the old URL signed with the old secret, and one deleted kept
    getting its retries for up to 13 minutes. A resumed delivery already went to the webhook as it is
    (review 30). Now every attempt goes to the webhook as configured at that moment, and a deleted
    webhook's are dropped, said in the log."""
    database.open_and_migrate()
    old, new, gone = SilentReceiver(), SilentReceiver(), SilentReceiver()
    old.status, new.status, gone.status = 500, 200, 500
    moved = Hook("wh_moved", old.url, TESTS, "json", "old-secret")
    removed = Hook("wh_gone", gone.url, TESTS, "json", "s")
    store = Store(database)
    dispatcher = Dispatcher(store, checks=False)
    try:
        dispatcher.use([moved, removed])
        dispatcher.start()
        event = dispatcher.emit("webhook.test", {}, "a test")
        wait_for(lambda: [r["outcome"] for r in deliveries_in(database)] == ["retrying"] * 2, what="both failed once")
        dispatcher.use([Hook("wh_moved", new.url, TESTS, "json", "new-secret")])  # wh_gone deleted
        wait_for(lambda: len(old.got) + len(new.got) == 2, what="the moved webhook's retry")
        assert [len(old.got), ids(new.got)] == [1, [event]]
        assert verify("new-secret", new.got[0][1], new.got[0][0]["x-stockyard-signature"])
        said = "webhook wh_gone was removed"
        wait_for(lambda: len(gone.got) == 2 or said in caplog.text, what="the deleted one's retry")
        assert len(gone.got) == 1, "nothing sent to a deleted webhook"
    finally:
        dispatcher.stop()
        store.close()
        for receiver in (old, new, gone):
            receiver.close()


def test_a_resumed_delivery_a_crash_cuts_is_resumed_again_and_sent_by_one_server(database):
    """review32: the server that claimed a left delivery held its only copy (the claim cleared the row's),
    so a crash (a worker the OOM killer ends as it comes up, say) before its attempt's row was written
    lost it: neither sent nor resumable. Now the claim logs a row ``resumed`` (the attempt it makes)
    that keeps the copy: a claim cut by a crash is claimed again once overdue, and a server whose own
    claim was taken over meanwhile (its thread held) lets it go (:func:`take_claimed`)."""
    database.open_and_migrate()
    conn = database.connect()
    now = datetime.now(timezone.utc)
    since, ago = to_iso(now - timedelta(days=1)), lambda s: to_iso(now - timedelta(seconds=s))
    event = {"id": "evt_9", "type": "webhook.test", "created_at": ago(600), "summary": "s", "data": {}}

    def write(job):
        conn.execute("BEGIN IMMEDIATE")
        got = job()
        conn.execute("COMMIT")
        return got

    write(lambda: log_delivery(conn, ("wh_a", "evt_9", "webhook.test", 1, ago(600), None, "x", 0, "abandoned"), event))
    write(lambda: log_delivery(conn, ("wh_b", "evt_9", "webhook.test", 2, ago(900), 500, "x", 0, "retrying"), event))
    first = ago(300)
    claimed = write(lambda: claim_left(conn, ["wh_a", "wh_b"], since, now.timestamp() - RESUME_SLACK_S, 100, now=first))
    assert sorted(claimed, key=lambda c: c[0]) == [("wh_a", event, 1), ("wh_b", event, 3)]
    # its server crashed there: nothing more written. Not claimed again while it may still be sending:
    assert write(lambda: claim_left(conn, ["wh_a", "wh_b"], since, now.timestamp() - 400, 100, now=ago(0))) == []
    again = write(lambda: claim_left(conn, ["wh_a", "wh_b"], since, now.timestamp() - RESUME_SLACK_S, 100, now=ago(0)))
    assert sorted(again, key=lambda c: c[0]) == [("wh_a", event, 1), ("wh_b", event, 3)]  # overdue: resumed again
    assert not write(lambda: take_claimed(conn, "wh_a", "evt_9", first, ago(0)))  # the first claimer lets it go
    assert write(lambda: take_claimed(conn, "wh_a", "evt_9", ago(0), ago(0)))  # the second one sends it
    assert not write(lambda: take_retry(conn, "wh_b", "evt_9", 2, ago(0)))  # the original server lets it go too
    write(lambda: log_delivery(conn, ("wh_a", "evt_9", "webhook.test", 1, ago(0), 200, None, 0, "delivered")))
    write(lambda: log_delivery(conn, ("wh_b", "evt_9", "webhook.test", 3, ago(0), 200, None, 0, "delivered")))
    later = now.timestamp() + 86_400
    assert write(lambda: claim_left(conn, ["wh_a", "wh_b"], since, later, 100, now=ago(0))) == []  # sent: done
    conn.close()


def test_a_server_starting_beside_a_live_one_leaves_its_queued_events_to_it(database):
    """A server (a replica, or a group's checking worker respawned) starts while another still has
    events to send: one being sent to a slow receiver, two queued behind it, all three in the outbox.
    Its start claims every outbox row from before it (a crashed server's, it cannot tell), so the live
    one must not send those again: it takes each event's outbox row as its first attempt begins, and
    lets go of one claimed meanwhile. Before: each of the three was delivered twice, on each store."""
    database.open_and_migrate()
    receiver = SilentReceiver()
    hooks = [Hook("wh_a", receiver.url, TESTS, "json", "s1")]
    live_store, starting_store = Store(database), Store(database)
    live, starting = Dispatcher(live_store, checks=False), None
    try:
        live.use(hooks)
        live.start()
        sent = [live.emit("webhook.test", {}, "a test") for _ in range(QUEUED)]
        assert receiver.arrived.wait(10), "the first delivery held by the receiver"
        kept = "SELECT COUNT(*) FROM webhook_outbox"
        wait_for(lambda: database.connect().execute(kept).fetchone()[0] == QUEUED, what="the outbox")
        receiver.status = 200
        starting = Dispatcher(starting_store, checks=True)  # started now: the rows are from before it
        starting.use(hooks)
        starting.start()  # its first resume pass: the outbox rows from before its start
        wait_for(lambda: len(receiver.got) >= QUEUED - 1, what="the starting server's deliveries")
        receiver.let_go()  # the live server's first attempt ends (unanswered: a retry, answered later)

        def settled() -> bool:  # every event sent, and neither server has anything left to send
            return set(sent) <= set(ids(receiver.got)) and live.idle() and starting.idle()

        wait_for(settled, 30, "both servers done with the events")
        counts = {event: ids(receiver.got).count(event) for event in sent}
        assert counts == dict.fromkeys(sent, 1), counts
    finally:
        live.stop()
        if starting is not None:
            starting.stop()
        live_store.close()
        starting_store.close()
        receiver.close()


def test_removing_a_webhook_removes_its_queued_events(database):
    """Was: the outbox rows of events queued for a webhook stayed after it was removed, until a checking
    pass at least 10 minutes later — and for good (up to 1,000 per server) when no webhook remained to
    start one. Now the removal takes them in its own transaction; another webhook's stay."""
    from stockyard.operations import Operations
    from stockyard.operations import webhooks as webhook_ops
    from stockyard.webhooks import keep_outbox

    database.open_and_migrate()
    store = Store(database)
    try:
        ops = Operations(store, "cli:test", "a-master-secret-0123456789abcdef")
        kept, _ = webhook_ops.add(ops, {"url": "http://127.0.0.1:9/kept", "events": "all"})
        gone, _ = webhook_ops.add(ops, {"url": "http://127.0.0.1:9/gone", "events": "all"})
        event = {"id": "evt_1", "type": "webhook.test", "created_at": to_iso(datetime.now(timezone.utc))}
        store.write(lambda conn: keep_outbox(conn, [kept["id"], gone["id"]], event))
        webhook_ops.remove(ops, gone["id"])
        left = store.read().execute("SELECT webhook_id FROM webhook_outbox").fetchall()
        assert [r[0] for r in left] == [kept["id"]]
    finally:
        store.close()
