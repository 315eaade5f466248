"""Responses API state: the responses Stockyard keeps, and the routes that read them.

A ``/v1/responses`` request with ``store`` not false leaves a row in ``responses``, scoped to
the client key that made it (another key gets 404, as if it did not exist):

- passed through (the provider speaks the Responses API and keeps the state): which provider
  made it, so GET/DELETE/cancel/input_items and ``previous_response_id`` go there, its
  usage (in ``response``), which the next turn's worst case counts, and its output item ids
  (``response_items``): the provider resolves an item id from any key's responses, so an input
  item naming one by its id alone passes only for the key that made it (:meth:`Conversations.check_stored_names`);
- translated (a chat-only provider): this turn's input items, the output items and the
  response object, so the next turn's ``previous_response_id`` rebuilds the conversation
  (the chain of previous rows, oldest first) and GET/DELETE/input_items are served from here.

A ``conversation`` (OpenAI's Conversations API, which ``stockyard.conversations_api`` serves)
is joined here too (``Conversations.join``): its items go in front of ``input`` for every
provider, and the turn is appended to it once its response has completed, or ended
``incomplete`` (``_append``).

Both writes are the writer's, never waited for where the answer is made: a stream's end is
converted on the stream relay's thread, which must not wait on the database, and nothing in the
answer names a row the key must own first (a claim does: ``RequestContext.claims_deferred``), so
the client's bytes go on. The request thread waits for them before its trace
(:meth:`Conversations.settle`: a failure is one log line and a note in the trace; the answer
stands). A row is visible to lookups from the moment the adapter hands the response over (before
the client sees its end), through a small in-memory table of rows the writer has not yet
committed, and a conversation is read once its turn being appended is committed
(``ConversationStore.find``); so a client's next turn never races the write in this process.
Where another process may take the client's next request (``serve --workers``, PostgreSQL
replicas: ``shared``), that table is not theirs to read: there the answer's end waits for the
commit (:meth:`Conversations._before_the_end`; a stream's last bytes are held by the relay as a
claim's are, the writes urgent). Retention deletes rows with the traces' age limit (``stockyard.retention``).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import threading
import time
import zlib
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable
from urllib.parse import urlencode

from .context import Answer, Conversation, RequestContext
from .conversations_api import (
    MINTED_ITEM,
    STORED_ID,
    ConversationStore,
    check_item_id,
    item_list,
    minted_here,
    normalized,
    page_params,
)
from .conversations_api import not_found as conversation_not_found
from .errors import RESPONSES, ProxyError, described, sse_error_event
from .estimate import referenced_images, size_tokens, text_tokens
from .httpio import Request, Response, check_method, json_bytes, json_response
from .objectrefs import referenced_containers
from .pricing import Usage
from .providers import Provider, Registry
from .providers import responses as translate
from .providers.chatshape import note
from .providers.messages_adapters import ESTIMATE_HEADER, prompt_estimate
from .providers.responses_adapters import ended_in, upstream_headers, upstream_path
from .scrub import Scrubber
from .store import Store, storable
from .store.traces import ZLIB_LEVEL
from .store.writer import FULL_WAIT_S
from .streamrelay import Unheld
from .upstream import Pool, UpstreamError, UpstreamResponse

if TYPE_CHECKING:
    from .background import BackgroundResponses

log = logging.getLogger("stockyard.conversations")
PATH = re.compile(rf"^/v1/responses/({STORED_ID})(/cancel|/input_items)?$")


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint for a call on a stored response: ``responses.retrieve``, ``.delete``,
    ``.cancel`` or ``.input_items``."""
    match = PATH.match(path)
    action = match.group(2) if match is not None else None
    if action:
        return f"responses.{action[1:]}"
    return "responses.delete" if method == "DELETE" else "responses.retrieve"


MAX_CHAIN = 1000  # previous responses walked to rebuild one conversation
HELD_CHUNK = 32  # item ids looked up in one statement (held_items)
HELD_SQL = (
    "SELECT i.item_id, r.key_id FROM response_items i JOIN responses r ON r.id = i.response_id "
    f"WHERE i.item_id IN ({', '.join('?' * HELD_CHUNK)})"
)
PENDING_S = 60.0  # an uncommitted row is long committed after this
UNFINISHED = ("in_progress", "queued")  # a response kept as it starts (a pass-through's response.created)
SETTLE_WAIT_S = 30.0  # a request's trace waits this long at most for the writes keeping what it made
REFUSED_IDS = "conversations.refused_ids"  # ctx.state: response ids this request found another key's
APPENDED = ("completed", "incomplete")  # a response whose turn joins its conversation


def queue_wait(ctx: RequestContext) -> float:
    """How long a write keeping what the request made may wait for room in the writer's queue: none
    on the stream relay's thread (``ctx.claims_deferred`` set: it carries every relayed stream, so a
    full queue is the write's ``queue.Full`` there, noted by ``settle``), else the writer's own
    ``FULL_WAIT_S``, as any sender waits."""
    return 0.0 if ctx.claims_deferred is not None else FULL_WAIT_S


