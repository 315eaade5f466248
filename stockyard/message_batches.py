"""Anthropic's Message Batches API: passed through to an Anthropic provider, owned by the key that made it.

``/v1/messages/batches`` (create, list), ``/v1/messages/batches/{id}`` (retrieve, delete),
``…/cancel`` and ``…/results`` skip the module chain, as OpenAI's files and batches do
(:mod:`stockyard.files_api`, whose :class:`~stockyard.files_api.ProviderCalls` and
:class:`~stockyard.files_api.Ownership` this reuses).

A new batch is checked before it goes anywhere: ``requests`` a list of 1 to ``MAX_REQUESTS``
items, each a unique ``custom_id`` and ``params`` (a Messages API body with ``model`` and
``max_tokens``, its numbers checked as ``/v1/messages`` checks them). Each request's model is
held to the key's allow-list and routed as ``/v1/messages`` would route it — the alias module
(when it runs for the key), a model's deployments (its Anthropic ones without a key of their
own), ``provider/model`` names, prefixes — and sent under the name routing gives it. Every
request must reach the same Anthropic-kind provider; one served by another kind is a 400. Under
a budget, the key must have some left and room for the batch's worst case: each request as a
budget reserves one ``/v1/messages`` call, at the batch price (``BATCH_PRICE``, half); a model
without a price is a 403 ``model_not_priced`` (``App.check_batch_budget``).

Each batch belongs to the key that created it (``owned_objects``, kind ``message_batch``);
another key gets the same 404 as for an id nobody has, and lists are the provider's pages
filtered to the key's own. Every MessageBatch answered carries a ``results_url`` at Stockyard
(the client's own host), whose results are relayed from the provider as they arrive. When a
batch is first seen ended, :class:`~stockyard.batch_costs.BatchCosts` reads its results once
and records its succeeded requests' usage at the batch price (``message_batches.usage``); a batch
deleted before that is recorded first, while its results still exist.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import Any, Callable, ContextManager
from urllib.parse import urlencode

from . import estimate
from .anthropic_models import list_page
from .batch_costs import BatchCosts, BatchOutput, anthropic_usage_of
from .budgets import dearer_mode, mode_refusal, server_tool_refusal
from .context import RequestContext, Route, claude_mode
from .deployments import Models
from .errors import ANTHROPIC, ProxyError, described
from .files_api import (
    BATCH_PRICE,
    MAX_LINE,
    Answer,
    BatchHold,
    LineTap,
    Ownership,
    ProviderCalls,
    id_action_endpoint,
    id_action_route,
    id_page_query,
    owner_of,
)
from .httpio import MAX_JSON_VALUES, Request, check_method, json_object, json_values
from .limits import Caps, check_request_numbers
from .modules.guard import batch_policy
from .objectrefs import ANTHROPIC_CONTAINER, ANTHROPIC_FILE, diagnosed_message, may_name, written_files
from .pdfpages import held_pdf_tokens
from .pricing import WEB_SEARCH_UC
from .providers import Provider
from .providers.anthropic import auth_headers, base_path
from .providers.anthropic import headers as anthropic_headers
from .providers.messages import THREAD_UNSUPPORTED
from .proxy import Reply, RequestPath, checked_model_name

log = logging.getLogger("stockyard.message_batches")
PATH = re.compile(r"^/v1/messages/batches(?:/([A-Za-z0-9_-]{1,200})(/cancel|/results)?)?$")
KIND = "message_batch"  # in owned_objects
KINDS = ("anthropic",)  # providers that serve message batches
ENDED = "ended"  # the processing_status of a batch that runs no more requests
MAX_REQUESTS = 100_000  # Anthropic's limit per batch
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
LIST_LIMITS = (20, 1000)  # (default, largest) page size, as Anthropic's
UPSTREAM = "/v1/messages/batches"
BASE_STATE = "public_base"  # ctx.state: the scheme and host the client reached Stockyard at
ALLOWED_METHODS = {
    (False, ""): ("GET", "POST"),
    (True, ""): ("GET", "DELETE"),
    (True, "/cancel"): ("POST",),
    (True, "/results"): ("GET",),
}


def route_of(path: str) -> tuple[str | None, str] | None:
    """(batch id or None, action) for a message batches path, or None."""
    return id_action_route(PATH, path)


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint: ``message_batches.create``, ``…results``, ``…cancel``, …"""
    return id_action_endpoint("message_batches", method, route_of(path))


