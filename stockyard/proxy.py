"""The request path for proxied calls: parse → auth → modules (the route among them) → upstream → relay.

Each function here is one stage; they hand a :class:`RequestContext` forward. The
server calls :func:`handle` with the App's :class:`RequestPath` (every collaborator the
path uses: key checks, the module chain, prices, tracing, scrubbing, the upstream pool)
and a *reply* object that knows how to write to the client.

Going upstream is a series of *attempts*: the routed provider first and — when the
fallback module gave the request a retry policy — retries and fallback candidates after a
429, a 5xx, a timeout or a connection error (never another 4xx). An attempt becomes the
answer once its first byte is on its way to the client; a stream is committed only when
its first event has arrived, so a stream that breaks before that still falls back, and one
that breaks after it never does. Each attempt's outcome is a ``ctx.attempt``; failed ones move
to ``ctx.attempts`` and are traced as rows of their own under the request.
"""

from __future__ import annotations

import email.utils
import functools
import itertools
import json
import logging
import math
import re
import socket
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Iterator, Protocol

from .attribution import attribute
from .auth import Gatekeeper
from .billing import Pricer
from .chain import Chain
from .config import Settings
from .context import REFUSED, Attempt, RequestContext, RetryPolicy, Route
from .conversations import Conversations
from .deployments import Deployment
from .errors import (
    ANTHROPIC,
    GEMINI,
    INTERNAL_ERROR,
    REFUSALS,
    RESPONSES,
    ClientGone,
    ProxyError,
    database_refusal,
    described,
    refusal_of,
    sse_error_event,
)
from .httpio import json_object
from .limits import MAX_CHOICES, check_request_numbers, show
from .modules import budget as budget_module
from .modules import userlimits
from .modules.early import check_early
from .modules.timeout import deadline_error
from .otel import upstream_headers
from .pricing import Usage
from .providers import Provider, Registry, media
from .providers.adapters import adapter_for
from .providers.base import Adapter, FollowUp, UpstreamCall
from .providers.chatshape import DROPPED_HEADER, note
from .providers.gemini import retry_delay as gemini_retry_delay
from .providers.gemini_native import check_model as check_native_model
from .providers.messages_adapters import count_estimate
from .routing import policy_refusal, refused_deployments
from .scrub import Scrubber
from .store import storable
from .streamrelay import Stream, StreamRelay
from .tracing import Tracer
from .upstream import SHUTDOWN_CODE, Cancel, Pool, UpstreamError, UpstreamResponse

log = logging.getLogger("stockyard.proxy")

# Upstream response headers worth passing on to the client.
PASS_HEADERS = (
    "x-request-id",
    "request-id",
    "openai-processing-ms",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",  # the provider's advice to the SDKs (false: a quota, not a pause)
    "openai-organization",
)
PASS_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
GEMINI_TIER_HEADER = "x-gemini-service-tier"  # standard, flex, priority: what served a Gemini call
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-goog-request-id")
NEEDS_MODEL = (
    "chat",
    "completions",
    "embeddings",
    "messages",
    "count_tokens",
    "responses",
    "input_tokens",
    "compact",
    "transcriptions",
    "translations",
    "speech",
)
# Endpoints whose answer is never a stream (a media endpoint streams only when it is media.STREAMED)
NO_STREAM = (
    "embeddings",
    "count_tokens",
    "input_tokens",
    "compact",
    *(e for e in media.ENDPOINTS if e not in media.STREAMED),
)
DEPLOYMENT_HEADER = "x-stockyard-deployment"
# A provider's "the input is longer than the model's context window" (OpenAI, Anthropic, Gemini, others).
CONTEXT_OVERFLOW = re.compile(
    rb"context_length_exceeded|context length|context window|prompt is too long|"
    rb"input token count.{0,40}exceeds|exceeds the maximum number of tokens",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RequestPath:
    """Everything the request path uses, handed to it by the App (nothing else reaches it)."""

    settings: Settings
    gate: Gatekeeper  # who is asking
    chain: Callable[[], Chain]  # the current module chain (a snapshot per request)
    registry: Callable[[], Registry]  # the current providers, for fallback candidates
    pricer: Pricer
    tracer: Tracer
    scrub: Scrubber
    pool: Pool  # upstream connections
    conversations: Conversations  # the Responses API's stored responses
    relay: StreamRelay | None = None  # one thread moving every established stream (else each request's own)
    references: Callable[[RequestContext], None] | None = None  # provider files a body names are the key's


class Reply(Protocol):
    def send(self, status: int, body: bytes, content_type: str = ..., headers: dict | None = ...) -> None: ...
    def start_stream(self, status: int, headers: dict | None = ..., content_type: str = ...) -> bool: ...
    def chunk(self, data: bytes) -> None: ...
    def end_stream(self, last: bytes = ...) -> None: ...
    def abort(self) -> None: ...
    def begun(self) -> bool: ...
    def watch_client(self, on_gone: Callable[[], None]) -> ContextManager[None]: ...
    def stream_socket(self) -> socket.socket | None: ...


MODEL_NAME_MAX = 256  # characters: far above any provider's model id (traces keep 256 bytes)


def checked_model_name(model: str) -> str:
    """A model name of a sane length, else a 400: every later step (routing, key rules, the price
    table's memo) would otherwise hold a name as long as the body allows. No model's name holds
    a NUL or a lone surrogate, which no PostgreSQL row can hold (a stored response keeps it)."""
    if len(model) > MODEL_NAME_MAX:
        raise ProxyError(
            400, f"'model' is longer than {MODEL_NAME_MAX} characters", param="model", code="invalid_model"
        )
    if not storable(model):
        message = "'model' holds a NUL or a lone UTF-16 surrogate, which no model name has"
        raise ProxyError(400, message, param="model", code="invalid_model")
    return model


def parse_body(ctx: RequestContext) -> None:
    """Decode the JSON object body, pick out model and stream, check the numbers the proxy reads.

    Anything else is a 400."""
    if ctx.upload is not None:
        return parse_form(ctx)
    body = json_object(ctx.raw)
    ctx.body = body
    if ctx.dialect == GEMINI:  # Gemini-native: the URL named the model and whether to stream
        check_native_model(ctx.model)
        ctx.body_changed = check_request_numbers(body) or ctx.body_changed
        return
    model = body.get("model")
    if model is None and ctx.endpoint in media.JSON_DEFAULT_MODELS:
        model = media.JSON_DEFAULT_MODELS[ctx.endpoint]  # what OpenAI uses when none is named
    if ctx.endpoint in NEEDS_MODEL or ctx.endpoint in media.DEFAULT_MODELS:
        if not isinstance(model, str) or not model.strip():
            raise ProxyError(
                400, "'model' is required and must be a non-empty string", param="model", code="missing_model"
            )
        ctx.model = checked_model_name(model)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ProxyError(400, "'stream' must be true or false", param="stream", code="invalid_stream")
    ctx.stream = bool(stream) and ctx.endpoint not in NO_STREAM
    options = body.get("stream_options")
    ctx.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    if check_request_numbers(body):  # 5000.0 became 5000: send the body as checked
        ctx.body_changed = True
    if ctx.endpoint == "image_edits":  # a JSON edit (a form's is parse_form's): its images by reference
        media.check_json_edit(body)


def parse_form(ctx: RequestContext) -> None:
    """A multipart request (``ctx.upload``): its text fields are the body the modules see; model and
    stream are read from them (``stream=true`` asks a transcription or an image edit for SSE). A field sent twice is
    a 400 (``Upload.refuse_repeated``), as a JSON member named twice is: every part is relayed."""
    upload = ctx.upload
    upload.refuse_repeated()
    upload.refuse_stray_files()
    ctx.body = {k: v for k, v in upload.fields.items() if isinstance(v, str)}
    n = ctx.body.get("n")  # images: what the budget multiplies by, so it must read as the provider does
    if n is not None and not (n.isascii() and n.isdigit() and 1 <= int(n) <= MAX_CHOICES):
        raise ProxyError(
            400, f"'n' must be a whole number from 1 to {MAX_CHOICES}, got {show(n)}", param="n", code="invalid_value"
        )
    model = upload.get("model") or media.DEFAULT_MODELS.get(ctx.endpoint)
    if not model or not model.strip():
        raise ProxyError(400, "the form field 'model' is required", param="model", code="missing_model")
    ctx.model = checked_model_name(model)
    stream = upload.get("stream")
    if stream not in (None, "true", "false"):
        raise ProxyError(400, "'stream' must be true or false", param="stream", code="invalid_stream")
    ctx.stream = stream == "true" and ctx.endpoint in media.STREAMED


def passed_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in PASS_HEADERS or k.startswith(PASS_PREFIXES)}


