"""Webhooks: telling other systems when a budget runs low, a key expires, a breaker opens, errors rise.

Events come from where they happen (the budget ledger, the fallback breaker) through
:meth:`Dispatcher.emit`, which only puts them on a bounded queue: a request never waits for a
receiver. Key expiry and the error rate are checked by the dispatcher thread itself, from the
database, every few seconds. One thread delivers: a POST per (webhook, event), retried with
backoff after a failure (no answer, or a status other than 2xx), every attempt written to
``webhook_deliveries``. A receiver sees an event at least once (dedupe on its ``id``): nothing
is sent again after a 2xx. A delivery a stop left (``abandoned``) or a crash left waiting for a
retry is resumed by the next server (:meth:`Dispatcher._resume`). An event emitted is written to
``webhook_outbox`` too (a row per webhook it goes to), which its first delivery-log row replaces in
the same write: an event still queued, or being sent, at a crash is sent by the next server
(:func:`claim_outbox`), with its id and its body as made. A first attempt takes that row as it begins
(:func:`take_first`), so a server starting beside a live one sends none of its events twice.

JSON deliveries are signed: ``X-Stockyard-Signature: t=<unix seconds>,v1=<hex>``, where the hex
is HMAC-SHA256 with the webhook's secret over ``"<t>.<body>"``. A receiver recomputes it and
refuses a ``t`` older than :data:`REPLAY_WINDOW_S`; every retry is signed afresh.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from . import __version__
from .times import now_iso, parse_utc, to_iso

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("stockyard.webhooks")

EVENTS = ("budget.warning", "budget.exhausted", "key.expiring", "breaker.opened", "breaker.closed", "error_rate.high")
TEST_EVENT = "webhook.test"
FORMATS = ("json", "slack")
SIGNATURE_HEADER = "X-Stockyard-Signature"
REPLAY_WINDOW_S = 300  # receivers refuse signatures older than this (README)
BACKOFF_S = (1.0, 5.0, 30.0, 120.0, 600.0)  # waits before retries 1..5: six attempts in all
TIMEOUT_S = 10.0
QUEUE_MAX = 1000  # events waiting for the thread (and deliveries waiting to retry); more are dropped and counted
CHECK_EVERY_S = 5.0  # key expiry and error rate
ERROR_OUTCOMES = ("upstream_error", "error", "stream_broken")  # what counts toward the error rate
RESUME_EVERY_S = 60.0  # how often the checking server looks for deliveries a stopped or crashed one left
RESUME_WITHIN_S = 86_400.0  # older ones stay in the log as they are: their news is stale
RESUME_SLACK_S = 60.0  # a retry not attempted this long after it was due: its server is gone
OUTBOX_SLACK_S = 600.0  # an event not attempted this long after it was emitted: its server is gone (or far behind)


@dataclass(frozen=True)
class Hook:
    """One webhook as the dispatcher uses it (secret decrypted)."""

    id: str
    url: str
    events: frozenset[str]
    format: str
    secret: str = field(repr=False)
    expiry_days: int = 7
    error_rate_percent: int = 20
    error_window_min: int = 5
    error_min_requests: int = 20


def sign(secret: str, body: bytes, t: int) -> str:
    """The signature header value for ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float | None = None, window: int = REPLAY_WINDOW_S) -> bool:
    """What a receiver does (the README shows the same): recompute, compare in constant time, check the age."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > window:
        return False
    return hmac.compare_digest(sign(secret, body, t), f"t={t},v1={parts.get('v1', '')}")


def new_event(kind: str, data: dict[str, Any], summary: str, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or "evt_" + os.urandom(12).hex(),
        "type": kind,
        "created_at": now_iso(),
        "summary": summary,
        "data": data,
    }


def stable_id(*parts: Any) -> str:
    """An event id made from what the event is about, so a check repeated later is the same event."""
    return "evt_" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def payload(hook: Hook, event: dict[str, Any]) -> bytes:
    """The body sent: the event itself, or Slack's ``{"text": …}``."""
    if hook.format == "slack":  # Slack reads <…> as links and @-mentions: a client-chosen end user id is text
        text = "Stockyard: " + event["summary"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        # shown as a section whose text is verbatim: Slack links a bare URL (a client-chosen end user id
        # "https://…") in a message's text, never in a verbatim one; ``text`` stays for notifications
        section = {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}
        return json.dumps({"text": text, "blocks": [section]}, ensure_ascii=False).encode()
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    hook: Hook = field(compare=False)
    event: dict[str, Any] = field(compare=False)
    attempt: int = field(default=1, compare=False)
    claimed: str | None = field(default=None, compare=False)  # resumed: the ts its claim gave its row


Post = Callable[[Hook, bytes, dict[str, str]], tuple[int | None, str | None]]


def post(hook: Hook, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
    """One POST, no redirects followed, within TIMEOUT_S in all (a receiver sending its answer a
    byte at a time must not hold the one delivery thread): (status, None) or (None, why it failed)."""
    parts = urlsplit(hook.url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=TIMEOUT_S, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
    late = threading.Event()  # set before the socket is cut: whatever the read then raises, it was the time
    deadline = threading.Timer(TIMEOUT_S, _cut, (conn, late))
    deadline.daemon = True
    deadline.start()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body, headers)
        resp = conn.getresponse()
        resp.read(65536)
        if late.is_set():
            return None, f"TimeoutError: no whole answer within {TIMEOUT_S:g} s"
        return resp.status, None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a host IDNA refuses
        if late.is_set():
            return None, f"TimeoutError: no whole answer within {TIMEOUT_S:g} s"
        return None, f"{type(exc).__name__}: {exc}"[:300]
    finally:
        deadline.cancel()
        conn.close()


def _cut(conn: http.client.HTTPConnection, late: threading.Event) -> None:
    """The delivery's time is up: end its socket, which wakes the read waiting on it."""
    late.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def send_signed(
    hook: Hook, event: dict[str, Any], send: Post = post, clock: Callable[[], float] = time.time
) -> tuple[int | None, str | None, int]:
    """One signed attempt: (status, error or None when 2xx, milliseconds)."""
    body = payload(hook, event)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Stockyard-Webhooks/{__version__}",
        "X-Stockyard-Event": event["type"],
        "X-Stockyard-Delivery": event["id"],
        SIGNATURE_HEADER: sign(hook.secret, body, int(clock())),
    }
    started = time.monotonic()
    status, error = send(hook, body, headers)
    if error is None and not (status is not None and 200 <= status < 300):
        error = f"HTTP {status}"
    return status, error, int((time.monotonic() - started) * 1000)


def log_delivery(conn, row: tuple, event: dict[str, Any] | None = None) -> None:
    """One row of the delivery log: (webhook, event id, event, attempt, ts, status, error, ms, outcome).
    ``event``: the event itself, kept on a row another server may resume (abandoned, retrying); the
    webhook's earlier rows of the event give their copy up (only a last row can be resumed; a first
    attempt's too: a resumed one's claimed row holds its copy until then)."""
    conn.execute(
        "UPDATE webhook_deliveries SET event_json = NULL "
        "WHERE webhook_id = ? AND event_id = ? AND event_json IS NOT NULL",
        row[:2],
    )
    conn.execute("DELETE FROM webhook_outbox WHERE webhook_id = ? AND event_id = ?", row[:2])  # the log has it now
    kept = None if event is None else json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event, attempt, ts, status, error, "
        "duration_ms, outcome, event_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*row, kept),
    )


