"""``/api/status`` and ``/api/openapi.json``."""

from __future__ import annotations

import time

from .. import __version__
from ..operations import read_config_version
from ..store import db
from . import ROUTES, ApiRequest, route
from .openapi import document


@route(
    "GET",
    "/api/status",
    "Server status: version, uptime, database size, writer queue, schema version, "
    "configuration version and reload count",
)
def status(r: ApiRequest) -> dict:
    app = r.app
    size = app.backend.disk_bytes(app.store.read())
    return {
        "version": __version__,
        "uptime_s": int(time.time() - app.started_at),
        "database": {
            "path": str(app.settings.database),
            "size_bytes": size,
            "schema_version": db.schema_version(app.store.read()),
        },
        "writer": {
            "queue_depth": app.writer.depth,
            "written": app.writer.stats.written,
            "dropped": app.writer.stats.dropped,
            "healthy": app.writer.healthy,
        },
        "providers": [p.public() for p in app.registry().providers],
        "config_version": read_config_version(app.store.read()),
        "loaded_config_version": app.config_version,
        "reloads": app.reloads,
    }


@route("GET", "/api/openapi.json", "This document: the admin API in OpenAPI 3.1")
def openapi(r: ApiRequest) -> dict:
    return document(ROUTES)
