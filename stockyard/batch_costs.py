"""What a batch cost: its results' usage at the batch price, recorded once.

OpenAI and Anthropic bill batch requests at half the normal price (``BATCH_PRICE``). When a
batch's owner first sees it ended (OpenAI: ``completed``, or ``expired``/``cancelled`` with some
requests done; Anthropic: ``processing_status`` ``ended``; retrieve or list), its results are
read from the provider as a stream, line by line (OpenAI: the output file, each line's
``response.body.usage``; Anthropic: the batch's results, each ``succeeded`` result's
``message.usage``: :class:`BatchOutput` says which); each line is priced at its model's normal
price times ``BATCH_PRICE``, and the sum becomes one trace row under the owner's key
(``batches.usage`` or ``message_batches.usage``; tokens summed, cost exact; any line of a model
without a price makes the cost unknown) — so cost reports and budgets see it. Against its
owner's budgets that cost replaces the worst case the batch held since it started.

Nobody has to look: :class:`BatchWatch` retrieves the unbilled batches every
``STOCKYARD_BATCH_POLL`` (10 minutes by default) on their owners' behalf, so a batch started
by a script that never asks again still reaches cost reports and budgets.

The reading runs in the background, one batch at a time (each may hold a results line of up to
16 MiB and its parse), the others waiting their turn: a retrieve answers at once, and the writer
thread, which every trace waits behind, never waits on a provider. The row and the
batch's ``billed`` mark are written in one transaction, so a batch is recorded once, however
many retrieves race and across restarts; a failed read leaves it unbilled for the next look.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import estimate
from .budgets import owner_scopes
from .config import Settings
from .context import RequestContext, claude_mode
from .errors import OPENAI
from .files_api import BATCH_PRICE, LINE_ENDPOINTS, BatchSpend, Billed, lines_of, mark_billed, upstream_path
from .imagegen import image_usage
from .keys import KeyRing
from .metrics import Metrics
from .modules.budget import spent_uc
from .pricing import Price, Usage, cost_numerator, discounted_microcents
from .providers import Provider, Registry, media
from .providers.anthropic import message_usage
from .providers.responses_adapters import upstream_headers
from .proxy import RequestPath
from .store import Store
from .store.traces import trace_row_from

log = logging.getLogger("stockyard.batches")

WATCH_DAYS = 30  # batches older than this are no longer looked at (a batch ends within 24 hours)
PASS_ROWS = 500  # batches one pass of the watch looks at; the next pass goes on from the last
MAX_WAITING = 1000  # ended batches waiting for the one reader; beyond, one waits for a later look
Look = Callable[[RequestContext, Provider, str], "str | None"]  # retrieve a batch for its owner: its status


# One result line → (its model, its usage, the mode that served it: ``context.claude_mode``), None: nothing
# billed; its usage None: billed, but it does not say for what (its cost is unknown)
UsageOf = Callable[[dict], "tuple[str, Usage | None, str | None] | None"]


def openai_usage_of(doc: dict) -> tuple[str, Usage, str | None] | None:
    """An OpenAI batch output line: ``response.body`` with its model and usage (a batch is its own
    tier: billed at the batch price, whatever ``service_tier`` a line names)."""
    response = doc.get("response")
    body = response.get("body") if isinstance(response, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("usage"), dict):
        return None
    named = body.get("model")
    return (named if isinstance(named, str) else ""), Usage.from_openai(body["usage"]), None


def openai_images_usage_of(model: str) -> UsageOf:
    """An images batch's output lines (``/v1/images/generations`` or ``/v1/images/edits``): an images
    answer names no model, so a line is the batch's ``model`` (OpenAI runs one model a batch), and its
    usage is read as the images endpoint reads it (``imagegen.image_usage``: its output is images,
    at the image output rate, unless split). An answer with images but no usage (a model billed per
    image) costs what it does not say: unknown, as on the endpoint."""

    def usage_of(doc: dict) -> tuple[str, Usage | None, str | None] | None:
        body = openai_response_of(doc)
        usage = body.get("usage") if body is not None else None
        if body is None or (not isinstance(usage, dict) and not isinstance(body.get("data"), list)):
            return None
        named = body.get("model")
        named = named if isinstance(named, str) and named else model
        return named, image_usage(usage) if isinstance(usage, dict) else None, None

    return usage_of


def openai_line_usage(batch: dict) -> UsageOf:
    """How an OpenAI batch's output lines are read: by its ``endpoint`` (Azure's without ``/v1``)."""
    endpoint = batch.get("endpoint")
    if isinstance(endpoint, str) and LINE_ENDPOINTS.get(f"/v1{endpoint.removeprefix('/v1')}") in media.IMAGES:
        model = batch.get("model")
        return openai_images_usage_of(model if isinstance(model, str) else "")
    return openai_usage_of


def anthropic_usage_of(doc: dict) -> tuple[str, Usage, str | None] | None:
    """An Anthropic message batch result line: a ``succeeded`` result's message, its model and
    usage read as ``/v1/messages`` reads a whole answer's (``anthropic.message_usage``: cache reads
    and writes, its thinking, web searches — those its content shows ran too) and the mode its usage
    says served it (US-only inference: 1.1x), priced as ``/v1/messages`` prices it. Errored, canceled
    and expired requests are not billed."""
    result = doc.get("result")
    if not isinstance(result, dict) or result.get("type") != "succeeded":
        return None
    message = result.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return None
    named = message.get("model")
    reported = message["usage"]
    usage = message_usage(message) or Usage.from_anthropic(reported)
    mode = claude_mode(reported.get("speed"), reported.get("inference_geo"))
    return (named if isinstance(named, str) else ""), usage, mode


def openai_response_of(doc: dict) -> dict | None:
    """An OpenAI batch output line's answer (``response.body``: a response object for a
    ``/v1/responses`` line), whatever its usage."""
    response = doc.get("response")
    body = response.get("body") if isinstance(response, dict) else None
    return body if isinstance(body, dict) else None


class BatchTotal:
    """Usage and cost summed over a batch's result lines (``usage_of`` reads one line; ``fees_of``,
    for OpenAI's, what the hosted tool calls a line's response shows cost: ``Pricer.response_call_fees``)."""

    def __init__(self, usage_of: UsageOf = openai_usage_of, fees_of: Callable[[dict], int] | None = None) -> None:
        self.usage = Usage()
        self.numerator = 0  # the full-price cost, unrounded (pricing.cost_numerator)
        # The per-call fees of hosted tools (OpenAI's calls, Claude's web searches), in µ¢, at their full
        # price: a batch halves token prices; whether it halves these is not stated, so they are billed
        # whole (never less than owed).
        self.fees_uc = 0
        self._fees_of = fees_of
        self.unpriced: set[str] = set()
        self.models: list[str] = []
        self.lines = 0
        self._usage_of = usage_of

    def add(self, line: bytes, price_of: Callable[[str, str | None], Price | None]) -> None:
        """One result line's usage, priced by ``price_of(model, mode)``; a model (in a mode) without
        a price leaves the batch's cost unknown, never guessed."""
        try:
            doc = json.loads(line)
        except ValueError:
            return
        found = self._usage_of(doc) if isinstance(doc, dict) else None
        if found is None:
            return
        model, usage, mode = found
        self.lines += 1
        if model not in self.models:
            self.models.append(model)
        if usage is None:  # billed for what its answer does not say
            self.unpriced.add(f"{model or 'a line'} (no usage)")
            return
        self.fees_uc += (self._fees_of(doc) if self._fees_of is not None else 0) + usage.fees_uc
        usage = dataclasses.replace(usage, fees_uc=0)  # the fees its usage states (Claude's searches): whole too
        self.usage = self.usage.plus(usage)
        price = price_of(model, mode)
        if price is None or price.unit != "token":  # a token answer cannot be priced per image or second
            self.unpriced.add(f"{model}/{mode}" if mode else model)
        else:
            self.numerator += cost_numerator(price, usage)

    def cost(self) -> int | None:
        """µ¢ at the batch price, rounded once over the whole batch, and the hosted tools' call fees
        whole; None when a model has no price."""
        return None if self.unpriced else discounted_microcents(self.numerator, BATCH_PRICE) + self.fees_uc


