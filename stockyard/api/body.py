"""Request bodies that carry money: JSON numbers are kept as the decimal text the client sent.

``{"budget_usd": 10.10}`` arrives as the text ``"10.10"`` and becomes exactly 1_010_000_000 µ¢;
it never passes through a float: every money value is a whole number of µ¢.
"""

from __future__ import annotations

from typing import Any

from ..httpio import json_object


def exact_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``), every non-integer number as its original
    text; else a 400."""
    return json_object(body or b"{}", parse_float=str)