def request_id_header(dialect: str, request_id: str | None) -> dict[str, str]:
    """The provider's request id under the name the client's SDK reads it from (a response's
    ``_request_id``, an error's ``request_id``): the anthropic SDK's ``request-id``, the openai SDK's
    ``x-request-id``. A translated answer's provider sends it under the other name (or Google's)."""
    if request_id is None or dialect == GEMINI:
        return {}
    return {"request-id" if dialect == ANTHROPIC else "x-request-id": request_id}


def handle(path: RequestPath, reply: Reply, ctx: RequestContext) -> None:
    """Run one proxied request to its end; always leaves a trace."""
    chain = path.chain()  # one snapshot for the whole request, even if a reload swaps it meanwhile
    started_reply = False
    failed: Callable[[], None] | None = None  # a failure's answer, sent once the after hooks ran
    ctx.default_output_cap = path.settings.default_max_tokens  # STOCKYARD_DEFAULT_MAX_TOKENS
    ctx.watch_client = reply.watch_client
    try:
        parse_body(ctx)
        attribute(ctx)  # end user and tags, for the trace, the reports and per-user limits
        path.gate.authenticate(ctx)
        if ctx.dialect == RESPONSES:
            # the stored items the body names (a conversation's, the previous turn's history, item references),
            # this key's, before any module (read once the rate limit admits it)
            path.conversations.open(ctx, lambda: check_early(chain, ctx))
        if path.references is not None:
            path.references(ctx)  # another key's files, named in the body (files_api.Ownership), stored items included
        chain.before(ctx)  # the modules, and the route step (ctx.route) among them
        if ctx.answer is None and ctx.dialect == RESPONSES:
            path.conversations.count_input(ctx)  # input_tokens on a translated provider
        if ctx.answer is None and ctx.endpoint == "count_tokens" and ctx.route is not None:
            if (
                ctx.dialect == ANTHROPIC and ctx.route.provider.kind != "anthropic"
            ):  # counted here, never by a provider call
                count_estimate(ctx, ctx.route.provider)
        if ctx.answer is not None:
            started_reply = True
            deliver_answer(path, reply, ctx)
            return
        assert ctx.route is not None
        confirm_deployment(ctx)
        ctx.attempt.provider, ctx.attempt.upstream_model = ctx.route.provider, ctx.route.model
        ctx.upstream_cancel = cancel = Cancel()
        # A client that leaves ends a stream's upstream call (the provider stops generating: reading on
        # could only cost more), while a whole answer, made and billed whole either way, is read to its
        # end for what it cost.
        with reply.watch_client(cancel.cancel if ctx.stream else cancel.leave):
            failure = forward(path, reply, ctx)
        if failure is not None:
            if failure.error is not None:
                raise failure.error
            failed = functools.partial(pass_failure, reply, ctx, failure)
    except REFUSALS as caught:
        exc = refusal_of(caught)
        if not refused(reply, ctx, exc):
            raise  # too late to answer: the dispatch cuts it
        if not started_reply:
            failed = functools.partial(send_error, path, reply, ctx, exc)
    except ClientGone as gone:
        ctx.attempt.outcome = "client_disconnected"
        if gone.args:  # where it waited when it left (the cache: for an identical request's answer)
            ctx.attempt.error_message = str(gone)
    except Exception as exc:  # a bug, a database refusing: traced, then answered (or cut) by the dispatch
        unexpected(reply, ctx, exc)
        raise
    finally:
        if ctx.plan is not None:
            ctx.plan.release()  # deployments reserved but never called (a cache hit, a refusal)
        try:
            path.pricer.price(ctx)  # the cost is part of the outcome the after hooks see (cache, budget)
            chain.after(ctx)
        finally:
            # A failure is answered after the after hooks: its budget hold and rate-limit
            # reservations are released before the client can retry, so an immediate retry is
            # never refused by the failed request's own worst case.
            if failed is not None:
                failed()
            if ctx.kept_later:  # what the answer made, kept by the writer: a failure is noted in the trace
                path.conversations.settle(ctx)
            path.tracer.finish(ctx)