def keep_outbox(conn, hook_ids: list[str], event: dict[str, Any]) -> None:
    """An event emitted, for each webhook it goes to, until its first delivery-log row (:func:`log_delivery`)."""
    kept = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    for hook_id in hook_ids:
        conn.execute(
            "INSERT INTO webhook_outbox (webhook_id, event_id, event_json, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (webhook_id, event_id) DO NOTHING",
            (hook_id, event["id"], kept, event["created_at"]),
        )


def claim_outbox(
    conn, hook_ids: list[str], before: str, since: str, limit: int, *, now: str
) -> tuple[list[tuple[str, dict, int]], int]:
    """Events emitted before ``before`` (a row its server's first attempt took: that attempt due to be
    over by then, :func:`take_first`) and never logged (their server crashed, or stopped before it
    logged them), claimed as :func:`claim_left` claims a delivery: the outbox row goes and a delivery-log
    row ``resumed`` at ``now`` keeps the copy for the attempt (a crash before it leaves it to the next
    server). Rows of webhooks deleted since, or emitted before ``since`` (stale news), are dropped.
    Returns ((webhook id, event, 1) claimed, rows dropped)."""
    rows = conn.execute(
        "SELECT webhook_id, event_id, event_json, created_at FROM webhook_outbox WHERE created_at < ? "
        "ORDER BY created_at LIMIT ?",
        (before, limit),
    ).fetchall()
    claimed, dropped = [], 0
    for webhook_id, event_id, kept, created_at in rows:
        taken = conn.execute(  # as read: a row its server took meanwhile (take_first) stays its own
            "DELETE FROM webhook_outbox WHERE webhook_id = ? AND event_id = ? AND created_at = ?",
            (webhook_id, event_id, created_at),
        ).rowcount
        if taken != 1:
            continue  # another server claimed it, or its own server began sending it
        if webhook_id not in hook_ids or created_at < since:
            dropped += 1
            continue
        event = json.loads(kept)
        log_delivery(conn, (webhook_id, event_id, event["type"], 1, now, None, None, 0, "resumed"), event)
        claimed.append((webhook_id, event, 1))
    return claimed, dropped


