"""Request bodies that carry money: JSON numbers are kept as the decimal text the client sent.

``{"budget_usd": 10.10}`` arrives as the text ``"10.10"`` and becomes exactly 1_010_000_000 µ¢;
it never passes through a float: every money value is a whole number of µ¢.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ProxyError


def exact_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, with every non-integer number as its original text; else a 400."""
    try:
        value = json.loads(body or b"{}", parse_float=str)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProxyError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ProxyError(400, "request body must be a JSON object", code="invalid_body")
    return value