def confirm_deployment(ctx: RequestContext) -> None:
    """The request goes upstream: its deployment's claim (the route step's) counts against its rpm/tpm
    now (``Plan.confirm``), or another deployment is chosen when that one filled up meanwhile."""
    if ctx.plan is None:
        return
    first = ctx.plan.first
    chosen = ctx.plan.confirm()
    if chosen is not None and chosen is not first:
        ctx.route = Route(chosen.provider, chosen.upstream_model)


def fail(ctx: RequestContext, status: int, message: str, outcome: str, error_type: str | None = None) -> None:
    a = ctx.attempt
    a.status, a.outcome, a.error_type, a.error_message = status, outcome, error_type or a.error_type, message


def refused(reply: Reply, ctx: RequestContext, exc: ProxyError) -> bool:
    """A refusal or planned failure, traced as the client will see it: True when it can still be
    answered (its status, ``rejected`` or ``error``); False once the answer began, when the dispatch
    cuts it as it cuts any failure (``Handler._cut``): ``stream_broken``, the status the client saw
    kept, the refusal's status and message in the error message and its code as the error type."""
    if reply.begun():
        message = f"the answer was cut after it began: {exc.status} {exc.message}"
        fail(ctx, ctx.attempt.status, message, "stream_broken", exc.code)
        return False
    fail(ctx, exc.status, exc.message, REFUSED if exc.status < 500 else "error", exc.code)
    return True


def unexpected(reply: Reply, ctx: RequestContext, exc: Exception) -> None:
    """A failure nobody planned for, traced as the client will see it (the exception goes on to the
    server's dispatch, which answers it): once the answer began, a stream cut (``stream_broken``, its
    status kept, what went out billed as a broken stream's), else the 500 the dispatch writes — or,
    for a database that failed (held past the busy timeout, lost), the 503 the dispatch writes then."""
    unavailable = database_refusal(exc)
    if unavailable is not None:  # the client's message, and for the trace what the database said
        refused(reply, ctx, replace(unavailable, message=f"{unavailable.message} ({described(exc)})"))
        return
    if reply.begun():
        message = f"the answer was cut after it began: internal error ({described(exc)})"
        fail(ctx, ctx.attempt.status, message, "stream_broken", INTERNAL_ERROR)
    else:
        fail(ctx, 500, f"internal error ({described(exc)})", "error", INTERNAL_ERROR)


def send_error(path: RequestPath, reply: Reply, ctx: RequestContext, exc: ProxyError) -> None:
    body = exc.body(ctx.dialect)
    ctx.attempt.capture(body, path.settings.body_cap_bytes)
    try:
        reply.send(exc.status, body, headers={"x-stockyard-trace-id": ctx.trace_id, **ctx.reply_headers, **exc.headers})
    except ClientGone:
        ctx.attempt.outcome = "client_disconnected"


def deliver_answer(path: RequestPath, reply: Reply, ctx: RequestContext) -> None:
    """Send an answer a module made (e.g. a cache hit), as a stream when it is one."""
    answer = ctx.answer
    assert answer is not None
    ctx.attempt.status = answer.status
    headers = {"x-stockyard-trace-id": ctx.trace_id, **ctx.reply_headers, **answer.headers}
    ctx.attempt.mark_first_byte()
    ctx.attempt.capture(answer.body, path.settings.body_cap_bytes)
    if answer.stream:
        reply.start_stream(answer.status, {**headers, "cache-control": "no-cache"}, answer.content_type)
        reply.chunk(answer.body)
        ctx.attempt.first_chunk = time.perf_counter()
        reply.end_stream()
    else:
        reply.send(answer.status, answer.body, answer.content_type, headers)


# -- attempts -------------------------------------------------------------------------------------


class SingleAttempt:
    """The policy without the fallback module: one attempt, its failure passed on as it is."""

    retries = 0

    def fallbacks(self, ctx: RequestContext) -> list[str]:
        return []

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        return None

    def allow(self, provider: str) -> bool:
        return True

    def report(self, provider: str, ok: bool) -> None:
        pass

    def retry_in(self, provider: str) -> float:
        return 0.0


ONE_ATTEMPT = SingleAttempt()


@dataclass
class Failure:
    """An attempt that gave no answer; the client sees it only if no other attempt follows."""

    retryable: bool
    started: float
    ts_ms: int
    retry_after: float | None = None
    error: ProxyError | None = None  # no HTTP answer (connect, timeout, reset): raised at the end
    status: int = 0  # an HTTP error answer: passed through at the end
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    context_overflow: bool = False  # the provider says the input is too long for the model
    retry_same: bool = True  # False: the provider said x-should-retry: false (its fallbacks may still run)


def forward(path: RequestPath, reply: Reply, ctx: RequestContext) -> Failure | None:
    """Attempt the routed provider, then retries and fallbacks as the policy says.

    A model with deployments tries its deployments in turn (a failed one cools down and is
    not retried), then its fallbacks; a context-length error moves the request to the
    model's larger-context model once. Returns None once the client got its answer, else
    the last failure, which ``handle`` answers after the after hooks.
    """
    policy: RetryPolicy = ctx.retry or ONE_ATTEMPT
    failure: Failure | None = None
    skipped: list[str] = []
    todo = candidates(path, ctx, policy)
    larger_tried = False
    while (candidate := next(todo, None)) is not None:
        provider, model, deployment, asked = candidate
        breaker = f"{provider.name}/{model}"  # per model: gpt-4o failing does not block gpt-4o-mini
        for retry in range(1 if deployment is not None else policy.retries + 1):
            wait = 0.0
            if failure is not None and retry:
                delay = policy.delay(retry, failure.retry_after)
                if delay is None:
                    break  # the provider asks for a longer pause than we wait: next candidate
                wait = delay
            if failure is not None and ctx.deadline is not None and time.perf_counter() + wait >= ctx.deadline:
                return failure
            if deployment is None and not policy.allow(breaker):
                skipped.append(breaker)
                break
            if failure is not None:
                if not covered_after(path, ctx, provider, model, asked):
                    return failure
                keep_attempt(path, ctx, failure)
                log.info(
                    "%s: attempt %d failed (%s); trying %s/%s%s",
                    ctx.trace_id,
                    len(ctx.attempts),
                    ctx.attempts[-1].error_type,
                    provider.name,
                    model,
                    f" in {wait:.2f}s" if wait else "",
                )
                if wait:
                    time.sleep(wait)
            ctx.attempt.provider, ctx.attempt.upstream_model, ctx.attempt.asked_model = provider, model, asked
            if deployment is not None:  # which deployment answered, for the client and its logs
                ctx.reply_headers[DEPLOYMENT_HEADER] = deployment.key
            else:
                ctx.reply_headers.pop(DEPLOYMENT_HEADER, None)
            failure = attempt_once(path, reply, ctx, policy, breaker, deployment)
            if failure is None:
                return None
            if client_left(ctx):
                raise ClientGone()  # no other attempt for a client that is gone
            if failure.context_overflow and not larger_tried and ctx.plan and ctx.plan.route.context_fallback:
                larger_tried = True
                todo = model_candidates(path, ctx, ctx.plan.route.context_fallback)
                ctx.reply_headers["x-stockyard-routed-model"] = ctx.plan.route.context_fallback
                break
            if not failure.retryable:
                return failure
            if not failure.retry_same:
                break  # a quota, not a pause: the next candidate, if any
    if failure is None:
        wait_s = max(1, math.ceil(min(policy.retry_in(name) for name in skipped)))
        raise ProxyError(
            503,
            f"no provider available for {ctx.model!r}: the circuit breaker of "
            f"{', '.join(sorted(set(skipped)))} is open after repeated failures; retry in "
            f"{wait_s}s",
            code="circuit_open",
            headers={"Retry-After": str(wait_s)},
        )
    return failure