def take_first(conn, webhook_id: str, event_id: str, until: str) -> bool:
    """Whether the first attempt of an event this server emitted is still its own to make as it begins:
    its outbox row dated ``until`` (when the attempt is surely over), so a server starting meanwhile,
    which claims every row from before its start (a crashed server's, it cannot tell), leaves it, and a
    crash during the attempt still leaves it to be claimed after that. False when another server
    claimed it already (its delivery-log row is there); True too when neither row is there (the
    outbox write was dropped: nobody can have claimed it)."""
    key = (webhook_id, event_id)
    taken = conn.execute(
        "UPDATE webhook_outbox SET created_at = ? WHERE webhook_id = ? AND event_id = ?", (until, *key)
    )
    if taken.rowcount == 1:
        return True
    row = conn.execute("SELECT 1 FROM webhook_deliveries WHERE webhook_id = ? AND event_id = ?", key).fetchone()
    return row is None


def _unkeep(conn, hook_ids: list[str], event_id: str) -> None:
    """An event dropped (the queue full): its outbox rows go."""
    for hook_id in hook_ids:
        conn.execute("DELETE FROM webhook_outbox WHERE webhook_id = ? AND event_id = ?", (hook_id, event_id))


def claim_left(
    conn,
    hook_ids: list[str],
    since: str,
    due_before: float,
    limit: int,
    held: frozenset[tuple[str, str]] = frozenset(),
    *,
    now: str,
) -> list[tuple[str, dict, int]]:
    """The deliveries left to resume, claimed: (webhook id, event, the attempt to make). A row ``abandoned``
    is left at once; one ``retrying`` once its retry is RESUME_SLACK_S overdue (``due_before``: unix
    seconds); one ``resumed`` once its claimer's attempt is (a crash cut it). A claim takes the row as it
    read it (a server starting beside this one claims none of them twice) and logs a row ``resumed`` at
    ``now`` for the attempt it makes, which keeps the copy (renewed in place when claimed again): a crash
    before that attempt's row leaves it to the next server. ``held``: (webhook id, event id) of
    deliveries the claiming server has in hand itself, left alone (its own retry takes its row:
    :func:`take_retry`)."""
    marks = ", ".join("?" * len(hook_ids))
    rows = conn.execute(
        "SELECT id, webhook_id, attempt, ts, outcome, event_json FROM webhook_deliveries "
        f"WHERE event_json IS NOT NULL AND ts >= ? AND webhook_id IN ({marks}) ORDER BY ts LIMIT ?",
        (since, *hook_ids, limit),
    ).fetchall()
    claimed = []
    for row_id, webhook_id, attempt, ts, outcome, kept in rows:
        if outcome != "abandoned" and not _overdue(outcome, attempt, ts, due_before):
            continue  # not left, or its server (or claimer) may still be making its attempt
        event, attempt = json.loads(kept), attempt + (outcome == "retrying")
        if (webhook_id, event["id"]) in held:
            continue
        renew = "ts = ?" if outcome == "resumed" else "event_json = NULL"  # a resumed row is the claim itself
        taken = conn.execute(  # as read: a row its server renewed meanwhile (take_retry) stays its own
            f"UPDATE webhook_deliveries SET {renew} WHERE id = ? AND ts = ? AND event_json IS NOT NULL",
            (now, row_id, ts) if outcome == "resumed" else (row_id, ts),
        )
        if taken.rowcount != 1:
            continue
        if outcome != "resumed":  # the claim's own row, which keeps the copy until its attempt's row
            log_delivery(conn, (webhook_id, event["id"], event["type"], attempt, now, None, None, 0, "resumed"), event)
        claimed.append((webhook_id, event, attempt))
    return claimed


