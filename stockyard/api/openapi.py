"""Build the OpenAPI 3.1 document from the declared routes (so it cannot drift from them)."""

from __future__ import annotations

import re
from typing import Iterable

from .. import __version__

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation(r) -> dict:
    path_params = re.findall(r"\{(\w+)\}", r.pattern)
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in path_params]
    params += [
        {
            "name": q.name,
            "in": "query",
            "required": q.required,
            "description": q.description,
            "schema": {"type": q.type},
        }
        for q in r.query
    ]
    op: dict = {
        "summary": r.summary,
        "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.pattern.lower()).strip('_')}",
        "parameters": params,
        "responses": {
            str(r.status): {
                "description": "OK" if r.status == 200 else "Created",
                "content": {"application/json": {"schema": {}}},
            },
            "400": _ERROR,
            "401": _ERROR,
            "404": _ERROR,
            "429": _ERROR,
        },
    }
    if r.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": r.body}}}
        op["responses"]["409"] = _ERROR
    return op


def document(routes: Iterable) -> dict:
    paths: dict[str, dict] = {}
    for r in routes:
        paths.setdefault(r.pattern, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stockyard admin API", "version": __version__},
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "object"}}}},
        },
        "security": [{"admin": []}],
        "paths": paths,
    }