Candidate = tuple[Provider, str, Deployment | None, str]  # (provider, model, deployment, the name asked)


def candidates(path: RequestPath, ctx: RequestContext, policy: RetryPolicy) -> Iterator[Candidate]:
    """The routed (provider, model) — or the model's deployments in turn — then the model's
    fallbacks and the policy's that this server can serve (worked out as they are reached)."""
    assert ctx.route is not None
    plan = ctx.plan
    asked = ctx.routed_model or ctx.model or ""
    if plan is not None and plan.first is not None:
        for d in plan.deployments():  # the first was priced by the budget; the next may cost more
            if d is plan.first or counted(path, ctx, d.provider, d.upstream_model, asked):
                yield d.provider, d.upstream_model, d, asked
    else:
        yield ctx.route.provider, ctx.route.model, None, asked
    for name in plan.route.fallbacks if plan is not None else ():
        yield from model_candidates(path, ctx, name)
    for name in policy.fallbacks(ctx):
        yield from model_candidates(path, ctx, name)


def model_candidates(path: RequestPath, ctx: RequestContext, name: str) -> Iterator[Candidate]:
    """Where a fallback name goes: a model's deployments, or the provider it routes to."""
    route = ctx.plan.models.get(name) if ctx.plan is not None else None
    try:
        if ctx.key is not None and not ctx.key.allows_model(name, path.registry().routes_to):
            raise ProxyError(403, f"key {ctx.key.name!r} may not use it")
        if ctx.plan is not None and route is not None and route.deployments:
            plan = ctx.plan.models.plan(
                route, ctx.plan.tokens, parent=ctx.plan, refused=refused_deployments(ctx, route, name)
            )
            for d in plan.deployments():
                adapter_for(d.provider, ctx.dialect, ctx.endpoint)
                if counted(path, ctx, d.provider, d.upstream_model, name):
                    yield d.provider, d.upstream_model, d, name
            return
        provider, model = path.registry().resolve(name)
        adapter_for(provider, ctx.dialect, ctx.endpoint)
    except ProxyError as exc:
        log.warning("fallback %r for %r skipped: %s", name, ctx.model, exc.message)
        return
    if permitted(ctx, provider, model, name) and counted(path, ctx, provider, model, name):
        yield provider, model, None, name


def permitted(ctx: RequestContext, provider: Provider, model: str, name: str) -> bool:
    """Whether the guard's model lists let the request go to ``provider``/``model`` (reached as
    ``name``): a deployment or fallback they refuse is skipped, as one the key may not use."""
    refusal = policy_refusal(ctx, provider.name, model, name)
    if refusal is not None:
        log.warning("fallback %r for %r skipped: %s", name, ctx.model, refusal.message)
    return refusal is None


def counted(path: RequestPath, ctx: RequestContext, provider: Provider, model: str, name: str) -> bool:
    """Whether a budget can count a fallback: a request holding a budget reservation never falls
    back to a model without a price (its cost would be unknown, and never reach the budget), nor
    to a dearer one whose worst case the budgets it holds (key, project, end user) cannot hold too
    (``budget.Cover``). Media requests alike, in their own units (``Pricer.worst_case``)."""
    if not budgeted(ctx):
        return True
    why = uncovered(ctx, path.pricer.worst_case(ctx, Route(provider, model), name, path.settings.default_max_tokens))
    if why is None:
        return True
    log.warning("fallback %r for %r skipped: %s and the request is under a budget", name, ctx.model, why)
    return False


def covered_after(path: RequestPath, ctx: RequestContext, provider: Provider, model: str, name: str) -> bool:
    """Whether the budgets the request holds can hold another attempt (a retry or a fallback) on top
    of what its failed attempts cost: one that timed out or was reset is billed its input, which the
    hold counted once, so the next must be held beside it (``budget.Cover``) or not made — else
    every retry of a large prompt spends its input again past the budget."""
    if not budgeted(ctx):
        return True
    spent = sum(a.cost_uc or 0 for a in ctx.attempts) + path.pricer.cost_of(ctx, ctx.attempt)  # kept, and this one
    if not spent:
        return True  # what ``counted`` held for this candidate covers it
    worst = path.pricer.worst_case(ctx, Route(provider, model), name, path.settings.default_max_tokens)
    why = uncovered(ctx, None if worst is None else spent + worst)
    if why is None:
        return True
    log.warning("no more attempts for %r: %s beside the %d µ¢ its failed ones cost", ctx.model, why, spent)
    return False


def budgeted(ctx: RequestContext) -> bool:
    """The request holds a budget reservation (its key's or project's, or its end user's)."""
    return budget_module.HELD in ctx.state or userlimits.HELD in ctx.state


def uncovered(ctx: RequestContext, worst: int | None) -> str | None:
    """Why the budgets the request holds cannot hold ``worst`` µ¢ in all (each ``budget.Cover``
    reserves what it lacks of it), None when they can."""
    covers = [c for c in (ctx.state.get(budget_module.COVER), ctx.state.get(userlimits.COVER)) if c is not None]
    if worst is None:
        return "it has no price"
    if all(cover(worst) for cover in covers):
        return None
    return "its worst case is more than the budget has left"


