"""Errors a client receives, in the dialect it spoke.

Everything Stockyard refuses or fails with is a :class:`ProxyError`; the server turns it
into the OpenAI, Anthropic or Google (Gemini) error body with the right status. No other error text
reaches a client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

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
}


@dataclass
class ProxyError(Exception):
    """A refusal or failure with its HTTP status, for the client in its own dialect."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self, dialect: str) -> bytes:
        return error_body(dialect, self.status, self.message, code=self.code, param=self.param, type_=self.type)


def check_method(method: str, allowed: Sequence[str]) -> None:
    """A method the route does not take: 405 naming the ones it does (``Allow``)."""
    if method not in allowed:
        raise ProxyError(
            405,
            f"method {method} is not allowed here; use {', '.join(allowed)}",
            code="method_not_allowed",
            headers={"Allow": ", ".join(allowed)},
        )


def refusal_of(exc: ProxyError | RecursionError) -> ProxyError:
    """A ProxyError as it is; a RecursionError as the 400 it stands for: only JSON nested near
    the parser's limit (which it accepts) recurses that deep when it is translated or re-encoded."""
    if isinstance(exc, ProxyError):
        return exc
    return ProxyError(400, "request body nests arrays or objects too deeply to be handled", code="invalid_json")


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
) -> bytes:
    """The JSON error body a client of ``dialect`` expects."""
    if dialect == GEMINI:
        return json.dumps(google_error(status, message, code)).encode()
    kind = type_ or error_type(dialect, status)
    if dialect == ANTHROPIC:
        payload: dict = {"type": "error", "error": {"type": kind, "message": message}}
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
