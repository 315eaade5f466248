"""OpenTelemetry: one span per request and a child span per upstream attempt, sent over OTLP/HTTP JSON.

With ``STOCKYARD_OTLP_ENDPOINT`` set, :func:`spans_for` turns a finished request (priced,
after the modules' ``after`` hooks, so redacted) into spans with the GenAI semantic
conventions (``gen_ai.*``) and Stockyard's own attributes (``stockyard.*``), and the
:class:`Exporter` posts them to ``{endpoint}/v1/traces``. The request thread only builds a few
dicts and puts them on a bounded queue: a collector that is slow or away never slows or fails
a request. The exporter thread sends batches, retries a failed batch with backoff, and drops
what it cannot send (or what does not fit the queue), counting it for ``/metrics``.

A W3C ``traceparent`` from the caller makes the request span a child of the caller's span in
the caller's trace; each upstream attempt sends its own span as the provider's parent
(:func:`upstream_headers`). Prompt and completion text is exported only with
``STOCKYARD_OTLP_CONTENT=true``. Header values (``STOCKYARD_OTLP_HEADERS``) are secrets: they are
sent, never logged.

With content export on, the prompt and the answer go as the conventions' structured messages
(``gen_ai.system_instructions``, ``gen_ai.input.messages``, ``gen_ai.output.messages``: see
:mod:`stockyard.otel_messages`), and so do the tools it offered (``gen_ai.tool.definitions``,
:mod:`stockyard.otel_tools`); the request's sampling settings (``gen_ai.request.*``), its
conversation (``gen_ai.conversation.id``, :func:`conversation_id`), the provider's cache and
reasoning token counts, the answer's id, a stream's time to its first chunk and OpenAI's own
``openai.*`` attributes are sent either way, read from what Stockyard has already parsed.

The GenAI metrics (:mod:`stockyard.otel_metrics`) are read from the same finished request with the
same attribute code (:func:`identity`, :func:`call_model`, :func:`server_address`) and sent with the
same :func:`resource` by the same :func:`post`.

``gen_ai.system`` is still sent beside ``gen_ai.provider.name``, which replaced it (v1.37): the
same value, for the collectors' rules and dashboards written against the conventions before it.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable
from urllib.parse import urlsplit

from . import __version__
from .context import Attempt, RequestContext
from .otel_messages import PARSE_CAP, answer_content, request_body, request_content
from .otel_tools import tool_definitions

log = logging.getLogger("stockyard.otel")

QUEUE_SPANS = 4096  # spans waiting for the exporter; beyond that they are dropped and counted
QUEUE_BYTES = 64 * 1024 * 1024  # and their attributes' text (content export: 16K characters an attribute)
BATCH_SPANS = 256
RETRY_DELAYS_S = (0.25, 1.0, 4.0)  # between the tries of one batch
POST_TIMEOUT_S = 5.0
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3
STATUS_OK, STATUS_ERROR = 1, 2
OPERATIONS = {
    "chat": "chat",
    "generate": "generate_content",  # Gemini's own generateContent (the conventions' value for it)
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "count_tokens": "count_tokens",
    "input_tokens": "count_tokens",
    "compact": "chat",
}
# Well-known gen_ai.provider.name values, by provider name, then by kind.
PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "azure": "azure.ai.openai",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "perplexity": "perplexity",
    "xai": "x_ai",
}
# gen_ai.output.type of the endpoints whose output is of one kind (embeddings: none of the conventions' kinds)
MEDIA_OUTPUTS = {
    "image_generations": "image",
    "image_edits": "image",
    "image_variations": "image",
    "speech": "speech",
    "transcriptions": "text",
    "translations": "text",
}
OPENAI_API_TYPES = {"chat": "chat_completions", "responses": "responses"}  # openai.api.type
_FINISH = re.compile(rb'"(?:finish_reason|stop_reason|finishReason)"\s*:\s*"([A-Za-z_]{1,40})"')
# The Responses API names no finish reason: its answer's status does (a stream's last event's type).
_RESPONSE_END = re.compile(rb'"type"\s*:\s*"response\.(completed|incomplete|failed)"')
_INCOMPLETE = re.compile(rb'"incomplete_details"\s*:\s*\{\s*"reason"\s*:\s*"([a-z_]{1,40})"')
_FUNCTION_CALL = re.compile(rb'"type"\s*:\s*"function_call"')
INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def upstream_headers(ctx: RequestContext, attempt: Attempt, exporting: bool) -> dict[str, str]:
    """The trace context the provider gets: our attempt span as its parent when we export spans,
    else the caller's own header passed on unchanged (a parent that exists somewhere)."""
    parent = ctx.trace_parent
    if exporting:
        flags = parent.flags if parent else "01"
        out = {"traceparent": f"00-{ctx.otel_trace_id}-{attempt.span_id}-{flags}"}
    elif parent is not None:
        out = {"traceparent": f"00-{parent.trace_id}-{parent.span_id}-{parent.flags}"}
    else:
        return {}
    state = ctx.headers.get("tracestate")
    if parent is not None and state and len(state) <= 512 and state.isprintable():
        out["tracestate"] = state
    return out


