"""The web console: static files under ``/ui/``, read once with :mod:`importlib.resources` (works inside the pyz).

The files are public; every piece of data they show comes from ``/api/`` with the admin key,
which the browser keeps in ``sessionStorage`` and sends as a bearer header. Every answer here
carries a strict Content-Security-Policy (scripts and styles only from this origin, nothing
inline) and the other framing/sniffing/referrer headers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from typing import TYPE_CHECKING

from ..httpio import Request, Response, allow

if TYPE_CHECKING:
    from ..app import App

PREFIX = "/ui/"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
TYPES = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}
# One plain file name: no folders, no dots but the extension, no escapes (so no traversal).
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|css|js|svg)$")


@functools.cache
def files() -> dict[str, tuple[bytes, str]]:
    """Every console file, (content, etag) by name, read once: the set of names a request can
    find is fixed (a request for any other name is a 404 that leaves nothing behind), and
    ``serve`` reads them at start, so a pyz replaced under a running server is never read."""
    found = {}
    for entry in importlib.resources.files(__name__).iterdir():
        if _NAME.match(entry.name):
            data = entry.read_bytes()
            found[entry.name] = (data, '"' + hashlib.sha256(data).hexdigest()[:20] + '"')
    return found


def load(name: str) -> tuple[bytes, str] | None:
    """(content, etag) of a console file, or None when there is no such file."""
    return files().get(name)


def _answer(status: int, body: bytes, content_type: str, extra: dict | None = None) -> Response:
    return Response(status, body, content_type, {**SECURITY_HEADERS, **(extra or {})})


def handle(app: "App", req: Request) -> Response:
    """GET /ui/<file>: the file with its content type; anything else 404 (or 405 for other methods)."""
    if req.method != "GET":
        return _answer(405, b"method not allowed\n", "text/plain; charset=utf-8", {"Allow": allow(["GET"])})
    name = req.path[len(PREFIX) :] or "index.html"
    match = _NAME.match(name)
    found = load(name) if match else None
    if match is None or found is None:
        return _answer(404, b"not found\n", "text/plain; charset=utf-8", {"Cache-Control": "no-store"})
    data, etag = found
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if req.headers.get("if-none-match") == etag:
        return _answer(304, b"", TYPES[match.group(1)], headers)
    return _answer(200, data, TYPES[match.group(1)], headers)


def redirect(app: "App", req: Request) -> Response:
    """``/`` and ``/ui`` lead to the console."""
    return _answer(302, b"", "text/plain; charset=utf-8", {"Location": PREFIX, "Cache-Control": "no-store"})
