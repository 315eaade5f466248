"""OpenAI's Conversations API, served by Stockyard itself for every provider.

A conversation is an ordered list of Responses items (``/v1/conversations…``: create, retrieve,
update its metadata, delete; add, list, retrieve and delete items). A ``/v1/responses``
request naming it (``conversation``) gets its items in front of ``input``, whichever provider
answers (``stockyard.conversations`` puts them there, so the provider's body carries no
``conversation``: a conversation works on any model and may change model between turns), and
once the response has completed (or ended ``incomplete``), that turn's input items and the response's output items
are appended to it.

Stockyard owns them: ids are minted here (``conv_…``; an item sent without an id gets one),
rows live in the database (``conversations``, ``conversation_items``), scoped to the client
key that made them exactly as stored responses are (another key gets 404, as if absent; in
open mode everyone is the one owner). Every write waits for its commit, so the next call, or
the next turn, reads what the last one wrote. A conversation's size is bounded like a body
(``STOCKYARD_MAX_BODY_BYTES``): adding past it, or using one larger than the room a request
leaves, is a 400 ``conversation_too_large``. Retention deletes a conversation unchanged for
as long as stored responses are kept (``stockyard.retention``).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
import zlib
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, Callable

from .deleted import CONVERSATION_ITEM, keep_deleted, kept_mark
from .errors import ProxyError
from .httpio import Request, Response, check_method, json_bytes, json_response, whole_number
from .store import Store, storable
from .store.traces import ZLIB_LEVEL

STORED_ID = "[A-Za-z0-9_-]{1,200}"  # a stored response's, conversation's or item's id in a path
PATH = re.compile(rf"^/v1/conversations(?:/({STORED_ID})(/items(?:/({STORED_ID}))?)?)?$")
ITEM_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "reasoning": "rs",
}
MINTED_ITEM = re.compile(r"^[a-z]+_sy[0-9a-f]{32}$")
MESSAGE_ROLES = ("user", "assistant", "system", "developer")
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
APPEND_WAIT_S = 30.0  # a read of a conversation waits this long at most for the turn being appended (Writer.call's)
NAMED_CHUNK = 32  # item ids looked up in one statement (ConversationStore.items_named)
NAMED_SQL = (
    "SELECT i.id, i.bytes, i.item, c.key_id FROM conversation_items i JOIN conversations c ON c.id = i.conversation_id "
    f"WHERE i.id IN ({', '.join('?' * NAMED_CHUNK)})"
)
MAX_ITEMS_PER_CALL = 1000  # OpenAI takes 20; each item is work here and a row the writer inserts


def endpoint_name(method: str, path: str) -> str:
    """The trace's endpoint for a Conversations API call: ``conversations.create``, ``.retrieve``,
    ``.update``, ``.delete``, ``conversations.items.create``, ``.list``, ``.retrieve``, ``.delete``."""
    match = PATH.match(path)
    conversation, items, item = match.groups() if match is not None else (None, None, None)
    if item:
        return "conversations.items." + ("delete" if method == "DELETE" else "retrieve")
    if items:
        return "conversations.items." + ("create" if method == "POST" else "list")
    if conversation:
        return "conversations." + {"POST": "update", "DELETE": "delete"}.get(method, "retrieve")
    return "conversations.create" if method == "POST" else "conversations"  # the collection takes only POST


def new_conversation_id() -> str:
    return "conv_" + secrets.token_hex(24)


def new_item_id(kind: str) -> str:
    """An item id Stockyard makes: ``msg_sy…`` (``sy`` is no hex digit, so no OpenAI id looks like it)."""
    return f"{ITEM_PREFIXES.get(kind, 'item')}_sy{secrets.token_hex(16)}"


def minted_here(item: Any) -> bool:
    """An item whose id Stockyard made (``new_item_id``): no provider knows that id."""
    return isinstance(item, dict) and isinstance(item.get("id"), str) and MINTED_ITEM.match(item["id"]) is not None


def without_minted_id(item: Any) -> Any:
    """``item`` as it may go to a provider that reads item ids (the Responses API): without an id
    Stockyard made, which that provider would look for in vain (OpenAI's input messages have no
    id of their own; a turn's items listed from a Stockyard conversation carry one)."""
    return {k: v for k, v in item.items() if k != "id"} if minted_here(item) else item


def not_found(conversation_id: str, param: str | None = None) -> ProxyError:
    return ProxyError(404, f"Conversation with id '{conversation_id}' not found.", param=param, code="not_found")


def item_not_found(item_id: str) -> ProxyError:
    return ProxyError(404, f"Item with id '{item_id}' not found.", code="not_found")


def invalid(param: str, message: str, code: str = "invalid_value") -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


def too_large(max_bytes: int, param: str) -> ProxyError:
    return ProxyError(
        400,
        f"the conversation would be larger than {max_bytes} bytes (STOCKYARD_MAX_BODY_BYTES, less the request "
        "that uses it); start a new one",
        param=param,
        code="conversation_too_large",
    )


def normalized(raw: Any) -> list[dict]:
    """Items as a conversation (and ``input_items``) lists them: text input is a user message, a
    message's text content an ``input_text`` (``output_text`` for the assistant) part, a missing
    ``type`` is ``message``, a missing id is minted, and so is one an earlier item has (a list's
    ``after`` names one item: the SDKs' walk of a page ending at a repeated id came back to it for
    ever). Anything not an object is skipped (validated elsewhere)."""
    raw = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    out = []
    seen: set[str] = set()
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        item = dict(item)
        kind = item.setdefault("type", "message")
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        if not (isinstance(item.get("id"), str) and item["id"]) or item["id"] in seen:
            item["id"] = new_item_id(kind)
        seen.add(item["id"])
        out.append(item)
    return out


def check_items(value: Any, param: str = "items") -> list[dict]:
    """The ``items`` of a create call: objects, each a known item shape at its least (a message
    has a role and content; a reference to another item is not kept, as it would name nothing
    once that item is gone); normalized."""
    if not isinstance(value, list):
        raise invalid(param, f"'{param}' must be an array of items", "invalid_type")
    if len(value) > MAX_ITEMS_PER_CALL:
        raise invalid(
            param, f"'{param}' may hold at most {MAX_ITEMS_PER_CALL} items a call; add the rest in more calls"
        )
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, f"'{where}' must be an object", "invalid_type")
        kind = item.get("type", "message")
        if not isinstance(kind, str) or not kind:
            raise invalid(f"{where}.type", f"'{where}.type' must be a string", "invalid_type")
        if kind == "item_reference":
            raise invalid(f"{where}.type", "item references are not kept in a conversation: add the item itself")
        if kind == "message":
            if item.get("role") not in MESSAGE_ROLES:
                raise invalid(f"{where}.role", f"'{where}.role' must be one of {', '.join(MESSAGE_ROLES)}")
            if not isinstance(item.get("content"), (str, list)):
                raise invalid(f"{where}.content", f"'{where}.content' must be a string or an array", "invalid_type")
        if "id" in item and not (isinstance(item["id"], str) and 0 < len(item["id"]) <= 200):
            raise invalid(f"{where}.id", f"'{where}.id' must be a string of 1 to 200 characters", "invalid_type")
        check_item_id(item, where)
    return normalized(value)


