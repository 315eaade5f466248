"""Gemini's explicit context caching (``/v1beta/cachedContents``): passed through to a Gemini
provider, each cache owned by the key that made it.

google-genai's ``client.caches`` and LiteLLM's ``gemini/`` prefix (which turns ``cache_control``
marks into a cache) create a CachedContent — a long prompt the provider keeps — and name it in
``generateContent`` as ``cachedContent: "cachedContents/{id}"``. The provider holds every key's
caches under the one provider key, so they are owned here as files and containers are
(``files_api``: ``Ownership``, the ``owned_objects`` table, kind ``cached_content``; open mode has
one owner, ``''``). Another key gets Google's 404, as for a missing cache, unasked; a list is the
provider's pages filtered to the key's own, paged with a token of Stockyard's (the provider's
token and which of the key's caches on that page were given already, so a client that deletes each
cache as it is listed still reaches every one). A generateContent,
streamGenerateContent or countTokens naming another key's cache is a 404 before any module or
provider call (``Ownership.check_references``). A PATCH's body may name no other cache than its URL's
(a ``name`` of another key's would otherwise go upstream beside it).

A create names its model (``models/…``): held to the key's allow-list and guard's model lists, and
routed as the URL model of a generateContent is (a ``provider/model`` name too); it must reach a
Gemini provider, and is
sent under the name routing gives it. Google bills a cache as storage per hour (and its tokens once),
which no usage reports: under a budget (the key's or its project's) a create is refused with a 403,
and so is an update (a new ``ttl`` or ``expireTime`` buys storage alike: a cache made before the
budget kept for a year); a GET and a DELETE (which ends the storage) are not. Without one it is
traced at cost 0 (storage is not modelled). A PATCH changes the expiry only (``ttl``,
``expireTime``), as Google's update does; any other field is a 400, never relayed.

A generateContent using a cache is priced as any other (its ``cachedContentTokenCount`` at the
cached-input rate). Its body does not show those tokens, so the create's answer's count
(``usageMetadata.totalTokenCount``) is kept with the cache's row, and a budget holds it
(``Ownership.check_cached_content`` → ``ctx.caches`` → ``estimate.cached_content_tokens``). A cache
whose count is not known (an answer without it, a row from before the count was kept) is refused
under a budget (``budgets.check_countable``) until a retrieve's answer states it (learnt then).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Callable
from urllib.parse import urlencode

from .context import RequestContext
from .errors import ProxyError
from .files_api import MAX_SEARCH_PAGES, Answer, Ownership, ProviderCalls, owner_of
from .httpio import Request, check_method, json_object
from .keys import check_model
from .modules.guard import batch_policy
from .objectrefs import CACHE_ID, PREFIX, cache_id_of
from .objectrefs import cache_not_found as not_found
from .providers import Provider
from .providers.gemini import auth_headers, version_prefix
from .providers.gemini_native import check_model as check_url_model
from .proxy import Reply, RequestPath

KIND = "cached_content"  # in owned_objects; the id is the part after ``cachedContents/``
KINDS = ("gemini",)  # providers that keep caches
PATH = re.compile(rf"^/(?:v1beta|v1)/cachedContents(?:/({CACHE_ID.pattern}))?$")
PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000  # a list's default and largest pageSize
PROVIDER_PAGE = 100  # objects asked of the provider per page while filtering a list
MAX_TOKEN = 4096  # the longest pageToken read (PROVIDER_PAGE marks and Google's token fit)
MARK_CHARS = 12  # hex digits of a given object's id kept in a pageToken (given_mark)
Given = set[str] | int  # what a pageToken says was given of its provider page
# What Google's update changes: the expiry alone (``ttl`` or ``expireTime``, by either spelling
# its JSON reads); a body may also name its own cache (``name``: a client sending the object back).
UPDATABLE = frozenset({"ttl", "expireTime", "expire_time"})


def route_of(path: str) -> tuple[str | None] | None:
    """(cache id or None) for a cachedContents path, or None."""
    match = PATH.match(path)
    return None if match is None else (match.group(1),)


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint: ``cached_contents.create``, ``…list``, ``…retrieve``, ``…update``, ``…delete``."""
    found = route_of(path)
    if found is None or found[0] is None:
        return f"cached_contents.{'create' if method == 'POST' else 'list'}"
    return "cached_contents." + {"PATCH": "update", "DELETE": "delete"}.get(method, "retrieve")


