"""Background responses (``POST /v1/responses`` with ``background: true``), billed their real usage once.

Such a response answers at once (``queued`` or ``in_progress``, no usage) and runs at the provider
afterwards. Its POST is billed 0 (it used nothing yet) and the response is recorded as its key's
(``owned_objects``, kind ``background_response``) with what it holds against a budgeted key's
budgets (``held_uc``, ``held_project``: the request's worst case at its ``max_output_tokens``) and an
end user's (``held_user``, ``held_user_uc``), whose reservations the same transaction turns into
spend (:meth:`BackgroundResponses._holds_spent`), as a batch is.

When Stockyard sees it ended (``completed``, ``incomplete``, ``failed``, ``cancelled``) — a retrieve
passed through, the end event of its stream (``GET …?stream=true``), the cancel's answer, the retrieve
a delete makes first (and the cancel it sends one still running), or the batch watch's own look
every ``STOCKYARD_BATCH_POLL`` at those nobody retrieved — one ``responses.usage`` trace records
what the provider says it used, priced as the POST would have been (the tier that served it, the
image tool, hosted tools' calls), written in the same transaction that marks it billed
(``batch_costs.bill_once``): however many retrieves, streams and replicas race, it is billed once.
Its cost replaces its hold on the budgets in that transaction too (on PostgreSQL; in memory just
after). One never seen to end gives its hold back after ``batch_costs.WATCH_DAYS``, as a batch does.

Not here: a background request that is also streamed (``stream: true``) is billed by its stream, as
any streamed response is.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from .batch_costs import bill_once, settle_billed
from .billing import Pricer
from .budgets import BACKGROUND_HELD as HELD
from .budgets import Ledger, scopes_of
from .config import Settings
from .context import RequestContext
from .conversations import keep_usage
from .errors import RESPONSES, ProxyError
from .files_api import OPEN_OWNER, BatchHold, BatchSpend, Billed, Ownership, owner_of
from .keys import KeyRing
from .metrics import Metrics
from .modules.budget import COVER
from .modules.budget import HELD as KEY_BUDGET
from .modules.userlimits import COVER as USER_COVER
from .modules.userlimits import HELD as USER_BUDGET
from .pricing import Usage
from .providers import Provider
from .providers.responses_adapters import ENDED, read_response, upstream_headers, upstream_path
from .store import Store
from .upstream import Pool

log = logging.getLogger("stockyard.background")

KIND = "background_response"  # in owned_objects
RUNNING = ("queued", "in_progress")
GONE = "gone"  # what a look finds when the provider answers 404: it no longer has the response
RETRY_DELETE_S = 5  # the Retry-After of a delete refused because the response's end was not seen


def not_ended(response_id: str, status: str | None) -> ProxyError:
    """The 503 for a delete of an unbilled background response whose end was not seen: sent, it
    would take away the usage its provider bills, and leave its hold counted for 30 days."""
    seen = f"its cancel left it {status!r}" if status else "the provider did not answer its look or its cancel"
    return ProxyError(
        503,
        f"background response {response_id!r} may still run at the provider ({seen}); deleting it now would take "
        "away the usage it is billed for, so the delete was not sent; try again shortly (a delete cancels it first)",
        code="response_not_ended",
        type="server_error",
        headers={"Retry-After": str(RETRY_DELETE_S)},
    )


def user_hold(ctx: RequestContext) -> tuple[int, str | None]:
    """What the request holds on its end user's budget (the userlimits module's ``Cover``), and that
    budget's scope; (0, None) without one."""
    held = int(getattr(ctx.state.get(USER_COVER), "held", 0))
    budget = ctx.state.get(USER_BUDGET)
    return (held, budget[0].scope) if held and budget is not None else (0, None)


def left_running(ctx: RequestContext, provider: Provider, response: dict) -> bool:
    """Whether a POST's whole answer left a background response running at a provider that keeps it."""
    return (
        ctx.endpoint == "responses"
        and provider.speaks_responses
        and not ctx.stream
        and ctx.body.get("background") is True
        and response.get("status") in RUNNING
        and isinstance(response.get("id"), str)
    )


