"""The admin API under ``/api/``: routing, authentication, CORS, and its OpenAPI document.

Routes are declared with :func:`route` in the modules of this package; the same
declarations produce ``GET /api/openapi.json``, so the document always lists every route.
Every route needs ``Authorization: Bearer $STOCKYARD_ADMIN_KEY`` (compared in constant
time); attempts with a wrong key are audited and throttled per sender, counted in the shared
database so the limit holds across workers and replicas (``logins.py``; requests without a key
are refused but never counted, so they cannot lock the admin out).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote

from .. import audit, times
from ..errors import ProxyError
from ..httphead import bearer_token
from ..httpio import Request, Response, check_method, json_response, whole_number
from ..operations import Operations, Refused, invalid
from ..store import storable
from .logins import LoginThrottle, record_failure

if TYPE_CHECKING:
    from ..app import App

ADMIN_KEY_HELP = (
    "the admin API is disabled: set STOCKYARD_ADMIN_KEY (for example "
    "`export STOCKYARD_ADMIN_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')`) "
    "and restart the server; the CLI works without it"
)


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "string"  # OpenAPI scalar type
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str  # e.g. /api/traces/{id}
    handler: Callable[["ApiRequest"], Any]
    summary: str
    query: tuple[Param, ...] = ()
    body: dict | None = None  # JSON schema of the request body
    status: int = 200  # the status of a successful answer (201 for creations)
    # checks the path values before anything else (a route whose ids have a form: a malformed one,
    # a NUL included, is its 400 rather than check_storable's 404)
    check: Callable[[dict[str, str]], None] | None = None
    regex: re.Pattern = field(init=False, compare=False)

    def __post_init__(self) -> None:
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.pattern) + "$"
        object.__setattr__(self, "regex", re.compile(regex))


ROUTES: list[Route] = []


def route(
    method: str,
    pattern: str,
    summary: str,
    *,
    query: tuple[Param, ...] = (),
    body: dict | None = None,
    status: int = 200,
    check: Callable[[dict[str, str]], None] | None = None,
) -> Callable:
    """Declare an admin route (and its OpenAPI entry) in one place.

    A handler returns the JSON payload (answered with ``status``), ``(status, payload)``, or a
    whole :class:`Response` for an answer that is not JSON (a CSV report).
    """

    def register(fn: Callable[["ApiRequest"], Any]) -> Callable[["ApiRequest"], Any]:
        ROUTES.append(Route(method, pattern, fn, summary, query, body, status, check))
        return fn

    return register


@dataclass
class ApiRequest:
    app: "App"
    req: Request
    params: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return self.req.query

    def json(self) -> dict:
        return self.req.json()

    def json_fields(self, allowed: tuple[str, ...]) -> dict[str, Any]:
        """The JSON body with only known fields (a typo such as "key" is an error, not ignored)."""
        body = self.json()
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise invalid(f"unknown field(s) {', '.join(map(repr, unknown))}; use {', '.join(allowed)}", unknown[0])
        return body

    def ops(self) -> Operations:
        """Changes made by this request, attributed to the admin API and the client address."""
        return self.app.ops(audit.actor_api(self.req.client))

    def int_query(self, name: str, default: int, lo: int = 1, hi: int = 1000) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        value = whole_number(raw)
        if value is None:
            raise ProxyError(400, f"query parameter {name!r} must be a whole number", param=name)
        if not lo <= value <= hi:
            raise ProxyError(400, f"query parameter {name!r} must be between {lo} and {hi}", param=name)
        return value

    def bool_query(self, name: str) -> bool:
        """A boolean parameter: 1/true/yes or 0/false/no (any case; absent or empty: false), else a 400
        — a misspelt value read as false would silently answer the opposite of what was asked."""
        raw = (self.query.get(name) or "").lower()
        if raw in ("1", "true", "yes"):
            return True
        if raw in ("", "0", "false", "no"):
            return False
        raise ProxyError(400, f"query parameter {name!r} must be true or false", param=name, code="invalid_value")

    def time_query(self, name: str) -> datetime | None:
        """A UTC time from an ISO date or datetime, or a 400 that shows the accepted forms."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return None
        try:
            return times.parse_utc(raw)
        except ValueError:
            raise invalid(f"query parameter {name!r} must be {times.FORMAT_HELP}", param=name) from None


THROTTLE = LoginThrottle()


