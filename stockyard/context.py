"""The request context that travels down the request path, and what it carries.

One :class:`RequestContext` is made per proxied request and handed forward from stage to
stage — parse, auth, modules, routing, provider adapter, relay, trace — so that no stage
has to reach back into another. What one call to a provider left (status, usage, cost,
the answer as the client got it) is an :class:`Attempt`: ``ctx.attempt`` is the current
one, ``ctx.attempts`` the failed ones before it, each traced as a row of its own.

Modules steer the upstream call through typed fields rather than reaching into the
proxy: ``deadline`` and ``timeouts`` (timeout module), ``retry`` (fallback module),
``reply_headers`` (headers for the client), ``sensitive`` (redact: do not cache).
``route`` is where the request goes, resolved once (``stockyard.routing``) for the
modules after it and the proxy. The chain of modules is in ``stockyard.chain``.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol

from .hosts import sender
from .imagegen import image_bytes
from .pricing import Usage
from .providers import Provider

if TYPE_CHECKING:
    from .deployments import Plan

_id_lock = threading.Lock()
_last_id = [0, 0]  # (milliseconds, sequence within that millisecond)


TRACE_ID = re.compile(r"tr_[0-9a-f]{24}")  # what new_trace_id makes (fullmatch)


def new_trace_id(now_ms: int | None = None) -> str:
    """Time-sortable, strictly increasing within this process: ms, a sequence, then randomness.

    Cursor pagination and "newest first" sort by id, so two requests in the same
    millisecond must still come out in the order they started. An id for an earlier time
    (imported or backdated records) keeps its own millisecond.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _id_lock:
        if ms == _last_id[0]:
            _last_id[1] += 1
            seq = _last_id[1]
        elif ms > _last_id[0]:
            _last_id[0], _last_id[1] = ms, 0
            seq = 0
        else:
            seq = random.getrandbits(16)
    return f"tr_{ms:012x}{seq:04x}{random.getrandbits(32):08x}"


def new_span_id() -> str:
    """A W3C span id: 8 random bytes, never all zero."""
    return f"{random.getrandbits(64) or 1:016x}"


@dataclass(frozen=True)
class TraceParent:
    """A caller's W3C ``traceparent``: our request span joins its trace under its span."""

    trace_id: str  # 32 lower-case hex digits
    span_id: str  # 16 lower-case hex digits
    flags: str = "01"


_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A W3C ``traceparent`` (version 00 form), or None when absent or invalid (then it is ignored)."""
    if not value:
        return None
    parts = value.strip().lower().split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2 or (parts[0] == "00" and len(parts) != 4):
        return None
    version, trace_id, span_id, flags = parts[:4]
    if len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
        return None
    if not set(version + trace_id + span_id + flags) <= _HEX or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return TraceParent(trace_id, span_id, flags)


@dataclass
class Answer:
    """A complete answer produced without the provider (cache hit, module reply)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False  # send as a chunked event stream, like a live one


class ReadTimeouts(Protocol):
    """Per-(provider, model) upstream read timeouts (timeout module)."""

    def read_timeout(self, provider: str, model: str) -> float | None: ...