def settled(future: Future) -> Future:
    """A future done when ``future`` is, and never failed: a stream held for a write goes on
    whether it was committed or not (its failure is ``settle``'s to log and note, not the answer's),
    and once its hold limit passes without it (``Unheld``: not cut, as for a claim)."""
    done: Future = Unheld()
    future.add_done_callback(lambda _: done.set_result(None))
    return done


_SELECT_TURN = (  # a stored response without its whole answer (StoredResponse.from_row reads NULL as None)
    "SELECT id, key_id, provider, model, created_at, passthrough, previous_id, input_items, output_items, "
    "NULL AS response FROM responses WHERE id = ?"
)


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


@dataclass
class StoredResponse:
    id: str
    key_id: str | None
    provider: str
    model: str | None
    created_at: int  # ms
    passthrough: bool
    previous_id: str | None = None
    input_items: list[dict] | None = None
    output_items: list[dict] | None = None
    response: dict | None = None
    item_ids: frozenset[str] = frozenset()  # passed through: its output items' ids (response_items)
    trace_id: str | None = None  # the request's trace: erasing its bodies erases this row (operations.stored)

    def write(self, conn: sqlite3.Connection) -> None:
        """Insert or update this key's row (its item ids with it); an id another key already holds
        stays that key's, with its items."""
        conn.execute("DELETE FROM responses WHERE id = ? AND key_id IS ?", (self.id, self.key_id))  # items cascade
        inserted = conn.execute(
            "INSERT OR IGNORE INTO responses (id, key_id, provider, model, created_at, passthrough, previous_id, "
            "input_items, output_items, response, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.id,
                self.key_id,
                self.provider,
                self.model,
                self.created_at,
                int(self.passthrough),
                self.previous_id,
                _pack(self.input_items),
                _pack(self.output_items),
                _pack(self.response),
                self.trace_id,
            ),
        ).rowcount
        if inserted:  # an item id another response holds stays that response's
            for item_id in sorted(self.item_ids):
                sql = "INSERT OR IGNORE INTO response_items (item_id, response_id) VALUES (?, ?)"
                conn.execute(sql, (item_id, self.id))
        else:  # kept from the stream relay's thread, which read nothing first (Conversations._keep)
            log.warning("response id %s from provider %r is already another key's; not kept", self.id, self.provider)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredResponse:
        return cls(
            row["id"],
            row["key_id"],
            row["provider"],
            row["model"],
            row["created_at"],
            bool(row["passthrough"]),
            row["previous_id"],
            _unpack(row["input_items"]),
            _unpack(row["output_items"]),
            _unpack(row["response"]),
        )


def resolvable(item: Any) -> bool:
    """An ``item_reference`` Stockyard may put an item in place of: it names an output item of a
    translated response (``translate.minted_in``) or a conversation's item (``minted_here``)."""
    if not translate.is_reference(item):
        return False
    ident = item.get("id")  # each body's item passes here: the two patterns inline, not two more calls
    return isinstance(ident, str) and (
        MINTED_ITEM.match(ident) is not None or translate.MINTED.fullmatch(ident) is not None
    )


def kept_history_tokens(row: StoredResponse) -> int:
    """Input a provider that keeps the conversation (a passed-through response) bills for
    continuing it: as much as its last turn used, prompt and answer."""
    usage = Usage.from_openai((row.response or {}).get("usage"))
    return usage.prompt_tokens + usage.completion_tokens


def keep_usage(conn: sqlite3.Connection, response_id: str, key_id: str | None, usage: object) -> None:
    """Inside a writer job: the usage of a passed-through response that ended after it was kept (a
    background response, kept with its queued answer), which the next turn's worst case counts
    (:func:`kept_history_tokens`). Only onto ``key_id``'s row: a provider that repeats ids may have
    given the id to another key first, whose row keeps its own usage."""
    if isinstance(usage, dict):
        sql = "UPDATE responses SET response = ? WHERE id = ? AND key_id IS ? AND passthrough = 1"
        conn.execute(sql, (_pack({"usage": usage}), response_id, key_id))


def _pack(value: Any) -> bytes | None:
    return None if value is None else zlib.compress(json_bytes(value), ZLIB_LEVEL)


def _unpack(data: bytes | None) -> Any:
    return None if data is None else json.loads(zlib.decompress(data))


def containers_run(items: object) -> set[str]:
    """The containers a response's tools ran in: every ``container_id`` its output items name (a
    ``code_interpreter_call``'s, a hosted ``shell_call``'s environment), as a body naming them is
    read (``objectrefs.referenced_containers``). A new ``auto`` one is made by the provider and
    named only here."""
    return set(referenced_containers({"output": items}))


def output_ids(response: dict) -> frozenset[str]:
    """The ids of a response's output items, as its provider named them."""
    output = response.get("output")
    items = output if isinstance(output, list) else []
    return frozenset(o["id"] for o in items if isinstance(o, dict) and isinstance(o.get("id"), str) and o["id"])


