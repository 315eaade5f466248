"""The one reading of a Responses request's ``allowed_tools`` tool_choice, for the two that read it.

``providers/responses.allow_only`` translates it for Claude and Gemini; ``imagegen.tool_calls`` asks
whether it lets the image tool run (a budget holds no images when it does not). Stdlib only: imagegen is
imported by ``context``, ``estimate`` and ``budgets``, and the translation module would bring the providers
with it.
"""

from __future__ import annotations

from typing import Any


def allowed_entries(choice: Any) -> list | None:
    """The tools an ``allowed_tools`` tool_choice (``{"type": "allowed_tools", "mode", "tools": [...]}``)
    allows, as the request lists them (``[]`` when its ``tools`` is not a list: it allows none); None for
    any other tool_choice."""
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return None
    entries = choice.get("tools")
    return entries if isinstance(entries, list) else []