def authenticate(app: "App", req: Request) -> None:
    """Let the right admin key through, always; count and throttle only wrong keys.

    The throttle is checked after the key, so nobody can lock the admin out: requests with
    no key at all (a web page loading images, CORS preflights) are refused but never counted
    or audited, and the correct key works even while an address is blocked.
    """
    admin_key = app.settings.admin_key
    if not admin_key:
        raise ProxyError(401, ADMIN_KEY_HELP, code="admin_key_not_set")
    given = bearer_token(req.headers) or ""
    if hmac.compare_digest(given.encode(), admin_key.encode()):
        return
    refusal = ProxyError(
        401, "missing or wrong admin key: send Authorization: Bearer $STOCKYARD_ADMIN_KEY", code="invalid_admin_key"
    )
    if not given or req.method == "OPTIONS":
        raise refusal  # not a login attempt: nothing to count
    wait = THROTTLE.blocked_for(req.client)  # this process knows: no database read
    if wait <= 0:
        try:  # counted in the shared database, with its audit row, in one transaction
            wait = record_failure(app, req.client, req.path)
        except Exception:
            wait = 0.0  # refusing the login matters more than recording it: this process's count holds
        if wait > 0:
            THROTTLE.block(req.client, wait)
        else:
            THROTTLE.fail(req.client)
    if wait > 0:
        raise ProxyError(
            429,
            "too many failed admin logins from this address; try again later",
            code="too_many_failed_logins",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    raise refusal


def cors_headers(app: "App", req: Request) -> dict[str, str]:
    origin = req.headers.get("origin")
    allowed = app.settings.cors_origin
    if not allowed or origin != allowed:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
    }


def find(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for this request, or 404/405."""
    allowed = []
    for r in ROUTES:
        match = r.regex.match(path)
        if match:
            if r.method == method:  # path values decoded once, here: a model named café or 50%off
                return r, {name: unquote(value) for name, value in match.groupdict().items()}
            allowed.append(r.method)
    if allowed:  # the path has routes, none of this method
        check_method(method, sorted(set(allowed)))
    raise ProxyError(404, f"no admin route for {method} {path}", code="not_found")


def check_storable(params: dict[str, str], query: dict[str, str]) -> None:
    """A decoded path or query value no stored row can hold (``%00``: PostgreSQL's text has no
    NUL) names nothing: a path value is unknown (404, as each route answers an unknown name), a
    query value a 400 naming its parameter. Checked once here, not by each route's lookup."""
    for name, value in params.items():
        if not storable(value):
            raise ProxyError(
                404, f"no {name} {value[:100]!r}: it holds a NUL, which no stored name has", code="not_found"
            )
    for name, value in query.items():
        if not (storable(name) and storable(value)):
            raise ProxyError(
                400,
                f"query parameter {name[:100]!r} holds a NUL, which no stored value has",
                param=name[:100],
                code="invalid_value",
            )


def check_query(r: Route, query: dict[str, str]) -> None:
    """A query parameter the route does not declare is a 400 naming it: ignored, an operator's
    misspelt filter (``user_id`` for ``user``) would answer with everything, unfiltered."""
    unknown = sorted(set(query) - {p.name for p in r.query})
    if unknown:
        known = ", ".join(p.name for p in r.query) or "none"
        raise ProxyError(
            400,
            f"unknown query parameter {unknown[0][:100]!r} for {r.method} {r.pattern} (it takes: {known})",
            param=unknown[0][:100],
            code="invalid_value",
        )


def handle(app: "App", req: Request) -> Response:
    """Entry point from the server for every ``/api/`` request."""
    cors = cors_headers(app, req)
    if req.method == "OPTIONS" and cors:
        return Response(204, headers=cors)
    try:
        authenticate(app, req)
        r, params = find(req.method, req.path)
        if r.check is not None:
            r.check(params)
        check_storable(params, req.query)
        check_query(r, req.query)
        result = r.handler(ApiRequest(app, req, params))
    except Refused as exc:  # a refused change, answered as the client error it is
        raise ProxyError(exc.status, exc.message, code=exc.code, param=exc.param, headers=cors) from None
    except ProxyError as exc:
        exc.headers = {**exc.headers, **cors}
        raise
    if isinstance(result, Response):
        result.headers = {**result.headers, **cors}
        return result
    status, payload = result if isinstance(result, tuple) else (r.status, result)
    return json_response(payload, status, cors, ensure_ascii=False)


def load_routes() -> None:
    """Import the modules that declare routes (once)."""
    from . import audit_log, costs, keys, models, modules, prices, providers, status, stored, traces, webhooks  # noqa: F401


load_routes()
