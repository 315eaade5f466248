"""``cache``: exact-match answers kept in SQLite and served without asking the provider.

The key is the SHA-256 of the endpoint, dialect, provider, model and the canonical request
body (sorted keys, no whitespace) without ``model`` (named by the provider and model),
``stream``, ``stream_options`` and ``user`` — so the same question hits whether it was
streamed or not — the ``anthropic-beta``/``anthropic-version`` headers a native Claude client
sends upstream, and, unless ``scope`` is ``global``, the client key (``key``, the default)
or its project (``project``) that asked: an answer is served only to whom it was made for, so
one key cannot learn from hit or miss, or from the answer, what another key asked. What is
stored is exactly what the client got: the JSON of a plain answer, or the event stream of a
streamed one (with or without its usage chunk, as asked). Responses API requests are cached
only with ``store: false``. A hit replays those bytes unchanged for the same kind of request;
a streamed request with only a plain answer cached gets it as a stream.

Only whole, successful answers of the provider and model the key names are stored (status 200,
stream complete, not a fallback's, not larger than the trace body cap
``STOCKYARD_BODY_CAP_BYTES``, nothing the redact module flagged in the request or the answer). Entries
live ``ttl_s``; past ``max_entries`` or ``max_bytes`` the oldest go first. A request with
``x-stockyard-cache: bypass`` is answered by the provider (and refreshes the entry).
Answers say ``x-stockyard-cache: hit``, ``miss`` or ``bypass``. A hit is traced with
``cache_hit`` = 1, cost 0 and ``cost_saved_uc`` = what the stored answer cost.

Identical requests at once ask once (``wait_s``): the first miss leads a flight upstream and the
others wait for its answer (:meth:`Cache._fly`): bounded by ``wait_s`` and the request's deadline,
ended by the client leaving, holding no deployment claim; a flight that stores nothing is
led by the next waiting request. A departed client's plain answer, read to its end, is kept too.

Writes go through the writer thread; lookups use the request thread's read connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qs

from ..context import Answer, RequestContext, Route
from ..errors import ClientGone
from ..providers.chatshape import DROP_HEADER
from .base import Module, ModuleServices
from .replay import to_stream
from .schema import Field
from .timeout import deadline_error

HEADER = "x-stockyard-cache"
ENDPOINTS = ("chat", "completions", "embeddings", "messages", "responses")
IGNORED_FIELDS = ("model", "stream", "stream_options", "user")
ANSWER_HEADERS = ("anthropic-beta", "anthropic-version")  # a native Claude client's, passed upstream
SCOPES = ("key", "project", "global")
JSON, SSE, SSE_USAGE = "json", "sse", "sse+usage"
CONTENT_TYPES = {JSON: "application/json", SSE: "text/event-stream", SSE_USAGE: "text/event-stream"}
# whole answers worth keeping: a departed client's too (a plain answer is read to its end and billed)
KEPT_OUTCOMES = ("ok", "client_disconnected")


@dataclass(frozen=True)
class CacheOptions:
    ttl_ms: int
    max_entries: int
    max_bytes: int
    endpoints: frozenset[str]
    scope: str
    wait_s: int


@dataclass
class Flight:
    """A miss being answered upstream: identical requests wait for it instead of asking too, each
    on an event of its own (``waiters``) that the landing sets, and so may the client leaving."""

    waiters: set[threading.Event] = field(default_factory=set)
    landed: bool = False


@dataclass(frozen=True)
class Entry:
    body: bytes
    content_type: str
    cost_uc: int | None


def owner(ctx: RequestContext, scope: str) -> str | None:
    """Whose entries a request may read and write under ``scope``: its key, its key's project
    (a key without one: the key alone), or nobody's in particular (``global``, and every
    request without a key, in open mode)."""
    if scope == "global" or ctx.key_id is None:
        return None
    if scope == "project" and ctx.project:
        return f"project:{ctx.project}"
    return f"key:{ctx.key_id}"


def request_key(ctx: RequestContext, provider: str, model: str, scope: str = "key") -> str:
    """The cache key: what was asked, of whom, by whom (``scope``) and whether unsupported
    fields may be dropped (an answer made with fields dropped must not answer a request that
    would have been refused)."""
    body = {k: v for k, v in ctx.body.items() if k not in IGNORED_FIELDS}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    parts = [ctx.endpoint, ctx.dialect, provider, model, canonical]
    if ctx.headers.get(DROP_HEADER, "").strip().lower() == "true":
        parts.append("drop-unsupported")  # keys of ordinary requests stay as they were
    for name in ANSWER_HEADERS:  # sent upstream as they are, and they change the answer
        if value := ctx.headers.get(name):
            parts.append(f"{name}:{value}")
    if parse_qs(ctx.query).get("beta") == ["true"]:  # the one query parameter passed upstream (providers/anthropic.py)
        parts.append("beta=true")
    if (who := owner(ctx, scope)) is not None:
        parts.append(who)  # open mode and global keep the keys they had before scopes
    material = "\n".join(parts)
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


def answered_by(ctx: RequestContext, route: Route) -> bool:
    """Whether the answer came from the provider and model the cache key names (not from a
    fallback or another deployment, which would poison the entry for the key's whole TTL)."""
    provider = ctx.attempt.provider
    return provider is not None and provider.name == route.provider.name and ctx.attempt.upstream_model == route.model


def cacheable(ctx: RequestContext) -> bool:
    """A Responses API request only with ``store: false``: a stored response is a new, named
    turn of its key's conversation (its id is fetched and continued later), never a replay;
    nor is a turn of a Conversations API conversation, which it is appended to, nor a Messages turn of
    a message thread (``thread``): Anthropic keeps it under its reply's id, which the key continues; nor
    one asking for ``diagnostics`` (its answer says how it differs from a reply before it: a replay's
    would be stale, and under a shared cache scope another key's)."""
    if ctx.endpoint == "messages":
        return ctx.body.get("thread") is None and ctx.body.get("diagnostics") is None
    if ctx.endpoint != "responses":
        return True
    joined = ctx.conversation is not None and ctx.conversation.conversation_id is not None
    return ctx.body.get("store") is False and not joined


def kind_of(ctx: RequestContext) -> str:
    if not ctx.stream:
        return JSON
    return SSE_USAGE if ctx.client_wants_usage else SSE


def lookup(
    conn: sqlite3.Connection, digest: str, kinds: tuple[str, ...], now_ms: int, ttl_ms: int
) -> tuple[str, Entry] | None:
    """The freshest usable entry, preferring ``kinds`` in order (fresh under today's TTL too)."""
    rows = {
        row[0]: row
        for row in conn.execute(
            f"SELECT key, body, content_type, cost_uc FROM cache_entries WHERE key IN ({','.join('?' * len(kinds))}) "
            "AND expires_at > ? AND created_at > ?",
            [f"{digest}:{k}" for k in kinds] + [now_ms, now_ms - ttl_ms],
        )
    }
    for kind in kinds:
        row = rows.get(f"{digest}:{kind}")
        if row is not None:
            return kind, Entry(bytes(row[1]), row[2], row[3])
    return None


def store(conn: sqlite3.Connection, key: str, entry: Entry, usage: str | None, now_ms: int, opts: CacheOptions) -> None:
    """Writer job: put one entry, drop expired ones, then the oldest beyond the bounds.

    ``cache_stats`` keeps the totals (triggers), so the common case reads one row. The old
    entry is deleted rather than REPLACEd: REPLACE would not fire the delete trigger.
    """
    conn.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
    conn.execute(
        "INSERT INTO cache_entries (key, created_at, expires_at, size, body, content_type, usage, cost_uc) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (key, now_ms, now_ms + opts.ttl_ms, len(entry.body), entry.body, entry.content_type, usage, entry.cost_uc),
    )
    conn.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (now_ms,))
    count, total = conn.execute("SELECT entries, bytes FROM cache_stats WHERE id = 1").fetchone()
    if count <= opts.max_entries and total <= opts.max_bytes:
        return
    evict = []
    for old_key, size in conn.execute("SELECT key, size FROM cache_entries ORDER BY created_at, key"):
        if count <= opts.max_entries and total <= opts.max_bytes:
            break
        evict.append((old_key,))
        count, total = count - 1, total - size
    conn.executemany("DELETE FROM cache_entries WHERE key = ?", evict)


