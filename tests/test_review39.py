"""An attacker's review of the day's changes (review39): a deleted object kept a day as its key's list
cursor (``stockyard.deleted``, migration 0040), the one loop that reads a filtered list's provider
pages (``ProviderCalls._filtered_pages``) and the admin API's refusal of unknown fields
(``ApiRequest.json_fields``), from a client key of one's own (alice, bob).

Defects found, each shown here:
- the cursor check read ``deleted_objects`` by kind alone (the primary key leads with kind, then
  place): every list with a cursor the key no longer held scanned the day's deletes of that kind, of
  every key — a key deleting conversation items by the million made every such list slow;
- each delete removed every mark older than a day in its own write transaction: a day after a flood
  of deletes, one delete stalled the single writer for seconds (500,000 marks: 3.6 s on SQLite);
- an Anthropic file list's ``page=page_`` (no id after the prefix) was the first page, not the 400
  of a page this server never gave.

The rest held and stays held here: a provider's failed delete leaves no mark, another key's deleted
item is no cursor in a conversation of one's own, a provider page of odd ids or repeating its cursor
ends the loop, and the admin routes that had their own helper still refuse a typo with a 400.
One real server over the mock upstream, the official ``openai`` SDK and raw HTTP as the clients.
"""

from __future__ import annotations

import io
import json

import openai
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import Reply
from module_helpers import api, key_traces, new_key

from stockyard import deleted

ADMIN = "admin-secret-for-review39-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-review39-0123456789abcdefANTHROPICSECRET"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_BATCH_POLL="off",  # a batch is billed when its owner looks at it, or before its delete
    )
    with served(pyz_path, tmp_path_factory, "review39", env, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


def upload(client: openai.OpenAI, name: str) -> str:
    return client.files.create(file=(name, io.BytesIO(b"{}\n")), purpose="review39").id


def client_of(server: ServerProcess) -> openai.OpenAI:
    """The official client with a new key of its own (a test's lists hold only what it made)."""
    return server.openai(new_key(server, ADMIN)[0])


# -- the marks: read by their place, pruned a bounded batch at a time -------------------------------


def test_a_cursor_check_reads_its_mark_by_kind_place_and_id_not_a_scan_of_the_kind(database) -> None:
    """The mark's lookup names the whole primary key (kind, place, id): one index probe on either
    store. By kind and id alone, it read every mark of the kind (all keys' deletes of a day)."""
    database.open_and_migrate()
    conn = database.connect()
    try:
        args = ("conversation_item", "conv_a", "msg_x", "key_a", 0)
        if database.__class__.__name__ == "SqliteBackend":
            plan = " ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + deleted.KEPT_SQL, args))
            assert "(kind=? AND place=? AND id=?)" in plan, plan
        else:
            conn.execute("SET enable_seqscan = off")  # an empty table's plan: which columns the index takes
            plan = " ".join(str(r[0]) for r in conn.execute("EXPLAIN " + deleted.KEPT_SQL, args))
            cond = plan[plan.index("Index Cond") :]
            assert "place = " in cond and "id = " in cond and "kind = " in cond, plan
    finally:
        conn.close()


def test_a_delete_removes_a_bounded_batch_of_day_old_marks_never_a_days_flood_at_once(server) -> None:
    """A day after a key deleted ``n`` objects, the next delete (any key's) removed all ``n`` marks in
    its write transaction; now at most ``deleted.PRUNED_ROWS``, each later delete the next batch
    (a mark a day old is no cursor meanwhile: its age is checked where it is read)."""
    planted = deleted.PRUNED_ROWS * 2 + 7
    old = 1_000_000  # ms since the epoch: far more than a day ago
    server.db_write(
        "INSERT INTO deleted_objects (id, kind, key_id, place, seq, deleted_at)"
        " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " SELECT 'msg_flood_' || i, 'conversation_item', 'key_flood', 'conv_flood', i, ? FROM n",
        (planted, old),
    )
    client = client_of(server)
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "x"}])
    (item,) = client.conversations.items.list(conversation.id).data

    def left() -> int:
        return server.db_rows("SELECT COUNT(*) AS n FROM deleted_objects WHERE key_id = 'key_flood'")[0]["n"]

    client.conversations.items.delete(item.id, conversation_id=conversation.id)
    assert left() == planted - deleted.PRUNED_ROWS  # was 0: the whole flood in one transaction
    assert len(server.db_rows("SELECT seq FROM deleted_objects WHERE id = ?", (item.id,))) == 1  # its own kept
    for n in range(2):
        upload_id = upload(client, f"f{n}")
        client.files.delete(upload_id)
    assert left() == 0