def attempt_once(
    path: RequestPath,
    reply: Reply,
    ctx: RequestContext,
    policy: RetryPolicy,
    breaker: str,
    deployment: Deployment | None = None,
) -> Failure | None:
    """One attempt, its outcome reported to the circuit breaker (a 4xx means the provider is up)
    or, for a deployment, to its health (in flight, time to first byte, cooldown, breaker, usage)."""
    assert ctx.attempt.provider is not None
    health, entry = None, None
    if ctx.plan is not None and deployment is not None:  # its reservation becomes a request in flight
        health = ctx.plan.models.health
        entry = health.begin(deployment, ctx.plan.take(deployment), ctx.plan.tokens)
    started = time.perf_counter()
    reported = False

    def report(failure: Failure | None, ok: bool) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        if health is None or deployment is None or entry is None:
            policy.report(breaker, ok)
        else:
            a = ctx.attempt
            health.finish(
                deployment,
                entry,
                ok=failure is None,
                failed=not ok,
                status=a.status,
                retry_after=failure.retry_after if failure is not None else None,
                ttfb_s=a.ttfb - started if failure is None and a.ttfb is not None else None,
                tokens=spent_tokens(a, failure),
            )

    ok, failure = True, None
    try:
        failure = attempt(path, ReportFirst(reply, lambda: report(None, True)), ctx)
        ok = failure is None or not failure.retryable
        return failure
    except ProxyError as exc:
        ok = exc.status < 500 or exc.code == "deadline_exceeded"  # our deadline, not the provider's fault
        failure = Failure(False, started, 0, error=exc)
        raise
    except ClientGone:
        failure = Failure(False, started, 0)  # says nothing about the deployment
        raise
    finally:
        report(failure, ok)


class ReportFirst:
    """The reply, with the attempt's outcome reported before a whole answer leaves: the client's
    next request must find the breaker and the deployment's health as this answer left them (a
    half-open breaker closed, a first time to first byte measured). A stream reports at its end."""

    def __init__(self, reply: Reply, report: Callable[[], None]) -> None:
        self._reply, self._report = reply, report

    def send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        self._report()
        self._reply.send(status, body, content_type, headers)

    def __getattr__(self, name: str):
        return getattr(self._reply, name)


def spent_tokens(attempt: Attempt, failure: Failure | None) -> int | None:
    """Tokens an attempt used, for its deployment's tpm: as reported; none for a failure that
    reported none (a 429 uses no quota); None keeps the estimate (a stream without usage, or a
    call that went out unanswered: ``Attempt.input_billed``, which the provider may count)."""
    usage = attempt.total_usage()
    if usage is not None:
        return usage.prompt_tokens + usage.completion_tokens
    return 0 if failure is not None and not attempt.input_billed else None


def attempt(path: RequestPath, reply: Reply, ctx: RequestContext) -> Failure | None:
    """Call the provider on ``ctx`` and relay its answer; a Failure if nothing was sent."""
    provider, model = ctx.attempt.provider, ctx.attempt.upstream_model
    assert provider is not None and model is not None
    adapter = adapter_for(provider, ctx.dialect, ctx.endpoint)
    started, ts_ms = time.perf_counter(), int(time.time() * 1000)
    ctx.attempt.started, ctx.attempt.ts_ms = started, ts_ms  # its span's start (a failed one is closed later)
    timeout, by_deadline = read_timeout(ctx, provider.name, model)
    try:
        resp = call_upstream(path, ctx, timeout)
    except UpstreamError as exc:
        return no_answer(path, ctx, exc, by_deadline, started, ts_ms)
    upstream_headers = {k: path.scrub.text(v) for k, v in resp.headers.items()}  # a header may echo the key
    ctx.attempt.upstream_request_id = next(
        (upstream_headers[h] for h in REQUEST_ID_HEADERS if h in upstream_headers), None
    )
    if provider.kind == "gemini":  # Gemini says the tier that served it in a header only
        ctx.attempt.serve_gemini(upstream_headers.get(GEMINI_TIER_HEADER))
    headers = {
        "x-stockyard-trace-id": ctx.trace_id,
        **ctx.reply_headers,
        **request_id_header(ctx.dialect, ctx.attempt.upstream_request_id),
        **passed_headers(upstream_headers),
    }
    if resp.status >= 400:
        return error_answer(path, ctx, resp, adapter, headers, started, ts_ms)
    if adapter.relays_bytes(ctx):
        relay_bytes(reply, ctx, resp, headers)
        return None
    if ctx.stream and resp.is_sse:
        events = resp.events()
        try:
            first = next(events, None)
        except UpstreamError as exc:
            return no_answer(path, ctx, exc, by_deadline, started, ts_ms)
        if first is None:
            gone = UpstreamError("reset", "provider ended the stream before its first event")
            return no_answer(path, ctx, gone, False, started, ts_ms)
        relay_stream(path, reply, ctx, resp, itertools.chain([first], events), adapter, headers)
        return None
    try:
        raw = resp.read_all()
    except UpstreamError as exc:  # its head said the answer was made: the provider bills it
        return no_answer(path, ctx, exc, by_deadline, started, ts_ms, answered=True)
    answers = whole_turn(path, ctx, adapter, raw)
    ctx.attempt.mark_first_byte()
    body = path.scrub.bytes(adapter.parse_turn(ctx, answers))
    if ctx.attempt.input_billed:  # a follow-up went out unanswered: the usage read is the call's before it
        ctx.attempt.usage = None
    ctx.attempt.status = resp.status
    ctx.complete = True
    ctx.attempt.capture(body, path.settings.body_cap_bytes)
    if client_left(ctx):  # read to its end for its usage (Cancel.leave): nobody to send it to
        message = "client closed the connection before the answer; the provider's answer was read to its end and billed"
        fail(ctx, resp.status, message, "client_disconnected")
        return None
    reply.send(resp.status, body, adapter.content_type(resp.headers.get("content-type")), headers)
    return None


# -- a turn the provider paused (Anthropic's pause_turn), continued for a translated client ----------

MAX_CONTINUATIONS = 5  # follow-up calls one turn may take; past them the answer ends incomplete


def whole_turn(path: RequestPath, ctx: RequestContext, adapter: Adapter, raw: bytes) -> list[bytes]:
    """The answers of the turn's calls: the first (``raw``), then each follow-up's while the
    provider pauses the turn and it may go on (:func:`continue_turn`)."""
    answers = [raw]
    while (resp := continue_turn(path, ctx, adapter, answers)) is not None:
        try:
            answers.append(resp.read_all())
        except UpstreamError as exc:  # its head said the answer was made: billed as a first call's (attempt)
            billed = ctx.attempt.input_billed = unanswered(ctx, exc, answered=True)
            end_turn(ctx, f"the follow-up call broke: {path.scrub.text(str(exc))}", gave_up=not billed)
            break
    return answers