# -- spans ----------------------------------------------------------------------------------------


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in OTLP JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in values.items() if v is not None and v != []]


def finish_reasons(body: bytes | bytearray, stream: bool = False) -> list[str]:
    """Finish reasons named in an answer (JSON or an event stream), in order, once each; a
    Responses API answer's from its status (:func:`responses_finish`)."""
    return list(dict.fromkeys(m.decode() for m in _FINISH.findall(body))) or responses_finish(body, stream)


def responses_finish(body: bytes | bytearray, stream: bool) -> list[str]:
    """The finish reason of a Responses API answer, which has a status instead: completed is
    ``stop`` (``tool_call`` when it calls a function), incomplete its reason (``length`` for
    ``max_output_tokens``), failed ``error``; nothing when the body is not such an answer."""
    if stream:
        ends = _RESPONSE_END.findall(body)
        status = ends[-1].decode() if ends else None
    else:
        try:
            doc = json.loads(body) if body[:1] == b"{" and len(body) <= PARSE_CAP else None
        except ValueError:  # cut in the trace, or not JSON
            return []
        status = doc.get("status") if isinstance(doc, dict) and doc.get("object") == "response" else None
    if status == "completed":
        return ["tool_call" if _FUNCTION_CALL.search(body) else "stop"]
    if status == "incomplete":
        found = _INCOMPLETE.search(body)
        reason = found.group(1).decode() if found else "max_output_tokens"
        return [INCOMPLETE_REASONS.get(reason, reason)]
    return ["error"] if status == "failed" else []


def provider_name(attempt: Attempt) -> str | None:
    p = attempt.provider
    if p is None:
        return None
    return PROVIDER_NAMES.get(p.name) or PROVIDER_NAMES.get(p.kind) or p.name


def failed(a: Attempt) -> bool:
    """Whether an attempt (the last one: its request) ended in an error: its span's status, and
    what gives its spans and metrics an ``error.type``."""
    return a.status >= 400 or a.outcome != "ok"


def error_type(a: Attempt) -> str | None:
    """``error.type`` of a failed attempt: Stockyard's error code (``upstream_500``, ``budget_exceeded``,
    a stream's ``upstream_<provider code>``), else the status, else how it ended (``client_disconnected``)."""
    if a.error_type:
        return a.error_type[:64]
    if a.status >= 400:
        return str(a.status)
    return a.outcome[:64] if a.outcome != "ok" else None


def call_model(ctx: RequestContext, a: Attempt) -> str | None:
    """The model an upstream call asked of its provider (a fallback's own): an attempt's span's and
    its metrics' ``gen_ai.request.model``."""
    return a.upstream_model or ctx.model


def identity(ctx: RequestContext, a: Attempt) -> dict[str, Any]:
    """What was asked of whom and how it ended: the GenAI attributes spans and metrics share (one
    source for both: the same operation, provider and model names)."""
    return {
        "gen_ai.operation.name": OPERATIONS.get(ctx.endpoint, ctx.endpoint),
        "gen_ai.provider.name": provider_name(a),
        "gen_ai.request.model": ctx.model,
        "gen_ai.response.model": a.served_model or a.upstream_model,
        "error.type": error_type(a),
    }


