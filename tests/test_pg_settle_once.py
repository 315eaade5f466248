"""A shared budget settlement is applied exactly once, even when its answer is lost.

A real PostgreSQL and a real broken connection: pg8000 talks to the server through a TCP relay
that forwards everything until it is told to cut. Then it lets the chosen settlement statement
through, waits for the server's ReadyForQuery (the statement has committed: the connection
is in autocommit), drops that answer and closes both sides. The ledger sees a lost connection
for a step the database has applied, keeps the settlement and retries it; the retry must change
nothing that was applied.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from conftest import wait_for

from stockyard.budgets import Budget
from stockyard.dburl import parse_postgres
from stockyard.store import Store
from stockyard.store.backends import PostgresBackend
from stockyard.store.shared import SETTLED_KEEP_S, SharedLedger, step_id

TS = 1_780_000_000_000
LEDGER_WRITE = b"UPDATE budget_ledger"  # in every settlement statement


class CuttingRelay:
    """127.0.0.1:port → the server, reading the protocol's messages as they pass (plain TCP:
    the test URLs say sslmode=disable). ``cut(n)``: the n-th statement that updates
    budget_ledger from then on, on any connection, commits on the server and its connection
    breaks before the client reads a byte of the answer."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._lock = threading.Lock()
        self._armed = 0  # ledger writes to let pass before the cut (0: not armed)
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, nth: int) -> None:
        with self._lock:
            self._armed = nth

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            self._sockets += [client, server]
            cutting = threading.Event()  # set when this connection's answer is to be dropped
            threading.Thread(target=self._from_client, args=(client, server, cutting), daemon=True).start()
            threading.Thread(target=self._from_server, args=(server, client, cutting), daemon=True).start()

    def _from_client(self, client: socket.socket, server: socket.socket, cutting: threading.Event) -> None:
        """Forward the client's messages, noting which statement each Execute runs."""
        statements: dict[bytes, bytes] = {}  # prepared statement name -> its SQL
        bound = b""
        buffer = b""
        started = False  # the startup message has no type byte
        while data := _recv(client):
            buffer += data
            while True:
                start = 1 if started else 0  # a typed message: 1 byte, then its length
                if len(buffer) < start + 4:
                    break
                size = struct.unpack("!I", buffer[start : start + 4])[0] + start
                if len(buffer) < size:
                    break
                kind, body, buffer = buffer[:start], buffer[start + 4 : size], buffer[size:]
                started = True
                if kind == b"P":
                    name, sql = body.split(b"\0")[:2]
                    statements[name] = sql
                elif kind == b"B":
                    bound = statements.get(body.split(b"\0")[1], b"")
                elif kind == b"E" and LEDGER_WRITE in bound:
                    with self._lock:
                        if self._armed:
                            self._armed -= 1
                            if not self._armed:
                                cutting.set()  # before the Execute reaches the server
                try:
                    server.sendall(kind + struct.pack("!I", len(body) + 4) + body)
                except OSError:
                    return
        server.close()

    def _from_server(self, server: socket.socket, client: socket.socket, cutting: threading.Event) -> None:
        """Forward the server's messages; once cutting, swallow them up to ReadyForQuery, then
        close both sides."""
        buffer = b""
        while data := _recv(server):
            if not cutting.is_set():
                try:
                    client.sendall(data)
                except OSError:
                    return
                continue
            buffer += data
            while len(buffer) >= 5:
                size = struct.unpack("!I", buffer[1:5])[0] + 1
                if len(buffer) < size:
                    break
                kind, buffer = buffer[:1], buffer[size:]
                if kind == b"Z":  # the implicit transaction has ended: committed
                    with self._lock:
                        self.cuts += 1
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    server.close()
                    return
        client.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def through_relay(pg_url):
    """A store whose connections pass the relay, the relay, and a direct connection to check with."""
    direct = PostgresBackend(parse_postgres(pg_url, {}))
    direct.open_and_migrate()
    relay = CuttingRelay(direct.url.port)
    relayed = PostgresBackend(parse_postgres(pg_url.replace(f":{direct.url.port}/", f":{relay.port}/"), {}))
    store = Store(relayed)
    conn = direct.connect()
    yield store, relay, conn
    conn.close()
    store.close()
    relay.close()


def usage(conn, scope: str, key: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT spent_uc, reserved_uc FROM budget_ledger WHERE scope = ? AND period_key = ?", (scope, key)
    ).fetchone()
    return int(row[0]), int(row[1])


DAY, MONTH = "2026-05-28", "2026-05"  # the periods TS falls in