def check_item_id(item: Any, where: str) -> None:
    """An id the client chose for an item a conversation keeps (the Conversations API's ``items``,
    a Responses turn's ``input``) is one any row can hold: a NUL or a lone surrogate (valid JSON
    escapes) is no id, and PostgreSQL could not keep it (a 500, or a turn silently not appended)."""
    ident = item.get("id") if isinstance(item, dict) else None
    if isinstance(ident, str) and not storable(ident):
        raise invalid(f"{where}.id", f"'{where}.id' holds a NUL or a lone UTF-16 surrogate, which no item id has")


def check_metadata(value: Any) -> dict[str, str]:
    """OpenAI's metadata rule: up to 16 string values, keys up to 64 characters, values up to 512."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("metadata", "'metadata' must be an object of strings", "invalid_type")
    if len(value) > METADATA_KEYS:
        raise invalid("metadata", f"'metadata' may hold at most {METADATA_KEYS} pairs")
    for key, text in value.items():
        if len(key) > METADATA_KEY_CHARS:
            raise invalid("metadata", f"metadata keys may be at most {METADATA_KEY_CHARS} characters")
        if not isinstance(text, str) or len(text) > METADATA_VALUE_CHARS:
            raise invalid("metadata", f"metadata values must be strings of at most {METADATA_VALUE_CHARS} characters")
    return dict(value)


def page_params(query: dict[str, str]) -> tuple[str, int, str | None]:
    """A list call's ``order`` (desc by default), ``limit`` (1-100, 20) and ``after`` (an item id)."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid("order", "'order' must be asc or desc")
    limit = whole_number(query.get("limit", "20")) or 0
    if not 1 <= limit <= 100:
        raise invalid("limit", "'limit' must be a whole number from 1 to 100")
    return order, limit, query.get("after") or None