def test_a_stores_files_list_pages_on_from_a_deleted_file_and_an_unknown_one_is_unasked(server, mock) -> None:
    """The vector store's file list checks a deleted file's mark where the store lives (its place): the
    key's own deleted file pages on, as before; an id it never held is the empty page, unasked."""
    client = client_of(server)
    files = [upload(client, f"s{n}") for n in range(3)]
    store = client.vector_stores.create(name="review39", file_ids=files).id
    client.files.delete(files[1])
    listed = [e.id for e in client.vector_stores.files.list(store, after=files[1])]
    assert listed and files[1] not in listed
    mock.clear()
    assert client.vector_stores.files.list(store, after="file-never-made-here").data == []
    assert [r.path for r in mock.requests] == []


# -- what held --------------------------------------------------------------------------------------


def test_a_batch_delete_the_provider_fails_then_the_sdk_retries_is_billed_once(server, mock) -> None:
    """The delete records the ended batch's cost first (billed), the provider's DELETE fails (the
    client's 500), the SDK sends it again: the batch is not billed again, and one mark is kept."""
    secret, name = new_key(server, ADMIN)
    batches = server.anthropic(secret, max_retries=1).messages.batches
    request = {"custom_id": "one", "params": {"model": "claude-review39", "max_tokens": 8, "messages": HI}}
    batch_id = batches.create(requests=[request]).id
    mock.clear()
    mock.enqueue(Reply(), Reply(), Reply(status=500))  # its look, its results, then the DELETE fails
    assert batches.delete(batch_id).id == batch_id
    deletes = [r for r in mock.requests if r.method == "DELETE"]
    assert len(deletes) == 2, [(r.method, r.path) for r in mock.requests]  # failed once, sent again

    def deletes_traced() -> list[int]:
        return sorted(row["status"] for row in key_traces(server, name) if row["endpoint"].endswith("delete"))

    assert wait_for(lambda: len(deletes_traced()) == 2, what="both deletes traced")
    assert deletes_traced() == [200, 500]
    bills = [row for row in key_traces(server, name) if row["endpoint"] == "message_batches.usage"]
    assert len(bills) == 1, bills
    assert len(server.db_rows("SELECT 1 FROM deleted_objects WHERE id = ?", (batch_id,))) == 1


def test_a_delete_the_provider_fails_leaves_no_mark_and_the_file_stays_the_keys(server, mock) -> None:
    client = client_of(server)
    kept, failed = upload(client, "kept"), upload(client, "failed")
    mock.enqueue(Reply(status=500))
    with pytest.raises(openai.InternalServerError):
        client.files.delete(failed)
    assert server.db_rows("SELECT id FROM deleted_objects WHERE id = ?", (failed,)) == []
    assert client.files.retrieve(failed).id == failed
    assert [f.id for f in client.files.list(purpose="review39", after=failed)] == [kept]


def test_a_key_deleting_anothers_file_is_a_404_and_plants_no_mark(server, mock) -> None:
    alice, bob = client_of(server), client_of(server)
    theirs = upload(alice, "alices")
    mock.clear()
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(theirs)
    assert mock.requests == []  # never asked of the provider
    assert server.db_rows("SELECT id FROM deleted_objects WHERE id = ?", (theirs,)) == []
    alice.files.delete(theirs)
    page = bob.files.list(after=theirs)  # alice's mark is hers: bob's is an unknown cursor's page
    assert page.data == [] and page.has_more is False


def test_another_keys_deleted_item_is_no_cursor_in_a_conversation_of_ones_own(server) -> None:
    alice, bob = client_of(server), client_of(server)
    hers = alice.conversations.create(items=[{"type": "message", "role": "user", "content": "a"}])
    his = bob.conversations.create(items=[{"type": "message", "role": "user", "content": "b"}])
    (item,) = alice.conversations.items.list(hers.id).data
    alice.conversations.items.delete(item.id, conversation_id=hers.id)
    with pytest.raises(openai.BadRequestError) as err:
        bob.conversations.items.list(his.id, after=item.id)
    assert err.value.body["param"] == "after"
    with pytest.raises(openai.NotFoundError):
        bob.conversations.items.list(hers.id, after=item.id)