def _common(ctx: RequestContext, a: Attempt) -> dict[str, Any]:
    """Attributes both a request span and an attempt span carry."""
    u, named = a.usage, identity(ctx, a)
    return {
        **named,
        "gen_ai.system": named["gen_ai.provider.name"],  # deprecated (v1.37), still read by older rules and dashboards
        "gen_ai.usage.input_tokens": u.prompt_tokens if u else None,
        # an embedding is no generated output: the conventions' embeddings span counts input only
        "gen_ai.usage.output_tokens": u.completion_tokens if u and ctx.endpoint != "embeddings" else None,
        # parts of the two above, as the provider reported them (zero: not reported, or none)
        "gen_ai.usage.cache_read.input_tokens": (u.cached_tokens or None) if u else None,
        "gen_ai.usage.cache_creation.input_tokens": (u.cache_write_tokens or None) if u else None,
        "gen_ai.usage.reasoning.output_tokens": (u.reasoning_tokens or None) if u else None,
        "gen_ai.response.finish_reasons": finish_reasons(a.response_body, ctx.stream) or None,
        "http.response.status_code": a.status or None,
        "stockyard.provider": a.provider.name if a.provider else None,
        "stockyard.upstream_model": a.upstream_model,
        "stockyard.outcome": a.outcome,
        "stockyard.cost_uc": a.cost_uc,
        "stockyard.cost_usd": a.cost_uc / 100_000_000 if a.cost_uc is not None else None,
        "stockyard.cost_status": a.cost_status,
        **(openai_attributes(ctx, a) if named["gen_ai.provider.name"] == "openai" else {}),
    }


def openai_attributes(ctx: RequestContext, a: Attempt) -> dict[str, Any]:
    """OpenAI's own attributes (its registry's ``openai.*``), on spans of OpenAI's answers only:
    the API, the tier the request asked and the one that served it, the system fingerprint."""
    tier = ctx.body.get("service_tier") if isinstance(ctx.body, dict) else None
    return {
        "openai.api.type": OPENAI_API_TYPES.get(ctx.endpoint),
        "openai.request.service_tier": tier[:64] if isinstance(tier, str) and tier else None,
        "openai.response.service_tier": a.service_tier,
        "openai.response.system_fingerprint": a.fingerprint,
    }


def answer_timing(ctx: RequestContext, a: Attempt, since: float) -> dict[str, Any]:
    """``gen_ai.response.time_to_first_chunk`` of a streamed answer: seconds from ``since`` (the
    request's arrival, or the attempt's call) to the first chunk written to the client."""
    if not ctx.stream or a.first_chunk is None or not since:
        return {}
    return {"gen_ai.response.time_to_first_chunk": max(0.0, a.first_chunk - since)}