@dataclass(frozen=True)
class BatchOutput:
    """An ended batch of either API, and how to read what its requests cost."""

    batch_id: str
    kind: str  # its owned_objects kind: 'batch' (OpenAI) or 'message_batch' (Anthropic)
    endpoint: str  # the usage trace's endpoint
    dialect: str
    path: str | None  # where its per-request results are at the provider; None: it has none (costs 0)
    headers: Callable[[Provider], dict[str, str]]  # the headers that read them (the provider's key)
    usage_of: UsageOf
    note: dict  # what the usage trace's request body says of the batch


def openai_output(provider: Provider, batch: dict) -> BatchOutput:
    """An ended OpenAI batch: its output file holds what it cost."""
    file_id = batch.get("output_file_id")
    path = upstream_path(provider, f"/files/{file_id}/content") if isinstance(file_id, str) and file_id else None
    return BatchOutput(
        batch["id"],
        "batch",
        "batches.usage",
        OPENAI,
        path,
        lambda p: upstream_headers(p, "*/*"),
        openai_line_usage(batch),
        {"batch_id": batch["id"], "output_file_id": batch.get("output_file_id")},
    )


def bill_once(
    ctx: RequestContext, object_id: str, kind: str, settings: Settings, spend: BatchSpend
) -> Callable[[Any], Billed | None]:
    """The writer job that records ``ctx``'s usage trace for an object its provider billed (a batch,
    a background response), marks the object billed and changes its owner's budgets (its cost
    replaces its hold: :func:`budget_changes`), in one transaction: only the job that marks it
    first writes the row, so racing looks, and replicas, record it once, and a crash cannot
    keep one without the others. ``Billed.settle``: what is left to do once it committed."""
    row = trace_row_from(ctx, store_bodies=settings.store_bodies, cap=settings.body_cap_bytes)

    def job(conn: Any) -> Billed | None:
        billed = mark_billed(conn, object_id, kind)
        if billed is None:
            return None
        row.end_user = billed.billed_user or row.end_user  # the end user its request named, budget or not
        cost, user_cost = spent_uc(ctx, billed.held_uc), spent_uc(ctx, billed.user_held_uc)
        # what its budgets spend beyond a cost that is unknown: kept with it
        row.unpriced_spent_uc = max(cost, user_cost) - estimate.billed_uc(ctx)
        row.write(conn)
        after = [spend(conn, *change, ctx.ts_ms) for change in budget_changes(ctx, billed, cost, user_cost)]

        def settle() -> None:
            for call in after:
                call()

        return dataclasses.replace(billed, settle=settle)

    return job


