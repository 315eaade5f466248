"""Budgets and rate windows of a ``serve --workers N`` group on SQLite, kept by the parent.

One server keeps its budgets (:class:`~stockyard.budgets.Ledger`) and rate windows
(:class:`~stockyard.modules.ratelimit.RateLimiter`) in memory. The workers of a group must
share theirs, or each would let a budget be spent once more. The parent, which otherwise only
supervises, holds the one ledger and the one set of windows and answers the workers' calls
over a Unix socket in the group's private folder (mode 0700): one line of JSON a call, one a
answer, in its own loop (one thread, so every call is atomic without a lock). A worker keeps
a few connections open and uses one per call.

Measured against the previous design — the same tables PostgreSQL replicas use, in an SQLite
file of the group's own, each step a ``BEGIN IMMEDIATE`` transaction serialized across the
workers — see bench/README.md ("Workers' shared state").

A worker that dies loses nothing here but its requests in flight: the parent gives their
holds back when it reaps the worker, and makes none for a call of its read after that. It may
die between a commit and the settlement that follows it (a batch's record), or between a
settlement and the commit of the trace that records it (an answer's): so the parent then reloads
every period it holds from the database (:meth:`StateServer.resync`), counting beside it what the
live workers settled and have not committed yet (settlements name their trace: the database says
whether it is there; so a settlement naming its trace is sent before the trace can commit — a
request's after hooks, a Realtime response's bill —, or a resync between the two would read it
in the database and the settlement add it again). A request's hold, however long it runs, is
kept by a resync (it is not spent yet, so not in the database) until it settles or its worker
dies. The parent dying ends the group (the workers watch it). The spend of a
period is loaded from the rollups the first time the parent sees it, like one server's ledger
after a start.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .budgets import (
    EXHAUSTED,
    PERIODS,
    Budget,
    BudgetExceeded,
    Exhausted,
    Hold,
    Ledger,
    Warn,
    ledger_spend_uc,
    period_key,
    period_of,
)
from .loglimit import Throttle
from .modules.ratelimit import RateLimited, RateLimiter, too_large
from .store.files import process_alive

log = logging.getLogger("stockyard.budgets")

SOCKET_NAME = "state.sock"
CALL_TIMEOUT_S = 10.0  # a worker waits this long for the parent's answer
ACCEPT_REST_S = 0.1  # out of descriptors: how long the parent stops accepting, unless a connection closes first
IDLE_CONNECTIONS = 64  # connections a worker keeps open for the next calls (each call takes one)
ENTRIES_MAX = 100_000  # rate entries awaiting their correction, before the finished ones are dropped
UNCOMMITTED_S = 120.0  # a settlement's trace is long committed after this (a writer's call gives up at 30 s)
UNCOMMITTED_MAX = 100_000  # settlements kept for a resync; the oldest dropped beyond


@dataclass
class _Uncommitted:
    """A settlement whose trace a worker had not committed when the parent applied it."""

    at: float  # monotonic
    pid: int
    trace_id: str
    actual_uc: int
    periods: frozenset[tuple[str, str]]  # the (scope, period key)s it added ``actual_uc`` to


class StateLost(Exception):
    """The parent did not answer (it is gone, or the call broke)."""


def _budget(values: list) -> Budget:
    scope, label, limit_uc, period = values
    return Budget(scope, label, int(limit_uc), period)


def _plain(budget: Budget) -> list:
    return [budget.scope, budget.label, budget.limit_uc, budget.period]


def _refusal(refused: BudgetExceeded) -> list:
    r = refused
    return [_plain(r.budget), r.period_key, r.spent, r.reserved, r.amount, r.ts_ms]


# -- the parent ------------------------------------------------------------------------------


class StateServer:
    """The group's ledger and rate windows, answering the workers in the parent's loop."""

    def __init__(
        self,
        folder: str,
        load: Callable[[Budget, str], int],
        warn_percents: Iterable[int],
        connect: Callable[[], Any] | None = None,
    ) -> None:
        """``connect``: a read connection to the database, for :meth:`resync` (none: no resync)."""
        # What the ledger reported during the current call, for the worker to act on.
        self._crossed: list[tuple[Budget, str, int, int]] = []  # warning thresholds (settle)
        self._first_refusal = False  # the first refusal of a spent period (reserve)
        self.ledger = Ledger(
            load,
            warn_percents,
            lambda *crossing: self._crossed.append(crossing),
            self._note_first_refusal,
        )
        self.limiter = RateLimiter()
        self._holds: dict[int, tuple[int, Hold]] = {}  # hold id -> (worker pid, hold)
        self._entries: dict[int, tuple[str, Any]] = {}  # rate entry id -> (window, entry)
        self._connect = connect
        self._uncommitted: collections.deque[_Uncommitted] = collections.deque()
        self._next_id = 0
        self.path = str(Path(folder) / SOCKET_NAME)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(self.path)
        except OSError as exc:  # mostly a path past what a Unix socket's address holds (~107 bytes)
            self.sock.close()
            raise OSError(
                f"cannot open the group's shared-state socket {self.path} ({exc.strerror or exc}); "
                "it is made in a private folder under TMPDIR: set TMPDIR to a shorter path, e.g. /tmp"
            ) from None
        self.sock.listen(socket.SOMAXCONN)
        self.sock.setblocking(False)
        self._selector: selectors.BaseSelector | None = None
        self._conns: set[socket.socket] = set()
        self._resting_until: float | None = None  # out of descriptors: accepting again once one closes, or then
        self._rest_log = Throttle()  # said once a minute

    def _note_first_refusal(self, refused: BudgetExceeded) -> None:
        """A spent period's first refusal (a reserve's) or its spend reaching the budget (a settle's,
        in the answer's crossings): the worker tells its webhooks (it has the database)."""
        self._first_refusal = True
        self._crossed.append((refused.budget, refused.period_key, refused.spent, EXHAUSTED))

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Serve from ``selector``'s loop: its events carry callables, run by the loop."""
        self._selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        """Close the socket and every worker's connection (in a new worker: its copies of them)."""
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self.sock.close()

    def _accept(self) -> None:
        """Take every connection waiting (not one a wake-up: a burst of calls fills the backlog)."""
        assert self._selector is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors (or kernel memory): never the group's loop's end
                self._rest(exc)
                return
            conn.settimeout(CALL_TIMEOUT_S)  # reads only when readable; a send to a stuck worker gives up
            buf = bytearray()
            self._conns.add(conn)
            self._selector.register(conn, selectors.EVENT_READ, functools.partial(self._read, conn, buf))

    def _rest(self, exc: OSError) -> None:
        """Stop watching the listening socket, which stays readable while the connections wait in its
        backlog (retrying at once would spin the group's loop): the calls on the connections open go
        on, and accepting resumes once one of them closes or ``ACCEPT_REST_S`` passed (:meth:`wake`)."""
        assert self._selector is not None
        self._selector.unregister(self.sock)
        self._resting_until = time.monotonic() + ACCEPT_REST_S
        if self._rest_log.due() is not None:
            log.error(
                "the workers' shared state cannot accept a connection (%s); their calls wait until one "
                "closes. Raise the open-file limit or lower STOCKYARD_MAX_CONNECTIONS; logged once a minute",
                exc.strerror or exc,
            )

    @property
    def resting_until(self) -> float | None:
        """When the loop should call :meth:`wake` at the latest (accepting rests), else None."""
        return self._resting_until

    def wake(self, closed: bool = False) -> None:
        """Accept again after a rest: a descriptor was given back (``closed``), or the rest is over."""
        if self._resting_until is None or not (closed or time.monotonic() >= self._resting_until):
            return
        assert self._selector is not None
        self._resting_until = None
        self._selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def _read(self, conn: socket.socket, buf: bytearray) -> None:
        self.wake()
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf += data
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[: end + 1]
            try:
                answer = self.answer(json.loads(line))
            except Exception:  # a bug must not stop the group's loop: that call fails
                log.exception("the workers' shared state could not answer a call")
                answer = {"error": "internal"}
            if answer is None:
                continue  # a call that wants no answer
            try:
                conn.sendall(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
            except OSError:
                self._drop(conn)
                return

    def _drop(self, conn: socket.socket) -> None:
        assert self._selector is not None
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        self._conns.discard(conn)
        conn.close()
        self.wake(closed=True)

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def answer(self, call: list) -> dict | None:
        """One call: ``[operation, arguments…]``; the answer, or None for ``correct``."""
        op = call[0]
        self._crossed.clear()
        self._first_refusal = False
        if op == "reserve":
            _, pid, budgets, amount, ts_ms = call
            if not process_alive(int(pid)):  # reaped (its holds given back) before its last call was read
                return {"error": "the worker is gone"}
            try:
                hold = self.ledger.reserve([_budget(b) for b in budgets], int(amount), int(ts_ms))
            except BudgetExceeded as refused:
                return {"refused": _refusal(refused), "first": self._first_refusal}
            hold_id = self._id()
            self._holds[hold_id] = (int(pid), hold)
            return {"hold": hold_id}
        if op == "settle":
            _, hold_id, actual_uc, scopes, ts_ms, pid, trace_id = call
            held = self._holds.pop(hold_id, None) if hold_id is not None else None
            settled = held[1] if held else None
            self.ledger.settle(settled, int(actual_uc), scopes, int(ts_ms))
            if trace_id is not None and int(actual_uc):
                self._note_uncommitted(int(pid), str(trace_id), int(actual_uc), settled, scopes, int(ts_ms))
            return {"warnings": [[_plain(b), key, spent, pct] for b, key, spent, pct in self._crossed]}
        if op in ("used_up", "tightest"):
            _, budgets, ts_ms = call
            read = self.ledger.used_up if op == "used_up" else self.ledger.tightest
            found = read([_budget(b) for b in budgets], int(ts_ms))
            return {"refused": None if found is None else _refusal(found)}
        if op == "usage":
            _, budget, ts_ms = call
            return {"usage": self.ledger.usage(_budget(budget), int(ts_ms))}
        if op == "admit":
            _, window, rpm, tpm, tokens, who = call
            try:
                entry = self.limiter.admit(window, rpm, tpm, int(tokens), who)
            except RateLimited as exc:
                return {"limited": [exc.message, exc.retry_after]}
            if tpm is None:
                return {"entry": None}  # nothing will correct it
            if len(self._entries) >= ENTRIES_MAX:
                self._entries = {k: v for k, v in self._entries.items() if v[1].live}
            entry_id = self._id()
            self._entries[entry_id] = (window, entry)
            return {"entry": entry_id}
        if op == "check":
            _, window, rpm, tpm, tokens, who = call
            try:
                self.limiter.check(window, rpm, tpm, int(tokens), who)
            except RateLimited as exc:
                return {"limited": [exc.message, exc.retry_after]}
            return {}
        if op == "correct":
            _, entry_id, tokens = call
            pending = self._entries.pop(entry_id, None)
            if pending is not None:
                self.limiter.correct(pending[0], pending[1], int(tokens))
            return None
        raise ValueError(f"unknown call {op!r}")

    def _note_uncommitted(
        self, pid: int, trace_id: str, actual_uc: int, hold: Hold | None, scopes: Iterable[str], ts_ms: int
    ) -> None:
        """Keep a settlement whose trace is not committed yet, for :meth:`resync`: the periods it
        added to are its hold's and the current periods of its scopes (as ``Ledger.settle`` adds)."""
        current = [(scope, period_key(period, ts_ms)) for scope in scopes for period in PERIODS]
        periods = frozenset([(b.scope, key) for b, key, _ in (hold.parts if hold else [])] + current)
        now = time.monotonic()
        kept = self._uncommitted
        kept.append(_Uncommitted(now, pid, trace_id, actual_uc, periods))
        while kept and (len(kept) > UNCOMMITTED_MAX or kept[0].at < now - UNCOMMITTED_S):
            kept.popleft()

    def forget(self, pid: int, resync: bool = True) -> None:
        """A worker died: give back the holds of its requests in flight, and take the database's
        spend (:meth:`resync`), which its last commits and settlements may have left apart (not when
        the group is stopping: no request comes after)."""
        gone = [hold_id for hold_id, (owner, _) in self._holds.items() if owner == pid]
        for hold_id in gone:
            _, hold = self._holds.pop(hold_id)
            self.ledger.settle(hold, 0, (), int(time.time() * 1000))
        if gone:
            log.warning("budget holds of a stopped worker given back: %d request(s)", len(gone))
        self._uncommitted = collections.deque(u for u in self._uncommitted if u.pid != pid)  # lost with it
        if not resync:
            return
        try:
            self.resync()
        except Exception as exc:  # the database unreadable: the ledger goes on as it was
            log.error("budget spend not reloaded after a worker stopped: %s", exc)

    def resync(self) -> None:
        """Set every period the ledger holds to the database's spend plus what live workers settled
        and have not committed (their traces not in the database yet), read in one snapshot."""
        if self._connect is None:
            return
        conn = self._connect()
        try:
            conn.execute("BEGIN")  # one snapshot: the traces looked for and the rollups summed
            committed = _committed(conn, [u.trace_id for u in self._uncommitted])
            self._uncommitted = collections.deque(u for u in self._uncommitted if u.trace_id not in committed)
            pending: collections.Counter[tuple[str, str]] = collections.Counter()
            for u in self._uncommitted:
                for mark in u.periods:
                    pending[mark] += u.actual_uc

            def spend(scope: str, key: str) -> int:
                budget = Budget(scope, scope, 0, period_of(key))
                return ledger_spend_uc(conn, budget, key) + pending[(scope, key)]

            self.ledger.resync(spend)
            conn.execute("COMMIT")
        finally:
            conn.close()
        log.info("budget spend reloaded from the database after a worker stopped")


def _committed(conn: Any, trace_ids: list[str]) -> set[str]:
    """Which of ``trace_ids`` the database holds (in chunks: SQLite binds at most 999 at once)."""
    found: set[str] = set()
    for start in range(0, len(trace_ids), 500):
        chunk = trace_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in conn.execute(f"SELECT id FROM traces WHERE id IN ({marks})", chunk))
    return found


# -- a worker --------------------------------------------------------------------------------


class StateClient:
    """A worker's calls to the parent, one connection per call from a small pool."""

    def __init__(self, folder: Path | str) -> None:
        self.path = str(Path(folder) / SOCKET_NAME)
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def call(self, message: list, answer: bool = True) -> Any:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = _connect(self.path)
            conn.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            data = b""
            while answer and not data.endswith(b"\n"):
                more = conn.recv(65536)
                if not more:
                    raise ConnectionError("the group's parent closed the connection")
                data += more
        except OSError as exc:
            if conn is not None:
                conn.close()
            raise StateLost(f"the group's shared state did not answer: {exc}") from None
        with self._lock:
            if len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        if not answer:
            return None
        reply = json.loads(data)
        if "error" in reply:
            raise StateLost("the group's shared state failed on this call (see the log)")
        return reply


def _connect(path: str) -> socket.socket:
    """A connection to the parent. Blocking, with the call's timeout as the kernel's send timeout:
    a Unix socket whose listen backlog is full then waits for room (a socket with a Python timeout
    is non-blocking, and gets EAGAIN at once)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        seconds = int(CALL_TIMEOUT_S)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))
        conn.connect(path)
    except OSError:
        conn.close()
        raise
    conn.settimeout(CALL_TIMEOUT_S)
    return conn


class RemoteLedger(Ledger):
    """:class:`~stockyard.budgets.Ledger`'s interface, kept by the group's parent."""

    def __init__(
        self,
        client: StateClient,
        load: Callable[[Budget, str], int],
        warn_percents: Iterable[int] = (80,),
        on_warning: Warn | None = None,
        on_exhausted: Exhausted | None = None,
    ) -> None:
        super().__init__(load, warn_percents, on_warning, on_exhausted)
        self._client = client
        self._pid = os.getpid()

    def reserve(self, budgets: list[Budget], amount: int, ts_ms: int) -> Hold:
        reply = self._client.call(["reserve", self._pid, [_plain(b) for b in budgets], amount, ts_ms])
        if "refused" in reply:
            budget, key, spent, reserved, asked, at = reply["refused"]
            refused = BudgetExceeded(_budget(budget), key, spent, reserved, asked, at)
            if reply["first"]:
                self._tell_exhausted(refused)
            raise refused
        return _RemoteHold(reply["hold"])

    def settle(
        self, hold: Hold | None, actual_uc: int, scopes: Iterable[str], ts_ms: int, trace_id: str | None = None
    ) -> None:
        hold_id = hold.id if isinstance(hold, _RemoteHold) else None
        try:
            reply = self._client.call(["settle", hold_id, actual_uc, list(scopes), ts_ms, self._pid, trace_id])
        except StateLost as exc:  # the parent is gone: so is the group (the workers follow it)
            log.error("budget settlement not recorded: %s", exc)
            return
        self._tell_warnings((_budget(budget), key, spent, pct) for budget, key, spent, pct in reply["warnings"])

    def used_up(self, budgets: list[Budget], ts_ms: int) -> BudgetExceeded | None:
        return self._state("used_up", budgets, ts_ms)

    def tightest(self, budgets: list[Budget], ts_ms: int) -> BudgetExceeded | None:
        return self._state("tightest", budgets, ts_ms)

    def _state(self, op: str, budgets: list[Budget], ts_ms: int) -> BudgetExceeded | None:
        """The parent's answer to ``op`` (``used_up``, ``tightest``): a budget's state, or None."""
        found = self._client.call([op, [_plain(b) for b in budgets], ts_ms])["refused"]
        if found is None:
            return None
        budget, key, spent, reserved, asked, at = found
        return BudgetExceeded(_budget(budget), key, spent, reserved, asked, at)

    def usage(self, budget: Budget, ts_ms: int) -> tuple[int, int] | None:
        found = self._client.call(["usage", _plain(budget), ts_ms])["usage"]
        return None if found is None else (found[0], found[1])


class _RemoteHold(Hold):
    """A hold kept by the parent, known here by its id."""

    def __init__(self, hold_id: int) -> None:
        super().__init__()
        self.id = hold_id


class _RemoteEntry:
    __slots__ = ("id",)

    def __init__(self, entry_id: int | None) -> None:
        self.id = entry_id


class RemoteRateLimiter:
    """:class:`~stockyard.modules.ratelimit.RateLimiter`'s interface, kept by the group's parent."""

    def __init__(self, client: StateClient) -> None:
        self._client = client

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str = "this key") -> Any:
        """Count one request, or raise RateLimited. The parent gone: the request goes through
        uncounted (a limit is not a budget; it fails open, as on PostgreSQL)."""
        reply = self._ask("admit", key_id, rpm, tpm, tokens, who)
        return _RemoteEntry(reply["entry"] if reply is not None else None)

    def check(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str = "this key") -> None:
        """Raise RateLimited if ``admit`` would now, counting nothing; the parent gone: no refusal."""
        self._ask("check", key_id, rpm, tpm, tokens, who)

    def _ask(self, op: str, key_id: str, rpm: int | None, tpm: int | None, tokens: int, who: str) -> dict | None:
        """The parent's answer to ``op`` (RateLimited where it refuses), or None when it is gone."""
        if tpm is not None and tokens > tpm:
            raise too_large(who, tpm, tokens)
        try:
            reply = self._client.call([op, key_id, rpm, tpm, tokens, who])
        except StateLost as exc:
            log.warning("rate limit of %s not %s: %s", who, "counted" if op == "admit" else "checked", exc)
            return None
        if "limited" in reply:
            message, retry_after = reply["limited"]
            raise RateLimited(message, retry_after)
        return reply

    def correct(self, key_id: str, entry: Any, tokens: int) -> None:
        if entry.id is None:
            return
        try:
            self._client.call(["correct", entry.id, tokens], answer=False)
        except StateLost as exc:
            log.warning("token count of a request not corrected: %s", exc)
