"""OpenAI's hosted tools billed per call: the calls a Responses answer shows, and what they cost.

OpenAI bills its web search and file search tools per call, and its ``usage`` counts none of
them: only the answer's output does, one ``web_search_call`` or ``file_search_call`` item a call.
An answer passed through from a provider that bills so (:func:`bills_calls`) is tallied here
(:class:`CallTally`: a whole answer's output, or a stream's items as they pass, so a stream cut
before ``response.completed`` still bills the calls it showed), and ``billing.Pricer`` adds each
call's fee to the attempt's ``Usage.fees_uc`` at the price table's per-call price
(:func:`price_key`, unit ``call``; operators override it as any price). A budget holds the calls a
request may make (:func:`held_fees`) at the same prices.

Every call item counts, whatever its ``action`` (``search``, ``open_page``, ``find_in_page``):
OpenAI's pricing does not say which actions it bills, and support has said one call may run
sub-searches the answer does not show, so the count is what the answer shows: a lower bound.
Stdlib only.
"""

from __future__ import annotations

from typing import Any, Callable

from .toolchoice import allowed_entries

WEB_SEARCH, FILE_SEARCH = "web_search_call", "file_search_call"
CALL_ITEMS = (WEB_SEARCH, FILE_SEARCH)
# The price table's keys (shipped as ``openai/<key>``, unit ``call``): the GA ``web_search`` tool,
# $10 per 1,000 calls on every model; ``web_search_preview`` $25 per 1,000 on non-reasoning models
# (gpt-4o, gpt-4.1 families: their search content tokens are free), $10 on reasoning models
# (o-series, gpt-5); file search $2.50 per 1,000.
PREVIEW, PREVIEW_REASONING = "web_search_call/preview", "web_search_call/preview-reasoning"
# OpenAI's reasoning models, by the start of their names (but their ``-chat`` variants, which do not reason)
REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")
# Calls a budget holds for a search tool when ``max_tool_calls`` does not bound them (a guess, not
# a bound: the real count settles the hold), as ``estimate.WEB_SEARCHES_UNCAPPED`` is for Claude's.
CALLS_UNCAPPED = 10
MAX_CALLS = 10**6  # calls one answer is billed for at most (an absurd output stays a sane cost)
BILLING_KINDS = ("openai",)  # provider kinds billed at OpenAI's shipped per-call prices


def bills_calls(kind: str | None) -> bool:
    """A provider of this kind is billed at OpenAI's shipped per-call prices (another kind's calls
    cost what an operator prices ``<provider>/<key>`` or a bare ``<key>`` at, else nothing here)."""
    return kind in BILLING_KINDS


def _tool_types(body: Any) -> set[str]:
    tools = body.get("tools") if isinstance(body, dict) else None
    return {str(t.get("type")) for t in tools if isinstance(t, dict)} if isinstance(tools, list) else set()


def price_key(item_type: str, body: Any, model: str) -> str:
    """The price table key a call of ``item_type`` is billed at: a web search by the request's tool
    (``web_search_preview`` when it offered only that one) and, for the preview, by ``model``."""
    if item_type == FILE_SEARCH:
        return FILE_SEARCH
    kinds = _tool_types(body)
    preview = any(k.startswith("web_search_preview") for k in kinds)
    general = any(k.startswith("web_search") and not k.startswith("web_search_preview") for k in kinds)
    if preview and not general:
        bare = model.rsplit("/", 1)[-1].lower()
        reasons = bare.startswith(REASONING_MODELS) and "-chat" not in bare  # gpt-5-chat-latest does not
        return PREVIEW_REASONING if reasons else PREVIEW
    return WEB_SEARCH


class CallTally:
    """The hosted tool calls an answer showed, each once (by its id, else its place in the output)."""

    def __init__(self) -> None:
        self._seen: dict[str, set[object]] = {kind: set() for kind in CALL_ITEMS}

    def see_item(self, item: Any, index: Any) -> None:
        if isinstance(item, dict) and item.get("type") in CALL_ITEMS:
            ident = item.get("id")
            self._seen[item["type"]].add(ident if isinstance(ident, str) and ident else ("#", index))

    def see_output(self, output: Any) -> None:
        """A response's ``output``: every item in it."""
        for index, item in enumerate(output if isinstance(output, list) else ()):
            self.see_item(item, index)

    def see_event(self, event: dict) -> None:
        """A stream event: an item added or done, or a response (its output so far)."""
        if event.get("type") in ("response.output_item.added", "response.output_item.done"):
            self.see_item(event.get("item"), event.get("output_index"))
        response = event.get("response")
        if isinstance(response, dict):
            self.see_output(response.get("output"))

    def counts(self) -> dict[str, int]:
        """Calls by item type, only the types seen."""
        return {kind: min(len(seen), MAX_CALLS) for kind, seen in self._seen.items() if seen}


def offered(body: Any) -> list[str]:
    """The per-call item types a request's tools may make (``tool_choice`` none: none; an
    ``allowed_tools`` choice: those it allows)."""
    if not isinstance(body, dict) or body.get("tool_choice") == "none":
        return []
    kinds = _tool_types(body)
    allowed = allowed_entries(body.get("tool_choice"))
    if allowed is not None:
        kinds &= {str(t.get("type")) for t in allowed if isinstance(t, dict)}
    found = [WEB_SEARCH] if any(k.startswith("web_search") for k in kinds) else []
    return found + ([FILE_SEARCH] if "file_search" in kinds else [])


def held_fees(body: Any, model: str, fee_of: Callable[[str], int | None], web_guess: int) -> int | None:
    """What a budget holds for a request's per-call tools (µ¢), each call at ``fee_of(price_key)``
    (µ¢ a call; None: not priced per call, and then None here: the caller holds as it did). With
    ``max_tool_calls`` (OpenAI's bound on all its hosted tools' calls in a response) that many calls
    at the dearest tool's fee; else ``web_guess`` web searches (``estimate.web_searches``) and
    :data:`CALLS_UNCAPPED` file searches — a guess the real count settles."""
    fees = {kind: fee_of(price_key(kind, body, model)) for kind in offered(body)}
    if not fees or any(fee is None for fee in fees.values()):
        return None
    priced = {kind: fee or 0 for kind, fee in fees.items()}
    most = body.get("max_tool_calls") if isinstance(body, dict) else None
    if type(most) is int and most > 0:
        return min(most, MAX_CALLS) * max(priced.values())
    return sum(fee * (web_guess if kind == WEB_SEARCH else CALLS_UNCAPPED) for kind, fee in priced.items())