def test_a_provider_page_of_odd_ids_repeating_its_cursor_ends_the_list(server, mock) -> None:
    """Ids that are not strings are skipped; a page whose last id was asked from already ends the
    read (no loop over the provider's list), and says so honestly: nothing more of the key's."""
    client = client_of(server)
    mine = upload(client, "mine")
    listing = {"object": "list", "has_more": True}
    first = {**listing, "data": [{"id": 7}, {"id": None}, "file-x", {"id": mine, "object": "file"}, {"id": "file-o"}]}
    again = {**listing, "data": [{"id": "file-o"}]}
    mock.clear()
    mock.enqueue(Reply(json=first), Reply(json=again))
    page = client.files.list(limit=5)
    assert [f.id for f in page.data] == [mine] and page.has_more is False
    assert len([r for r in mock.requests if r.method == "GET" and r.path.startswith("/v1/files")]) == 2


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/models", {"name": "m39", "stratgy": "random"}),
        ("PATCH", "/api/models/m39", {"stratgy": "random"}),
        ("POST", "/api/providers", {"name": "p39", "kind": "openai", "ky": "sk-x"}),
        ("PATCH", "/api/providers/p39", {"ky": "sk-x"}),
    ],
)
def test_the_admin_routes_that_had_their_own_helper_refuse_a_typo(server, method, path, body) -> None:
    status, answer = api(server, method, path, body, ADMIN)
    typo = next(k for k in body if k not in ("name", "kind"))
    assert status == 400, answer
    assert answer["error"]["param"] == typo and answer["error"]["message"].startswith(f"unknown field(s) '{typo}'")


def test_a_provider_page_saying_has_more_with_no_objects_ends_the_list_honestly(server, mock) -> None:
    client = client_of(server)
    upload(client, "held")
    mock.clear()
    mock.enqueue(Reply(json={"object": "list", "data": [], "has_more": True}))
    page = client.files.list()
    assert page.data == [] and page.has_more is False
    assert len([r for r in mock.requests if r.method == "GET" and r.path.startswith("/v1/files")]) == 1


@pytest.mark.parametrize("limit", ["0", "-1", "100000000000000000000000", "1.5", ""])
def test_a_list_limit_out_of_range_is_each_apis_400_never_a_provider_call(server, mock, limit) -> None:
    """OpenAI's files and videos, Anthropic's files and message batches: a 400 in the client's own
    error shape naming ``limit``, before any provider call."""
    secret = new_key(server, ADMIN)[0]
    openai_auth = {"Authorization": f"Bearer {secret}"}
    anthropic_auth = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    mock.clear()
    for path, headers in (
        ("/v1/files", openai_auth),
        ("/v1/videos", openai_auth),
        ("/v1/files", anthropic_auth),
        ("/v1/messages/batches", anthropic_auth),
    ):
        status, _, raw = server.request("GET", f"{path}?limit={limit}", headers=headers)
        error = json.loads(raw)
        assert status == 400, (path, raw)
        if "x-api-key" in headers:
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", raw
            assert "limit" in error["error"]["message"], raw
        else:
            assert error["error"]["param"] == "limit", raw
    assert mock.requests == []


ODD_CURSORS = ["x" * 5000, "file-%00nul", "%E2%80%AE", "file-a%0D%0Ainjected:%201", "%FF%FE", "page_", "a&after=b"]


@pytest.mark.parametrize("cursor", ODD_CURSORS)
def test_an_odd_cursor_is_an_empty_page_or_a_400_never_a_500_nor_a_provider_call(server, mock, cursor) -> None:
    """A key holding one of each object, naming a cursor no key holds (long, NUL, bidi, CRLF, not UTF-8):
    each list answers the unknown cursor's empty page or a 400 in its own API's shape, unasked."""
    secret = new_key(server, ADMIN)[0]
    client = server.openai(secret)
    file_id = upload(client, "held")
    store = client.vector_stores.create(name="held").id
    claude = server.anthropic(secret)
    claude.beta.files.upload(file=("held.txt", b"x", "text/plain"))
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "x"}]).id
    openai_auth = {"Authorization": f"Bearer {secret}"}
    anthropic_auth = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    mock.clear()
    for path, headers in (
        (f"/v1/files?after={cursor}", openai_auth),
        (f"/v1/vector_stores?after={cursor}", openai_auth),
        (f"/v1/vector_stores/{store}/files?after={cursor}", openai_auth),
        (f"/v1/vector_stores/{store}/files?before={cursor}", openai_auth),
        (f"/v1/files?after_id={cursor}", anthropic_auth),
        (f"/v1/files?before_id={cursor}", anthropic_auth),
        (f"/v1/files?page={cursor}", anthropic_auth),
        (f"/v1/messages/batches?before_id={cursor}", anthropic_auth),
        (f"/v1/conversations/{conversation}/items?after={cursor}", openai_auth),
    ):
        status, _, raw = server.request("GET", path, headers=headers)
        assert status in (200, 400), (path, status, raw[:300])
        body = json.loads(raw)
        if status == 200:
            assert body["data"] == [] and body["has_more"] is False, (path, body)
        elif "x-api-key" in headers:
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", (path, body)
        else:
            assert body["error"]["type"] == "invalid_request_error", (path, body)
    assert mock.requests == [], [r.path for r in mock.requests]
    assert client.files.retrieve(file_id).id == file_id