def too_large(max_bytes: int, param: str, what: str) -> ProxyError:
    """Stored items a request puts in past what its client could have sent whole: compressed in
    the database, they must not grow without bound in memory and upstream."""
    return ProxyError(
        400,
        f"{what} larger than {max_bytes} bytes (STOCKYARD_MAX_BODY_BYTES less this request); start a new conversation",
        param=param,
        code="conversation_too_large",
    )


def not_found(response_id: str, param: str | None = None) -> ProxyError:
    return ProxyError(404, f"No response found with id '{response_id}'.", param=param, code="not_found")


# (container ids, the key whose passed-through response ran code in them, its provider's name)
# containers_api.claim_made: (ids, key id, provider, the stream relay's futures or None)
ClaimContainers = Callable[[set[str], "str | None", str, "list[Future] | None"], None]


class Conversations:
    """The stored responses: kept after a turn, found for the next, served to their key."""

    def __init__(
        self,
        store: Store,
        registry: Callable[[], Registry],
        pool: Pool,
        scrub: Scrubber,
        max_bytes: int,
        claim_containers: ClaimContainers = lambda ids, key_id, provider, deferred: None,
        shared: bool = False,
        background: BackgroundResponses | None = None,
    ) -> None:
        self._store = store
        self._background = background  # background responses: recorded as they start, billed once they end
        # other processes serve the same clients (workers, replicas): they find a kept turn only once
        # it is committed, so the answer's end waits for that (_before_the_end)
        self._shared = shared
        self._claim_containers = claim_containers  # containers_api.claim_made: what the code ran in, the key's
        self._max_bytes = max_bytes  # the largest conversation rebuilt for a request
        self._registry = registry
        self._pool = pool
        self._scrub = scrub
        self._pending: dict[str, tuple[StoredResponse, float]] = {}
        self.threads = ConversationStore(store, max_bytes)  # the Conversations API's conversations
        self._lock = threading.Lock()

    # -- the request path ---------------------------------------------------------------------
    def open(self, ctx: RequestContext, admissible: Callable[[], None] = lambda: None) -> None:
        """Before the modules: the stored items the body names — a ``conversation`` (:meth:`join`)
        or the previous turn, which this key must have made through Stockyard (404 otherwise,
        whatever the provider keeps), and the history rebuilt from it; the items its
        ``item_reference``s name — so budgets, rate limits and the cache see the whole
        conversation before they decide. ``admissible`` raises the rate limit's 429 before what
        the body names is read (``early.check_early``)."""
        body = ctx.body
        conv = Conversation(new_response_id(), int(time.time()), lambda provider, r: self._keep(ctx, provider, r))
        conv.see = lambda provider, items: self._see(ctx, provider, items)
        ctx.conversation = conv
        room = self._max_bytes - len(ctx.raw)  # the conversation a client could have sent whole
        if body.get("conversation") is not None:
            room -= self.join(ctx, room, admissible)
        elif body.get("previous_response_id") is not None:
            admissible()
        put_in = self.resolve_references(ctx, room)  # items the body names, not holds
        if ctx.key is not None:  # keys off: one user, whose names are not checked (as its file ids are not)
            self.check_stored_names(ctx.body.get("input"), ctx.key_id)
        data = json.dumps(put_in, ensure_ascii=False).encode() if put_in else b""
        conv.history_tokens += text_tokens(data)
        conv.history_bytes += len(data)
        conv.put_in = conv.put_in or bool(put_in)
        previous = body.get("previous_response_id")
        if previous is None:
            return
        if not isinstance(previous, str) or not previous:
            raise ProxyError(
                400, "'previous_response_id' must be a string", param="previous_response_id", code="invalid_type"
            )
        conv.previous_id = previous
        row = self.find(previous, ctx.key_id)
        if row is None:  # another key's, or one Stockyard never issued: as if unknown
            raise not_found(previous, "previous_response_id")
        if row.passthrough:
            conv.previous_provider = row.provider
            conv.history_tokens += kept_history_tokens(row)
        else:
            conv.history = self.history(row, ctx.key_id, room - len(data))
            rebuilt = json.dumps(conv.history, ensure_ascii=False).encode()
            conv.history_tokens += text_tokens(rebuilt)
            conv.history_bytes += len(rebuilt)
            conv.history_images = referenced_images(conv.history, b"", walk=True)

    def join(self, ctx: RequestContext, room: int, admissible: Callable[[], None]) -> int:
        """``conversation`` (its id, or ``{"id": …}``): the items of this key's conversation go in
        front of ``input`` here, for every provider, so the modules (budgets, tpm, guard, redact)
        see the whole prompt, and ``conversation`` stays as ``{"id": …}`` only for the answer to
        echo (the pass-through leaves it out of the body: a provider that speaks Responses would
        look for one of its own); its size is bounded like a rebuilt ``previous_response_id``
        chain (``room``: the bytes it may add), and it is read only once the rate limit would
        admit a request that large (``admissible``). The turn is appended once it completes
        (``_append``). Returns the bytes of the items it put in."""
        body, conv = ctx.body, ctx.conversation
        assert conv is not None
        if body.get("previous_response_id") is not None:  # OpenAI refuses the pair the same way
            raise ProxyError(
                400,
                "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or "
                "'conversation'.",
                param="conversation",
                code="mutually_exclusive_parameters",
            )
        if body.get("background"):  # it completes at the provider later, where Stockyard never sees it
            raise ProxyError(
                400,
                "a background response cannot join a conversation: Stockyard appends a turn when it sees "
                "the response complete; send it without background",
                param="background",
                code="unsupported_parameter",
            )
        value = body["conversation"]
        conversation_id = value.get("id") if isinstance(value, dict) else value
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ProxyError(
                400,
                "'conversation' must be a conversation id or an object with its 'id'",
                param="conversation",
                code="invalid_type",
            )
        sent = body.get("input")
        if sent is not None and not isinstance(sent, (str, list)):
            raise ProxyError(400, "'input' must be a string or an array of items", param="input", code="invalid_type")
        found = self.threads.find(conversation_id, ctx.key_id)
        if found is None:  # another key's, or none Stockyard holds: as if unknown
            raise conversation_not_found(conversation_id, "conversation")
        conv.conversation_id = found.id  # this key's: its refusal's trace names it (gen_ai.conversation.id)
        counted = conv.history_tokens
        conv.history_tokens += size_tokens(found.bytes)  # its items, as the row counts them
        admissible()
        history, size = self.threads.context(found, room)
        sent = [{"role": "user", "content": sent}] if isinstance(sent, str) else sent or []
        for i, item in enumerate(sent):  # the turn's items are kept under their ids once it completes
            check_item_id(item, f"input[{i}]")
        ctx.body = {**body, "conversation": {"id": found.id}, "input": history + sent}
        ctx.body_changed = True
        conv.turn_items = normalized(sent)
        conv.put_in = bool(history)  # the budget walks the body for what they name (estimate.request_cost)
        conv.history_tokens = counted + size_tokens(size)
        conv.history_bytes += size
        return size

    def resolve_references(self, ctx: RequestContext, room: int) -> list[dict]:
        """``item_reference`` input items naming an output item of a response this key stored
        translated (Stockyard holds its items), or an item of one of its conversations by the id
        Stockyard minted (:meth:`conversation_items`), are replaced by that item, as OpenAI resolves
        them: the Vercel AI SDK sends earlier turns so while ``store`` is on. Others stay as
        sent (a provider that speaks Responses resolves its own; translation refuses them).
        Returns the items put in (budgets and tpm count them). Each stored response is read
        once however often the body names it, and what the items put in may not pass ``room``
        (a body naming one large item many times would otherwise grow without bound)."""
        items = ctx.body.get("input")
        if not isinstance(items, list):
            return []
        at = [i for i, item in enumerate(items) if resolvable(item)]  # one pass: a body of others costs no more
        if not at:
            return []
        outputs: dict[str, dict[str, dict]] = {}  # response id → its output items by id
        kept = self.conversation_items([items[i] for i in at], ctx.key_id, room)
        sizes: dict[int, int] = {}  # bytes of each item put in, by identity
        resolved, put_in, size = list(items), [], 0
        for i in at:
            item = items[i]
            stored = self.referenced(item, ctx.key_id, outputs)
            if stored is None and minted_here(item):
                stored = kept.get(item["id"])
                if stored is None:  # another key's, or one no conversation holds: as any unknown id
                    raise translate.unknown_item(f"input[{i}]", item["id"])
            if stored is not None:
                if id(stored) not in sizes:
                    sizes[id(stored)] = len(json.dumps(stored, ensure_ascii=False).encode())
                size += sizes[id(stored)]
                if size > room:
                    raise too_large(room, "input", "the stored items input names by item_reference are")
                put_in.append(stored)
                resolved[i] = stored
        if not put_in:
            return []
        ctx.body = {**ctx.body, "input": resolved}
        ctx.body_changed = True
        conv = ctx.conversation
        if conv is not None and conv.turn_items:  # a conversation keeps the item, not a name it may outlive
            named = {stored["id"]: stored for stored in put_in}
            conv.turn_items = [
                named.get(t["id"], t) if translate.is_reference(t) and isinstance(t.get("id"), str) else t
                for t in conv.turn_items
            ]
        return put_in

    def conversation_items(self, items: list, key_id: str | None, room: int) -> dict[str, dict]:
        """The items of this key's conversations that ``item_reference``s name by an id Stockyard
        minted (``msg_sy…``: no provider knows it, so the item itself must go), by id; at most
        ``room`` bytes of them."""
        named = {item["id"] for item in items if translate.is_reference(item) and minted_here(item)}
        found = self.threads.items_named(named, key_id, room) if named else {}
        if found is None:
            raise too_large(room, "input", "the stored items input names by item_reference are")
        return found

    def check_stored_names(self, items: Any, key_id: str | None) -> None:
        """Every input item naming a stored item by its id alone (``translate.stored_name``: an
        ``item_reference`` that :meth:`resolve_references` did not put an item in place of, a
        provider's reasoning item or image generation call without its content) names an output item of a passed-through
        response this key holds: a provider that keeps responses holds every key's under the one
        provider key and would read another's to the model. Otherwise the 400 translation gives
        (``translate.unknown_item``), before any module or provider call. An id a Stockyard
        conversation gave an item (``minted_here``) names nothing there: a reference naming one was
        replaced by the item (:meth:`resolve_references`), an item carrying its content goes without it.

        The ids are looked up in the body's order, :data:`HELD_CHUNK` distinct ones at a time, and
        the first chunk naming one this key does not hold ends it: a body of made-up ids costs
        one statement, not one per chunk of all it names (the key's own are as many as it made)."""
        if not isinstance(items, list):
            return
        held: set[str] = set()  # ids looked up and found this key's
        chunk: dict[str, int] = {}  # ids not looked up yet → the first input index naming each
        for i, item in enumerate(items):
            name = translate.stored_name(item)
            if name is None or minted_here(item):
                continue
            if not isinstance(name, str):
                self._check_held(chunk, key_id)  # an unknown one named before this is the 400
                raise translate.unknown_item(f"input[{i}]", name)
            if name not in held:
                chunk.setdefault(name, i)
            if len(chunk) == HELD_CHUNK:
                held |= self._check_held(chunk, key_id)
                chunk = {}
        self._check_held(chunk, key_id)

    def _check_held(self, named: dict[str, int], key_id: str | None) -> set[str]:
        """``named`` (id → the first input index naming it), all this key's; else the 400 for the
        first one that is not."""
        held = self.held_items(set(named), key_id) if named else set()
        unknown = [(i, name) for name, i in named.items() if name not in held]
        if unknown:
            i, name = min(unknown)
            raise translate.unknown_item(f"input[{i}]", name)
        return held

    def held_items(self, item_ids: set[str], key_id: str | None) -> set[str]:
        """Which of ``item_ids`` are output items of a passed-through response ``key_id`` holds, its
        row committed or pending (a response just made). An id in both is the committed row's (a
        provider that repeats item ids: the first response keeps it). Read in chunks of one size,
        each chunk one statement whatever the number of ids."""
        owners: dict[str, str | None] = {}
        with self._lock:  # before the store: a row committed after this read is in the store's read
            for record, _ in self._pending.values():
                for item_id in record.item_ids & item_ids:
                    owners.setdefault(item_id, record.key_id)
        ordered = sorted(filter(storable, item_ids))
        for start in range(0, len(ordered), HELD_CHUNK):
            chunk = ordered[start : start + HELD_CHUNK]
            chunk += [chunk[-1]] * (HELD_CHUNK - len(chunk))
            rows = self._store.read().execute(HELD_SQL, chunk)
            owners.update((row["item_id"], row["key_id"]) for row in rows)  # the committed row's wins
        return {item_id for item_id, owner in owners.items() if owner == key_id}

    def referenced(self, item: Any, key_id: str | None, outputs: dict[str, dict[str, dict]]) -> dict | None:
        """The stored output item an ``item_reference`` names, if this key's translated response
        holds it (``outputs``: the responses read so far for this request)."""
        response_id = translate.minted_in(item.get("id")) if translate.is_reference(item) else None
        if response_id is None:
            return None
        if response_id not in outputs:
            found = self.output_items(response_id, key_id)
            outputs[response_id] = {o["id"]: o for o in found if isinstance(o, dict) and isinstance(o.get("id"), str)}
        return outputs[response_id].get(item["id"])

    def output_items(self, response_id: str, key_id: str | None) -> list:
        """The output items of this key's translated response with this id (none for another
        key's or a passed-through one): its one column, not the whole row with its input."""
        with self._lock:
            pending = self._pending.get(response_id)
        if pending is not None:
            owner, passthrough, packed = pending[0].key_id, pending[0].passthrough, None
            items = pending[0].output_items
        else:
            sql = "SELECT key_id, passthrough, output_items FROM responses WHERE id = ?"
            row = self._store.read().execute(sql, (response_id,)).fetchone()
            if row is None:
                return []
            owner, passthrough, packed, items = row["key_id"], bool(row["passthrough"]), row["output_items"], None
        if owner != key_id or passthrough:
            return []
        items = _unpack(packed) if packed is not None else items
        return items if isinstance(items, list) else []

    def count_input(self, ctx: RequestContext) -> None:
        """``input_tokens`` on a translated provider: the translated prompt and tools counted here
        (``prompt_estimate``, as ``count_tokens`` counts a Messages request), marked as an estimate."""
        conv = ctx.conversation
        if ctx.endpoint == "input_tokens" and ctx.route is not None and not ctx.route.provider.speaks_responses:
            history = conv.history if conv is not None else None
            chat = translate.to_chat({k: v for k, v in ctx.body.items() if k != "stream"}, history)
            answer = {"object": "response.input_tokens", "input_tokens": prompt_estimate(chat)}
            ctx.answer = Answer(200, json.dumps(answer).encode(), headers={ESTIMATE_HEADER: "estimate"})

    def _see(self, ctx: RequestContext, provider: Provider, items: object) -> None:
        """Output items of a passed-through ``/v1/responses`` answer (the response's, or those a
        stream finished): the containers its code interpreter ran in become this key's if no key
        holds them (an ``auto`` one the provider made; one the request named is the key's already:
        ``files_api.Ownership.check_references``), so the key can read the files its answer cites
        and run code there again, and no other key can. ``store`` does not matter."""
        if ctx.endpoint == "responses" and provider.speaks_responses:
            ran = containers_run(items)
            if ran:  # on the stream relay's thread, left to the writer (RequestContext.claims_deferred)
                self._claim_containers(ran, ctx.key_id, provider.name, ctx.claims_deferred)

    def _keep(self, ctx: RequestContext, provider: Provider, response: dict) -> None:
        """Record a finished response (unless ``store`` is false); visible to lookups at once. One
        left running in the background is recorded as its key's, to be billed when it ends."""
        if self._background is not None:
            self._background.started(ctx, provider, response)
        self._see(ctx, provider, response.get("output"))
        self._append(ctx, response)
        response_id = response.get("id")
        if ctx.endpoint != "responses" or ctx.body.get("store") is False or not isinstance(response_id, str):
            return
        passthrough = provider.speaks_responses
        record = StoredResponse(
            response_id,
            ctx.key_id,
            provider.name,
            response.get("model") if isinstance(response.get("model"), str) else ctx.model,
            int(time.time() * 1000),
            passthrough,
            ctx.conversation.previous_id if ctx.conversation else None,
            trace_id=ctx.trace_id,
        )
        if passthrough:  # its usage (what the next turn's worst case counts) and whose its items are
            usage = response.get("usage")
            record.response = {"usage": usage} if isinstance(usage, dict) else None
            record.item_ids = output_ids(response)
        else:
            turn = ctx.conversation.turn_items if ctx.conversation else None  # not the conversation before it
            # this turn's input as Responses items with ids, as input_items lists them
            record.input_items = turn if turn is not None else normalized(ctx.body.get("input"))
            output = response.get("output")
            record.output_items = output if isinstance(output, list) else []
            record.response = response
        if self._anothers(ctx, response_id):  # a provider that repeats ids: the first key keeps it
            log.warning(
                "response id %s from provider %r is already another key's; not kept", response_id, provider.name
            )
            return
        now = time.monotonic()
        with self._lock:
            self._pending = {k: v for k, v in self._pending.items() if now - v[1] < PENDING_S}
            self._pending[response_id] = (record, now)
        # the writer's, the client's bytes not held for it (they name no row the key must own first)
        future = self._store.write_later(record.write, queue_wait(ctx), urgent=self._shared)
        future.add_done_callback(lambda _: self._committed(record))  # or failed: it will never be
        ctx.kept_later.append((f"response {response_id} was not kept", future))
        # a stream's response.created: its end is to come; a whole answer still running (a background
        # response, queued) is the end the client's next retrieve may reach another process with
        if not ctx.stream or response.get("status") not in UNFINISHED:
            self._before_the_end(ctx, future)

    def _before_the_end(self, ctx: RequestContext, future: Future) -> None:
        """Where another process may take the client's next request, the answer's end waits for
        ``future`` (a write keeping what this turn made), so that process finds it: on the stream
        relay's thread the stream's bytes are held until it is done (``ctx.claims_deferred``), here
        the request thread waits (``SETTLE_WAIT_S`` at most). A failed write still lets the answer end."""
        if not self._shared:
            return
        if ctx.claims_deferred is not None:
            ctx.claims_deferred.append(settled(future))
        else:
            wait_for_futures([future], timeout=SETTLE_WAIT_S)

    def _anothers(self, ctx: RequestContext, response_id: str) -> bool:
        """Whether another key holds this response id. On the stream relay's thread (which must not
        wait on the database) from what is known without a read: the ids this request found
        another key's before (a pass-through's ``response.created`` is kept on the request thread)
        and the rows not committed yet; a committed row of another key's is then kept by the write
        itself (``StoredResponse.write``)."""
        refused: set[str] = ctx.state.setdefault(REFUSED_IDS, set())
        if response_id in refused:
            return True
        if ctx.claims_deferred is not None:
            with self._lock:
                pending = self._pending.get(response_id)
            held = pending[0] if pending is not None else None
        else:
            held = self.lookup(response_id)
        if held is not None and held.key_id != ctx.key_id:
            refused.add(response_id)
            return True
        return False

    def _append(self, ctx: RequestContext, response: dict) -> None:
        """A turn that joined a conversation, once its response has completed (or ended
        ``incomplete`` at its output cap: an answer, if a short one): its input items, then the
        response's output items, appended by the writer (its next turn's read waits for the commit:
        ``ConversationStore.find``); ``store`` does not matter (the conversation is where the client keeps
        them). A response that failed, or a stream that broke, appends nothing."""
        conv = ctx.conversation
        if ctx.endpoint != "responses" or conv is None or conv.conversation_id is None or conv.appended:
            return
        if response.get("status") not in APPENDED:  # in_progress (a stream's start), failed, cancelled
            return
        conv.appended = True
        turn = (conv.turn_items or []) + normalized(response.get("output"))
        # the writer's, the client's bytes not held for it; a failure: the answer stands, the
        # conversation has a gap (settle logs and traces it); its next read waits for it (threads.find)
        future = self.threads.append_later(conv.conversation_id, turn, ctx.trace_id, queue_wait(ctx), self._shared)
        what = f"response {response.get('id')}: its turn was not appended to conversation {conv.conversation_id}"
        ctx.kept_later.append((what, future))
        self._before_the_end(ctx, future)

    def settle(self, ctx: RequestContext, wait_s: float = SETTLE_WAIT_S) -> None:
        """Before the request's trace (its answer sent): wait for the writes that keep what it made
        (``ctx.kept_later``), ``wait_s`` at most for them all (one deadline: a request keeping N
        writes does not wait N times as long); each that failed is logged once, one line, and noted
        in the trace. Never raises: the answer went right, what was not kept is the database's failure."""
        deadline = time.monotonic() + wait_s
        for what, future in ctx.kept_later:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                continue
            except FutureTimeout:
                why = f"not committed after {wait_s:g} s"
            except Exception as exc:  # a full queue too: the store's queue.Full says it, with its depth
                why = described(exc)
            log.warning("trace %s: %s: %s", ctx.trace_id, what, why)
            note(ctx, f"{what}: {why}")
        ctx.kept_later.clear()

    def _committed(self, record: StoredResponse) -> None:
        """The row is in the database (or will never be): lookups read it there from now on,
        so the turn's items do not stay in memory (up to the body limit each)."""
        with self._lock:
            if self._pending.get(record.id, (None,))[0] is record:
                del self._pending[record.id]

    def adopt(self, response_ids: Iterable[str], key_id: str) -> None:
        """The responses among ``response_ids`` that no key holds become ``key_id``'s, committed on
        return: a WebSocket opened while its server did not know its key yet (open mode) stored its
        turns as nobody's, and once the key is known its next turn names them as its own."""
        ids = sorted(set(response_ids))
        with self._lock:
            for response_id in ids:
                pending = self._pending.get(response_id)
                if pending is not None and pending[0].key_id is None:
                    pending[0].key_id = key_id  # its write, not run yet, keeps it for the key
        rows = [(key_id, response_id) for response_id in ids]
        self._store.write(
            lambda conn: conn.executemany("UPDATE responses SET key_id = ? WHERE id = ? AND key_id IS NULL", rows)
        )

    def find(self, response_id: str, key_id: str | None, turn_only: bool = False) -> StoredResponse | None:
        """The stored response with this id if ``key_id`` made it (None otherwise: another key's is unknown);
        ``turn_only``: its items without the whole ``response`` (a chain's earlier turns: unpacking it was
        most of the walk's time)."""
        record = self.lookup(response_id, turn_only)
        return record if record is not None and record.key_id == key_id else None

    def lookup(self, response_id: str, turn_only: bool = False) -> StoredResponse | None:
        """The stored response with this id, whoever made it."""
        with self._lock:
            pending = self._pending.get(response_id)
        if pending is not None:
            record: StoredResponse | None = pending[0]
        elif not storable(response_id):
            record = None
        else:
            sql = _SELECT_TURN if turn_only else "SELECT * FROM responses WHERE id = ?"
            row = self._store.read().execute(sql, (response_id,)).fetchone()
            record = StoredResponse.from_row(row) if row is not None else None
        return record

    def history(self, row: StoredResponse, key_id: str | None, max_bytes: int) -> list[dict]:
        """The conversation up to and including ``row``: each turn's input, then its output, oldest first.

        A turn deleted meanwhile ends the chain there (the conversation starts after it). A
        conversation larger than ``max_bytes`` (what the client could have sent whole) is a 400:
        stored turns are compressed, so a long chain must not grow unbounded in memory."""
        chain = [row]
        size = 0
        while True:
            turn = chain[-1]
            size += len(json.dumps((turn.input_items or []) + (turn.output_items or []), ensure_ascii=False).encode())
            if size > max_bytes:
                raise too_large(max_bytes, "previous_response_id", "the conversation before previous_response_id is")
            if not turn.previous_id or len(chain) >= MAX_CHAIN:
                break
            earlier = self.find(turn.previous_id, key_id, turn_only=True)
            if earlier is None or earlier.passthrough:
                break
            chain.append(earlier)
        items: list[dict] = []
        for turn in reversed(chain):
            items += (turn.input_items or []) + (turn.output_items or [])
        return items

    def delete(self, response_id: str) -> None:
        with self._lock:
            self._pending.pop(response_id, None)
        self._store.write(lambda conn: conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)))

    # -- GET/DELETE /v1/responses/{id}, POST …/cancel, GET …/input_items -----------------------
    def answer(self, req: Request, key_id: str | None) -> Response:
        """One of the routes on a response the client's key made; the provider's own when passed through."""
        match = PATH.match(req.path)
        assert match is not None
        response_id, action = match.group(1), match.group(2) or ""
        allowed = {"": ("GET", "DELETE"), "/cancel": ("POST",), "/input_items": ("GET",)}[action]
        check_method(req.method, allowed)
        row = self.find(response_id, key_id)
        if row is None:
            raise not_found(response_id)
        if row.passthrough:
            return self._forward(req, row, action, urlencode(req.query))
        if action == "/cancel":
            raise ProxyError(400, "Cannot cancel a synchronous response.", code="invalid_request")
        if action == "/input_items":
            return json_response(list_items(row.input_items or [], req.query))
        if req.method == "DELETE":
            self.delete(response_id)
            return json_response({"id": response_id, "object": "response", "deleted": True})
        return json_response(row.response or {})

    def _forward(self, req: Request, row: StoredResponse, action: str, query: str) -> Response:
        """Ask the provider that made the response; a successful DELETE forgets it here too."""
        provider = self._registry().by_name.get(row.provider)
        if provider is None or not provider.speaks_responses:
            raise ProxyError(
                502,
                f"response {row.id!r} was made by provider {row.provider!r}, which is no longer configured",
                code="provider_gone",
            )
        rest = f"/responses/{row.id}{action}" + (f"?{query}" if query else "")
        body = req.body if req.method == "POST" else None
        if req.method == "DELETE" and self._background is not None:  # its usage goes with it
            self._background.before_delete(row.key_id, provider, row.id)
        try:
            resp = self._pool.request(
                provider.base_url, req.method, upstream_path(provider, rest), upstream_headers(provider), body or None
            )
            if resp.is_sse and resp.status < 300:  # GET …?stream=true: the events as the provider sends them
                stream = self._relay(resp, row, provider)
                return Response(resp.status, content_type=resp.headers["content-type"], stream=stream)
            data = resp.read_all()
        except UpstreamError as exc:
            raise exc.answer(provider.name, self._scrub.text) from None
        if req.method == "DELETE" and resp.status < 300:
            self.delete(row.id)
        if req.method == "GET" and not action and resp.status < 300:
            self._record_items(row, data)
        if resp.status < 300 and (action == "/cancel" or (req.method == "GET" and not action)):
            self._ended(row, provider, data)
        content_type = resp.headers.get("content-type", "application/json")
        return Response(resp.status, self._scrub.bytes(data), content_type)

    def _record_items(self, row: StoredResponse, data: bytes) -> None:
        """The output item ids of a passed-through response as its provider answers it now: one
        that ended after Stockyard kept it (``background``) has them only here. Added to its row,
        if that is still this key's and committed; an id another response holds stays its. The
        containers its code ran in are claimed for its key, as ``_see`` does."""
        try:
            doc = json.loads(data)
        except ValueError:
            return
        ids = output_ids(doc) if isinstance(doc, dict) and doc.get("id") == row.id else frozenset()
        if not ids:
            return
        ran = containers_run(doc.get("output"))  # a background response's auto container: its key's
        if ran:
            self._claim_containers(ran, row.key_id, row.provider, None)
        sql = (
            "INSERT OR IGNORE INTO response_items (item_id, response_id) "
            "SELECT ?, id FROM responses WHERE id = ? AND key_id IS ? AND passthrough = 1"
        )

        def job(conn: sqlite3.Connection) -> None:
            for item_id in sorted(ids):
                conn.execute(sql, (item_id, row.id, row.key_id))

        self._store.submit(job)  # dropped when the queue is full: its items stay unnamed (refused)

    def _ended(self, row: StoredResponse, provider: Provider, data: bytes) -> None:
        """A retrieve's or a cancel's answer: a background response it shows ended is billed (once)."""
        if self._background is None or b'"background"' not in data:
            return
        try:
            doc = json.loads(data)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") == row.id:
            self._background.finished(row.key_id, provider, doc)

    def _relay(self, resp: UpstreamResponse, row: StoredResponse, provider: Provider) -> Generator[bytes, None, None]:
        """A stored response's events, relayed as each read completes them (a background response
        streams for as long as it runs; its end event bills it, once, before the client sees it);
        a break ends with an error event, never a made-up end."""
        try:
            for batch in resp.events():
                ended = ended_in(batch) if self._background is not None else None
                if self._background is not None and ended is not None and ended.get("id") == row.id:
                    self._background.finished(row.key_id, provider, ended)
                yield self._scrub.bytes(b"".join(batch))
        except UpstreamError as exc:
            message = self._scrub.text(f"the provider's stream broke: {exc}")
            yield sse_error_event(RESPONSES, exc.status, message, code=f"upstream_{exc.kind}")
        finally:
            resp.close()


def list_items(items: list[dict], query: dict[str, str]) -> dict:
    """An ``input_items`` page: ``order`` (desc by default), ``after`` an item id, ``limit`` (1-100, 20)."""
    order, limit, after = page_params(query)
    ordered = items if order == "asc" else list(reversed(items))
    if after:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    return item_list(ordered[:limit], len(ordered) > limit)