def budget_refusal(update: bool = False) -> ProxyError:
    """The 403 for a cache under a budget: what it costs (storage per hour) no usage reports. A
    create, and an update (which sets a new ``ttl``/``expireTime``: more storage bought alike)."""
    advice = "delete the cache when done with it" if update else "send the prompt without caching it"
    return ProxyError(
        403,
        "a cached content is billed by the provider as storage per hour, which no usage reports, so the "
        f"budget on this key (or its project) cannot be enforced; {advice}",
        param="ttl" if update else "model",
        code="cached_content_not_budgeted",
    )


def tokens_of(doc: object) -> int | None:
    """A CachedContent's tokens as Google states them (``usageMetadata.totalTokenCount``), else None."""
    usage = doc.get("usageMetadata") if isinstance(doc, dict) else None
    count = usage.get("totalTokenCount") if isinstance(usage, dict) else None
    return count if type(count) is int and count >= 0 else None


def check_update(body: dict, mask: str | None) -> None:
    """Google's 400 for a PATCH that would change more than the expiry: a field of the body, or a
    path of ``updateMask``, other than ``ttl``/``expireTime`` (the body's ``name`` is checked apart).
    Google ignores or refuses them; Stockyard would relay them as sent."""
    fields = [f for f in body if f not in UPDATABLE and f != "name"]
    paths = [p.strip() for p in (mask or "").split(",") if p.strip() and p.strip() not in UPDATABLE]
    if fields or paths:
        raise ProxyError(
            400,
            f"only a cache's expiry can be updated (ttl or expireTime), not {(fields + paths)[0][:100]!r}",
            param="updateMask" if not fields else fields[0][:100],
            code="invalid_value",
        )


def given_mark(object_id: str) -> str:
    """How a pageToken names an object of the provider's page that was given already: a short digest
    of its id (a page holds at most ``PROVIDER_PAGE`` of the key's; a count of them would skip others
    once one given is deleted, as a client deleting each object it lists does)."""
    return hashlib.sha256(object_id.encode()).hexdigest()[:MARK_CHARS]


def encode_token(provider_token: str | None, given: list[str]) -> str:
    """A list's nextPageToken: the provider page to read next, and the marks (:func:`given_mark`) of
    the key's objects on it that were given already."""
    return base64.urlsafe_b64encode(json.dumps([provider_token, given]).encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[str | None, Given]:
    """What :func:`encode_token` wrote (or, from a server before it, a count of objects given);
    anything else is a 400."""
    if not token:
        return None, set()
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        provider_token, given = value
        if not (provider_token is None or isinstance(provider_token, str)):
            raise ValueError
        if type(given) is int and given >= 0:
            return provider_token, given
        if not isinstance(given, list) or not all(isinstance(m, str) and len(m) == MARK_CHARS for m in given):
            raise ValueError
        return provider_token, set(given)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):  # forged: nested deep
        raise ProxyError(
            400, "pageToken is not one this server gave", param="pageToken", code="invalid_value"
        ) from None


def given_marks(page: list[str], given: Given) -> set[str]:
    """The marks of the key's objects on a provider page (``page``: their marks, :func:`given_mark`,
    in its order) given already: those of ``given`` still on it (a deleted one's is dropped, so a
    token stays short), or for an older server's count that many first ones."""
    if isinstance(given, int):
        return set(page[:given])
    return given & set(page)


def page_size(query: dict[str, str]) -> int:
    raw = query.get("pageSize") or ""
    try:
        size = int(raw) if raw else PAGE_SIZE
    except ValueError:
        raise ProxyError(400, "pageSize must be a whole number", param="pageSize", code="invalid_value") from None
    return PAGE_SIZE if size <= 0 else min(size, MAX_PAGE_SIZE)