def not_found(batch_id: str) -> ProxyError:
    """The 404 for an id, the same for one that does not exist and for another key's."""
    return ProxyError(404, f"No message batch found with id '{batch_id[:200]}'.", code="not_found")


def invalid(message: str, code: str = "invalid_request") -> ProxyError:
    return ProxyError(400, message, code=code)


def thread_in_batch(i: int) -> ProxyError:
    """A batch request's ``thread`` is refused as Anthropic refuses a request Threads cannot take
    (``details.error_code``): a batch's results come back long after, unread by the key's requests, so
    Stockyard could neither hold a continue to the key's own threads and their size nor record its reply."""
    param = f"requests.{i}.params.thread"
    message = f"{param}: message threads are not taken in a message batch; send the full conversation without 'thread'"
    return ProxyError(400, message, param=param, code=THREAD_UNSUPPORTED, details={"error_code": THREAD_UNSUPPORTED})


def anthropic_output(provider: Provider, batch_id: str) -> BatchOutput:
    """An ended message batch: its results (at the provider) hold what it cost."""
    return BatchOutput(
        batch_id,
        KIND,
        "message_batches.usage",
        ANTHROPIC,
        base_path(provider, f"{UPSTREAM}/{batch_id}/results"),
        lambda p: {"Accept": "*/*", **auth_headers(p)},
        anthropic_usage_of,
        {"message_batch_id": batch_id},
    )