def _overdue(outcome: str, attempt: int, ts: str, due_before: float) -> bool:
    """Whether a ``retrying`` row's retry, or a ``resumed`` row's attempt, should have been made by
    ``due_before`` (unix seconds): its server, or its claimer, is gone."""
    if outcome == "retrying":
        wait = BACKOFF_S[min(attempt, len(BACKOFF_S)) - 1] + TIMEOUT_S
    elif outcome == "resumed":
        wait = TIMEOUT_S  # made at once when claimed, renewed as it began (take_claimed)
    else:
        return False
    return parse_utc(ts).timestamp() + wait <= due_before


def take_claimed(conn, webhook_id: str, event_id: str, claimed: str, now: str) -> bool:
    """Whether the delivery this server claimed at ``claimed`` (:func:`claim_left`) is still its own to
    send as its attempt begins: its row renewed to ``now``, so no server claims it during the attempt.
    False when another server claimed it again meanwhile (this one's thread was held past the slack)."""
    taken = conn.execute(
        "UPDATE webhook_deliveries SET ts = ? WHERE webhook_id = ? AND event_id = ? AND outcome = 'resumed' "
        "AND ts = ? AND event_json IS NOT NULL",
        (now, webhook_id, event_id, claimed),
    )
    return taken.rowcount == 1


def take_retry(conn, webhook_id: str, event_id: str, attempt: int, now: str) -> bool:
    """Whether the retry after ``attempt`` (its row ``retrying``) is this server's to make: its row renewed
    to ``now`` while it still keeps its copy, so a checking server that judged the retry left (its server
    only late: a thread held by slow receivers) and read the row before cannot claim it (:func:`claim_left`
    claims a row as it read it), and one reading it now finds it not overdue; the copy stays for the next
    server should a crash cut this attempt. False when another server claimed it (its row is then
    ``resumed`` with a later attempt, or a later attempt's row is there); True too when no row of this
    attempt or a later one is there (its write was dropped: nobody can have claimed it)."""
    key = (webhook_id, event_id, attempt)
    taken = conn.execute(
        "UPDATE webhook_deliveries SET ts = ? WHERE webhook_id = ? AND event_id = ? AND attempt = ? "
        "AND outcome = 'retrying' AND event_json IS NOT NULL",
        (now, *key),
    )
    if taken.rowcount == 1:
        return True
    row = conn.execute(
        "SELECT 1 FROM webhook_deliveries WHERE webhook_id = ? AND event_id = ? AND attempt >= ?", key
    ).fetchone()
    return row is None


