"""OpenAI's Videos API (Sora): passed through to an OpenAI-kind provider, owned per key, billed once.

``POST /v1/videos`` (JSON, or the SDKs' multipart form with an ``input_reference`` image) starts a
job at the provider, which bills it per second of the video it makes, at its model's and size's
rate (``sora-2/720x1280`` … in the price table, unit ``second``). A video is the key's that made
it (``owned_objects``, kind ``video``; open mode has one owner, ``''``): another key gets OpenAI's
404 for it, the provider unasked, and lists are the provider's pages filtered to the key's videos.
A remix (``POST /v1/videos/{id}/remix``) is a new video of the key's, at its source's terms.

The create holds its worst case — its ``seconds`` (OpenAI's default 4) × the rate — against the
key's and its project's budgets, as a batch does (``App.check_batch_budget``; a model without a
price is refused under a budget), after the key's rate limit, its model allow-list and guard's
model lists; and, where the create names an end user (``attribution``) and ``userlimits`` runs for
it, against that end user's budget too, counted in the end user's rpm (``with_user_hold``). A
create's model goes out renamed by ``alias``, held and billed at its target. Its own trace costs 0:
the job has made nothing yet. When Stockyard first sees the job
end (a retrieve, a list, the retrieve a delete makes first, or the batch watch's look at one nobody
asks about), one ``videos.usage`` trace bills what the provider bills — a completed video its
``seconds`` at the rate, a failed one nothing — written in the transaction that marks it billed
(``batch_costs.bill_once``): however many retrieves, lists and replicas race, it is billed once,
and its cost then replaces its hold. Content (``/content?variant=video|thumbnail|spritesheet``) is
relayed chunk by chunk, never held whole.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import partial
from typing import Any, Callable

from .attribution import attribute
from .batch_costs import bill_once, settle_billed
from .context import RequestContext, Route
from .errors import OPENAI, ProxyError
from .files_api import (
    OBJECT_ID,
    BatchHold,
    BatchSpend,
    Ownership,
    ProviderCalls,
    allowed_providers,
    id_action_endpoint,
    id_action_route,
    not_found,
    owner_of,
    page_limit,
)
from .httpio import DuplicateMember, Request, check_method, json_object, unique_members
from .metrics import Metrics
from .modules.alias import Alias
from .modules.guard import batch_policy
from .modules.userlimits import KnownHold, UserLimitsModule
from .objectrefs import referenced_files
from .pricing import Price, Usage, unit_cost
from .providers import Provider
from .proxy import Reply, RequestPath
from .store import Store

KIND = "video"  # in owned_objects
PATH = re.compile(rf"^/v1/videos(?:/{OBJECT_ID}(/content|/remix)?)?$")
ENDED = ("completed", "failed")  # a job in one of these makes no more video
DEFAULTS = {"model": "sora-2", "seconds": "4", "size": "720x1280"}  # OpenAI's, for a create that omits them
MAX_SECONDS = 600  # a clip longer than this is no video OpenAI makes (4 to 20 s today): a 400, not a hold
VARIANTS = ("video", "thumbnail", "spritesheet")
UNSERVED = ("edits", "extensions", "characters")  # OpenAI's other video routes, not passed through
VIDEO_KINDS = ("openai", "openai-compatible")  # providers with OpenAI's /videos (Azure's video API is another)
LOST_LOOK = 20  # the provider's newest videos searched for one whose create answer was lost
LIST_LIMITS = (20, 100)  # (default, largest) page size
SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # sora-2-2025-10-06: priced as sora-2
REFERENCE_FIELD = {"input_reference[file_id]": "input_reference"}  # the param a form's refusal names
CheckBudget = Callable[[RequestContext, "int | None"], BatchHold]
LOWER_VIDEO = "lower its seconds, choose a smaller size or a cheaper model, or raise the budget"  # a refusal's hint


def route_of(path: str) -> tuple[str | None, str] | None:
    """(video id, action: ``""``, ``/content`` or ``/remix``) for a videos path, or None."""
    return id_action_route(PATH, path)


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint: ``videos.create``, ``videos.content``, ``videos.remix``, …"""
    return id_action_endpoint("videos", method, route_of(path))