class GoogleCalls(ProviderCalls):
    """Calls for the objects Google keeps under the one provider key (context caches, files): lists
    filtered to the key's own and paged with Stockyard's own ``pageToken``."""

    def _owned_list(
        self,
        reply: Reply,
        ctx: RequestContext,
        query: dict[str, str],
        provider: Provider,
        rest: str,
        field: str,
        kind: str,
        id_of: Callable[[object], str | None],
    ) -> None:
        """The key's objects of ``kind`` from the provider's pages at ``rest`` (their ``field`` list;
        ``id_of`` an object's ``name`` is the id it is owned under) filtered, ``pageSize`` at a time;
        ``nextPageToken`` (Stockyard's: :func:`encode_token`) only once one more of the key's is
        found: google-genai's Pager takes the first item of the page a token names, and an empty one
        raises IndexError out of the client's loop. So the provider's pages are read on until then or
        their end (Google's files expire in two days and caches at their TTL: its lists stay short),
        within ``MAX_SEARCH_PAGES`` (then a token to go on from there); a key holding none of ``kind``
        there gets the empty page unasked."""
        size = page_size(query)
        token, given = decode_token(query.get("pageToken") or "")
        owner = owner_of(ctx)
        found: list[dict] = []
        next_token: str | None = None
        answer = Answer(200, {"content-type": "application/json"})
        ctx.attempt.status = 200  # the trace's, when no provider call is made (a call sets its own)
        asked_tokens = {token}
        reading = self.ownership.holds_any(kind, owner, provider.name)
        while reading:
            asked = {"pageSize": str(PROVIDER_PAGE), **({"pageToken": token} if token else {})}
            answer, doc = self._call(ctx, provider, "GET", rest, query=asked)
            if answer.status >= 400 or not isinstance(doc, dict):
                return self._send(reply, ctx, answer)
            listed = doc.get(field)
            items = [item for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []
            ids = [id_of(item.get("name")) for item in items]
            mine = self.ownership.owned([i for i in ids if i], kind, owner, provider.name)
            page = [(item, given_mark(i)) for item, i in zip(items, ids) if i is not None and i in mine]
            marks = given_marks([mark for _, mark in page], given)  # of those still on the page: bounded
            page = [(item, mark) for item, mark in page if mark not in marks]
            room = size - len(found)
            if len(page) > room:  # one more of the key's than the page holds: the next page has some
                found += [item for item, _ in page[:room]]
                next_token = encode_token(token, sorted(marks | {mark for _, mark in page[:room]}))
                break
            found += [item for item, _ in page]
            given = set()
            after = doc.get("nextPageToken")
            if not isinstance(after, str) or not after or after in asked_tokens:  # the end, or no way on
                break
            token = after
            asked_tokens.add(token)
            if len(asked_tokens) > MAX_SEARCH_PAGES:  # a bound on one request's reads: the client asks on
                next_token = encode_token(token, [])
                break
        page_doc: dict = {field: found}
        if next_token:
            page_doc["nextPageToken"] = next_token
        self._replace(ctx, answer, page_doc)
        self._send(reply, ctx, answer)


class CachedContents(GoogleCalls):
    """The ``/v1beta/cachedContents`` routes. ``budgeted(ctx)`` says whether a budget counts the key."""

    serves = "cached contents"

    def __init__(self, path: RequestPath, ownership: Ownership, budgeted: Callable[[RequestContext], bool]) -> None:
        super().__init__(path, ownership)
        self._budgeted = budgeted

    def _target(self, provider: Provider, rest: str, query: dict[str, str] | None) -> str:
        return version_prefix(provider) + rest + (f"?{urlencode(query)}" if query else "")

    def _headers(self, ctx: RequestContext, provider: Provider, rest: str) -> dict[str, str]:
        return {"Accept": "application/json", **auth_headers(provider)}

    def _handle(self, reply: Reply, ctx: RequestContext, req: Request) -> None:
        found = route_of(req.path)
        assert found is not None
        (cache_id,) = found
        check_method(req.method, ("GET", "POST") if cache_id is None else ("GET", "PATCH", "DELETE"))
        self._rate_limit(ctx)  # before the body is read and before any provider call
        if cache_id is None and req.method == "POST":
            if self._budgeted(ctx):  # before the body: what it would cost cannot be counted
                raise budget_refusal()
            return self._create(reply, ctx, req.body)
        if req.method == "PATCH" and self._budgeted(ctx):  # a new expiry buys storage as a create does
            raise budget_refusal(update=True)
        raw = req.body  # a GET's empty body too: the read deadline ends
        if cache_id is None:
            return self._list(reply, ctx, req.query)
        owned, provider = self._owned(ctx, cache_id, KIND, not_found(cache_id))
        rest = f"/cachedContents/{cache_id}"
        if req.method == "PATCH":
            ctx.raw = raw
            body = json_object(raw)  # Google's 400 here for a body that is not an object
            check_update(body, req.query.get("updateMask"))
            named = body.get("name")
            if named is not None and named != f"{PREFIX}{cache_id}":  # the URL says which: one, never two
                raise ProxyError(
                    400,
                    f"name must be the cache the URL names ({PREFIX}{cache_id}) or left out",
                    param="name",
                    code="invalid_value",
                )
            mask = {k: v for k, v in req.query.items() if k == "updateMask"}
            answer, doc = self._call(ctx, provider, "PATCH", rest, raw, query=mask)
        else:
            answer, doc = self._call(ctx, provider, req.method, rest)
        stated = tokens_of(doc) if answer.status < 300 and owned.tokens is None else None
        if answer.status < 300 and req.method == "DELETE":
            self.ownership.forget(cache_id)
        elif stated is not None:
            self.ownership.learn_tokens(cache_id, stated)  # a budget may hold it now
        self._send(reply, ctx, answer)

    def _create(self, reply: Reply, ctx: RequestContext, raw: bytes) -> None:
        """A new cache: its model held to the key's allow-list and guard's model lists (the chain does not run
        here), routed to a Gemini provider; it is the key's."""
        ctx.raw = raw
        body = json_object(raw)
        if ctx.key is not None:  # its contents may name Files API files: the key's own only (gemini_files)
            self.ownership.check_gemini_files(body, owner_of(ctx))
        asked = body.get("model")
        if not isinstance(asked, str) or not asked.strip():
            raise ProxyError(400, "model is required: the model the cache is for (models/…)", param="model")
        model = check_url_model(asked.removeprefix("models/"))
        registry = self._path.registry()
        if ctx.key is not None:
            check_model(ctx.key, model, registry.routes_to)
        provider, upstream = registry.resolve(model)
        if provider.kind not in KINDS:
            raise ProxyError(
                400,
                f"model {model!r} is served by provider {provider.name!r} ({provider.kind}); "
                "cached contents are kept by a Gemini provider only",
                param="model",
                code="invalid_model",
            )
        policy = batch_policy(self._path.chain(), ctx)  # guard's model lists, as a generateContent meets them
        refusal = policy(provider.name, upstream) if policy is not None else None
        if refusal is not None:
            raise refusal
        ctx.model = model
        body["model"] = "models/" + check_url_model(upstream.removeprefix("models/"))
        sent = json.dumps(body, ensure_ascii=False).encode()
        answer, doc = self._call(ctx, provider, "POST", "/cachedContents", sent)
        cache_id = cache_id_of(doc.get("name")) if isinstance(doc, dict) else None
        if answer.status < 300 and cache_id is not None:  # with its tokens, which a budget holds
            self.ownership.claim(cache_id, KIND, owner_of(ctx), provider.name, tokens=tokens_of(doc))
        self._send(reply, ctx, answer)

    def _list(self, reply: Reply, ctx: RequestContext, query: dict[str, str]) -> None:
        """This key's caches, from the provider's pages filtered (:meth:`GoogleCalls._owned_list`)."""
        provider = self.provider_of_kind(ctx, KINDS, "Gemini", "cached contents need a Gemini provider")
        self._owned_list(reply, ctx, query, provider, "/cachedContents", "cachedContents", KIND, cache_id_of)