def continue_turn(
    path: RequestPath, ctx: RequestContext, adapter: Adapter, answers: list[bytes]
) -> UpstreamResponse | None:
    """Send the call that continues the turn when the provider paused it (``Adapter.follow_up``)
    and the bound and the request's budgets let it go on: its answer (as the client's: a stream
    for a stream). None once the turn is over, or when it ends here incomplete (the trace says why)."""
    follow = adapter.follow_up(ctx, answers)
    if follow is None:
        end_turn(ctx)
        return None
    call = follow.call
    why = follow.stopped if call is None else continuation_refused(path, ctx, follow, len(answers) - 1)
    if call is None or why is not None:
        end_turn(ctx, why)
        return None
    a = ctx.attempt
    a.paused_usage.append(follow.usage or Usage())  # the paused call's, priced on its own
    a.usage, a.usage_partial = None, False
    a.sent_back = follow.sent_back  # what this call's input adds, should it go out and never answer
    a.follow_up_from = (len(a.response_body), a.relayed_text_bytes())  # what it relays comes after these
    try:
        timeout, _ = read_timeout(ctx, a.provider.name if a.provider else "", a.upstream_model or "")
        resp = send(path, ctx, call, timeout)
    except ProxyError as exc:  # the request's deadline passed
        end_turn(ctx, exc.message, gave_up=True)
        return None
    except UpstreamError as exc:
        if client_left(ctx):
            raise ClientGone() from None
        a.input_billed = unanswered(ctx, exc)  # else it gave nothing: not one of the turn's calls
        end_turn(ctx, f"the follow-up call failed: {path.scrub.text(str(exc))}", gave_up=not a.input_billed)
        return None
    if resp.status >= 400 or (ctx.stream and not resp.is_sse):
        try:
            detail = path.scrub.text(resp.read_all()[:300].decode("utf-8", "replace"))
        except UpstreamError:
            detail = ""
        end_turn(ctx, f"the follow-up call was answered {resp.status}: {detail}", gave_up=True)
        return None
    return resp


def continuation_refused(path: RequestPath, ctx: RequestContext, follow: FollowUp, sent: int) -> str | None:
    """Why the turn may not take another follow-up call: the bound reached, or a budget the request
    holds that cannot hold what the turn cost so far and the next call's worst case (the input so far
    sent back, the output cap, the searches); None when it may."""
    if sent >= MAX_CONTINUATIONS:
        return f"it paused again after {MAX_CONTINUATIONS} follow-up calls, the most Stockyard sends"
    if client_left(ctx):
        return "the client closed its connection"
    if not budgeted(ctx):
        return None
    a, price = ctx.attempt, path.pricer
    assert a.provider is not None and a.upstream_model is not None
    calls = [*a.paused_usage, follow.usage or Usage()]
    spent = sum(x.cost_uc or 0 for x in ctx.attempts) + sum(price.call_cost(ctx, a, u) or 0 for u in calls)
    asked = a.asked_model or ctx.routed_model or ctx.model or ""
    route = Route(a.provider, a.upstream_model)
    worst = price.worst_case(ctx, route, asked, path.settings.default_max_tokens, follow.sent_back)
    why = uncovered(ctx, None if worst is None else spent + worst)
    return None if why is None else f"the budget cannot hold another call: {why}"


def end_turn(ctx: RequestContext, stopped: str | None = None, gave_up: bool = False) -> None:
    """Say in the trace how a paused turn went: continued with how many follow-up calls, and why
    it ended incomplete when it did. ``gave_up``: the last follow-up gave nothing (its call is not
    one of the turn's: the paused call's usage is the current one again); a follow-up that went out
    and never answered (``Attempt.input_billed``) is one, billed its input as an estimate."""
    a = ctx.attempt
    if gave_up:
        a.usage = a.paused_usage.pop()
    calls = len(a.paused_usage)
    if not calls and stopped is None:
        return
    said = "the provider paused the turn (pause_turn)"
    if calls:
        said += (
            f"; Stockyard continued it with {calls} follow-up call(s), usage and cost summed over the {calls + 1} calls"
        )
    if stopped is not None:
        said += f"; the answer ends incomplete (finish_reason length) because {stopped}"
        log.info("request %s: paused turn not continued: %s", ctx.trace_id, stopped)
    note(ctx, said)


def read_timeout(ctx: RequestContext, provider: str, model: str) -> tuple[float | None, bool]:
    """The read timeout for this attempt, and whether the request's deadline is what set it."""
    timeout = ctx.timeouts.read_timeout(provider, model) if ctx.timeouts is not None else None
    if ctx.deadline is None:
        return timeout, False
    left = ctx.deadline - time.perf_counter()
    if left <= 0:
        raise deadline_error(ctx)
    if timeout is None or left < timeout:
        return left, True
    return timeout, False


def call_upstream(path: RequestPath, ctx: RequestContext, read_timeout: float | None = None) -> UpstreamResponse:
    """One request to the provider on ``ctx`` (UpstreamError when it cannot be reached)."""
    provider, model = ctx.attempt.provider, ctx.attempt.upstream_model
    assert provider is not None and model is not None
    if provider.key_error:  # the details (key ids) are for the operator's log, not for clients
        raise ProxyError(
            503,
            f"provider {provider.name!r} cannot be used: its stored key cannot be "
            "decrypted; the operator must fix it (see the server log)",
            code="provider_key_unavailable",
        )
    adapter = adapter_for(provider, ctx.dialect, ctx.endpoint)
    ctx.reply_headers.pop(DROPPED_HEADER, None)  # what an earlier attempt's adapter dropped is not this one's
    return send(path, ctx, adapter.prepare(ctx, provider, model), read_timeout)


def send(path: RequestPath, ctx: RequestContext, call: UpstreamCall, read_timeout: float | None) -> UpstreamResponse:
    """Send ``call`` to the attempt's provider (UpstreamError when it cannot be reached)."""
    provider = ctx.attempt.provider
    assert provider is not None
    call.headers.update(upstream_headers(ctx, ctx.attempt, path.settings.otlp_endpoint is not None))
    timeouts = [t for t in (call.read_timeout, read_timeout) if t]
    return path.pool.request(
        call.base_url or provider.base_url,
        call.method,
        call.path,
        call.headers,
        call.body,
        read_timeout=min(timeouts) if timeouts else None,
        cancel=ctx.upstream_cancel,
    )