class MessageBatches(ProviderCalls):
    """The message batches routes. ``check_budget(ctx, worst)`` refuses a batch to a key whose
    budget is used up or cannot take its worst case (None: a model without a price); ``room(ctx, total)``
    refuses one as soon as its running worst case is past what the budget has left (None: no budget
    counts the key's batches)."""

    def __init__(
        self,
        path: RequestPath,
        ownership: Ownership,
        models: Callable[[], Models],
        costs: BatchCosts,
        check_budget: Callable[..., BatchHold],
        room: Callable[[RequestContext, int], Callable[[int, int], None] | None],
        count: Callable[[str], None] = lambda name: None,
        parsing: Callable[[int, int], ContextManager[int]] = lambda values, size: contextlib.nullcontext(
            MAX_JSON_VALUES
        ),
    ) -> None:
        super().__init__(path, ownership)
        readers = path.settings.max_results_readers
        self._readers = Caps(readers, max(1, readers // 4))  # results read at once: in all, per key
        self._count = count  # a metric counted (``Metrics.count``): the readers refused
        self._models = models
        self._costs = costs
        self._check_budget = check_budget
        self._room = room  # App.batch_room: refuses a running worst case past what the budgets have left
        self._parsing = parsing  # room to parse a batch of more values than other bodies (App.parsing)

    # -- where calls go -----------------------------------------------------------------------
    def _target(self, provider: Provider, rest: str, query: dict[str, str] | None) -> str:
        return base_path(provider, rest) + (f"?{urlencode(query)}" if query else "")

    def _headers(self, ctx: RequestContext, provider: Provider, rest: str) -> dict[str, str]:
        """The provider's key and version (the client's ``anthropic-version`` and ``anthropic-beta``
        passed on, checked); results are JSONL, not JSON."""
        sent = anthropic_headers(provider, ctx, native=True)
        sent["Accept"] = "*/*" if rest.endswith("/results") else "application/json"
        return sent

    # -- the routes ---------------------------------------------------------------------------
    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        method = req.method
        found = route_of(req.path)
        assert found is not None
        batch_id, action = found
        allowed = ALLOWED_METHODS[(batch_id is not None, action)]
        check_method(method, allowed)
        self._rate_limit(ctx)  # the key's rpm, as for OpenAI's files and batches
        raw = req.body  # a GET's empty body too: the read deadline ends, a long download is not cut
        if batch_id is None:
            if method == "GET":
                return self._list(reply, ctx, req.query)
            return self._create(reply, ctx, raw)
        owned, provider = self._owned(ctx, batch_id, KIND, not_found(batch_id))
        rest = f"{UPSTREAM}/{batch_id}{action}"
        if action == "/results":
            return self._results(reply, ctx, provider, rest, owned.key_id, batch_id)
        if method == "DELETE" and not owned.billed:
            self._record_before_delete(ctx, provider, batch_id)
        answer, doc = self._call(ctx, provider, method, rest)
        if answer.status < 300 and method == "DELETE":
            self.ownership.forget(batch_id)
        elif answer.status < 300 and isinstance(doc, dict):
            self._see(ctx, provider, doc)
            self._show(ctx, answer, doc)
        self._send(reply, ctx, answer)

    # -- create ---------------------------------------------------------------------------------
    def _create(self, reply: Reply, ctx: RequestContext, raw: bytes) -> None:
        """A new batch, parsed and checked with room held for its values: Anthropic's 100,000 requests
        are more than the million values another body may hold."""
        ctx.raw = raw
        with self._parsing(json_values(raw), len(raw)) as most:
            self._create_parsed(reply, ctx, raw, json_object(raw, max_values=most))

    def _create_parsed(self, reply: Reply, ctx: RequestContext, raw: bytes, body: dict) -> None:
        requests = body.get("requests")
        if not isinstance(requests, list):
            raise invalid("requests: must be a list of {custom_id, params} objects")
        if not requests:
            raise invalid("requests: must hold at least 1 request")
        if len(requests) > MAX_REQUESTS:
            raise invalid(f"requests: a batch holds at most {MAX_REQUESTS:,} requests; this one has {len(requests):,}")
        provider: Provider | None = None
        worst: int | None = 0
        changed = False
        seen: set[str] = set()
        models: list[str] = []
        # one too large for what is left: the 429 at the request that passes it (None: no budget counts
        # the key's batches, which are not priced)
        past = self._room(ctx, len(requests))
        budgeted = past is not None
        if budgeted:  # used up: the 429 before 100,000 requests are checked, routed and priced (3 s of CPU)
            self._check_budget(ctx, 0)
        policy = batch_policy(self._path.chain(), ctx)  # guard's model lists, as /v1/messages judges them
        for i, item in enumerate(requests):
            params = self._checked(item, i, seen)
            where = f"requests.{i}.params: "
            # the container and files it names: the key's own (open mode: one owner, the container's shape alone)
            self.ownership.require_anthropic_container(params, None if ctx.key is None else owner_of(ctx), where)
            pages = {}  # the pages of the PDFs it names by file id that Stockyard counted (a budget holds them)
            if ctx.key is not None:
                pages = self.ownership.require_anthropic_files(params, owner_of(ctx), where)
            unbounded = estimate.unbounded_server_tools(params) if budgeted else None
            if unbounded is not None:  # as /v1/messages refuses it under a budget
                raise server_tool_refusal(unbounded, "this key", f"requests.{i}.params.")
            asked = params["model"]
            route = self._route(ctx, asked, i, provider, policy)
            # a dearer mode is held at its rate (its results are billed at it), refused unpriced
            mode = claude_mode(params.get("speed"), params.get("inference_geo")) if budgeted else None
            dearer = dearer_mode(params) if budgeted else None
            if dearer is not None and self._path.pricer.price_of(route, asked, mode) is None:
                raise mode_refusal(dearer, params[dearer], "this key", f"requests.{i}.params.")
            provider = route.provider
            if route.model != asked:
                params["model"] = route.model
                changed = True
            if check_numbers(params, i):
                changed = True
            if asked not in models and len(models) < 20:
                models.append(asked)
            if worst is not None and past is not None:  # else no budget reads it: 40% of a batch's checks
                cost = self._request_cost(ctx, route, asked, params, mode, pages)
                worst = None if cost is None else worst + cost
                if worst is not None:
                    past(worst, i + 1)
        assert provider is not None
        ctx.model = ",".join(models)[:200]
        hold = self._check_budget(ctx, worst, priced=budgeted)  # a budget set meanwhile: not held at 0
        sent = json.dumps(body, ensure_ascii=False).encode() if changed else raw
        answer, batch = self._create_upstream(ctx, provider, UPSTREAM, sent, KIND, hold)
        if batch is not None:
            self._see(ctx, provider, batch)
            self._show(ctx, answer, batch)
        self._send(reply, ctx, answer)

    @staticmethod
    def _checked(item: Any, i: int, seen: set[str]) -> dict:
        """One request's shape: a unique ``custom_id`` and ``params`` with ``model`` and ``max_tokens``."""
        if not isinstance(item, dict):
            raise invalid(f"requests.{i}: must be an object with custom_id and params")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise invalid(f"requests.{i}.custom_id: must be 1 to 64 letters, digits, '-' or '_'")
        if custom_id in seen:
            raise invalid(f"requests.{i}.custom_id: {custom_id!r} is used twice; each request needs its own")
        seen.add(custom_id)
        params = item.get("params")
        if not isinstance(params, dict):
            raise invalid(f"requests.{i}.params: must be an object (a Messages API request)")
        model = params.get("model")
        if not isinstance(model, str) or not model.strip():
            raise invalid(f"requests.{i}.params.model: is required and must be a non-empty string")
        try:
            checked_model_name(model)  # as /v1/messages checks it
        except ProxyError as exc:
            raise invalid(f"requests.{i}.params.model: {exc.message}", exc.code or "invalid_model") from None
        if "max_tokens" not in params or params["max_tokens"] is None:
            raise invalid(f"requests.{i}.params.max_tokens: is required")
        if params.get("thread") is not None:
            raise thread_in_batch(i)
        try:
            named = diagnosed_message(params)
        except ProxyError as exc:
            raise invalid(f"requests.{i}.params.{exc.message}") from None
        if named is not None:
            raise invalid(
                f"requests.{i}.params.diagnostics.previous_message_id: a message batch's request may not name a "
                "reply to compare with (its answer comes back long after, unchecked); send null or leave it off"
            )
        return params

    def _route(
        self,
        ctx: RequestContext,
        asked: str,
        i: int,
        batch_provider: Provider | None,
        policy: Callable[[str, str], ProxyError | None] | None,
    ) -> Route:
        """Where ``/v1/messages`` would send this model, and under which name: the key's allow-list,
        the alias module, the model's deployments, the registry, guard's model lists (``policy``,
        ``modules.guard.batch_policy``). Every request of a batch goes to the same Anthropic-kind provider."""
        registry = self._path.registry()
        key = ctx.key
        if key is not None and not key.allows_model(asked, registry.routes_to):
            raise ProxyError(
                403,
                f"requests.{i}.params.model: client key {key.prefix}… may not use model {asked[:100]!r}",
                code="model_not_allowed",
            )
        name = self._aliased(ctx, asked)
        route = self._models().get(name)
        if route is not None and (route.deployments or route.problems):
            usable = [d for d in route.deployments if d.provider.kind in KINDS and not d.own_key]
            if not usable:
                raise invalid(
                    f"requests.{i}.params.model: {asked[:100]!r} is served by deployments none of which can "
                    "take a message batch (one at an Anthropic provider, with the provider's own key)",
                    "model_not_batchable",
                )
            here = [d for d in usable if batch_provider is not None and d.provider.name == batch_provider.name]
            chosen = min(here or usable, key=lambda d: d.priority)
            found = Route(registry.by_name.get(chosen.provider.name, chosen.provider), chosen.upstream_model)
        else:
            try:
                found = Route(*registry.resolve(name))
            except ProxyError as exc:
                raise invalid(f"requests.{i}.params.model: {exc.message}", exc.code or "model_not_routable") from None
        refusal = policy(found.provider.name, found.model) if policy is not None else None
        if refusal is not None:
            raise ProxyError(403, f"requests.{i}.params.model: {refusal.message}", code=refusal.code)
        if found.provider.kind not in KINDS:
            raise invalid(
                f"requests.{i}.params.model: {asked[:100]!r} is served by provider {found.provider.name!r} "
                f"({found.provider.kind}); message batches run at an Anthropic provider only",
                "provider_not_batchable",
            )
        if batch_provider is not None and found.provider.name != batch_provider.name:
            raise invalid(
                f"requests.{i}.params.model: {asked[:100]!r} is served by provider {found.provider.name!r}, the "
                f"batch's earlier requests by {batch_provider.name!r}; a batch goes to one provider",
                "mixed_providers",
            )
        return found

    def _aliased(self, ctx: RequestContext, model: str) -> str:
        """The model the alias module renames ``model`` to for this key (itself when none)."""
        for module in self._path.chain().modules:
            if module.name == "alias":
                one = RequestContext("messages", ANTHROPIC, ctx.client_addr, {})
                one.key, one.key_id, one.project, one.model = ctx.key, ctx.key_id, ctx.project, model
                module.before(one)
                return one.routed_model or model
        return model

    def _request_cost(
        self,
        ctx: RequestContext,
        route: Route,
        asked: str,
        params: dict,
        mode: str | None = None,
        pages: dict[str, int] | None = None,
    ) -> int | None:
        """One request's worst case as a budget reserves a ``/v1/messages`` call: its tokens (its PDFs'
        pages too, ``pdfpages.held_pdf_tokens``: ``pages`` of those it names by file id) at the
        batch price in ``mode`` (a budgeted key's dearer one), rounded up, and its web searches' fee
        whole, as ``BatchTotal`` bills them (None: its model has no price in tokens)."""
        price = self._path.pricer.price_of(route, asked, mode)
        if price is None or price.unit != "token":
            return None
        one = RequestContext("messages", ANTHROPIC, ctx.client_addr, {})
        one.body, one.raw = params, json.dumps(params, ensure_ascii=False).encode()
        image = price.image_input_tokens or estimate.IMAGE_INPUT_TOKENS
        pdfs = held_pdf_tokens(params, one.raw, route.model, image, False, pages)
        each = estimate.inline_each(price, route.provider.kind, route.model)  # an image sent inline, as one image
        dmt = self._path.settings.default_max_tokens
        tokens = estimate.request_cost(one, price, dmt, call_fees=0, media=pdfs, each=each)
        part, whole = BATCH_PRICE
        return -(-tokens * part // whole) + estimate.web_searches(params) * WEB_SEARCH_UC  # searches billed whole

    # -- list -----------------------------------------------------------------------------------
    def _list(self, reply: Reply, ctx: RequestContext, query: dict[str, str]) -> None:
        """The provider's list, filtered to this key's batches, paged honestly in either direction
        (``after_id`` older, ``before_id`` newer): ``limit`` of them, ``has_more`` when the
        provider holds more of the key's that way (or was not read to its end)."""
        limit, before, after = id_page_query(query, *LIST_LIMITS)
        provider = self.provider_of_kind(ctx, KINDS, "Anthropic", "message batches need an Anthropic provider")
        answer, found, has_more = self._id_page(ctx, provider, UPSTREAM, KIND, limit, before, after)
        if found is None:  # the provider's failure, as it came
            return self._send(reply, ctx, answer)
        for batch in found:
            self._see(ctx, provider, batch)
            self._public(ctx, batch)
        self._replace(ctx, answer, list_page(found, has_more))
        self._send(reply, ctx, answer)

    # -- what a batch looks like, and what it cost ------------------------------------------------
    def _public(self, ctx: RequestContext, batch: dict) -> None:
        """Its ``results_url`` at Stockyard, where the client reached it (never the provider's)."""
        if batch.get("results_url") and isinstance(batch.get("id"), str):
            base = ctx.state.get(BASE_STATE) or "http://127.0.0.1"
            batch["results_url"] = f"{base}{UPSTREAM}/{batch['id']}/results"

    def _show(self, ctx: RequestContext, answer: Answer, batch: dict) -> None:
        self._public(ctx, batch)
        self._replace(ctx, answer, batch)

    def _see(self, ctx: RequestContext, provider: Provider, batch: dict) -> None:
        """A batch its owner is looking at: one that ended goes to the cost recorder (once)."""
        batch_id = batch.get("id")
        if batch.get("processing_status") != ENDED or not isinstance(batch_id, str):
            return
        owned = self.ownership.find(batch_id, KIND, owner_of(ctx))
        if owned is not None and not owned.billed:
            self._costs.ended(ctx, provider, anthropic_output(provider, batch_id))

    def _results(
        self, reply: Reply, ctx: RequestContext, provider: Provider, rest: str, owner: str, batch_id: str
    ) -> None:
        """Relay the results, claiming what their lines name (:class:`ResultsClaims`), while one of
        the ``STOCKYARD_MAX_RESULTS_READERS`` slots is this reader's (a key holds a quarter of them):
        each reader may hold a line of up to ``MAX_LINE`` and its parse. Past them the client is
        refused at once, as connections past their caps are (429 past its key's share, 503
        ``overloaded_error`` past the whole, both with Retry-After; the SDKs retry them; counted in
        ``results_readers_refused_total``), rather than waiting with its connection and thread held."""
        holder = owner if ctx.key is not None else None  # open mode: one owner, held to the whole only
        refused = self._readers.take(holder)
        if refused is not None:
            self._count("results_readers_refused_total")
            why = "this key's share of" if refused == 429 else "all"
            raise ProxyError(
                refused,
                f"{why} the batch results downloads this server reads at once are in progress; try again shortly",
                code="too_many_results_readers",
                headers={"Retry-After": "1"},
            )
        try:
            claims = ResultsClaims(self.ownership, owner, provider.name, batch_id)
            self._relay(reply, ctx, provider, rest, LineTap(claims.lines, claims.too_long))
        finally:
            self._readers.give(holder)

    def _record_before_delete(self, ctx: RequestContext, provider: Provider, batch_id: str) -> None:
        """A batch deleted before its cost was recorded: record it now, while its results exist
        (an unended one the provider refuses to delete)."""
        answer, doc = self._call(ctx, provider, "GET", f"{UPSTREAM}/{batch_id}")
        if answer.status == 404:
            return  # gone at the provider: nothing to record, and its delete answers the same
        if answer.status >= 300 or not isinstance(doc, dict) or doc.get("id") != batch_id:
            # Fail closed: deleting a batch whose state is unknown could delete unbilled results.
            raise ProxyError(
                502,
                f"the batch's state could not be read from the provider (status {answer.status}), so its cost "
                "might be lost with it; nothing was deleted; try again",
                code="batch_cost_unrecorded",
            )
        if doc.get("processing_status") != ENDED:
            return
        try:
            self._costs.record_now(ctx, provider, anthropic_output(provider, batch_id))
        except Exception as exc:  # the provider did not hand the results over: nothing is deleted
            raise ProxyError(
                502,
                f"the batch's cost could not be recorded before deleting it ({self._path.scrub.text(str(exc))[:200]}); "
                "try again",
                code="batch_cost_unrecorded",
            ) from None

    def look_at_batch(self, ctx: RequestContext, provider: Provider, batch_id: str) -> str | None:
        """Retrieve a batch for its owner without a client (the batch watch): its processing
        status, or None when the provider did not answer with it."""
        answer, doc = self._call(ctx, provider, "GET", f"{UPSTREAM}/{batch_id}")
        if answer.status >= 300 or not isinstance(doc, dict) or doc.get("id") != batch_id:
            return None
        self._see(ctx, provider, doc)
        status = doc.get("processing_status")
        return status if isinstance(status, str) else None


class ResultsClaims:
    """What one download of a batch's results claims for the batch's owner: the files and containers
    its lines name (what the code execution tool wrote and ran in for the batch's requests), before
    the lines reach the client, as a plain answer's are — only those no key owns yet
    (``Ownership.claim_new``).

    A claim the database refuses (locked past the busy timeout, PostgreSQL gone, a read-only file) is
    skipped, never the download: the results are the client's data, the provider's to give again,
    and an id left unclaimed is only the 404 of an id no key holds through Stockyard (never another
    key's) until the results are read again, which claims it then. One log line names the batch and
    the failure; the rest of this download claims nothing more (each claim would wait out the busy
    timeout again, stalling the download). A line too long to read (``MAX_LINE``) claims nothing
    either: logged once a download, without its text."""

    def __init__(self, ownership: Ownership, owner: str, provider: str, batch_id: str) -> None:
        self._ownership, self._owner, self._provider, self._batch_id = ownership, owner, provider, batch_id
        self._failed = False
        self._long_logged = False

    def lines(self, lines: list[bytes]) -> None:
        if self._failed:
            return
        files: set[str] = set()
        containers: set[str] = set()
        for line in lines:
            named = made_objects(line)
            if named is not None:
                files |= named[0]
                containers |= named[1]
        try:
            if files:
                self._ownership.claim_new(files, ANTHROPIC_FILE, self._owner, self._provider)
            if containers:
                self._ownership.claim_new(containers, ANTHROPIC_CONTAINER, self._owner, self._provider)
        except Exception as exc:  # the database's failure: the download goes on unclaimed
            self._failed = True
            log.warning(
                "message batch %s: the files and containers its results name are left unclaimed in this "
                "download (%s); reading the results again claims them",
                self._batch_id,
                described(exc),
            )

    def too_long(self) -> None:
        if not self._long_logged:
            self._long_logged = True
            log.warning(
                "message batch %s: a results line is too long to read (over %d bytes): relayed, nothing it "
                "names claimed",
                self._batch_id,
                MAX_LINE,
            )


def check_numbers(params: dict, i: int) -> bool:
    """A request's token cap and counts, checked as ``/v1/messages`` checks them (True: rewritten)."""
    try:
        return check_request_numbers(params)
    except ProxyError as exc:
        raise ProxyError(400, f"requests.{i}.params: {exc.message}", code=exc.code) from None


def made_objects(line: bytes) -> tuple[set[str], set[str]] | None:
    """(files, containers) a result line's answer names: a ``succeeded`` result's message, the files
    its code execution results name (``objectrefs.written_files``) and its ``container``; None for a
    line that can name neither (most lines are not walked: ``may_name``) or is no result — or is
    nested past the parser's depth (a tool call's input the client's prompt shaped): it names
    nothing, rather than cut the relay short."""
    if not (may_name(line, b"file_id") or b"container" in line):
        return None
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    result = doc.get("result") if isinstance(doc, dict) else None
    message = result.get("message") if isinstance(result, dict) and result.get("type") == "succeeded" else None
    if not isinstance(message, dict):
        return None
    container = message.get("container")
    found = container.get("id") if isinstance(container, dict) else None
    return written_files(message.get("content")), ({found} if isinstance(found, str) and found else set())