def _span(
    ctx: RequestContext,
    a: Attempt,
    *,
    span_id: str,
    parent: str | None,
    kind: int,
    start_ns: int,
    end_ns: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    error = failed(a)
    status: dict[str, Any] = {"code": STATUS_ERROR if error else STATUS_OK}
    model = extra.get("gen_ai.request.model", ctx.model)  # an attempt's: the model asked of its provider
    if error and a.error_type:
        status["message"] = a.error_type
    span = {
        "traceId": ctx.otel_trace_id,
        "spanId": span_id,
        "name": f"{OPERATIONS.get(ctx.endpoint, ctx.endpoint)} {model or ''}".strip(),
        "kind": kind,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(max(start_ns, end_ns)),
        "attributes": _attributes({**_common(ctx, a), **extra}),
        "status": status,
    }
    if parent:
        span["parentSpanId"] = parent
    return span


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stops(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value[:256]]
    if isinstance(value, list) and all(isinstance(v, str) for v in value[:16]):
        return [v[:256] for v in value[:16]]
    return None


def request_parameters(ctx: RequestContext) -> dict[str, Any]:
    """The sampling settings of the request (``gen_ai.request.*``, ``gen_ai.output.type``; for
    embeddings their encoding formats and dimensions), as the client set them, from the body
    Stockyard has already parsed; what it did not set is left out."""
    body = ctx.body if isinstance(ctx.body, dict) else {}
    if ctx.endpoint in MEDIA_OUTPUTS:  # an image, speech or a transcript, whatever the format
        return {"gen_ai.output.type": MEDIA_OUTPUTS[ctx.endpoint]}
    if ctx.endpoint == "embeddings":  # the embeddings span's own settings (OpenAI's body, or Gemini's)
        fmt = body.get("encoding_format")
        return {
            "gen_ai.request.encoding_formats": [fmt[:64]] if isinstance(fmt, str) and fmt else None,
            "gen_ai.embeddings.dimension.count": _count(body.get("dimensions", gemini_dimensions(body))),
        }
    if ctx.dialect == "gemini":
        config = body.get("generationConfig") or body.get("generation_config")
        g = config if isinstance(config, dict) else {}
        mime = g.get("responseMimeType")
        values = {
            "max_tokens": g.get("maxOutputTokens"),
            "temperature": g.get("temperature"),
            "top_p": g.get("topP"),
            "top_k": g.get("topK"),
            "frequency_penalty": g.get("frequencyPenalty"),
            "presence_penalty": g.get("presencePenalty"),
            "seed": g.get("seed"),
            "stop": g.get("stopSequences"),
            "n": g.get("candidateCount"),
            "output": "json" if mime == "application/json" else "text" if mime == "text/plain" else None,
        }
        values["output"] = values["output"] or _asked_media(g.get("responseModalities"))
    else:
        fmt = body.get("response_format")  # chat
        text = body.get("text")  # Responses
        if isinstance(text, dict):
            fmt = text.get("format")
        config = body.get("output_config")  # Anthropic
        if isinstance(config, dict):
            fmt = config.get("format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        values = {
            "max_tokens": body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens"))),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "top_k": body.get("top_k"),
            "frequency_penalty": body.get("frequency_penalty"),
            "presence_penalty": body.get("presence_penalty"),
            "seed": body.get("seed"),
            "stop": body.get("stop", body.get("stop_sequences")),
            "n": body.get("n"),
            "output": "json" if kind in ("json_object", "json_schema") else "text" if kind == "text" else None,
        }
        values["output"] = values["output"] or _asked_media(body.get("modalities"))  # chat: an image or audio model
    n = _count(values["n"])
    return {
        "gen_ai.request.max_tokens": _count(values["max_tokens"]),
        "gen_ai.request.temperature": _number(values["temperature"]),
        "gen_ai.request.top_p": _number(values["top_p"]),
        "gen_ai.request.top_k": _number(values["top_k"]),
        "gen_ai.request.frequency_penalty": _number(values["frequency_penalty"]),
        "gen_ai.request.presence_penalty": _number(values["presence_penalty"]),
        "gen_ai.request.seed": _count(values["seed"]),
        "gen_ai.request.stop_sequences": _stops(values["stop"]),
        "gen_ai.request.choice.count": n if n is not None and n != 1 else None,
        "gen_ai.request.stream": True if ctx.stream else None,  # unset means not streamed
        "gen_ai.output.type": values["output"],
    }


def gemini_dimensions(body: dict) -> Any:
    """The ``outputDimensionality`` of a Gemini embedContent body, or of a batchEmbedContents
    body's first request (a batch asks one model, each request may say it again)."""
    requests = body.get("requests")
    first = requests[0] if isinstance(requests, list) and requests and isinstance(requests[0], dict) else body
    return first.get("outputDimensionality")


def _asked_media(modalities: Any) -> str | None:
    """``gen_ai.output.type`` of output modalities a request asks for (chat ``modalities``, Gemini's
    ``responseModalities``): an image or speech when it asks for one, else None (text goes unsaid)."""
    asked = {str(m).lower() for m in modalities[:8]} if isinstance(modalities, list) else set()
    return "image" if "image" in asked else "speech" if "audio" in asked else None


def conversation_id(ctx: RequestContext, scrub: Callable[[str], str]) -> str | None:
    """``gen_ai.conversation.id``: the conversation the request names — a Conversations API
    conversation this key holds, else the session a coding agent sends — never one made up.
    ``previous_response_id`` is not one: it names a single response, a different one each turn."""
    conversation = ctx.conversation.conversation_id if ctx.conversation is not None else None
    found = conversation or ctx.session_id
    return scrub(found)[:256] if found else None


def response_id(a: Attempt, scrub: Callable[[str], str]) -> str | None:
    """``gen_ai.response.id``: the id the provider gave this attempt's answer (no content: sent with
    content export off too). A cached answer has none: its id is the request's that made it."""
    return scrub(a.response_id)[:256] if a.response_id and a.provider is not None else None


def server_address(a: Attempt) -> dict[str, Any]:
    """The provider's host and port (``server.*``) for an attempt's span."""
    try:
        url = urlsplit(a.provider.base_url) if a.provider is not None else None
        port = url.port if url else None
    except ValueError:
        return {}
    if url is None or not url.hostname:
        return {}
    return {"server.address": url.hostname, "server.port": port or (443 if url.scheme == "https" else 80)}


def spans_for(ctx: RequestContext, *, content: bool, scrub: Callable[[str], str]) -> list[dict[str, Any]]:
    """The request's span and one child span per upstream attempt (failed ones included)."""
    now_ns = time.time_ns()
    end_ns = ctx.ts_ms * 1_000_000 + ctx.elapsed_us() * 1000
    key = ctx.key
    request_extra: dict[str, Any] = {
        "stockyard.trace_id": ctx.trace_id,
        "stockyard.key_id": ctx.key_id,
        "stockyard.key_name": getattr(key, "name", None),
        "stockyard.project": ctx.project,
        "stockyard.user": ctx.end_user,
        "user.id": ctx.end_user,
        "stockyard.cache_hit": ctx.cache_hit,
        "stockyard.attempts": len(ctx.attempts) + (1 if ctx.attempt.ts_ms else 0),
        "stockyard.stream": ctx.stream,
        "stockyard.endpoint": ctx.endpoint,
        **{f"stockyard.tag.{k}": v for k, v in ctx.tags.items()},
    }
    billed = [a.cost_uc for a in (*ctx.attempts, ctx.attempt) if a.cost_uc is not None]
    if billed:  # the request's cost is every billed attempt's
        request_extra["stockyard.cost_uc"] = sum(billed)
        request_extra["stockyard.cost_usd"] = sum(billed) / 100_000_000
    parameters = request_parameters(ctx)  # the request's, on every span (the attempts are the inference calls)
    parameters["gen_ai.conversation.id"] = conversation_id(ctx, scrub)
    request_extra.update(parameters)
    request_extra.update(answer_timing(ctx, ctx.attempt, ctx.started))
    request_extra["gen_ai.response.id"] = response_id(ctx.attempt, scrub)
    if content:  # only then is any body read
        body = request_body(ctx)
        request_extra.update(request_content(ctx, scrub, body))
        request_extra["gen_ai.tool.definitions"] = tool_definitions(ctx.endpoint, body, scrub)
        answer = answer_content(ctx, ctx.attempt, scrub)
        if ctx.cache_hit or not answer.get("gen_ai.response.id"):  # a cached answer's id is another request's
            answer.pop("gen_ai.response.id", None)
        request_extra.update(answer)
    parent = ctx.trace_parent.span_id if ctx.trace_parent else None
    spans = [
        _span(
            ctx,
            ctx.attempt,
            span_id=ctx.span_id,
            parent=parent,
            kind=SPAN_KIND_SERVER,
            start_ns=ctx.ts_ms * 1_000_000,
            end_ns=end_ns,
            extra=request_extra,
        )
    ]
    for number, a in enumerate((*ctx.attempts, ctx.attempt), 1):
        if not a.ts_ms or a.provider is None:  # no upstream call was made (refused, cache hit)
            continue
        start_ns = a.ts_ms * 1_000_000
        took_ns = int(((a.ended or time.perf_counter()) - a.started) * 1e9) if a.started else 0
        extra = {
            "stockyard.trace_id": a.trace_id or ctx.trace_id,
            "stockyard.attempt": number,
            **parameters,
            **server_address(a),
            **answer_timing(ctx, a, a.started),
            "gen_ai.response.id": request_extra["gen_ai.response.id"] if a is ctx.attempt else response_id(a, scrub),
        }
        extra["gen_ai.request.model"] = call_model(ctx, a)  # a CLIENT span is one call (a fallback's own model)
        if content and a is not ctx.attempt:  # the last attempt's answer is on the request's span
            extra.update({k: v for k, v in answer_content(ctx, a, scrub).items() if v is not None})
        spans.append(
            _span(
                ctx,
                a,
                span_id=a.span_id,
                parent=ctx.span_id,
                kind=SPAN_KIND_CLIENT,
                start_ns=start_ns,
                end_ns=start_ns + took_ns if took_ns else min(end_ns, now_ns),
                extra=extra,
            )
        )
    return spans


SCOPE = {"name": "stockyard", "version": __version__}


def resource(worker: int | None = None) -> dict[str, Any]:
    """This process's OTLP resource, for its spans and its metrics alike: a ``service.instance.id`` of
    its own (a new UUID each start, so each ``--workers`` worker, replica or restart is a series of its
    own a collector sums, never two processes' cumulative counts mixed), and its worker's index."""
    return {
        "attributes": _attributes(
            {
                "service.name": "stockyard",
                "service.version": __version__,
                "service.instance.id": str(uuid.uuid4()),
                "stockyard.worker": worker,
            }
        )
    }


def payload(spans: list[dict[str, Any]], origin: dict[str, Any] | None = None) -> bytes:
    """An OTLP ``ExportTraceServiceRequest`` in JSON (``origin``: the process's :func:`resource`)."""
    body = {"resourceSpans": [{"resource": origin or resource(), "scopeSpans": [{"scope": SCOPE, "spans": spans}]}]}
    return encode(body)


def encode(body: dict[str, Any]) -> bytes:
    """An OTLP export's JSON body."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


# -- the exporter thread ----------------------------------------------------------------------------


_WAKE: dict[str, Any] = {}  # put by ``stop``: the export thread looks at its stop flag now


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A collector's redirect is an error: following it would send the OTLP headers (often a
    vendor's API key) to another host, as a GET without the spans, counted as exported."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


SPAN_BASE_BYTES = 1024  # a span's dicts, ids and numbers: about what it holds beside its text


def span_size(span: dict[str, Any]) -> int:
    """About the memory a queued span holds: its attributes' text (content export puts up to 16K
    characters in each of several) and a fixed part for the rest."""
    size = SPAN_BASE_BYTES
    for attribute in span.get("attributes", ()):
        size += len(attribute["value"].get("stringValue", ""))
    return size


class Exporter:
    """Batches spans to the collector on its own thread; drops (and counts) what it cannot send."""

    def __init__(
        self,
        endpoint: str,
        headers: dict[str, str],
        *,
        queue_spans: int = QUEUE_SPANS,
        queue_bytes: int = QUEUE_BYTES,
        retry_delays: tuple[float, ...] = RETRY_DELAYS_S,
        post_timeout_s: float = POST_TIMEOUT_S,
        origin: dict[str, Any] | None = None,
    ) -> None:
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self._resource = origin or resource()
        self._post_timeout_s = post_timeout_s
        self._headers = {"Content-Type": "application/json", **headers}
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_spans)
        self._queue_bytes = queue_bytes
        self.queued_bytes = 0  # span_size of the spans in the queue
        self._counts = threading.Lock()  # queued_bytes and dropped: request threads and the exporter's
        self._retry_delays = retry_delays
        self._stop = threading.Event()
        self.exported = 0
        self.dropped = 0
        self.failed_posts = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="stockyard-otlp", daemon=True)

    def start(self) -> "Exporter":
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, spans: list[dict[str, Any]]) -> None:
        """Queue spans without waiting; what does not fit (in count or in bytes) is dropped and counted."""
        with self._counts:
            for n, span in enumerate(spans):
                size = span_size(span)
                try:
                    if self.queued_bytes + size > self._queue_bytes:
                        raise queue.Full
                    self._queue.put_nowait(span)
                except queue.Full:
                    self.dropped += len(spans) - n
                    return
                self.queued_bytes += size

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then end the thread."""
        self._stop.set()
        try:
            self._queue.put_nowait(_WAKE)  # the thread waits on the queue for up to half a second
        except queue.Full:
            pass  # then it is not waiting
        self._thread.join(timeout)

    def _batch(self) -> list[dict[str, Any]]:
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        while len(batch) < BATCH_SPANS:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        batch = [span for span in batch if span is not _WAKE]
        with self._counts:
            self.queued_bytes -= sum(map(span_size, batch))
        return batch

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._batch()
            if batch:
                self._send(batch)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        data = payload(batch, self._resource)
        for delay in (*self._retry_delays, None):
            problem = self._post(data)
            if problem is None:
                self.exported += len(batch)
                if self._failing:
                    log.info("OTLP export to %s works again", self.url)
                    self._failing = False
                return
            self.failed_posts += 1
            retryable, why = problem
            if not retryable or delay is None or self._stop.is_set():
                break
            self._stop.wait(delay)
        with self._counts:
            self.dropped += len(batch)
        if not self._failing:  # once per outage, not per batch
            log.warning("OTLP export to %s failed (%s); %d spans dropped", self.url, why, len(batch))
            self._failing = True

    def _post(self, data: bytes) -> tuple[bool, str] | None:
        """None when the collector took the batch, else (retryable, why)."""
        return post(self.url, data, self._headers, self._post_timeout_s)