def no_answer(
    path: RequestPath,
    ctx: RequestContext,
    exc: UpstreamError,
    by_deadline: bool,
    started: float,
    ts_ms: int,
    answered: bool = False,
) -> Failure:
    """The provider could not be reached or stopped answering: retryable, unless the deadline passed.

    When the client left meanwhile: ClientGone (a stream's call we ended, or a whole answer's that
    failed on its own after its client left). A request that went out and got no answer it could
    bill by (a timeout, the shutdown, a call ended for its departed client, a whole answer whose
    body broke after its head: ``answered``) is billed its input as an estimate
    (``Attempt.input_billed``): the provider may bill that much, or more.
    """
    cancel = ctx.upstream_cancel
    ctx.attempt.input_billed = unanswered(ctx, exc, answered)
    if client_left(ctx):
        if cancel is not None and cancel.left and exc.kind != "cancelled":  # the call it left went on, and failed
            why = f"the provider's answer then failed: {path.scrub.text(str(exc))}"
        else:
            why = "the upstream request was ended"
        ctx.attempt.error_message = f"client closed the connection before the answer; {why}"
        raise ClientGone()
    assert ctx.attempt.provider is not None
    if by_deadline and exc.kind == "timeout":
        error, retryable = deadline_error(ctx), False
    elif exc.kind == "shutdown":  # the server is stopping: no other provider either
        error, retryable = exc.answer("", path.scrub.text), False
    else:
        error = exc.answer(ctx.attempt.provider.name, path.scrub.text)
        retryable = True
    fail(ctx, error.status, error.message, "error", error.code)
    return Failure(retryable, started, ts_ms, error=error)


def unanswered(ctx: RequestContext, exc: UpstreamError, answered: bool = False) -> bool:
    """Whether the call that failed with ``exc`` went out and the provider may bill its input though
    no answer said what it used: it timed out, the connection was reset or closed before the answer's
    head once the whole request was written (``Cancel.written``: the provider may have read it and
    worked on it, as for a timeout; one cut while writing left it nothing to act on), the shutdown
    ended it, it was ended for its departed client, or ``answered`` (a whole answer's head came, its
    body broke: it was made) — not a connect error (nothing was sent), nor an answer that is not
    HTTP (not the provider's). Media endpoints too, in their own units (``Pricer._price_media``)."""
    cancel = ctx.upstream_cancel
    if cancel is None or not cancel.sent:
        return False
    if exc.kind == "reset" and not (answered or cancel.written):
        return False
    return answered or exc.kind in ("timeout", "reset", "shutdown") or client_left(ctx)


def client_left(ctx: RequestContext) -> bool:
    """The client's connection closed while this request was upstream (see ``Reply.watch_client``):
    its call was ended (a stream's), or goes on to its end (``Cancel.leave``)."""
    cancel = ctx.upstream_cancel
    return cancel is not None and (cancel.cancelled or cancel.left)


def error_answer(
    path: RequestPath,
    ctx: RequestContext,
    resp: UpstreamResponse,
    adapter: Adapter,
    headers: dict[str, str],
    started: float,
    ts_ms: int,
) -> Failure:
    """A provider's error, in the client's dialect with keys scrubbed; retryable for 429 and 5xx. A
    Google error's ``RetryInfo`` delay becomes ``Retry-After`` (Gemini sends no such header)."""
    assert ctx.attempt.provider is not None
    try:
        raw = resp.read_all()
    except UpstreamError:
        raw = b""
    ctx.attempt.mark_first_byte()
    scrubbed = path.scrub.bytes(raw)
    try:
        parsed = json.loads(scrubbed)
        body = adapter.error(ctx, resp.status, scrubbed)
    except (ValueError, RecursionError):
        parsed = None
        body = ProxyError(
            resp.status, f"provider {ctx.attempt.provider.name!r} answered {resp.status} with a body that is not JSON"
        ).body(ctx.dialect)
    if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
        ctx.attempt.usage = Usage.from_openai(parsed["usage"])  # billed attempts are billed here too
    retry_after = retry_after_s(resp.headers)
    if retry_after is None and (retry_after := gemini_retry_delay(parsed)) is not None:
        headers["retry-after"] = str(math.ceil(retry_after))  # what the SDKs wait by, whatever the client's API
    fail(
        ctx,
        resp.status,
        path.scrub.text(scrubbed[:500].decode("utf-8", "replace")),
        "upstream_error",
        f"upstream_{resp.status}",
    )
    ctx.attempt.capture(body, path.settings.body_cap_bytes)
    return Failure(
        resp.status == 429 or resp.status >= 500,
        started,
        ts_ms,
        retry_after=retry_after,
        status=resp.status,
        body=body,
        headers=headers,
        context_overflow=resp.status in (400, 413) and CONTEXT_OVERFLOW.search(scrubbed) is not None,
        retry_same=resp.headers.get("x-should-retry", "").strip().lower() != "false",
    )


def retry_after_s(headers: dict[str, str]) -> float | None:
    """Seconds a provider asks us to wait: ``retry-after-ms``, or ``Retry-After`` (seconds or a date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def keep_attempt(path: RequestPath, ctx: RequestContext, failure: Failure) -> None:
    """Close the failed attempt as a row of its own, priced, and start a fresh one."""
    done = ctx.attempt
    done.close(failure.ts_ms, failure.started)
    path.pricer.price(ctx, done)
    ctx.attempts.append(done)
    ctx.attempt = Attempt()


def pass_failure(reply: Reply, ctx: RequestContext, failure: Failure) -> None:
    """Pass the provider's error answer (the last failure) through to the client."""
    try:
        reply.send(failure.status, failure.body, "application/json", failure.headers)
    except ClientGone:
        ctx.attempt.outcome = "client_disconnected"


# -- relaying bytes (audio) and streams ---------------------------------------------------------