def allowed_methods(video_id: str | None, action: str) -> tuple[str, ...]:
    if video_id is None:
        return ("GET", "POST")
    return {"": ("GET", "DELETE"), "/content": ("GET",), "/remix": ("POST",)}[action]


def video_price(pricer: Any, provider: Provider, model: str, size: str) -> Price | None:
    """The per-second price of ``model`` at ``size`` (a dated snapshot at its model's), or None."""
    for name in dict.fromkeys((model, SNAPSHOT.sub("", model))):
        price = pricer.price_of(Route(provider, f"{name}/{size}"), f"{name}/{size}")
        if price is not None:
            return price if price.unit == "second" else None
    return None


def invalid(param: str, message: str) -> ProxyError:
    return ProxyError(400, message, param=param, code="invalid_value")


def create_terms(fields: Callable[[str], object]) -> tuple[str, int, str]:
    """(model, seconds, size) a create asks for (OpenAI's defaults for those it leaves out), read
    as a budget must hold them; a value that is not one is a 400. The provider judges the rest."""
    model, seconds, size = (fields(name) for name in ("model", "seconds", "size"))
    model = DEFAULTS["model"] if model is None else model
    size = DEFAULTS["size"] if size is None else size
    if not isinstance(model, str) or not model or len(model) > 200:
        raise invalid("model", "'model' must be a video model's name, such as sora-2")
    if not isinstance(size, str) or not size or len(size) > 40:
        raise invalid("size", "'size' must be a resolution such as 720x1280")
    text = DEFAULTS["seconds"] if seconds is None else str(seconds) if isinstance(seconds, int) else seconds
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or not 0 < int(text[:6]) <= MAX_SECONDS:
        raise invalid("seconds", f"'seconds' must be a whole number of seconds from 1 to {MAX_SECONDS}, such as \"4\"")
    return model, int(text), size


def with_user_hold(hold: BatchHold, user: KnownHold | None) -> BatchHold:
    """The key's hold of a new video with its end user's beside it: recorded with the video
    (``held_user``), made spend in the same transaction, given back with it when none was made,
    replaced by its cost when it is billed (``batch_costs.bill_once``)."""
    if user is None:
        return hold
    recorded: list[bool] = []
    key_end_in = hold.end_in

    def end_in(conn: Any) -> Callable[[], None]:
        done = [key_end_in(conn)] if key_end_in is not None else []
        done.append(user.end_in(conn))

        def committed() -> None:
            recorded.append(True)
            for call in done:
                call()

        return committed

    def end(created: bool) -> None:
        hold.end(created)
        if not recorded:
            user.end(created)

    return dataclasses.replace(hold, end=end, user_scope=user.budget.scope, user_held_uc=user.held_uc, end_in=end_in)


def referenced_file(reference: object) -> str | None:
    """The file an ``input_reference`` names by id (``{"file_id": …}``, as JSON or a form's JSON
    text), or None: the provider would read any key's file. JSON text naming a member twice is a
    400, as a body is (``httpio.unique_members``): the provider's parser may read the other one."""
    if isinstance(reference, str) and reference.lstrip().startswith("{"):
        try:
            reference = json.loads(reference, object_pairs_hook=unique_members)
        except DuplicateMember as exc:
            message = f"'input_reference' names {exc.name[:64]!r} twice in one object; send each name once"
            raise ProxyError(400, message, param="input_reference", code="duplicate_key") from None
        except ValueError:
            return None
    file_id = reference.get("file_id") if isinstance(reference, dict) else None
    return None if file_id is None else str(file_id)


def asked_of(prompt: object, terms: tuple[str, int, str]) -> dict:
    """What a create asks, as the video it makes shows it: to tell it among the provider's videos."""
    _, seconds, size = terms
    return {"prompt": prompt, "size": size, "seconds": str(seconds), "remixed_from_video_id": None}