def item_list(page: list[dict], has_more: bool) -> dict:
    """A page of items in OpenAI's list shape."""
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": has_more,
    }


def _pack(item: dict) -> tuple[bytes, int]:
    data = json_bytes(item)
    return zlib.compress(data, ZLIB_LEVEL), len(data)


def _unpack(data: bytes) -> dict:
    return json.loads(zlib.decompress(data))


def _item_row(conn: sqlite3.Connection, conversation_id: str, item_id: str, columns: str) -> Any:
    """``columns`` of the item with this id in the conversation, or None. Ids are unique within one
    (``_append`` keeps them so): no ``ORDER BY seq``, which made SQLite without statistics walk the
    whole conversation by its primary key (8.8 ms at 200,000 items) instead of the id index (4 µs)."""
    sql = f"SELECT {columns} FROM conversation_items WHERE conversation_id = ? AND id = ? LIMIT 1"
    return conn.execute(sql, (conversation_id, item_id)).fetchone()


def _now_ms() -> int:
    return int(time.time() * 1000)


Screen = Callable[[list[dict]], list[dict]]  # items as they may be kept (redact.screen)


@dataclass
class Conversation:
    """A conversation's row: whose it is, and what its object shows."""

    id: str
    key_id: str | None
    created_at: int  # ms
    metadata: dict
    bytes: int = 0

    def public(self) -> dict:
        created = self.created_at // 1000
        return {"id": self.id, "object": "conversation", "created_at": created, "metadata": self.metadata}