def relay_bytes(reply: Reply, ctx: RequestContext, resp: UpstreamResponse, headers: dict[str, str]) -> None:
    """Relay a binary answer chunk by chunk as it arrives, its Content-Type kept; the trace gets
    the content type and the byte count, never the bytes."""
    a = ctx.attempt
    a.status = resp.status
    content_type = resp.headers.get("content-type", "application/octet-stream")
    reply.start_stream(resp.status, headers, content_type)
    a.mark_first_byte()
    sent = 0
    try:
        for data in resp.chunks():
            reply.chunk(data)
            sent += len(data)
            keep_deadline(ctx, resp)
        reply.end_stream()
        ctx.complete = True
    except UpstreamError as exc:
        if client_left(ctx):
            a.outcome, a.error_message = "client_disconnected", "client closed the connection mid-answer"
        else:
            fail(ctx, resp.status, f"provider answer broke after {sent} bytes: {exc}", "stream_broken", exc.kind)
        # no error event fits a binary body: the connection closes without the chunked terminator
        reply.abort()
    except ClientGone:
        resp.close()
        a.outcome, a.error_message = "client_disconnected", "client closed the connection mid-answer"
    finally:
        summary = {"content_type": content_type, "bytes": sent}
        a.response_body = bytearray(json.dumps(summary).encode())


# -- relaying a stream ------------------------------------------------------------------------------


def keep_deadline(ctx: RequestContext, resp: UpstreamResponse) -> None:
    """The provider's next read may wait only what is left of the request's deadline; past it the
    call ends, a timeout (a relayed answer is checked between its reads)."""
    if ctx.deadline is not None:
        left = ctx.deadline - time.perf_counter()
        if left <= 0:
            resp.close()
            raise UpstreamError("timeout", "the request passed its deadline")
        resp.set_timeout(left)


def left_mid_stream(ctx: RequestContext) -> None:
    """The client went away mid-stream: the request's outcome, unless the provider's error event
    reached it first (``stream_broken`` with the provider's error, which the client acted on by leaving:
    an SDK raises on it and closes; the relay, watching the client, may see that before the provider's end)."""
    if ctx.attempt.outcome == "stream_broken":
        return
    ctx.attempt.outcome = "client_disconnected"
    ctx.attempt.error_message = "client closed the connection mid-stream"


def relay_stream(
    path: RequestPath,
    reply: Reply,
    ctx: RequestContext,
    resp: UpstreamResponse,
    events: Iterator[list[bytes]],
    adapter: Adapter,
    headers: dict[str, str],
) -> None:
    """Relay SSE as it arrives: the events of one upstream read are translated, scrubbed and
    written as one piece (one write per read, not per event); a break upstream ends with an
    error event, never [DONE]. A turn the provider paused goes on in the same client stream with
    each follow-up call's events (:func:`continue_turn`).

    Once the head and the first events are out, the rest goes to the relay thread when there is
    one (``path.relay``: chunked streams; anything unusual stays here): this
    thread then sleeps until the stream ends and finishes it below, as if it had read it itself.
    A claim an event makes there (``ctx.claims_deferred``) is the writer's, and the relay holds the
    stream's bytes until it is committed, the other streams going on.
    """
    translator = adapter.stream(ctx)
    cap = path.settings.body_cap_bytes
    ctx.attempt.status = resp.status
    reply.start_stream(resp.status, {**headers, "cache-control": "no-cache"}, translator.content_type)
    ctx.attempt.mark_first_byte()

    def convert(batch: list[bytes]) -> bytes:
        out = b"".join([piece for event in batch for piece in translator.feed(event)])
        return path.scrub.bytes(out)  # an upstream error event may echo the key

    def relayed(batch: list[bytes]) -> bytes:  # on the relay thread: captured as it is produced
        out = convert(batch)
        if out and ctx.attempt.first_chunk is None:  # the first batch gave the client nothing
            ctx.attempt.first_chunk = time.perf_counter()  # (the relay writes it next)
        ctx.attempt.capture(out, cap)
        return out

    def pump(resp: UpstreamResponse, events: Iterator[list[bytes]]) -> bytes:
        """Relay one upstream stream to its end: its last bytes, not written yet."""
        for batch in events:
            out = convert(batch)
            reply.chunk(out)
            if out and ctx.attempt.first_chunk is None:  # gen_ai.response.time_to_first_chunk
                ctx.attempt.first_chunk = time.perf_counter()
            ctx.attempt.capture(out, cap)
            keep_deadline(ctx, resp)
            if path.relay is not None and (client := reply.stream_socket()) is not None:
                if (handoff := resp.handoff()) is not None:
                    waits: list[Future] = []
                    ctx.claims_deferred = waits  # the relay thread waits on no claim: the writer runs it
                    try:
                        sse = translator.content_type.startswith("text/event-stream")  # a probe is a comment
                        return path.relay.carry(Stream(handoff, client, relayed, ctx.deadline, waits, sse))
                    finally:
                        ctx.claims_deferred = None
        return b""

    answers: list[bytes] = []  # a paused turn's answers so far (the provider's, whole)
    try:
        while True:
            last = pump(resp, events)  # the stream's last bytes, written with its end in one write
            paused = translator.paused_answer()
            if paused is None:
                if answers:
                    end_turn(ctx)  # a follow-up call finished the turn
                break
            answers.append(paused)
            follow = continue_turn(path, ctx, adapter, answers)
            if follow is None:
                break  # the translator's finish ends the paused answer, incomplete
            if last:
                reply.chunk(last)  # the same client stream goes on with the follow-up call's events
            resp, events = follow, follow.events()
        for out in translator.finish():
            last += out
            ctx.attempt.capture(out, cap)
        ctx.complete = translator.complete
        reply.end_stream(last)
    except UpstreamError as exc:
        if client_left(ctx):  # we ended the stream because the client went away
            left_mid_stream(ctx)
            return
        code = f"upstream_{exc.kind}"
        provider = ctx.attempt.provider
        message = f"provider {provider.name if provider else '?'!r} stream broke: {exc}"
        if exc.kind == "shutdown":
            code, message = SHUTDOWN_CODE, str(exc)
        elif ctx.deadline is not None and time.perf_counter() >= ctx.deadline - 0.01:
            code, message = "deadline_exceeded", deadline_error(ctx).message
        fail(ctx, ctx.attempt.status, path.scrub.text(message), "stream_broken", code)
        text = ctx.attempt.error_message or message
        closing = translator.failure(text, code) or [sse_error_event(ctx.dialect, exc.status, text, code=code)]
        try:
            for event in closing:
                event = path.scrub.bytes(event)
                ctx.attempt.capture(event, cap)
                reply.chunk(event)
            reply.end_stream()
        except ClientGone:
            pass
        return
    except ClientGone:
        resp.close()
        left_mid_stream(ctx)
    except Exception:  # a translator's bug, a claim the database refused: the provider is not read on
        resp.close()
        raise
