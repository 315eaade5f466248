"""OpenAI's hosted tools billed per call: the calls a Responses answer shows, and what they cost.

OpenAI bills its web search and file search tools per call, and its ``usage`` counts none of
them: only the answer's output does, one ``web_search_call`` or ``file_search_call`` item a call.
An answer passed through from a provider that bills so (:func:`shipped_prefix`) is tallied here
(:class:`CallTally`: a whole answer's output, or a stream's items as they pass, so a stream cut
before ``response.completed`` still bills the calls it showed), and ``billing.Pricer`` adds each
call's fee to the attempt's ``Usage.fees_uc`` at the price table's per-call price
(:func:`price_key`, unit ``call``; operators override it as any price), and a ``web_search`` call on
gpt-4o-mini or gpt-4.1-mini its fixed block of input tokens (:func:`block_tokens`) at the model's rate.
A budget holds the calls a request may make (:func:`held_fees`) at the same prices.

Every call item counts, whatever its ``action`` (``search``, ``open_page``, ``find_in_page``):
OpenAI's pricing does not say which actions it bills, and support has said one call may run
sub-searches the answer does not show, so the count is what the answer shows: a lower bound.

Gemini's grounding tools are billed so too (:class:`GroundingTally`): Google bills Grounding with
Google Search per grounded prompt on Gemini 2.5 and older and per search query on Gemini 3 and later
(:func:`per_query`), which the answer's ``groundingMetadata`` shows (``webSearchQueries``; a Maps
answer its ``maps`` grounding chunks), and ``usageMetadata`` counts none of it; a budget holds what
a request offering a grounding tool may run (:func:`held_grounding`). The shipped prices are
``gemini/<key>`` (:data:`SHIPPED`).
Stdlib only.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .toolchoice import allowed_entries

WEB_SEARCH, FILE_SEARCH = "web_search_call", "file_search_call"
CALL_ITEMS = (WEB_SEARCH, FILE_SEARCH)
# The price table's keys (shipped as ``openai/<key>``, unit ``call``): the GA ``web_search`` tool,
# $10 per 1,000 calls on every model; ``web_search_preview`` $25 per 1,000 on non-reasoning models
# (gpt-4o, gpt-4.1 families: their search content tokens are free), $10 on reasoning models
# (o-series, gpt-5); file search $2.50 per 1,000.
PREVIEW, PREVIEW_REASONING = "web_search_call/preview", "web_search_call/preview-reasoning"
# gpt-4o-mini and gpt-4.1-mini bill a ``web_search`` call's search content as a fixed block of 8,000
# input tokens (OpenAI's pricing page: "charged as a fixed block of 8,000 input tokens per call"), which
# their usage does not count; other models' search content tokens are in the usage's input tokens.
SEARCH_BLOCK_TOKENS = 8000
SEARCH_BLOCK_MODELS = re.compile(r"(?:gpt-4o-mini|gpt-4\.1-mini)(?:-\d{4}-\d{2}-\d{2})?")
# OpenAI's reasoning models, by the start of their names (but their ``-chat`` variants, which do not reason)
REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")
# Calls a budget holds for a search tool when ``max_tool_calls`` does not bound them (a guess, not
# a bound: the real count settles the hold), as ``estimate.WEB_SEARCHES_UNCAPPED`` is for Claude's.
CALLS_UNCAPPED = 10
MAX_CALLS = 10**6  # calls one answer is billed for at most (an absurd output stays a sane cost)
# Provider kind → the prefix of the price table's shipped per-call prices its calls are billed at.
SHIPPED = {"openai": "openai", "gemini": "gemini"}

# Gemini's grounding, by what Google bills (``gemini/<key>`` in the price table, unit ``call``):
# Search $35 per 1,000 grounded prompts (Gemini 2.5 and older), $14 per 1,000 search queries
# (Gemini 3 and later); Maps $25 per 1,000 grounded prompts (2.5), $14 per 1,000 queries (3).
GROUNDED_PROMPT, SEARCH_QUERY = "grounded_prompt", "search_query"
MAPS_PROMPT, MAPS_QUERY = "maps_grounded_prompt", "maps_query"
GROUNDING_ITEMS = (GROUNDED_PROMPT, SEARCH_QUERY, MAPS_PROMPT, MAPS_QUERY)
SEARCH_TOOLS = ("googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval")
MAPS_TOOLS = ("googleMaps", "google_maps")
GEMINI_GENERATION = re.compile(r"gemini-(\d+)")


def shipped_prefix(kind: str | None) -> str | None:
    """The prefix of the shipped per-call prices a provider of this kind is billed at (``openai``,
    ``gemini``); None: another kind's calls cost what an operator prices ``<provider>/<key>`` or a
    bare ``<key>`` at, else nothing here."""
    return SHIPPED.get(kind or "")


def _tool_types(body: Any) -> set[str]:
    tools = body.get("tools") if isinstance(body, dict) else None
    return {str(t.get("type")) for t in tools if isinstance(t, dict)} if isinstance(tools, list) else set()


def price_key(item_type: str, body: Any, model: str) -> str:
    """The price table key a call of ``item_type`` is billed at: a web search by the request's tool
    (``web_search_preview`` when it offered only that one) and, for the preview, by ``model``."""
    if item_type in (FILE_SEARCH, *GROUNDING_ITEMS):
        return item_type
    kinds = _tool_types(body)
    preview = any(k.startswith("web_search_preview") for k in kinds)
    general = any(k.startswith("web_search") and not k.startswith("web_search_preview") for k in kinds)
    if preview and not general:
        bare = model.rsplit("/", 1)[-1].lower()
        reasons = bare.startswith(REASONING_MODELS) and "-chat" not in bare  # gpt-5-chat-latest does not
        return PREVIEW_REASONING if reasons else PREVIEW
    return WEB_SEARCH


def block_tokens(key: str, model: str) -> int:
    """Input tokens a call billed at price ``key`` (:func:`price_key`) adds on ``model``: the fixed
    block of a GA ``web_search`` call on the two minis (:data:`SEARCH_BLOCK_MODELS`), else 0."""
    bare = model.rsplit("/", 1)[-1].lower()
    return SEARCH_BLOCK_TOKENS if key == WEB_SEARCH and SEARCH_BLOCK_MODELS.fullmatch(bare) else 0


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


def per_query(model: str) -> bool:
    """Google bills this model's grounding per query (Gemini 3 and later), not per grounded prompt;
    a name that does not say its generation (``gemini-flash-latest``) is held and billed as the
    current one (an answer names its model's version, ``modelVersion``, which is read first)."""
    found = GEMINI_GENERATION.search(model.rsplit("/", 1)[-1].lower())
    return found is None or int(found[1]) >= 3


def grounding_tools(body: Any) -> tuple[bool, bool]:
    """(Search, Maps): whether a generateContent body offers Google Search or Google Maps grounding
    (each ``tools[]`` entry is an object naming its tool by its one key, in either spelling)."""
    tools = body.get("tools") if isinstance(body, dict) else None
    names = {name for tool in tools if isinstance(tool, dict) for name in tool} if isinstance(tools, list) else set()
    return bool(names & set(SEARCH_TOOLS)), bool(names & set(MAPS_TOOLS))


class GroundingTally:
    """What Gemini grounded an answer with: each candidate's search queries (a stream may repeat its
    metadata: a query counts once a candidate, or as often as one chunk lists it) and whether it used
    Search or Maps at all."""

    def __init__(self) -> None:
        self._queries: dict[object, set[str]] = {}
        self._listed: dict[object, int] = {}
        self.searched = self.mapped = False

    def see(self, doc: Any) -> None:
        """One GenerateContentResponse (a whole answer, or a stream's chunk)."""
        candidates = doc.get("candidates") if isinstance(doc, dict) else None
        for position, candidate in enumerate(candidates if isinstance(candidates, list) else ()):
            meta = candidate.get("groundingMetadata") if isinstance(candidate, dict) else None
            if isinstance(meta, dict):
                self._see_meta(candidate.get("index", position), meta)

    def _see_meta(self, index: object, meta: dict) -> None:
        queries = meta.get("webSearchQueries")
        queries = [q for q in queries if isinstance(q, str)] if isinstance(queries, list) else []
        chunks = meta.get("groundingChunks")
        chunks = [c for c in chunks if isinstance(c, dict)] if isinstance(chunks, list) else []
        key = index if isinstance(index, int) else repr(index)[:20]
        self._queries.setdefault(key, set()).update(queries)
        self._listed[key] = max(self._listed.get(key, 0), len(queries))
        self.searched |= bool(queries) or any("web" in c for c in chunks)
        self.mapped |= any("maps" in c for c in chunks)

    def counts(self, model: str) -> dict[str, int]:
        """Billable items by price key: per grounded prompt (one a request) or per query, by ``model``."""
        found: dict[str, int] = {}
        if per_query(model):
            queries = sum(max(len(seen), self._listed.get(k, 0)) for k, seen in self._queries.items())
            if queries or self.searched:  # searched without listing its queries: one at least
                found[SEARCH_QUERY] = min(max(queries, 1), MAX_CALLS)
            if self.mapped:  # the answer does not list Maps' queries: one at least
                found[MAPS_QUERY] = 1
        else:
            found.update({GROUNDED_PROMPT: 1} if self.searched else {})
            found.update({MAPS_PROMPT: 1} if self.mapped else {})
        return found


def held_grounding(body: Any, model: str, fee_of: Callable[[str], int | None]) -> int:
    """What a budget holds for a generateContent body's grounding tools (µ¢): one grounded prompt
    each on a model billed so, else :data:`CALLS_UNCAPPED` queries each (nothing in Google's API
    bounds them: a guess the answer settles); a fee without a price holds nothing."""
    search, maps = grounding_tools(body)
    if per_query(model):
        items = [(SEARCH_QUERY, CALLS_UNCAPPED)] * search + [(MAPS_QUERY, CALLS_UNCAPPED)] * maps
    else:
        items = [(GROUNDED_PROMPT, 1)] * search + [(MAPS_PROMPT, 1)] * maps
    return sum((fee_of(key) or 0) * count for key, count in items)