class RetryPolicy(Protocol):
    """How the proxy retries and falls back (fallback module); without one: a single attempt."""

    retries: int  # extra attempts per candidate

    def fallbacks(self, ctx: "RequestContext") -> list[str]:
        """``provider/model`` names to try, in order, after the routed one."""
        ...

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1, 2, …); None: give up on this candidate."""
        ...

    def allow(self, provider: str) -> bool:
        """False while the circuit breaker of ``provider`` (a ``provider/model`` key) is open."""
        ...

    def report(self, provider: str, ok: bool) -> None:
        """The outcome of one attempt, for the circuit breaker."""
        ...

    def retry_in(self, provider: str) -> float:
        """Seconds until an open breaker lets a request through again."""
        ...


@dataclass(frozen=True)
class Route:
    """Where a request goes: the provider and the model name it is sent under."""

    provider: Provider
    model: str


@dataclass(frozen=True)
class NativeCall:
    """A Gemini-native request (``/v1beta/models/{model}:{action}``): the method its URL names, and
    for ``streamGenerateContent`` whether the client reads SSE (``?alt=sse``) or a JSON array."""

    action: str
    sse: bool = True


@dataclass(slots=True)
class Conversation:
    """The Responses API state of one ``/v1/responses`` request (``stockyard.conversations``).

    ``response_id`` and ``created_at`` are what a translated answer is issued under (kept
    across retries and fallbacks); ``history`` the items rebuilt from a previous response
    Stockyard keeps, ``previous_provider`` the provider holding a passed-through one. The
    adapter calls ``keep(provider, response)`` with the finished response object before the
    client sees its end, so the next turn can always find it, and ``see(provider, items)`` with
    the output items a stream has finished before then (the containers the code ran in are
    claimed at once). ``conversation_id`` names the
    Conversations API conversation (``stockyard.conversations_api``) whose items were put in
    front of the input; the turn is appended to it once the response has completed (or ended
    ``incomplete``).
    """

    response_id: str
    created_at: int
    keep: Callable[[Provider, dict], None]
    previous_id: str | None = None
    history: list[dict] | None = None
    history_tokens: int = 0  # input the conversation adds upstream: the worst case counts it (budgets, tpm)
    history_images: int = 0  # images (and files) ``history`` names by URL or id: input its bytes do not show
    history_bytes: int = 0  # the stored items Stockyard sends beside the client's bytes (guard's max_input_bytes)
    put_in: bool = False  # stored items are in the body (a conversation's, item references'), not in ``raw``
    previous_provider: str | None = None
    conversation_id: str | None = None  # a Conversations API conversation this turn joins
    turn_items: list[dict] | None = None  # its input, as appended there
    appended: bool = False  # the turn is in the conversation (once per request, whatever falls back)
    see: Callable[[Provider, list], None] = lambda provider, items: None  # output items a stream finished


REFUSED = "rejected"  # the outcome of a request Stockyard answered with a 4xx of its own


def is_refusal(outcome: str, provider: object) -> bool:
    """A request Stockyard refused itself (its own 4xx: a bad request, the key, a model the key
    may not use, the rate limit, the budget, a module's policy) before it was addressed to any
    provider: no provider was called and it cost nothing. Such a request's end user, tags and
    model are the client's words only, so they make no rollup rows (``store.traces.RollupSums``),
    and its trace is written at a bounded rate per key (``tracing.Tracer``). ``provider`` is the
    last attempt's (a request that fell back has one; a refusal never does)."""
    return outcome == REFUSED and provider is None


@dataclass(slots=True)
class Attempt:
    """One call to a provider and what it left; priced and traced as one row.

    A failed attempt that another follows gets its own ``trace_id``, start and end
    (:meth:`close`); the request's last attempt is traced under the request's own.
    """

    provider: Provider | None = None
    upstream_model: str | None = None
    served_model: str | None = None
    asked_model: str | None = None  # the name a budget priced this attempt by (a fallback's own)
    # The model name its rollup row goes under when not its own (``billing.Pricer.rollup_model``):
    # a failed attempt's whose model the provider never named.
    rollup_model: str | None = None
    status: int = 0
    outcome: str = "ok"
    error_type: str | None = None
    error_message: str | None = None
    ttfb: float | None = None  # perf_counter() time of the first byte towards the client
    first_chunk: float | None = None  # perf_counter() time a stream's first chunk was written to the client
    response_id: str | None = None  # the provider's id of its answer (gen_ai.response.id), the first it named
    service_tier: str | None = None  # OpenAI's answer: the tier that served it (openai.response.service_tier)
    fingerprint: str | None = None  # OpenAI's answer: its system_fingerprint
    # The mode the answer says served it, as ``pricing.MODES`` names it (None: standard): OpenAI's
    # ``service_tier`` (``priority``, ``flex``), Claude's ``usage.speed`` and ``usage.inference_geo``
    # (``fast``, ``us``, both ``fast/us``). It is billed at that mode's price (``billing.Pricer``).
    served_mode: str | None = None
    usage: Usage | None = None
    usage_estimated: bool = False
    # The usage so far is a stream's start (Anthropic's message_start: input counted, output 1); the
    # output count comes with message_delta. Still set when the answer ended: it was cut before that.
    usage_partial: bool = False
    # ... a Gemini stream's: bytes (UTF-8) of the answer (its text, not thoughts, and its calls' arguments)
    # relayed past the latest output count (``candidatesTokenCount``), which ``usage`` does not count yet
    uncounted_bytes: int = 0
    # The request went out and no answer that says what it used came back (a timeout, the shutdown,
    # a call ended for its departed client): the provider may bill its input, estimated then.
    input_billed: bool = False
    sent_back: int = 0  # a paused turn's follow-up call: the input tokens its answers so far add (estimated)
    follow_up_from: tuple[int, int] = (0, 0)  # ... and where its relayed bytes begin: (kept, relayed text)
    # A turn the provider paused (Anthropic's pause_turn) and Stockyard continued: the usage of each
    # call before the current one, whose own is ``usage``. The Pricer prices each call on its own and
    # then folds them into ``usage`` (the whole answer's), emptying this.
    paused_usage: list[Usage] = field(default_factory=list)
    upstream_request_id: str | None = None
    response_body: bytearray = field(default_factory=bytearray)
    response_truncated: bool = False
    response_bytes: int = 0  # every byte of the answer, kept or not: what an estimate counts
    cost_uc: int | None = None
    cost_status: str = "none"
    media_seconds: float | None = None  # audio the provider billed by duration (whisper-1)
    media_images: int | None = None  # images in an images answer
    # The Responses image_generation tool's own usage, billed at its image model's rates: as the
    # response reported it (``tool_usage.image_gen``), else estimated from the images relayed
    # (``imagegen.ImageTally``); a chat model's own images (billed as its output when no usage
    # came); and the bytes of the relayed events that carried images (no text: ``relayed_tokens``).
    image_usage: Usage | None = None
    image_estimate: Usage | None = None
    own_images: int = 0
    images_unpriced: bool = False  # the image tool's images came at a model without a price: cost unknown
    # OpenAI's hosted tool calls a passed-through Responses answer showed, by item type
    # (``toolfees.CallTally``): billed per call, which its usage does not count.
    tool_calls: dict[str, int] = field(default_factory=dict)
    image_event_bytes: int = 0
    trace_id: str = ""  # set by close(): the row of a failed attempt
    ts_ms: int = 0
    started: float = 0.0
    ended: float | None = None
    span_id: str = field(default_factory=new_span_id)  # OpenTelemetry: this attempt's span

    def close(self, ts_ms: int, started: float) -> None:
        """End a failed attempt that another follows: it becomes a trace row of its own."""
        self.trace_id, self.ts_ms, self.started = new_trace_id(ts_ms), ts_ms, started
        self.ended = time.perf_counter()

    def total_usage(self) -> Usage | None:
        """What the answer used so far: every call of a continued turn (:attr:`paused_usage`) and the current one."""
        total = self.usage
        for usage in self.paused_usage:
            total = usage if total is None else usage.plus(total)
        return total

    def relayed_text_bytes(self) -> int:
        """The bytes relayed but those of the events that carried images: what
        ``estimate.relayed_tokens`` scales an answer's text up to."""
        return max(0, self.response_bytes - self.image_event_bytes)

    def serve(self, model: object, ident: object = None) -> None:
        """The model the provider says it served, when it names one as text (its answer may be odd),
        and the answer's id (``ident``): the first one named, as a continued turn's client sees it."""
        if isinstance(model, str) and model:
            self.served_model = model
        if self.response_id is None and isinstance(ident, str) and ident:
            self.response_id = ident[:256]

    def serve_openai(self, answer: dict) -> None:
        """OpenAI's own fields of an answer (a chat completion, its first chunk, a response) the
        adapter parsed anyway: the tier that served it and the system fingerprint."""
        tier, fingerprint = answer.get("service_tier"), answer.get("system_fingerprint")
        if isinstance(tier, str) and tier:
            self.service_tier = tier[:64]
            if self.provider is not None and self.provider.kind in TIERED_KINDS:  # others' tiers: their own
                self.served_mode = openai_mode(tier)
        if isinstance(fingerprint, str) and fingerprint:
            self.fingerprint = fingerprint[:128]

    def serve_gemini(self, tier: str | None) -> None:
        """Gemini's answer says in a header (``x-gemini-service-tier``) the tier that served it:
        ``flex``, ``priority`` (a priority call past its limit is served at ``standard``)."""
        if tier:  # "flex", or the API's enum spelling "SERVICE_TIER_FLEX"
            self.served_mode = openai_mode(tier.strip().lower().removeprefix("service_tier_"))

    def serve_claude(self, usage: object) -> None:
        """Claude's answer says in its usage the speed and the geography that served it (fast mode,
        US-only inference): kept as :attr:`served_mode` (a stream's message_start says it first)."""
        if isinstance(usage, dict) and ("speed" in usage or "inference_geo" in usage):
            self.served_mode = claude_mode(usage.get("speed"), usage.get("inference_geo"))

    def mark_first_byte(self) -> None:
        if self.ttfb is None:
            self.ttfb = time.perf_counter()

    def capture(self, data: bytes, cap: int) -> None:
        """Keep the answer for the trace body, up to ``cap`` bytes (counting them all)."""
        self.response_bytes += len(data)
        self.image_event_bytes += image_bytes(data)  # every relayed byte's, kept or not
        room = cap - len(self.response_body)
        if room <= 0:
            if data:
                self.response_truncated = True
            return
        if len(data) > room:
            self.response_truncated = True
        self.response_body += data[:room]


@dataclass(slots=True)  # slots: a write to a field that does not exist fails loudly
class RequestContext:
    endpoint: str  # chat, completions, embeddings, messages, count_tokens, responses, generate, …
    dialect: str  # openai, anthropic, responses or gemini: what the client spoke
    client_addr: str
    headers: dict[str, str]  # client request headers, lower-case names
    query: str = ""  # the URL's query as the client sent it; an adapter passes on only what it allows
    raw: bytes = b""
    body: dict[str, Any] = field(default_factory=dict)
    trace_id: str = ""
    ts_ms: int = 0
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None  # as the client asked (after aliasing: see routed_model)
    routed_model: str | None = None  # what routing used (alias module may change it)
    route: Route | None = None  # resolved once, after the policy modules (stockyard.routing)
    plan: Plan | None = None  # a model with deployments: the chosen one and those after it (routing)
    stream: bool = False
    client_wants_usage: bool = False
    key: Any = None  # the client key record, when auth is on
    key_ring: Any = None  # the key-ring snapshot ``key`` was found in (auth.Gatekeeper.authenticate)
    key_id: str | None = None
    project: str | None = None
    attempt: Attempt = field(default_factory=Attempt)  # the current (finally: the last) attempt
    attempts: list[Attempt] = field(default_factory=list)  # failed attempts before it
    cache_hit: bool = False
    cost_saved_uc: int | None = None
    # µ¢ its budgets spent beyond its known cost (an answer of unknown cost spends its hold:
    # ``modules.budget.spent_uc``); kept with its trace (``budget_unpriced``), so a restart keeps it
    unpriced_spent_uc: int = 0
    answer: Answer | None = None  # set by a module that answers without the provider
    complete: bool = False  # the answer arrived whole (a stream reached its end event)
    state: dict[str, Any] = field(default_factory=dict)  # per-module scratch space
    body_changed: bool = False  # a module rewrote ``body``; re-serialize before sending
    reply_headers: dict[str, str] = field(default_factory=dict)  # modules' headers for the client
    deadline: float | None = None  # perf_counter() time the request must be done by (timeout)
    timeouts: ReadTimeouts | None = None  # per-model upstream read timeouts (timeout)
    retry: RetryPolicy | None = None  # retries, fallbacks and circuit breaker (fallback)
    # guard: the 403 (raised) for a provider/model its model lists refuse, given the name routed to it;
    # routing checks the route with it, the proxy each deployment and fallback before trying it
    model_policy: Callable[[str, str, str], None] | None = None
    sensitive: bool = False  # the request holds secrets or PII: its answer is not cached
    # redact: whether an answer holds what it looks for (the cache, whose after hook runs before
    # redact's, keeps no such answer: the secret would sit in the database in plain text)
    sensitive_answer: Callable[[bytes], bool] | None = None
    upstream_cancel: Any = None  # upstream.Cancel: ends the provider call when the client leaves
    # the reply's client watch (proxy.Reply.watch_client): ``on_gone`` is called if the client leaves
    # during the block, for a module's wait (the cache's, on an identical request in flight)
    watch_client: Callable[[Callable[[], None]], ContextManager[Any]] | None = None
    conversation: Conversation | None = None  # /v1/responses: previous turns, the response to keep
    native: NativeCall | None = None  # Gemini-native routes: the URL's method (model and stream come from the URL)
    # Gemini context caches the body names (files_api.Ownership.check_cached_content): id -> its tokens
    # (None: not known), billed with the call as cached input though the body does not show them
    caches: dict[str, int | None] = field(default_factory=dict)
    # the uploaded PDFs the body names whose pages Stockyard counted (files_api.Ownership.check_references):
    # file id (a Gemini file's URI as the body writes it) -> pages, which a budget holds (pdfpages)
    pdf_pages: dict[str, int] = field(default_factory=dict)
    # Anthropic's native answers: claim(kind, ids) for the files its code execution tool wrote and the
    # container it ran in, the key's before the answer naming them goes on (files_api.Ownership.check_references
    # sets it; anthropic_files, objectrefs.ANTHROPIC_CONTAINER)
    claim_made: Callable[[str, set[str]], None] | None = None
    # while a stream is on the relay thread (proxy.relay_stream): claim_made puts the future of its
    # write here rather than waiting for it, and the relay holds the bytes converted with it until
    # it is committed (streamrelay: the other streams go on meanwhile)
    claims_deferred: list[Future] | None = None
    # Anthropic's message threads (files_api.Ownership.check_anthropic_objects): the conversation the reply a
    # ``thread`` continue names holds, in tokens, which Anthropic bills as this request's input (the worst case
    # counts it: estimate.input_tokens); and kept(reply id, tokens), which the native adapter calls with each
    # reply of a thread request before it goes on, so the key may continue it (and no other key)
    thread_tokens: int = 0
    thread_kept: Callable[[str, int], None] | None = None
    # writes that keep what the answer made (a stored response's row, a conversation's new turn), left
    # to the writer without holding the client's bytes: (what they keep, their future); the request
    # thread waits for them before its trace, which notes a failure (Conversations.settle)
    kept_later: list[tuple[str, Future]] = field(default_factory=list)
    default_output_cap: int = 4096  # output cap when the body sets none: reserved, and sent where one is required
    upload: Any = None  # multipart.Upload of a multipart request (audio, images): fields, files, the spool
    end_user: str | None = None  # who the client's product served (stockyard.attribution)
    tags: dict[str, str] = field(default_factory=dict)  # x-stockyard-tags / body metadata
    session_id: str | None = None  # the agent session the client names (Codex, Claude Code): gen_ai.conversation.id
    trace_parent: TraceParent | None = None  # the caller's W3C traceparent, when valid
    otel_trace_id: str = field(default_factory=lambda: f"{random.getrandbits(128) or 1:032x}")  # the caller's, if sent
    span_id: str = field(default_factory=new_span_id)  # OpenTelemetry: this request's span
    websocket: bool = False  # a turn of the Responses API's WebSocket mode (tagged transport=websocket)
    traced: bool = True  # False: a refusal past its sender's rate, counted but not written (tracing.Tracer)

    def __post_init__(self) -> None:
        if not self.ts_ms:
            self.ts_ms = int(time.time() * 1000)
        if not self.trace_id:
            self.trace_id = new_trace_id(self.ts_ms)
        if self.trace_parent is None:  # every span of this request joins the caller's trace
            self.trace_parent = parse_traceparent(self.headers.get("traceparent"))
        if self.trace_parent is not None:
            self.otel_trace_id = self.trace_parent.trace_id

    def elapsed_us(self) -> int:
        return int((time.perf_counter() - self.started) * 1_000_000)

    @property
    def sender(self) -> str:
        """Who sent it, for what one sender may hold of a shared resource (``Writer.room``): its
        client key, else its address as a sender is counted (``hosts.sender``: an IPv6 /64)."""
        return f"key:{self.key_id}" if self.key_id else f"address:{sender(self.client_addr)}"

    @property
    def refused(self) -> bool:
        """Stockyard refused this request itself, before any provider (see :func:`is_refusal`)."""
        return is_refusal(self.attempt.outcome, self.attempt.provider)


TIERED_KINDS = ("openai", "azure")  # providers whose answer's service_tier is OpenAI's, billed by tier
STANDARD_TIERS = ("auto", "default", "standard", "standard_only")  # OpenAI's (and Gemini's) tiers at the table's rates


def openai_mode(tier: object) -> str | None:
    """OpenAI's ``service_tier`` (asked or answered) as a priced mode: ``priority`` (asked as
    ``fast`` too, its new name since 2026-07-30), ``flex``; None for the standard tiers (and no
    tier); any other tier (``scale``) by its own name, which no price names: unpriced."""
    if tier is None or tier in STANDARD_TIERS:
        return None
    return "priority" if tier == "fast" else str(tier)[:40]


def claude_mode(speed: object, geo: object) -> str | None:
    """Claude's ``speed`` and ``inference_geo`` (asked or answered) as a priced mode: ``fast``,
    ``us`` or ``fast/us``; None for the standard speed and the global geography. Any other value
    by its own name, which no price names: unpriced."""
    parts = [str(v)[:40] for v, standard in ((speed, "standard"), (geo, "global")) if v not in (None, standard)]
    return "/".join(parts) or None