@pytest.mark.parametrize("cut", [1, 2, 3], ids=["key hold", "project hold", "key's other period"])
def test_a_settlement_step_whose_answer_was_lost_after_its_commit_is_applied_once(through_relay, cut):
    """Key and project holds settle in a statement each, then the key's month row (its budget
    was a monthly one before) gets the cost too: whichever statement loses its answer after
    committing, the retry leaves every row counting the cost exactly once."""
    store, relay, conn = through_relay
    key, project = (
        Budget("key:once", "key 'once'", 10**9, "day"),
        Budget("project:once", "project 'once'", 10**9, "day"),
    )
    ledger = SharedLedger(store, lambda budget, period: 0, lease_s=3600)  # its keeper stays out of the way
    try:
        ledger.used_up([Budget("key:once", "key 'once'", 10**9, "month")], TS)  # makes the month row
        hold = ledger.reserve([key, project], 500, TS)
        relay.cut(cut)
        ledger.settle(hold, 123, ["key:once", "project:once"], TS)
        assert relay.cuts == 1 and len(ledger._unsettled) == 1  # the client saw a lost connection
        committed = [usage(conn, "key:once", DAY), usage(conn, "project:once", DAY), usage(conn, "key:once", MONTH)]
        assert committed[cut - 1] == (123, 0)  # … for a statement the server applied
        ledger._retry_unsettled()
        assert not ledger._unsettled
        assert usage(conn, "key:once", DAY) == (123, 0)
        assert usage(conn, "project:once", DAY) == (123, 0)
        assert usage(conn, "key:once", MONTH) == (123, 0)
        leases = conn.execute("SELECT SUM(reserved_uc) FROM budget_leases WHERE replica = ?", (ledger.replica,))
        assert leases.fetchone()[0] in (0, None)
    finally:
        ledger.close()


def test_a_warning_reached_by_a_step_whose_answer_was_lost_is_told_by_its_retry(through_relay):
    """The step that crosses 80% commits and loses its answer: the retry changes nothing, and
    tells the warning that step reached, once."""
    store, relay, conn = through_relay
    told: list[tuple[str, int]] = []
    key = Budget("key:warned", "key 'warned'", 1_000, "day")
    ledger = SharedLedger(
        store, lambda budget, period: 0, (80,), lambda b, k, spent, pct: told.append((k, pct)), lease_s=3600
    )
    try:
        hold = ledger.reserve([key], 900, TS)
        relay.cut(1)
        ledger.settle(hold, 850, [], TS)
        assert relay.cuts == 1 and len(ledger._unsettled) == 1 and told == []
        assert usage(conn, "key:warned", DAY) == (850, 0)  # applied by the server, answer lost
        ledger._retry_unsettled()
        assert not ledger._unsettled
        assert usage(conn, "key:warned", DAY) == (850, 0)
        assert told == [(DAY, 80)]
        ledger.settle(ledger.reserve([key], 10, TS), 10, [], TS)
        assert told == [(DAY, 80)]  # once
    finally:
        ledger.close()


def test_the_keeper_deletes_settled_ids_older_than_a_day(pg_url):
    """Ids are pruned by age on the database's clock; the newer ones stay (a retry may need them)."""
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    store = Store(backend)
    conn = backend.connect()
    now_ms = int(conn.execute("SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)").fetchone()[0])
    old, recent = step_id(now_ms - SETTLED_KEEP_S * 1000 - 60_000), step_id(now_ms - SETTLED_KEEP_S * 1000 + 60_000)
    for made in (old, recent):
        conn.execute("INSERT INTO budget_settled (id) VALUES (CAST(? AS uuid))", (made,))
    ledger = SharedLedger(store, lambda budget, period: 0, lease_s=0.3)
    try:

        def ids() -> set[str]:
            return {str(r[0]) for r in conn.execute("SELECT id FROM budget_settled")}

        wait_for(lambda: old not in ids(), what="the old id pruned")
        assert ids() == {recent}
    finally:
        ledger.close()
        conn.close()
        store.close()


def test_step_ids_sort_by_the_time_they_were_made():
    ids = [step_id(ms) for ms in (1, 2, 10**12, 10**12 + 1)]
    assert ids == sorted(ids) and len(set(step_id(5) for _ in range(100))) == 100
    assert ids[0].startswith("00000000-0001-7")  # UUIDv7's layout: 48 bits of milliseconds, version 7


def test_a_retry_racing_its_own_step_still_in_flight_waits_for_it_and_changes_nothing(pg_url):
    """A step whose connection broke may still be running on the server when its retry comes on
    a new connection: the retry waits for it (the ledger row's lock, then the id's) and, once it
    has committed, finds its id and changes nothing."""
    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    store = Store(backend)
    budget = Budget("key:race", "key 'race'", 10**9, "day")
    ledger = SharedLedger(store, lambda budget, period: 0, lease_s=3600)
    first, second, watch = backend.connect(), backend.connect(), backend.connect()
    try:
        hold = ledger.reserve([budget], 500, TS)
        ((_, key, amount),) = hold.parts
        step, lease = step_id(), hold.leases[(budget.scope, key)]
        first.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        assert ledger._settle_one(first, budget, key, amount, 123, step, lease) is not None  # applied, not committed
        retry: list = []
        racing = threading.Thread(
            target=lambda: retry.append(ledger._settle_one(second, budget, key, amount, 123, step, lease))
        )
        racing.start()
        wait_for(
            lambda: watch.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '/* settle */%'"
            ).fetchone(),
            what="the retry waiting for the step in flight",
        )
        first.execute("COMMIT")
        racing.join(timeout=10)
        assert retry == [None]  # nothing changed
        assert usage(watch, "key:race", DAY) == (123, 0)
    finally:
        ledger.close()
        for conn in (first, second, watch):
            conn.close()
        store.close()