class ConversationStore:
    """The conversations in the database, each visible only to the key that made it."""

    def __init__(self, store: Store, max_bytes: int) -> None:
        self._store = store
        self._max_bytes = max_bytes  # the largest conversation kept (and the largest sent whole)
        self._appending: dict[str, Future] = {}  # a response's turn the writer has not committed yet
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------------
    def find(self, conversation_id: str, key_id: str | None) -> Conversation | None:
        """The conversation if ``key_id`` made it (None otherwise: another key's is unknown); for its
        owner read once a turn being appended to it is committed (or failed), so a client's next turn,
        or its list of the items, never races the write of the last. Whose it is comes first: another
        key's request never waits on it (nor learns by the wait that it is busy)."""
        if not storable(conversation_id) or (row := self._row(conversation_id, key_id)) is None:
            return None
        with self._lock:
            appending = self._appending.get(conversation_id)
        if appending is not None:
            wait((appending,), timeout=APPEND_WAIT_S)
            row = self._row(conversation_id, key_id)  # its size as the append left it (or deleted meanwhile)
            if row is None:
                return None
        return Conversation(row[0], row[1], row[2], json.loads(row[3]), row[4])

    def _row(self, conversation_id: str, key_id: str | None) -> tuple | None:
        """The conversation's row if ``key_id`` made it."""
        sql = "SELECT id, key_id, created_at, metadata, bytes FROM conversations WHERE id = ?"
        row = self._store.read().execute(sql, (conversation_id,)).fetchone()
        return row if row is not None and row[1] == key_id else None

    def owned(self, conversation_id: str, key_id: str | None) -> Conversation:
        """The conversation a route names, or its 404 (another key's is as unknown)."""
        found = self.find(conversation_id, key_id)
        if found is None:
            raise not_found(conversation_id)
        return found

    def context(self, conversation: Conversation, room: int) -> tuple[list[dict], int]:
        """All its items, oldest first, to go in front of a request's ``input``, and their size as
        one JSON array (the items' sizes kept beside them, and ", " between: not encoded again);
        a 400 when they would not fit in ``room`` bytes (what the request leaves of
        STOCKYARD_MAX_BODY_BYTES)."""
        if conversation.bytes > room:
            raise too_large(self._max_bytes, "conversation")
        rows = self._store.read().execute(
            "SELECT item, bytes FROM conversation_items WHERE conversation_id = ? ORDER BY seq", (conversation.id,)
        )
        items, size = [], 0
        for data, item_bytes in rows:
            items.append(_unpack(data))
            size += item_bytes + 2
        return items, size

    def page(self, conversation: Conversation, query: dict[str, str]) -> dict:
        """A page of its items (``order``, ``limit``, ``after``), read from the database a page at a time."""
        order, limit, after = page_params(query)
        conn = self._store.read()
        where = "conversation_id = ?"
        args: list[object] = [conversation.id]
        if after is not None:
            seq = self._cursor_seq(conn, conversation, after)
            if seq is None:
                raise invalid("after", f"No item found with id '{after}' in this conversation.")
            where += f" AND seq {'>' if order == 'asc' else '<'} ?"
            args.append(seq)
        rows = conn.execute(
            f"SELECT item FROM conversation_items WHERE {where} ORDER BY seq {order.upper()} LIMIT ?",
            [*args, limit + 1],
        ).fetchall()
        return item_list([_unpack(row[0]) for row in rows[:limit]], len(rows) > limit)

    def _cursor_seq(self, conn: Any, conversation: Conversation, item_id: str) -> int | None:
        """Where a list's ``after`` stands in the conversation: its item's ``seq``, or the one an item
        deleted from it had (``deleted.kept_mark``: a client deleting each item as it lists them
        pages on from one it deleted); None for an id it never held."""
        if not storable(item_id):
            return None
        row = _item_row(conn, conversation.id, item_id, "seq")
        if row is not None:
            return row[0]
        kept = kept_mark(conn, item_id, CONVERSATION_ITEM, conversation.key_id or "", conversation.id)
        return None if kept is None else kept[0]

    def item(self, conversation: Conversation, item_id: str) -> dict:
        row = _item_row(self._store.read(), conversation.id, item_id, "item")
        if row is None:
            raise item_not_found(item_id)
        return _unpack(row[0])

    def items_named(self, item_ids: set[str], key_id: str | None, room: int) -> dict[str, dict] | None:
        """The items with these ids in conversations ``key_id`` made, by id (another key's is as
        unknown): what an ``item_reference`` naming an id Stockyard minted stands for, as no provider
        knows that id. None when they would pass ``room`` bytes, checked before any is unpacked.
        Read through the items' id index, :data:`NAMED_CHUNK` ids a statement."""
        found: dict[str, dict] = {}
        size = 0
        ordered = sorted(filter(storable, item_ids))
        for start in range(0, len(ordered), NAMED_CHUNK):
            chunk = ordered[start : start + NAMED_CHUNK]
            chunk += [chunk[-1]] * (NAMED_CHUNK - len(chunk))  # one statement text, whatever the count
            for item_id, item_bytes, data, owner in self._store.read().execute(NAMED_SQL, chunk).fetchall():
                if owner != key_id or item_id in found:
                    continue
                size += item_bytes
                if size > room:
                    return None
                found[item_id] = _unpack(data)
        return found

    # -- writes (each waits for its commit) ----------------------------------------------------
    def create(self, key_id: str | None, metadata: dict, items: list[dict]) -> Conversation:
        conversation = Conversation(new_conversation_id(), key_id, _now_ms(), metadata)
        packed = [_pack(item) for item in items]
        if sum(size for _, size in packed) > self._max_bytes:
            raise too_large(self._max_bytes, "items")

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO conversations (id, key_id, created_at, updated_at, metadata) VALUES (?, ?, ?, ?, ?)",
                (conversation.id, key_id, conversation.created_at, conversation.created_at, json.dumps(metadata)),
            )
            _append(conn, conversation.id, items, packed, conversation.created_at)

        self._store.write(job)
        return conversation

    def add(
        self, conversation_id: str, items: list[dict], bounded: bool = True, trace_id: str | None = None
    ) -> list[dict] | None:
        """Append ``items`` (an id the conversation already holds is minted anew); the items as
        kept, or None if the conversation is gone. ``bounded``: refuse to grow it past the limit
        (a create call does; a response's turn is appended whole, and the next turn that
        would not fit is refused instead). ``trace_id``: the Responses request whose turn they are
        (erasing its trace's bodies erases them: ``operations.stored``)."""
        packed = [_pack(item) for item in items]  # here, not on the writer's thread
        size = sum(item_bytes for _, item_bytes in packed)
        limit = self._max_bytes if bounded else None

        def job(conn: sqlite3.Connection) -> list[dict] | str | None:
            row = conn.execute("SELECT bytes FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                return None
            if limit is not None and row[0] + size > limit:
                return "too_large"
            return _append(conn, conversation_id, items, packed, _now_ms(), trace_id)

        kept = self._store.write(job)
        if kept == "too_large":
            raise too_large(self._max_bytes, "items")
        return kept

    def append_later(
        self,
        conversation_id: str,
        items: list[dict],
        trace_id: str | None,
        queue_wait: float = 30.0,
        urgent: bool = False,
    ) -> Future:
        """A response's turn (of the request ``trace_id``) appended whole (``add`` unbounded) by the
        writer, not waited for: the stream relay's thread must not wait on the database. Its future,
        resolved once committed; until then a read of the conversation in this process (:meth:`find`)
        waits for it (``urgent``: an answer's end waits for it, for the other processes' reads)."""
        packed = [_pack(item) for item in items]  # here, not on the writer's thread

        def job(conn: sqlite3.Connection) -> list[dict] | None:
            row = conn.execute("SELECT bytes FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            return None if row is None else _append(conn, conversation_id, items, packed, _now_ms(), trace_id)

        future = self._store.write_later(job, queue_wait, urgent=urgent)
        with self._lock:
            self._appending[conversation_id] = future

        def done(_: Future) -> None:
            with self._lock:
                if self._appending.get(conversation_id) is future:
                    del self._appending[conversation_id]

        future.add_done_callback(done)
        return future

    def update(self, conversation: Conversation, metadata: dict) -> Conversation:
        conversation.metadata = metadata
        self._store.write(
            lambda conn: conn.execute(
                "UPDATE conversations SET metadata = ?, updated_at = ? WHERE id = ?",
                (json.dumps(metadata), _now_ms(), conversation.id),
            )
        )
        return conversation

    def delete(self, conversation: Conversation) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation.id,))
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation.id,))

        self._store.write(job)

    def delete_item(self, conversation: Conversation, item_id: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            row = _item_row(conn, conversation.id, item_id, "seq, bytes")
            if row is None:
                return False
            sql = "DELETE FROM conversation_items WHERE conversation_id = ? AND seq = ?"
            conn.execute(sql, (conversation.id, row[0]))
            keep_deleted(conn, item_id, CONVERSATION_ITEM, conversation.key_id or "", conversation.id, row[0])
            conn.execute(
                "UPDATE conversations SET bytes = bytes - ?, updated_at = ? WHERE id = ?",
                (row[1], _now_ms(), conversation.id),
            )
            return True

        return bool(self._store.write(job))

    # -- the routes ----------------------------------------------------------------------------
    def answer(self, req: Request, key_id: str | None, screen: Screen) -> Response:
        """One Conversations API call by the key ``key_id``; ``screen`` passes on the items it
        adds as the ``redact`` module would a turn's input (``redact.screen``)."""
        match = PATH.match(req.path)
        assert match is not None
        conversation_id, items, item_id = match.groups()
        allowed: tuple[str, ...] = (
            ("GET", "DELETE") if item_id else ("GET", "POST") if items else ("GET", "POST", "DELETE")
        )
        if not conversation_id:
            allowed = ("POST",)
        check_method(req.method, allowed)
        if not conversation_id:
            body = req.json()
            metadata, items = check_metadata(body.get("metadata")), check_items(body.get("items") or [])
            made = self.create(key_id, metadata, screen(items))
            return json_response(made.public())
        conversation = self.owned(conversation_id, key_id)
        if item_id:
            if req.method == "GET":
                return json_response(self.item(conversation, item_id))
            if not self.delete_item(conversation, item_id):
                raise item_not_found(item_id)
            return json_response(conversation.public())
        if items:
            if req.method == "GET":
                return json_response(self.page(conversation, req.query))
            body = req.json()
            if "items" not in body:
                raise invalid("items", "'items' is required", "missing_required_parameter")
            kept = self.add(conversation.id, screen(check_items(body["items"])))
            if kept is None:
                raise not_found(conversation.id)
            return json_response(item_list(kept, False))
        if req.method == "POST":
            body = req.json()
            if "metadata" not in body:
                raise invalid("metadata", "'metadata' is required", "missing_required_parameter")
            return json_response(self.update(conversation, check_metadata(body["metadata"])).public())
        if req.method == "DELETE":
            self.delete(conversation)
            return json_response({"id": conversation.id, "object": "conversation.deleted", "deleted": True})
        return json_response(conversation.public())


def _append(
    conn: sqlite3.Connection,
    conversation_id: str,
    items: list[dict],
    packed: list[tuple[bytes, int]],
    now: int,
    trace_id: str | None = None,
) -> list[dict]:
    """Insert ``items`` (``packed``: each as ``_pack`` made it) at the conversation's end, in one
    write transaction; returns them as kept. The positions come from the conversation's row
    (``next_seq``), which the update locks, so two turns appending at once never take the same
    place (nor, on PostgreSQL, two workers)."""
    kept: list[dict] = []
    packed = list(packed)
    seen: set[str] = set()
    for i, item in enumerate(items):
        # not _item_row: without its ORDER BY seq the (conversation_id, id) index answers alone
        sql = "SELECT 1 FROM conversation_items WHERE conversation_id = ? AND id = ? LIMIT 1"
        held = conn.execute(sql, (conversation_id, item["id"])).fetchone()
        if held is not None or item["id"] in seen:  # ids stay unique within a conversation
            item = {**item, "id": new_item_id(str(item.get("type")))}
            packed[i] = _pack(item)
        seen.add(item["id"])
        kept.append(item)
    row = conn.execute(
        "UPDATE conversations SET next_seq = next_seq + ?, bytes = bytes + ?, updated_at = ? WHERE id = ? "
        "RETURNING next_seq",
        (len(kept), sum(size for _, size in packed), now, conversation_id),
    ).fetchone()
    first = row[0] - len(kept)
    conn.executemany(
        "INSERT INTO conversation_items (conversation_id, seq, id, bytes, item, trace_id) VALUES (?, ?, ?, ?, ?, ?)",
        [(conversation_id, first + i, kept[i]["id"], size, data, trace_id) for i, (data, size) in enumerate(packed)],
    )
    return kept