class BackgroundResponses:
    """Records background responses as their keys' when they start, and bills each once it ended."""

    def __init__(
        self,
        ownership: Ownership,
        store: Store,
        pricer: Pricer,
        metrics: Metrics,
        settings: Settings,
        settle: BatchSpend,
        keys: Callable[[], KeyRing],
        pool: Pool,
        ledger: Ledger,
    ) -> None:
        self._ownership = ownership
        self._store = store
        self._pricer = pricer
        self._metrics = metrics
        self._settings = settings
        self._settle = settle  # App.batch_spend: a change to what the key's objects count on its budgets
        self._keys = keys
        self._pool = pool
        self._ledger = ledger  # the request's reservations become spend as the response is recorded

    def started(self, ctx: RequestContext, provider: Provider, response: dict) -> None:
        """A POST's answer left it running: recorded as the key's with what its budget holds, and
        the POST billed 0 (its usage comes when it ends). Not recorded (a write that failed, an id
        another key holds): the POST keeps its estimate, as before."""
        if not left_running(ctx, provider, response):
            return
        held = int(getattr(ctx.state.get(COVER), "held", 0))  # none without a budget
        project = ctx.key.project if ctx.key is not None else None
        user_held, user_scope = user_hold(ctx)
        spent = self._holds_spent(ctx, held, user_held)
        hold = BatchHold(held, lambda _: None, project, user_scope, user_held, spent, end_user=ctx.end_user)
        try:
            claimed = self._ownership.claim(response["id"], KIND, owner_of(ctx), provider.name, hold)
        except Exception as exc:  # the store refused it: estimated as a request without usage
            log.warning("background response %s was not recorded: %s: %s", response["id"], type(exc).__name__, exc)
            return
        if claimed:
            ctx.attempt.usage = Usage()  # the queued answer's own: nothing used yet
            ctx.state[HELD] = True

    def _holds_spent(self, ctx: RequestContext, held: int, user_held: int) -> Callable[[Any], Callable[[], None]]:
        """In the transaction that records the response with its holds: the request's reservations
        (the budget and userlimits modules') become the spend those holds are until it is billed, so
        a crash keeps both or neither. Once committed, their after hooks find no reservation left."""

        def end_in(conn: Any) -> Callable[[], None]:
            done: list[Callable[[], None]] = []
            key_hold = ctx.state.get(KEY_BUDGET)
            if key_hold is not None and ctx.key is not None:
                done.append(self._ledger.settle_in(conn, key_hold, held, scopes_of(ctx.key), ctx.ts_ms))
            user = ctx.state.get(USER_BUDGET)
            if user is not None:
                done.append(self._ledger.settle_in(conn, user[1], user_held, (user[0].scope,), ctx.ts_ms))

            def committed() -> None:
                ctx.state.pop(KEY_BUDGET, None)
                if user is not None:
                    ctx.state[USER_BUDGET] = (user[0], None)
                for call in done:
                    call()

            return committed

        return end_in

    def finished(self, key_id: str | None, provider: Provider, response: dict) -> None:
        """A response seen ended (retrieved, streamed, cancelled, looked at): its usage billed once
        if it is a background response of ``key_id``'s not billed yet."""
        response_id = response.get("id")
        if response.get("status") not in ENDED or not isinstance(response_id, str):
            return
        owned = self._ownership.find(response_id, KIND, key_id or OPEN_OWNER)
        if owned is None or owned.billed:
            return
        key = self._keys().by_id(key_id) if key_id else None
        if key_id and key is None:
            return  # its key is gone: nobody to bill
        ctx = self._usage(provider, response)
        if key is not None:
            ctx.key, ctx.key_id, ctx.project = key, key.id, key.project
        bill = bill_once(ctx, response_id, KIND, self._settings, self._settle)

        def job(conn: Any) -> Billed | None:
            billed = bill(conn)
            if billed is not None:  # what a turn after it holds for its conversation
                keep_usage(conn, response_id, key_id, response.get("usage"))
            return billed

        billed = self._store.write(job)
        if billed is not None:
            settle_billed(ctx, billed, self._metrics)

    def _usage(self, provider: Provider, response: dict) -> RequestContext:
        """The ``responses.usage`` trace of an ended response, priced from what it reports: the
        response is its own body here (it echoes its ``tools``, which price the image tool's and
        hosted tools' calls). One that reports no usage costs 0, marked an estimate."""
        ctx = RequestContext("responses.usage", RESPONSES, "", {})
        model = response.get("model") if isinstance(response.get("model"), str) else None
        ctx.body, ctx.model = response, model
        ctx.raw = json.dumps({"response_id": response.get("id"), "status": response.get("status")}).encode()
        a = ctx.attempt
        a.provider, a.upstream_model, a.status = provider, model, 200
        read_response(ctx, response)
        unreported = a.usage is None
        if unreported:
            a.usage = Usage()
        self._pricer.price(ctx)
        if unreported and a.cost_status == "exact":
            a.cost_status, a.error_message = "estimate", "the provider reported no usage for this response"
        ctx.complete = True  # the ended response came whole (its status is in the note)
        return ctx

    def look(self, ctx: RequestContext, provider: Provider, response_id: str) -> str | None:
        """Retrieve a background response for its owner (the batch watch): its status, or None when
        the provider did not answer with it. An ended one is billed as if its owner had retrieved it."""
        return self._retrieve(ctx.key_id, provider, response_id)

    def before_delete(self, key_id: str | None, provider: Provider, response_id: str) -> None:
        """A delete takes the response and its usage away at the provider: one of the key's not yet
        billed is retrieved first, and billed if it ended; one still running is cancelled first (the
        provider would go on billing it, and nothing here would ever see its usage), its cancel's
        answer billed. One whose end is not seen so — the provider did not answer the look, or the
        cancel failed or left it running — is not deleted (:func:`not_ended`): the delete would take
        its usage with it, and its hold would stay counted until the watch's horizon. It stays, and
        its hold ends when its end is seen (a retrieve, the watch's look, a delete tried again). One
        the provider no longer has (404) is deleted as asked: nothing of it is left to see."""
        owned = self._ownership.find(response_id, KIND, key_id or OPEN_OWNER)
        if owned is None or owned.billed:
            return
        try:
            status = self._retrieve(key_id, provider, response_id)
            if status in RUNNING:
                status = self._retrieve(key_id, provider, response_id, "POST", "/cancel")
        except Exception as exc:  # the provider is down
            log.warning("background response %s: not seen ended before its delete: %s", response_id, exc)
            status = None
        if status != GONE and status not in ENDED:
            raise not_ended(response_id, status)

    def _retrieve(
        self, key_id: str | None, provider: Provider, response_id: str, method: str = "GET", action: str = ""
    ) -> str | None:
        """GET the response from its provider (or ``POST …/cancel`` it) and bill it if the answer
        shows it ended: its status, ``GONE`` when the provider has no such response (404), None when
        it did not answer with it."""
        path = upstream_path(provider, f"/responses/{response_id}{action}")
        resp = self._pool.request(provider.base_url, method, path, upstream_headers(provider), None)
        data = resp.read_all()
        if resp.status == 404:
            return GONE
        try:
            doc = json.loads(data) if resp.status < 300 else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("id") != response_id:
            return None
        self.finished(key_id, provider, doc)
        status = doc.get("status")
        return status if isinstance(status, str) else None