def post(url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> tuple[bool, str] | None:
    """POST one OTLP export: None when the collector took it, else (retryable, why). Its redirects are
    not followed (``_NoRedirects``); its answer is read within ``timeout_s`` (``_drain``)."""
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            _drain(resp, time.monotonic() + timeout_s)
        return None
    except urllib.error.HTTPError as err:
        return (err.code == 429 or err.code >= 500, f"HTTP {err.code}")
    except (OSError, ValueError) as exc:
        return (True, type(exc).__name__)


ANSWER_READ_MAX = 64 * 1024  # bytes of a collector's answer read (and dropped) at most


def _drain(resp: Any, until: float) -> None:
    """Read the collector's answer (its bytes are not used) up to ``ANSWER_READ_MAX`` and no later than
    ``until`` (plus one socket timeout): an answer without end, or sent a byte at a time, must not hold
    the one export thread nor grow its memory."""
    left = ANSWER_READ_MAX
    while left > 0 and time.monotonic() < until:
        got = resp.read1(min(left, 16384))
        if not got:
            return
        left -= len(got)


class Telemetry:
    """What the tracer uses: spans built from a request, handed to the exporter, and its metrics
    recorded in the meter (:class:`stockyard.otel_metrics.Meter`, when they are exported). Never raises."""

    def __init__(self, exporter: Exporter, content: bool, scrub: Callable[[str], str], meter: Any = None) -> None:
        self.exporter = exporter
        self.meter = meter
        self._content = content
        self._scrub = scrub

    def export(self, ctx: RequestContext) -> None:
        try:
            self.exporter.submit(spans_for(ctx, content=self._content, scrub=self._scrub))
        except Exception as exc:  # telemetry must never cost a request
            log.error("could not build spans for %s: %s", ctx.trace_id, exc)
        self.measure(ctx)

    def measure(self, ctx: RequestContext) -> None:
        """Only the metrics: also of a refusal whose trace and spans are not kept (past its sender's rate)."""
        if self.meter is None:
            return
        try:
            self.meter.record(ctx)
        except Exception as exc:  # telemetry must never cost a request
            log.error("could not record metrics for %s: %s", ctx.trace_id, exc)
