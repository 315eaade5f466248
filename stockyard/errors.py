"""Errors a client receives, in the dialect it spoke.

Everything Stockyard refuses or fails with is a :class:`ProxyError`; the server turns it
into the OpenAI, Anthropic or Google (Gemini) error body with the right status. No other error text
reaches a client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

OPENAI = "openai"
ANTHROPIC = "anthropic"
RESPONSES = "responses"  # the OpenAI Responses API: OpenAI's error shape, its own stream events
GEMINI = "gemini"  # Gemini-native routes (/v1beta/models/…): Google's error shape

# status → Google's canonical status name (google.rpc.Code), for the Gemini error shape
GOOGLE_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# status → (OpenAI type, Anthropic type)
_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    408: ("timeout_error", "timeout_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    502: ("upstream_error", "api_error"),
    503: ("server_error", "overloaded_error"),
    504: ("timeout_error", "timeout_error"),
    529: ("server_error", "overloaded_error"),  # Anthropic's "overloaded"
}
# The error types Anthropic's API answers with (docs.claude.com/en/api/errors): an Anthropic client is
# never given another. A refusal's own type (``budget_exceeded``) becomes its status's type, and goes
# to ``error.details.error_code``, where the Anthropic SDK reads a more precise reason (``e.error_code``).
ANTHROPIC_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    }
)


@dataclass
class ProxyError(Exception):
    """A refusal or failure with its HTTP status, for the client in its own dialect."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # the shape whatever the path's: an unserved path's 404 for the SDK that asked (``server.unrouted``)
    dialect: str | None = None
    # Anthropic's ``error.details`` (an ``error_code`` the SDK acts on: a message thread's rejection)
    details: dict | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self, dialect: str) -> bytes:
        shape = self.dialect or dialect
        return error_body(
            shape, self.status, self.message, code=self.code, param=self.param, type_=self.type, details=self.details
        )


# What a request's own text can raise deep in a translation, as well as a ProxyError: refusal_of's 400s.
REFUSALS = (ProxyError, RecursionError, UnicodeEncodeError)


def refusal_of(exc: ProxyError | RecursionError | UnicodeEncodeError) -> ProxyError:
    """A ProxyError as it is; a RecursionError or UnicodeEncodeError as the 400 it stands for:
    only JSON nested near the parser's limit (which it accepts) recurses that deep when it is
    translated or re-encoded, and only a lone UTF-16 surrogate escape (valid JSON, ``"\\ud800"``)
    makes text UTF-8 cannot encode when a translated request is written out (a translated answer,
    the provider's text, is written escaped by ``httpio.json_bytes``)."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, UnicodeEncodeError):
        why = " (a lone UTF-16 surrogate, \\ud800-\\udfff without its pair)" if exc.encoding.startswith("utf") else ""
        return ProxyError(
            400, f"request body holds text that cannot be encoded as {exc.encoding}{why}", code="invalid_json"
        )
    return ProxyError(400, "request body nests arrays or objects too deeply to be handled", code="invalid_json")


DATABASE_UNAVAILABLE = "database_unavailable"


def database_refusal(exc: BaseException) -> ProxyError | None:
    """The 503 a request gets when the database, not the request, failed (``writer.database_failed``:
    a lock another session held past ``STOCKYARD_BUSY_TIMEOUT_MS`` — SQLite's ``database is
    locked``, PostgreSQL's 55P03 —, the database lost, full or read-only, a write not committed in
    time); None for any other failure (a bug's 500). The message says which, never the error's
    text (it can name the database's host, user or path: that goes to the log)."""
    from .store.writer import WriteTimedOut, database_failed, held_by_lock

    if not database_failed(exc):
        return None
    if getattr(exc, "pool_busy", False):  # store/pgpool.py: this server's read connections, all in use
        message = "the server is busy: all its database connections stayed in use; try again shortly"
    elif getattr(exc, "queued", False):  # store/shared.WindowTurns: one window's counts, one at a time
        message = "the server is busy: too many requests of one limit were counted at once; try again shortly"
    elif held_by_lock(exc):
        message = "the database is busy: another session holds a lock this request needs; try again shortly"
    elif isinstance(exc, WriteTimedOut):
        message = "the database did not commit this change in time (it may still): check before trying again"
    else:
        message = "the database is unavailable; try again shortly"
    return ProxyError(503, message, code=DATABASE_UNAVAILABLE, headers={"Retry-After": "1"})


def error_type(dialect: str, status: int) -> str:
    openai_type, anthropic_type = _TYPES.get(
        status, ("server_error", "api_error") if status >= 500 else ("invalid_request_error",) * 2
    )
    return anthropic_type if dialect == ANTHROPIC else openai_type


def error_body(
    dialect: str,
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    type_: str | None = None,
    details: dict | None = None,
) -> bytes:
    """The JSON error body a client of ``dialect`` expects (``details``: Anthropic's, on its error)."""
    if dialect == GEMINI:
        return json.dumps(google_error(status, message, code)).encode()
    kind = type_ or error_type(dialect, status)
    if dialect == ANTHROPIC and kind not in ANTHROPIC_TYPES:
        details = details or {"error_code": kind}
        kind = error_type(dialect, status)
    if dialect == ANTHROPIC:
        payload: dict = {"type": "error", "error": {"type": kind, "message": message}}
        if details:
            payload["error"]["details"] = details
    else:
        payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json.dumps(payload).encode()


def google_error(status: int, message: str, reason: str | None = None) -> dict:
    """Google's error object (``google.rpc.Status`` as JSON); Stockyard's own code rides in an ErrorInfo."""
    name = GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    error: dict = {"code": status, "message": message, "status": name}
    if reason:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "stockyard"}
        ]
    return {"error": error}


def sse_error_event(dialect: str, status: int, message: str, code: str | None = None) -> bytes:
    """The event that ends a broken stream (never a made-up ``[DONE]``)."""
    body = error_body(dialect, status, message, code=code).decode()
    if dialect == ANTHROPIC:
        return f"event: error\ndata: {body}\n\n".encode()
    return f"data: {body}\n\n".encode()


class ClientGone(Exception):
    """The client closed its connection while we were answering."""


INTERNAL_ERROR = "internal_error"  # a trace's error_type for a failure nobody planned for (a bug, a refusing database)
DESCRIBED_CAP = 200  # characters of an unplanned failure's message a log line or trace keeps


def described(exc: BaseException) -> str:
    """``Type: first line of its message``, capped: what a log line or a trace says of a failure nobody
    planned for — never more lines (a message may quote a body or a provider's answer further on)."""
    lines = str(exc).splitlines()
    first = lines[0][:DESCRIBED_CAP] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