class VideosAPI(ProviderCalls):
    """The ``/v1/videos`` routes; a new video or a list goes to the provider a new file would
    (``choose_provider``), a video's later calls to the provider recorded with it."""

    serves = "videos"
    creates = "video"

    def __init__(
        self,
        path: RequestPath,
        ownership: Ownership,
        check_budget: CheckBudget,
        store: Store,
        metrics: Metrics,
        settle: BatchSpend,
    ) -> None:
        super().__init__(path, ownership)
        self._check_budget = check_budget  # App.check_batch_budget: reserves a worst case, or refuses
        self._store = store
        self._metrics = metrics
        self._settle = settle  # App.batch_spend: a bill replacing a hold on the owner's budgets

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        found = route_of(req.path)
        assert found is not None
        video_id, action = found
        if video_id in UNSERVED and not action:
            raise ProxyError(
                404,
                f"/v1/videos/{video_id} (OpenAI's video {video_id}) is not served through Stockyard: "
                "only create, list, retrieve, delete, content and remix are",
                code="unknown_url",
            )
        check_method(req.method, allowed_methods(video_id, action))
        self._rate_limit(ctx)  # before the body is read and before any provider call
        if video_id is None:
            if req.method == "GET":
                req.body  # noqa: B018 - the read deadline ends
                return self._list(reply, ctx, req.query)
            return self._create(reply, ctx, req)
        _, provider = self._owned(ctx, video_id, KIND, not_found(KIND, video_id))
        rest = f"/videos/{video_id}"
        if action == "/remix":
            return self._remix(reply, ctx, req, provider, video_id)
        req.body  # noqa: B018 - a GET's empty body too: the read deadline ends, a long download is not cut
        if action == "/content":
            variant = req.query.get("variant")
            if variant is not None and variant not in VARIANTS:
                raise invalid("variant", f"'variant' must be one of {', '.join(VARIANTS)}")
            return self._relay(reply, ctx, provider, rest + action, query={"variant": variant} if variant else None)
        if req.method == "DELETE":
            self._look_before_delete(ctx, provider, video_id)
        answer, doc = self._call(ctx, provider, req.method, rest)
        if answer.status < 300 and req.method == "DELETE":
            self.ownership.forget(video_id)
        elif answer.status < 300 and isinstance(doc, dict):
            ctx.model = doc.get("model") if isinstance(doc.get("model"), str) else None  # the trace's
            self._seen(ctx, provider, doc)
        self._send(reply, ctx, answer)

    def choose_provider(self, ctx: RequestContext) -> Provider:
        """For a new video or a list: ``x-stockyard-provider`` if given, else the key's first provider
        of :data:`VIDEO_KINDS`."""
        return self.provider_of_kind(ctx, VIDEO_KINDS, "OpenAI", "videos need an OpenAI or OpenAI-compatible provider")

    # -- creates -------------------------------------------------------------------------------
    def _create(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        """``POST /v1/videos``: its terms held to the key's models, guard's lists and its budget
        before the provider makes anything; the form's file spooled and relayed, never held whole."""
        provider = self.choose_provider(ctx)
        if req.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            with req.upload() as upload:
                ctx.raw = json.dumps(upload.metadata()).encode()
                upload.refuse_repeated()
                upload.refuse_stray_files(("input_reference",))
                named = referenced_file(upload.get("input_reference"))  # its JSON text; its [file_id] is a field
                self.ownership.require_files([named] if named else [], owner_of(ctx), "input_reference")
                self.ownership.check_form_files(upload.fields, owner_of(ctx), REFERENCE_FIELD)
                ctx.body = dict(upload.fields)  # its ``user`` names the end user, as a JSON body's does
                attribute(ctx)
                asked_terms = create_terms(upload.get)
                provider, terms = self._aliased(ctx, provider, asked_terms)
                hold = self._hold(ctx, provider, terms, asked_terms[0])
                form = upload.encode(None if terms == asked_terms else {"model": terms[0]})
                asked = asked_of(upload.get("prompt"), terms)
                self._start(reply, ctx, provider, "/videos", hold, form, asked, form.content_type, form.length)
            return
        body = json_object(req.body)
        ctx.raw, ctx.body = req.body, body
        attribute(ctx)
        self.require_body_files(body, owner_of(ctx))
        asked_terms = create_terms(body.get)
        provider, terms = self._aliased(ctx, provider, asked_terms)
        hold = self._hold(ctx, provider, terms, asked_terms[0])
        sent = req.body if terms == asked_terms else json.dumps({**body, "model": terms[0]}).encode()
        self._start(reply, ctx, provider, "/videos", hold, sent, asked_of(body.get("prompt"), terms))

    def require_body_files(self, body: dict, owner: str) -> None:
        """A JSON create's files are the key's: its ``input_reference`` (an object or its JSON
        text), then every other ``file_id`` it holds (a top-level one too): the provider would
        read any key's. Each id looked up once."""
        named = referenced_file(body.get("input_reference"))
        self.ownership.require_files([named] if named else [], owner, "input_reference")
        others = referenced_files({k: v for k, v in body.items() if k != "input_reference"}) - {named}
        self.ownership.require_files(sorted(others), owner, "file_id")

    def _remix(self, reply: Reply, ctx: RequestContext, req: Request, provider: Provider, video_id: str) -> None:
        """``POST /v1/videos/{id}/remix``: a new video at its source's model, size and seconds, which
        the source (retrieved first; an ended one is billed as any look bills it) says."""
        body = json_object(req.body)
        ctx.body = body
        attribute(ctx)  # before the source's look: a bad ``user`` is a 400 with nothing asked
        answer, source = self._call(ctx, provider, "GET", f"/videos/{video_id}")
        if answer.status >= 300 or not isinstance(source, dict):
            return self._send(reply, ctx, answer)
        self._seen(ctx, provider, source)
        ctx.raw = req.body
        terms = create_terms(source.get)
        hold = self._hold(ctx, provider, terms, terms[0])
        asked = {**asked_of(body.get("prompt"), terms), "remixed_from_video_id": video_id}
        self._start(reply, ctx, provider, f"/videos/{video_id}/remix", hold, req.body, asked)

    def _aliased(
        self, ctx: RequestContext, provider: Provider, terms: tuple[str, int, str]
    ) -> tuple[Provider, tuple[str, int, str]]:
        """The provider and terms a create goes out with: its model renamed by the ``alias`` module,
        as a chat call's is (a split's pick too); a target ``provider/model`` naming a configured
        provider goes to that provider, which must be one of the key's that serve videos."""
        module = self._path.chain().module("alias", ctx)
        if not isinstance(module, Alias):
            return provider, terms
        ctx.model = terms[0]
        module.before(ctx)
        target = ctx.routed_model or terms[0]
        head, sep, rest = target.partition("/")
        registry = self._path.registry()
        named = registry.by_name.get(head) if sep and rest else None
        if named is not None:
            if named not in allowed_providers(registry, ctx.key, VIDEO_KINDS):
                raise ProxyError(
                    403,
                    f"model {terms[0]!r} is an alias of {target!r}, at a provider this key may not make videos with",
                    param="model",
                    code="provider_not_allowed",
                )
            provider, target = named, rest
        return provider, (target, *terms[1:])

    def _hold(self, ctx: RequestContext, provider: Provider, terms: tuple[str, int, str], asked: str) -> BatchHold:
        """The key's model allow-list (for the model ``asked``, as the gate checks a chat call's) and
        guard's lists (for the model that goes out too), then the worst case reserved on the key's
        budgets and the end user's (a 429 when it does not fit; a 403 for a model without a price
        under a budget); the end user's rpm counted (``userlimits``)."""
        model, seconds, size = terms
        ctx.model = asked  # the trace's, as asked; an alias's target goes out
        key = ctx.key
        if key is not None and not key.allows_model(f"{provider.name}/{asked}", self._path.registry().routes_to):
            raise ProxyError(
                403, f"client key {key.prefix}… may not use model {asked!r}", param="model", code="model_not_allowed"
            )
        policy = batch_policy(self._path.chain(), ctx)
        refusals = [policy(provider.name, name) for name in dict.fromkeys((asked, model))] if policy else []
        for refusal in refusals:
            if refusal is not None:
                raise refusal
        price = video_price(self._path.pricer, provider, model, size)
        worst = None if price is None else unit_cost(price, seconds)
        self._check_budget(ctx, 0)  # used up: 429 first
        hold = self._check_budget(ctx, worst)
        try:
            held = with_user_hold(hold, self._user_hold(ctx, worst))
            return dataclasses.replace(held, end_user=ctx.end_user)  # its bill's, budget or not
        except BaseException:
            hold.end(False)
            raise

    def _user_hold(self, ctx: RequestContext, worst: int | None) -> KnownHold | None:
        """The end user's rpm counted and ``worst`` held on its budget, where ``userlimits`` runs."""
        module = self._path.chain().module("userlimits", ctx)
        if not isinstance(module, UserLimitsModule):
            return None
        return module.hold_known(ctx, worst, "video", LOWER_VIDEO)

    def _start(
        self,
        reply: Reply,
        ctx: RequestContext,
        provider: Provider,
        rest: str,
        hold: BatchHold,
        body: Any,
        asked: dict,
        content_type: str = "application/json",
        length: int | None = None,
    ) -> None:
        """Send a create (or remix) and record the new video as the key's with its hold, which then
        stays spend until the video is billed (given back when no video was recorded). A create
        whose answer was lost takes the one video of its ``asked`` terms no key owns
        (``_create_upstream``), else tells the client not to send it again."""
        made = partial(self._made_like, ctx, provider, asked)
        terms = json.dumps(asked, sort_keys=True)
        answer, video = self._create_upstream(ctx, provider, rest, body, KIND, hold, made, content_type, length, terms)
        if video is not None:
            self._seen(ctx, provider, video)  # one that ended at once (it failed its checks) is billed now
        self._send(reply, ctx, answer)

    def _made_like(self, ctx: RequestContext, provider: Provider, asked: dict) -> list[dict]:
        """The provider's newest videos with ``asked``'s prompt, size, seconds and source: the
        candidates for a create whose answer was lost."""
        answer, page = self._call(ctx, provider, "GET", "/videos", query={"limit": str(LOST_LOOK)})
        data = page.get("data") if answer.status < 300 and isinstance(page, dict) else None
        return [
            v
            for v in (data if isinstance(data, list) else [])
            if isinstance(v, dict) and isinstance(v.get("id"), str) and all(v.get(k) == asked[k] for k in asked)
        ]

    # -- lists and looks -----------------------------------------------------------------------
    def _list(self, reply: Reply, ctx: RequestContext, query: dict[str, str]) -> None:
        """``GET /v1/videos``: this key's videos, in the provider's pages filtered; those it shows
        ended are billed."""
        limit = page_limit(query, *LIST_LIMITS)
        provider = self.choose_provider(ctx)
        passed = {k: v for k, v in query.items() if k == "order"}
        answer, found = self._owned_page(ctx, provider, "/videos", KIND, limit, passed, query)
        for video in found:
            self._seen(ctx, provider, video)
        self._send(reply, ctx, answer)

    def look(self, ctx: RequestContext, provider: Provider, video_id: str) -> str | None:
        """Retrieve a video for its owner (the batch watch): its status, or None when the provider did
        not answer with it. An ended one is billed as if its owner had retrieved it."""
        video = self._retrieve(ctx, provider, video_id)
        status = video.get("status") if video is not None else None
        return status if isinstance(status, str) else None

    def _retrieve(self, ctx: RequestContext, provider: Provider, video_id: str) -> dict | None:
        """The video as the provider shows it now (billed if it ended), or None when it did not answer with it."""
        answer, doc = self._call(ctx, provider, "GET", f"/videos/{video_id}")
        if answer.status >= 300 or not isinstance(doc, dict) or doc.get("id") != video_id:
            return None
        self._seen(ctx, provider, doc)
        return doc

    def _look_before_delete(self, ctx: RequestContext, provider: Provider, video_id: str) -> None:
        """A delete takes the job, and what it made, away at the provider: one of the key's not billed
        yet is retrieved first (on the delete's own trace: its call replaces what this read), and
        billed if it ended. One still running is billed its whole length as an estimate: nothing
        here would see what it made, and its hold would go back with its record. A look the provider
        fails (a 5xx, a 429, no answer) stops the delete, a 502 the client may retry: deleted unseen, a
        completed video would go unbilled and its hold back. One the provider no longer has (404) is
        deleted as asked (the provider then says so)."""
        owned = self.ownership.find(video_id, KIND, owner_of(ctx))
        if owned is None or owned.billed:
            return
        answer, video = self._call(ctx, provider, "GET", f"/videos/{video_id}")  # no answer: its 502/504
        if answer.status == 404:
            return
        if answer.status >= 300 or not isinstance(video, dict) or video.get("id") != video_id:
            raise ProxyError(
                502,
                f"video {video_id} could not be looked at before its delete (the provider answered "
                f"{answer.status}): nothing was deleted; send the delete again",
                code="video_not_checked",
            )
        self._seen(ctx, provider, video, running=video.get("status") not in ENDED)

    # -- bills ---------------------------------------------------------------------------------
    def _seen(self, ctx: RequestContext, provider: Provider, video: dict, running: bool = False) -> None:
        """A video its owner sees: billed once if it ended (or is deleted ``running``) and is the
        owner's, not billed yet."""
        video_id = video.get("id")
        if (video.get("status") not in ENDED and not running) or not isinstance(video_id, str):
            return
        owned = self.ownership.find(video_id, KIND, owner_of(ctx))
        if owned is None or owned.billed:
            return
        usage = self._usage(ctx, provider, video, running)
        billed = self._store.write(bill_once(usage, video_id, KIND, self._path.settings, self._settle))
        if billed is not None:
            settle_billed(usage, billed, self._metrics)

    def _usage(self, ctx: RequestContext, provider: Provider, video: dict, running: bool) -> RequestContext:
        """The ``videos.usage`` trace of an ended video: a completed one its seconds at its model's and
        size's rate per second; a failed one nothing (the provider bills no video it did not make);
        one deleted ``running``, its whole length as an estimate. One whose terms have no price
        costs unknown (a budget then spends its hold)."""
        usage = RequestContext("videos.usage", OPENAI, "", {})
        usage.key, usage.key_id, usage.project = ctx.key, ctx.key_id, ctx.project
        model, size, seconds = video.get("model"), video.get("size"), video.get("seconds")
        usage.model = model if isinstance(model, str) else None
        note = {k: video.get(k) for k in ("id", "status", "model", "size", "seconds", "remixed_from_video_id")}
        usage.raw = json.dumps(note).encode()
        a = usage.attempt
        a.provider, a.upstream_model, a.status, a.usage = provider, usage.model, 200, Usage()
        a.cost_uc, a.cost_status = 0, "exact"
        if video.get("status") == "completed" or running:
            cost = self._cost(provider, {"model": model, "seconds": seconds, "size": size})
            a.cost_uc, a.cost_status = (0, "unknown") if cost is None else (cost, "estimate" if running else "exact")
        if running:
            a.error_message = "deleted while it ran: billed its whole length, as an estimate"
        usage.complete = True
        return usage

    def _cost(self, provider: Provider, terms: dict) -> int | None:
        """What a video of these terms (a completed video's own) costs, or None: no price, or terms
        that are not a video's."""
        try:
            model, seconds, size = create_terms(terms.get)
        except ProxyError:
            return None
        price = video_price(self._path.pricer, provider, model, size)
        return None if price is None else unit_cost(price, seconds)