def budget_changes(ctx: RequestContext, billed: Billed, cost: int, user_cost: int) -> list[tuple[tuple[str, ...], int]]:
    """(budget scopes, change µ¢) of an object billed ``cost`` on its key's and project's budgets
    and ``user_cost`` on an end user's (what each spends: a cost that is unknown spends the hold,
    as a request's does, ``budget.spent_uc``): its cost, where its trace counts it, replaces what
    it held, where that was counted."""
    changes: list[tuple[tuple[str, ...], int]] = []
    if ctx.key_id and billed.project == ctx.project:
        changes.append((owner_scopes(ctx.key_id, ctx.project), cost - billed.held_uc))
    elif ctx.key_id:  # its key moved to another project while it ran
        changes += [
            (owner_scopes(ctx.key_id, billed.project), -billed.held_uc),
            (owner_scopes(ctx.key_id, ctx.project), cost),
        ]
    if billed.user_scope:
        changes.append(((billed.user_scope,), user_cost - billed.user_held_uc))
    return changes


def settle_billed(ctx: RequestContext, billed: Billed, metrics: Metrics) -> None:
    """After ``bill_once`` recorded ``ctx``: its metrics, and what is left of its budgets' change."""
    metrics.observe_request(ctx)
    billed.settle()


class BatchCosts:
    """Records each ended batch's cost once, reading its results in the background: one batch at a
    time (a list of many ended batches must not start as many readers, each holding a line of up to
    16 MiB), the rest waiting in order, at most ``MAX_WAITING``."""

    def __init__(self, path: RequestPath, store: Store, metrics: Metrics, settle: BatchSpend) -> None:
        self._path = path
        self._store = store
        self._metrics = metrics
        self._settle = settle
        self._busy: set[str] = set()  # the batches waiting or being read
        self._waiting: collections.deque[tuple[RequestContext, Provider, BatchOutput]] = collections.deque()
        self._reading = False  # the reader thread runs (it ends when nothing waits)
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Ended batches whose cost is being read or waits to be (``batch_costs_pending``)."""
        with self._lock:
            return len(self._busy)

    def completed(self, ctx: RequestContext, provider: Provider, batch: dict) -> None:
        """An ended OpenAI batch its owner just saw (see :meth:`ended`)."""
        self.ended(ctx, provider, openai_output(provider, batch))

    def ended(self, ctx: RequestContext, provider: Provider, output: BatchOutput) -> None:
        """An ended batch its owner just saw: queued for the reader, unless already under way."""
        batch_id = output.batch_id
        with self._lock:
            if batch_id in self._busy or len(self._busy) >= MAX_WAITING:  # the rest wait for a later look
                return
            self._busy.add(batch_id)
            self._waiting.append((ctx, provider, output))
            if self._reading:
                return
            self._reading = True
        try:
            threading.Thread(target=self._read_waiting, name="stockyard-batch-costs", daemon=True).start()
        except RuntimeError:  # no thread to be had now: what waits is left to a later look
            with self._lock:
                self._reading = False
                self._busy.difference_update(waiting[2].batch_id for waiting in self._waiting)
                self._waiting.clear()

    def _read_waiting(self) -> None:
        """The one reader: each waiting batch in turn, until none waits."""
        while True:
            with self._lock:
                if not self._waiting:
                    self._reading = False
                    return
                seen, provider, output = self._waiting.popleft()
            self._record(seen, provider, output)

    def record_now(self, ctx: RequestContext, provider: Provider, output: BatchOutput) -> None:
        """Record an ended batch now, on the caller's thread (before its results go away: a
        delete); raises when its results cannot be read. Recorded once all the same."""
        self._write(ctx, provider, output, self.read(provider, output))

    def _record(self, seen: RequestContext, provider: Provider, output: BatchOutput) -> None:
        batch_id = output.batch_id
        try:
            self.record_now(seen, provider, output)
        except Exception as exc:  # left unbilled: the next look at the batch tries again
            log.warning("batch %s: its cost could not be recorded yet: %s", batch_id, self._path.scrub.text(str(exc)))
        finally:
            with self._lock:
                self._busy.discard(batch_id)

    def read(self, provider: Provider, output: BatchOutput) -> BatchTotal:
        """Sum the results' lines as they stream in (a batch with no results costs 0)."""
        pricer = self._path.pricer

        def fees_of(doc: dict) -> int:
            response = openai_response_of(doc)
            return pricer.response_call_fees(response, provider) if response is not None else 0

        total = BatchTotal(output.usage_of, fees_of if output.kind == "batch" else None)
        if output.path is None:
            return total
        table = self._path.pricer.table
        resp = self._path.pool.request(provider.base_url, "GET", output.path, output.headers(provider), None)
        if resp.status >= 400:
            resp.read_all()
            raise RuntimeError(
                f"provider {provider.name!r} answered {resp.status} for batch {output.batch_id}'s results"
            )
        for line in lines_of(resp.chunks()):
            total.add(line, lambda model, mode: table.lookup_mode(model, provider.name, mode, provider.kind))
        return total

    def _write(self, seen: RequestContext, provider: Provider, output: BatchOutput, total: BatchTotal) -> None:
        """One trace row under the batch's owner, with the batch's billed mark in one transaction."""
        ctx = RequestContext(output.endpoint, output.dialect, seen.client_addr, {})
        ctx.key, ctx.key_id, ctx.project = seen.key, seen.key_id, seen.project
        ctx.model = ",".join(total.models)[:200] or None
        ctx.raw = json.dumps(
            {**output.note, "lines": total.lines, "price": f"{BATCH_PRICE[0]}/{BATCH_PRICE[1]} of the models' rates"}
        ).encode()
        a = ctx.attempt
        a.provider, a.upstream_model, a.status = provider, ctx.model, 200
        a.usage = total.usage
        a.cost_uc = total.cost()
        a.cost_status = "exact" if a.cost_uc is not None else "unknown"
        if total.unpriced:
            a.error_message = f"no price for {', '.join(sorted(total.unpriced))[:500]}"
        ctx.complete = True
        billed = self._store.write(bill_once(ctx, output.batch_id, output.kind, self._path.settings, self._settle))
        if billed is None:
            return
        settle_billed(ctx, billed, self._metrics)
        log.info(
            "batch %s: %d lines, %d+%d tokens, recorded under trace %s",
            output.batch_id,
            total.lines,
            total.usage.prompt_tokens,
            total.usage.completion_tokens,
            ctx.trace_id,
        )