_WAKE: Any = ({}, None)  # put by ``stop``: the delivery thread looks at its stop flag now


class Dispatcher:
    """The delivery thread, its queue and its retry schedule, and the periodic checks."""

    def __init__(
        self, store: "Store", *, send: Post = post, clock: Callable[[], float] = time.time, checks: bool = True
    ) -> None:
        self._store = store
        self._checks = checks  # key expiry and error rate: one worker of a group checks (else N events)
        self._send = send
        self._clock = clock
        self._hooks: tuple[Hook, ...] = ()
        self._queue: queue.Queue[tuple[dict[str, Any], str | None]] = queue.Queue(QUEUE_MAX)
        self._waiting: list[_Delivery] = []  # retries, by due time
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stockyard-webhooks", daemon=True)
        self._sending: _Delivery | None = None  # the delivery the thread is making now
        self._left_lock = threading.Lock()  # the stop and the thread's own end both call _abandon
        self._sent_checks: set[tuple[str, str]] = set()  # (hook id, event id) of checked events sent
        self._error_high: dict[str, bool] = {}
        self._next_resume = 0.0
        self._started = now_iso()  # the outbox's rows from before: the events a crash (or a stop) left
        self._recent: dict[tuple[str, str], float] = {}  # (hook, event) attempted lately: its row may be unwritten
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    def use(self, hooks: list[Hook]) -> None:
        """The webhooks to deliver to from now on (swapped whole by ``App.reload``)."""
        self._hooks = tuple(hooks)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return self._hooks

    def start(self) -> None:
        self._thread.start()

    def idle(self) -> bool:
        """Whether no event is queued or in hand, no delivery being made and no retry waiting: what
        this server would still send is nothing (a stop now would abandon none)."""
        with self._left_lock:
            return self._queue.unfinished_tasks == 0 and self._sending is None and not self._waiting

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(_WAKE)  # the thread waits on the queue for up to a second
        except queue.Full:
            pass  # then it is not waiting
        self._thread.join(timeout)
        self._abandon()  # a thread still held by a receiver leaves its events here

    def emit(
        self,
        kind: str,
        data: dict[str, Any],
        summary: str,
        *,
        only: str | None = None,
        conn: Any = None,
        event_id: str | None = None,
    ) -> str | None:
        """Queue an event for every webhook subscribed to ``kind`` (or the one webhook ``only``);
        never blocks. Returns the event id, or None when dropped (queue full). ``conn``: the writer
        job's transaction that decided to tell it (a budget's threshold row), which then keeps its
        outbox rows too — both or neither survive a crash (a later job's rows left a window where the
        event was recorded as told and lost). ``event_id``: what the event is about (:func:`stable_id`),
        for one that may be told again — its job run twice (a batch run again job by job, a retry) —
        which a receiver must see as the same event (delivery is at least once); else a new id."""
        targets = [h.id for h in self._hooks if h.id == only or (only is None and kind in h.events)]
        if not targets and only is None:
            return None
        event = new_event(kind, data, summary, event_id)
        if self._queue.full():  # (only the delivery thread takes from it: room now is room after)
            self.dropped += 1
            log.warning("webhooks: queue full, event %s dropped", kind)
            return None
        # written before it is queued: its first delivery-log row, which removes it, comes after
        if conn is not None:  # (the writer's thread, in its transaction: the delivery's row comes in a later one)
            keep_outbox(conn, targets, event)
        else:
            self._store.submit(lambda conn: keep_outbox(conn, targets, event))
        try:
            self._queue.put_nowait((event, only))
        except queue.Full:  # emitted meanwhile by another thread: its outbox rows go too
            self.dropped += 1
            log.warning("webhooks: queue full, event %s dropped", kind)
            self._store.submit(lambda conn: _unkeep(conn, targets, event["id"]))
            return None
        return event["id"]

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        next_check = 0.0
        while not self._stop.is_set():
            try:
                next_check = self._step(next_check)
            except Exception as exc:  # the thread must outlive any one delivery
                log.error("webhooks: %s: %s", type(exc).__name__, exc)
        self._abandon()

    def _abandon(self) -> None:
        """Stopping: each delivery not made (being made, queued, or waiting for a retry) gets a
        delivery-log row ``abandoned`` and the log one line naming the events. Retries and queued
        events live in memory and a restart does not send them: without this a budget warning the
        database records as told would be lost without a word."""
        with self._left_lock:
            left = [d for d in (self._sending,) if d is not None] + self._waiting
            self._sending, self._waiting = None, []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _WAKE:
                    left += self._deliveries(*item)
        if not left:
            return
        kinds = ", ".join(sorted({d.event["type"] for d in left}))
        log.warning("webhooks: stopping: %d webhook deliveries were not made (%s)", len(left), kinds)
        rows = [
            (d.hook.id, d.event["id"], d.event["type"], d.attempt, now_iso(), None, "server stopped", 0, "abandoned")
            for d in left
        ]

        def job(conn) -> None:
            for row, d in zip(rows, left):
                log_delivery(conn, row, d.event)  # the next server resumes it

        self._store.submit(job)

    def _deliveries(self, event: dict[str, Any], only: str | None) -> list[_Delivery]:
        """A first attempt of ``event`` for each webhook it goes to (``only``: that one)."""
        return [
            _Delivery(0.0, next(self._seq), hook, event)
            for hook in self._hooks
            if hook.id == only or (only is None and event["type"] in hook.events)
        ]

    def _step(self, next_check: float) -> float:
        """Checks when due, retries when due, then new events (waiting at most a second)."""
        now = time.monotonic()
        if now >= next_check and self._checks:
            next_check = now + CHECK_EVERY_S
            try:
                self._check()
            except Exception as exc:  # a failed check must not stop deliveries
                log.error("webhooks: check failed: %s", exc)
        if now >= self._next_resume and self._checks:
            self._next_resume = now + RESUME_EVERY_S
            try:
                self._resume()
            except Exception as exc:  # a database that is away: the next pass tries again
                log.error("webhooks: resuming deliveries failed: %s", exc)
        while (due := self._next_retry()) is not None:
            self._attempt(due)
        wait = min([next_check] + [d.due for d in self._waiting[:1]]) - time.monotonic()
        try:
            item = self._queue.get(timeout=max(0.01, min(wait, 1.0)))
        except queue.Empty:
            return next_check
        try:
            if item is _WAKE:
                return next_check
            pending = self._deliveries(*item)
            while pending and not self._stop.is_set():  # stopping: the rest are abandoned, not sent
                self._attempt(pending.pop(0))
            if pending:
                with self._left_lock:
                    self._waiting += pending  # attempt 1, due now: abandoned with the rest
                    heapq.heapify(self._waiting)
            return next_check
        finally:
            self._queue.task_done()  # (idle: every event taken is done with)

    def _next_retry(self) -> _Delivery | None:
        """The retry due now, taken off the heap (None: none, or stopping)."""
        with self._left_lock:
            if self._stop.is_set() or not self._waiting or self._waiting[0].due > time.monotonic():
                return None
            self._sending = heapq.heappop(self._waiting)  # a stop from here on sees it as being made
            return self._sending

    def _attempt(self, d: _Delivery) -> None:
        self._sending = d
        hook = self._current(d.hook.id)
        if hook is None or not self._ours(d):
            with self._left_lock:
                if self._sending is d:
                    self._sending = None
            why = "was removed" if hook is None else "is sent by another server that resumed it"
            log.warning("webhooks: %s to %s not sent: webhook %s %s", d.event["type"], d.hook.id, d.hook.id, why)
            return
        d.hook = hook  # its URL and secret as they are now (moved, rotated), for its retries too
        status, error, ms = send_signed(d.hook, d.event, self._send, self._clock)
        with self._left_lock:
            if self._sending is not d:  # the stop gave up on it and logged it abandoned meanwhile
                return
            self._sending = None
        if status is not None and 200 <= status < 300:
            outcome = "delivered"
            self.delivered += 1
        elif d.attempt <= len(BACKOFF_S) and len(self._waiting) >= QUEUE_MAX:  # a receiver down under a flood
            outcome = "dropped"
            self.dropped += 1
            log.warning("webhooks: %d deliveries wait for a retry already; %s dropped", QUEUE_MAX, d.event["type"])
        elif d.attempt <= len(BACKOFF_S):
            outcome = "retrying"
            due = time.monotonic() + BACKOFF_S[d.attempt - 1]
            retry = _Delivery(due, next(self._seq), d.hook, d.event, d.attempt + 1)
            with self._left_lock:  # not between a stop's look at the retries and its clearing them
                heapq.heappush(self._waiting, retry)
        else:
            outcome = "failed"
            self.failed += 1
            log.warning("webhooks: %s to %s failed after %d attempts", d.event["type"], d.hook.id, d.attempt)
        row = (d.hook.id, d.event["id"], d.event["type"], d.attempt, now_iso(), status, error, ms, outcome)
        kept = d.event if outcome == "retrying" else None  # resumed by another server if this one is gone
        self._recent[(d.hook.id, d.event["id"])] = time.monotonic()
        self._store.submit(lambda conn: log_delivery(conn, row, kept))

    def _current(self, hook_id: str) -> Hook | None:
        """The webhook as configured now (``use``), None once it was deleted."""
        return next((h for h in self._hooks if h.id == hook_id), None)

    def _ours(self, d: _Delivery) -> bool:
        """Whether ``d`` is this server's to send: a first attempt whose outbox row it takes now
        (:func:`take_first`), a resumed one whose claim is still its own (:func:`take_claimed`), or a
        retry whose row's copy it takes now (:func:`take_retry`). A database that is away: sent (at
        least once, not lost)."""
        try:
            now, claimed = now_iso(), d.claimed
            if d.attempt == 1 and claimed is None:
                until = to_iso(datetime.fromtimestamp(self._clock() + TIMEOUT_S + RESUME_SLACK_S, timezone.utc))
                return self._store.write(lambda conn: take_first(conn, d.hook.id, d.event["id"], until))
            if claimed is not None:
                return self._store.write(lambda conn: take_claimed(conn, d.hook.id, d.event["id"], claimed, now))
            return self._store.write(lambda conn: take_retry(conn, d.hook.id, d.event["id"], d.attempt - 1, now))
        except Exception as exc:
            log.warning("webhooks: taking the delivery of %s to %s failed (%s): sent", d.event["type"], d.hook.id, exc)
            return True

    def _resume(self) -> None:
        """Deliveries a stopped or crashed server left (an earlier run of this one, or another worker or
        replica), claimed in the database and sent from here: at start, then every RESUME_EVERY_S."""
        hooks = {h.id: h for h in self._hooks}
        with self._left_lock:
            room = QUEUE_MAX - len(self._waiting)
            held = {(d.hook.id, d.event["id"]) for d in [*self._waiting, *filter(None, [self._sending])]}
        if not hooks or room <= 0:
            return
        now, mono = self._clock(), time.monotonic()
        self._recent = {k: t for k, t in self._recent.items() if mono - t < 10 * RESUME_SLACK_S}
        mine = frozenset(held | set(self._recent))  # not claimed: this server's own retries take their copy
        since = to_iso(datetime.fromtimestamp(now - RESUME_WITHIN_S, timezone.utc))
        stamp = to_iso(datetime.fromtimestamp(now, timezone.utc))  # its claimed rows' ts (take_claimed)
        resumed = self._store.write(
            lambda conn: claim_left(conn, list(hooks), since, now - RESUME_SLACK_S, room, mine, now=stamp)
        )
        # events never attempted: at start, every one emitted before it; then those long left
        before = self._started if self._started else to_iso(datetime.fromtimestamp(now - OUTBOX_SLACK_S, timezone.utc))
        self._started = ""
        unsent, dropped = self._store.write(
            lambda conn: claim_outbox(conn, list(hooks), before, since, max(0, room - len(resumed)), now=stamp)
        )
        if dropped:
            log.warning(
                "webhooks: %d events left unsent were dropped (their webhook deleted, or older than a day)", dropped
            )
        resumed += unsent
        if not resumed:
            return
        log.warning("webhooks: resuming %d deliveries a stopped server left", len(resumed))
        with self._left_lock:
            for webhook_id, event, attempt in resumed:
                resumed_one = _Delivery(mono, next(self._seq), hooks[webhook_id], event, attempt, claimed=stamp)
                heapq.heappush(self._waiting, resumed_one)

    # -- checks from the database -------------------------------------------------------------
    def _check(self) -> None:
        hooks = self._hooks
        if not any(h.events & {"key.expiring", "error_rate.high"} for h in hooks):
            return
        conn = self._store.read()
        now_ms = int(self._clock() * 1000)
        for hook in hooks:
            if "key.expiring" in hook.events:
                self._check_expiry(conn, hook, now_ms)
            if "error_rate.high" in hook.events:
                self._check_errors(conn, hook, now_ms)

    def _check_expiry(self, conn, hook: Hook, now_ms: int) -> None:
        now, until = time.gmtime(now_ms / 1000), time.gmtime(now_ms / 1000 + hook.expiry_days * 86_400)
        fmt = "%Y-%m-%dT%H:%M:%S"
        rows = conn.execute(
            "SELECT id, name, project, expires_at FROM client_keys WHERE revoked_at IS NULL "
            "AND expires_at IS NOT NULL AND expires_at > ? AND expires_at <= ?",
            (time.strftime(fmt, now), time.strftime(fmt, until) + "Z"),
        ).fetchall()
        for r in rows:
            event_id = stable_id("key.expiring", r["id"], r["expires_at"])
            if (hook.id, event_id) in self._sent_checks:
                continue
            self._sent_checks.add((hook.id, event_id))
            if conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE webhook_id = ? AND event_id = ?", (hook.id, event_id)
            ).fetchone():
                continue  # sent before a restart
            data = {"key_id": r["id"], "key_name": r["name"], "project": r["project"], "expires_at": r["expires_at"]}
            summary = f"key '{r['name']}' expires at {r['expires_at']} (within {hook.expiry_days} days)"
            event = new_event("key.expiring", data, summary, event_id)
            self._attempt(_Delivery(0.0, next(self._seq), hook, event))

    def _check_errors(self, conn, hook: Hook, now_ms: int) -> None:
        """One event when the error rate rises to the threshold; again only after it fell below."""
        since = now_ms - hook.error_window_min * 60_000
        marks = ", ".join("?" * len(ERROR_OUTCOMES))
        total, errors = conn.execute(
            f"SELECT count(*), coalesce(sum(CASE WHEN outcome IN ({marks}) THEN 1 ELSE 0 END), 0) FROM traces "
            "WHERE ts_ms >= ? AND parent_id IS NULL AND outcome NOT IN ('rejected', 'client_disconnected')",
            (*ERROR_OUTCOMES, since),
        ).fetchone()
        high = total >= hook.error_min_requests and errors * 100 >= hook.error_rate_percent * total
        was = self._error_high.get(hook.id, False)
        self._error_high[hook.id] = high
        if high and not was:
            percent = round(errors * 100 / total, 1)
            data = {
                "errors": errors,
                "requests": total,
                "error_rate_percent": percent,
                "threshold_percent": hook.error_rate_percent,
                "window_minutes": hook.error_window_min,
            }
            summary = (
                f"error rate {percent}% ({errors} of {total} requests) in the last {hook.error_window_min} "
                f"minutes, at or over {hook.error_rate_percent}%"
            )
            self._attempt(_Delivery(0.0, next(self._seq), hook, new_event("error_rate.high", data, summary)))