class Cache(Module):
    """Exact-match response cache in SQLite: TTL, size bounds, bypass header, streams replayed."""

    name = "cache"
    summary = "exact-match answers from SQLite (plain and streamed), TTL, size bounds, bypass header"
    schema = {
        "ttl_s": Field("int", 3600, "seconds an answer stays fresh", min=1, max=366 * 86_400),
        "max_entries": Field("int", 10_000, "most answers kept; the oldest go first", min=1, max=100_000_000),
        "max_bytes": Field(
            "int", 256 * 1024 * 1024, "most bytes of answers kept; the oldest go first", min=1024, max=1 << 44
        ),
        "endpoints": Field("list", list(ENDPOINTS), "which endpoints are cached", choices=ENDPOINTS),
        "scope": Field(
            "enum",
            "key",
            "who is served an answer: the key that asked for it (key), any key of its project "
            "(project; a key without one keeps its own), or every client (global)",
            choices=SCOPES,
        ),
        "wait_s": Field(
            "int",
            30,
            "seconds an identical request waits for the answer of one already asked upstream, "
            "then served as a hit (0: each asks the provider itself)",
            min=0,
            max=600,
        ),
    }

    def __init__(self, services: ModuleServices) -> None:
        super().__init__(services)
        self._flights: dict[str, Flight] = {}  # "digest:kind" -> the miss being answered now
        self._lock = threading.Lock()

    def compile(self, config: dict) -> CacheOptions:
        return CacheOptions(
            config["ttl_s"] * 1000,
            config["max_entries"],
            config["max_bytes"],
            frozenset(config["endpoints"]),
            config["scope"],
            config["wait_s"],
        )

    def before(self, ctx: RequestContext) -> None:
        opts: CacheOptions = self.options(ctx)
        if ctx.endpoint not in opts.endpoints or not cacheable(ctx):
            return
        route = ctx.route
        assert route is not None  # resolved by the route step before this module
        digest, kind = request_key(ctx, route.provider.name, route.model, opts.scope), kind_of(ctx)
        ctx.state["cache"] = (digest, kind, opts, route)
        if ctx.headers.get(HEADER, "").strip().lower() == "bypass":
            ctx.reply_headers[HEADER] = "bypass"
            return
        kinds = (kind, JSON) if kind != JSON else (JSON,)
        found = self._lookup(digest, kinds, opts)
        if found is None and opts.wait_s:
            found = self._fly(ctx, digest, kinds, opts)
        body = None
        if found is not None:
            found_kind, entry = found
            body = (
                entry.body
                if found_kind == kind
                else to_stream(ctx.endpoint, ctx.dialect, entry.body, ctx.client_wants_usage)
            )
        if body is None:
            ctx.reply_headers[HEADER] = "miss"
            return
        ctx.attempt.provider, ctx.attempt.upstream_model = route.provider, route.model
        ctx.cache_hit, ctx.complete = True, True
        ctx.attempt.cost_uc, ctx.attempt.cost_status, ctx.cost_saved_uc = 0, "exact", entry.cost_uc
        ctx.answer = Answer(200, body, CONTENT_TYPES[kind], {HEADER: "hit"}, stream=kind != JSON)

    def _lookup(self, digest: str, kinds: tuple[str, ...], opts: CacheOptions) -> tuple[str, Entry] | None:
        return lookup(self.services.store.read(), digest, kinds, int(time.time() * 1000), opts.ttl_ms)

    def _fly(
        self, ctx: RequestContext, digest: str, kinds: tuple[str, ...], opts: CacheOptions
    ) -> tuple[str, Entry] | None:
        """After a miss: lead a flight (None: this request asks the provider; ``after`` lands it), or
        wait for the identical request leading one and be served its answer. A flight that lands
        with nothing stored (its request failed) is led by the next request waiting on it, one at a
        time, not by each of them. A waiting request holds no deployment claim (one call, not one per
        request waiting, is busy: it claims again when it asks itself); its wait ends at ``wait_s``
        (then it asks the provider itself), at its deadline (the timeout module's 504) or when its
        client leaves."""
        wake, waited, gave_up = threading.Event(), False, time.perf_counter() + opts.wait_s
        while True:
            name, flight, first = self._board(digest, kinds, wake)
            if first:
                ctx.state["cache_flight"] = (name, flight)  # it asks; after() lands the flight, whatever comes
                found = self._lookup(digest, kinds, opts)  # a flight that landed since the miss
                if found is not None:
                    self._land(*ctx.state.pop("cache_flight"))
                elif waited:
                    self._claim_again(ctx)
                return found
            if not waited and ctx.plan is not None:
                ctx.plan.release()  # the leader's call is the one the deployment counts busy
            waited = True
            landed = self._wait(ctx, name, flight, wake, gave_up)
            found = self._lookup(digest, kinds, opts)
            if found is not None or not landed:
                if found is None:
                    self._claim_again(ctx)  # wait_s ran out: it asks the provider itself
                return found
            wake.clear()  # landed with nothing stored: the next to board leads

    @staticmethod
    def _claim_again(ctx: RequestContext) -> None:
        """A request that waited (its deployment claim given back) goes upstream: claim a deployment
        again, as a request arriving now would (``Plan.renew``; a 429 when none can take it)."""
        if ctx.plan is not None and (d := ctx.plan.renew()) is not None:
            ctx.route = Route(d.provider, d.upstream_model)

    def _board(self, digest: str, kinds: tuple[str, ...], wake: threading.Event) -> tuple[str, Flight, bool]:
        """The flight of an identical request being answered now whose answer this one can be
        served (its own kind, or a plain one: ``kinds``), waited for with ``wake``; or a new one of its
        kind this request starts (True: it asks the provider). Its name is ``digest:kind``."""
        with self._lock:
            for kind in kinds:
                name = f"{digest}:{kind}"
                if (flight := self._flights.get(name)) is not None:
                    flight.waiters.add(wake)
                    return name, flight, False
            name = f"{digest}:{kinds[0]}"
            flight = self._flights[name] = Flight()
            return name, flight, True

    def _wait(self, ctx: RequestContext, name: str, flight: Flight, wake: threading.Event, gave_up: float) -> bool:
        """Wait for the flight to land (True), or until ``gave_up`` (False: then the next identical
        request starts a flight of its own); past the request's deadline its 504, a client that left
        ClientGone (traced as departed, the flight going on for the others)."""
        left = threading.Event()

        def gone() -> None:
            left.set()
            wake.set()

        until = gave_up if ctx.deadline is None else min(gave_up, ctx.deadline)
        watch = ctx.watch_client(gone) if ctx.watch_client is not None else contextlib.nullcontext()
        with watch:
            wake.wait(max(0.0, until - time.perf_counter()))
        with self._lock:
            flight.waiters.discard(wake)
            landed = flight.landed
            late = not landed and not left.is_set() and (ctx.deadline is None or gave_up <= ctx.deadline)
            if late and self._flights.get(name) is flight:
                del self._flights[name]
        if landed:
            return True
        if left.is_set():
            raise ClientGone("client closed the connection while waiting for an identical request's answer (cache)")
        if not late:
            raise deadline_error(ctx)
        return False

    def _land(self, name: str, flight: Flight) -> None:
        """The flight's answer is stored, or nothing will be: wake who waits for it."""
        with self._lock:
            if self._flights.get(name) is flight:
                del self._flights[name]
            flight.landed = True
            for wake in flight.waiters:
                wake.set()

    def after(self, ctx: RequestContext) -> None:
        flight = ctx.state.pop("cache_flight", None)
        stored: Future | None = None
        try:
            stored = self._keep(ctx, leading=flight is not None)
        finally:
            if flight is not None:
                if stored is None:
                    self._land(*flight)
                else:
                    stored.add_done_callback(lambda _done: self._land(*flight))

    def _keep(self, ctx: RequestContext, leading: bool) -> Future | None:
        """Store the answer when it may be kept; the future of its commit when the request led a
        flight (identical requests wait for that), None when nothing is stored or none waits."""
        state = ctx.state.pop("cache", None)
        if state is None or ctx.cache_hit:
            return None
        if (
            ctx.attempt.status != 200
            or ctx.attempt.outcome not in KEPT_OUTCOMES
            or not ctx.complete
            or ctx.attempt.response_truncated
            or ctx.sensitive
        ):
            return None
        digest, kind, opts, route = state
        if not answered_by(ctx, route):
            return None  # a fallback's answer: never the asked model's, whose key this is
        body = bytes(ctx.attempt.response_body)
        if not body or len(body) > opts.max_bytes:
            return None
        if ctx.sensitive_answer is not None and ctx.sensitive_answer(body):
            return None  # redact found a secret (or PII) in the answer: never kept in plain text
        if kind != JSON and not body.startswith((b"data:", b"event:", b":")):
            kind = JSON  # the provider answered a streamed request plainly: store it as what it is
        entry = Entry(body, CONTENT_TYPES[kind], ctx.attempt.cost_uc)
        usage = json.dumps(asdict(ctx.attempt.usage)) if ctx.attempt.usage is not None else None
        now_ms = int(time.time() * 1000)
        job = lambda conn: store(conn, f"{digest}:{kind}", entry, usage, now_ms, opts)  # noqa: E731
        if leading:  # resolved at its commit or failure; a full queue fails it now (the waiting ask themselves)
            return self.services.store.write_later(job, queue_wait=0, urgent=False)
        if self.services.store.room(len(body), ctx.sender):  # else the writer is behind: this answer is not kept
            self.services.store.submit(job, size=len(body), owner=ctx.sender)
        return None

    def status(self) -> dict:
        row = self.services.store.read().execute("SELECT entries, bytes FROM cache_stats WHERE id = 1").fetchone()
        with self._lock:
            waiting = sum(len(flight.waiters) for flight in self._flights.values())
        return {"entries": row[0], "bytes": row[1], "waiting": waiting}