class BatchWatch:
    """Looks at every unbilled batch now and then, as its owner would: one that ended is then
    recorded by :class:`BatchCosts` (once, whoever looks first) and not asked about again. Each
    replica may run one: marking the batch billed in the row's transaction keeps the record single."""

    def __init__(
        self,
        store: Store,
        looks: Mapping[str, Look],
        registry: Callable[[], Registry],
        keys: Callable[[], KeyRing],
        every_s: float,
        expire_holds: Callable[[int], int],
    ) -> None:
        self._store = store
        self._expire_holds = expire_holds
        self._looks = looks
        self._registry = registry
        self._keys = keys
        self._every_s = every_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._after: tuple[int, str] = (0, "")  # (created_at, id) the last full pass ended at

    def start(self) -> None:
        if self._every_s > 0:
            self._thread = threading.Thread(target=self._run, name="stockyard-batch-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.wait(self._every_s):
            try:
                self.look()
            except Exception as exc:  # a provider or database hiccup: the next pass tries again
                log.warning("batch watch: a pass failed: %s: %s", type(exc).__name__, exc)

    def look(self) -> int:
        """One pass over up to ``PASS_ROWS`` unbilled batches, oldest first, going on where the
        last pass stopped (so batches that are skipped, or never end, cannot keep newer ones from
        being looked at): how many were retrieved. Those it no longer looks at give back what
        they held (``Ownership.expire_holds``)."""
        since = int((time.time() - WATCH_DAYS * 86400) * 1000)
        self._expire_holds(since)
        after_ms, after_id = self._after
        rows = (
            self._store.read()
            .execute(
                "SELECT id, kind, key_id, provider, created_at FROM owned_objects"
                f" WHERE kind IN ({', '.join('?' * len(self._looks))}) AND billed = 0 AND created_at >= ?"
                " AND (created_at > ? OR (created_at = ? AND id > ?))"
                f" ORDER BY created_at, id LIMIT {PASS_ROWS}",
                (*self._looks, since, after_ms, after_ms, after_id),
            )
            .fetchall()
        )
        self._after = (rows[-1]["created_at"], rows[-1]["id"]) if len(rows) == PASS_ROWS else (0, "")
        seen = 0
        for row in rows:
            if self._stopping.is_set():
                break
            provider = self._registry().by_name.get(row["provider"])
            key = self._keys().by_id(row["key_id"]) if row["key_id"] else None
            if provider is None or (row["key_id"] and key is None):
                continue  # the provider or the key is gone: nobody to ask, nobody to bill
            ctx = RequestContext("batches.watch", OPENAI, "", {})
            if key is not None:
                ctx.key, ctx.key_id, ctx.project = key, key.id, key.project
            try:
                self._looks[row["kind"]](ctx, provider, row["id"])
            except Exception as exc:  # this provider is down or its key unusable: the others go on
                log.warning("batch watch: batch %s: %s: %s", row["id"], type(exc).__name__, exc)
                continue
            seen += 1
        return seen
