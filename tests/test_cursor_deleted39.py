"""A cleanup script's walk, through Stockyard with a client key: ``for f in client.files.list(limit=2):
client.files.delete(f.id)``, and the same for the key's other lists.

The SDKs page on from the last object a page gave (``after``, ``after_id``), which the loop has
deleted by then. Stockyard forgot a deleted object's owner with it, so that id was no longer the
key's: the next page was the unknown cursor's empty page (a conversation's items: a 400), and the
walk ended after its first page, leaving the rest of the key's objects. A delete now keeps the id as
its key's cursor for a day (``deleted_objects``, migration 0040), for nothing else: another key's
cursor, a GET or a DELETE of the id, a key's count of its objects and its money are as before.

One real server over the mock upstream, which pages on from a deleted object's place (``GONE``) as
a provider's list orders them; the official ``openai`` and ``anthropic`` SDKs as the clients.
"""

from __future__ import annotations

import io
from typing import Iterator

import anthropic
import openai
import pytest
from conftest import ServerProcess, mock_env, served
from module_helpers import key_traces, new_key

ADMIN = "admin-secret-for-cursor39-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-cursor39-0123456789abcdefANTHROPICSECRET"
SORA_4S_UC = 40_000_000  # a 4-second sora-2 video at 720p: $0.10 a second (its hold and its bill)
DAY_MS = 24 * 3600 * 1000
HI = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> Iterator[ServerProcess]:
    env = mock_env(
        cache_home,
        mock,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=mock.url,
        STOCKYARD_ADMIN_KEY=ADMIN,
        STOCKYARD_BATCH_POLL="off",  # nobody looks at a video but its client
    )
    with served(pyz_path, tmp_path_factory, "cursor39", env, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


def two_keys(server: ServerProcess) -> tuple[str, str]:
    """Two new client keys of their own (each test's lists hold only what it made): their secrets."""
    return new_key(server, ADMIN)[0], new_key(server, ADMIN)[0]


def upload(client: openai.OpenAI, name: str) -> str:
    return client.files.create(file=(name, io.BytesIO(b"{}\n")), purpose="cursor39").id


def made_interleaved(make_mine, make_theirs, count: int) -> tuple[list[str], list[str]]:
    """``count`` objects of the first key's, oldest first, with one of the second's after each: the
    provider's list holds both keys' (one provider key holds every key's objects)."""
    mine, theirs = [], []
    for n in range(count):
        mine.append(make_mine(n))
        theirs.append(make_theirs(n))
    return mine, theirs


def provider_lists(mock, path: str) -> list:
    """The list calls the mock was asked on ``path`` since it was last cleared."""
    return [r for r in mock.requests if r.method == "GET" and r.path == path]


# -- the walk reaches every one of the key's objects ------------------------------------------------


def test_openai_files_deleted_as_they_are_listed_are_every_one_reached(server, mock) -> None:
    mine_key, theirs_key = two_keys(server)
    alice, bob = server.openai(mine_key), server.openai(theirs_key)
    mine, theirs = made_interleaved(lambda n: upload(alice, f"a{n}"), lambda n: upload(bob, f"b{n}"), 5)

    walked = []
    for f in alice.files.list(purpose="cursor39", limit=2):
        walked.append(f.id)
        alice.files.delete(f.id)

    assert walked == mine[::-1]  # was: the first page's two, then an empty page
    assert alice.files.list(purpose="cursor39").data == []
    assert [f.id for f in bob.files.list(purpose="cursor39", limit=2)] == theirs[::-1]  # none of bob's went


def test_openai_files_walked_oldest_first_while_deleted_are_every_one_reached(server) -> None:
    mine_key, theirs_key = two_keys(server)
    alice, bob = server.openai(mine_key), server.openai(theirs_key)
    mine, _ = made_interleaved(lambda n: upload(alice, f"a{n}"), lambda n: upload(bob, f"b{n}"), 4)
    walked = []
    for f in alice.files.list(purpose="cursor39", limit=1, order="asc"):
        walked.append(f.id)
        alice.files.delete(f.id)
    assert walked == mine


def test_vector_stores_deleted_as_they_are_listed_are_every_one_reached(server) -> None:
    mine_key, theirs_key = two_keys(server)
    alice, bob = server.openai(mine_key), server.openai(theirs_key)
    mine, theirs = made_interleaved(
        lambda n: alice.vector_stores.create(name=f"a{n}").id, lambda n: bob.vector_stores.create(name=f"b{n}").id, 5
    )
    walked = []
    for store in alice.vector_stores.list(limit=2):
        walked.append(store.id)
        alice.vector_stores.delete(store.id)
    assert walked == mine[::-1]
    assert alice.vector_stores.list().data == []
    assert [s.id for s in bob.vector_stores.list(limit=2)] == theirs[::-1]


def test_a_stores_files_whose_files_are_deleted_as_they_are_listed_are_every_one_reached(server) -> None:
    """A store's file list's cursor is a file id: one the key deleted (``files.delete``) is still its
    cursor there, and the provider says what follows it (the mock keeps the store's entries)."""
    client = server.openai(new_key(server, ADMIN)[0])
    files = [upload(client, f"s{n}") for n in range(4)]
    store = client.vector_stores.create(name="walked", file_ids=files).id
    walked = []
    for entry in client.vector_stores.files.list(store, limit=1):
        walked.append(entry.id)
        client.files.delete(entry.id)
    assert sorted(walked) == sorted(files)


def test_containers_deleted_as_they_are_listed_are_every_one_reached(server) -> None:
    mine_key, theirs_key = two_keys(server)
    alice, bob = server.openai(mine_key), server.openai(theirs_key)
    mine, _ = made_interleaved(
        lambda n: alice.containers.create(name=f"a{n}").id, lambda n: bob.containers.create(name=f"b{n}").id, 3
    )
    walked = []
    for container in alice.containers.list(limit=1):
        walked.append(container.id)
        alice.containers.delete(container.id)
    assert walked == mine[::-1]


def test_anthropic_files_deleted_as_they_are_listed_are_every_one_reached(server) -> None:
    mine_key, theirs_key = two_keys(server)
    alice, bob = server.anthropic(mine_key).beta.files, server.anthropic(theirs_key).beta.files
    mine, theirs = made_interleaved(
        lambda n: alice.upload(file=(f"a{n}.txt", b"x", "text/plain")).id,
        lambda n: bob.upload(file=(f"b{n}.txt", b"x", "text/plain")).id,
        5,
    )
    walked = []
    for f in alice.list(limit=2):
        walked.append(f.id)
        alice.delete(f.id)
    assert walked == mine[::-1]
    assert alice.list().data == []
    assert [f.id for f in bob.list(limit=2)] == theirs[::-1]


def test_message_batches_walked_newer_with_before_id_while_deleted_are_every_one_reached(server) -> None:
    """The SDK pages ``before_id`` from each page's first id, which the loop deleted (a delete records
    the batch's cost first: one usage trace each)."""
    mine_key, theirs_key = two_keys(server)
    alice, bob = server.anthropic(mine_key).messages.batches, server.anthropic(theirs_key).messages.batches
    request = {"custom_id": "one", "params": {"model": "claude-cursor-model", "max_tokens": 8, "messages": HI}}
    mine, _ = made_interleaved(
        lambda n: alice.create(requests=[request]).id, lambda n: bob.create(requests=[request]).id, 5
    )
    walked = []
    for batch in alice.list(before_id=mine[0], limit=2):
        walked.append(batch.id)
        alice.delete(batch.id)
    assert walked == [mine[2], mine[1], mine[4], mine[3]]
    assert [b.id for b in alice.list()] == [mine[0]]


def test_conversation_items_deleted_as_they_are_listed_are_every_one_reached(server) -> None:
    """Stockyard serves the Conversations API itself: an ``after`` naming an item the key deleted from
    the conversation was the unknown item's 400 that ended the SDK's walk."""
    client = server.openai(new_key(server, ADMIN)[0])
    said = [{"type": "message", "role": "user", "content": f"line {n}"} for n in range(5)]
    conversation = client.conversations.create(items=said)
    walked = []
    for item in client.conversations.items.list(conversation.id, limit=2):
        walked.append(item.content[0].text)
        client.conversations.items.delete(item.id, conversation_id=conversation.id)
    assert walked == [f"line {n}" for n in range(4, -1, -1)]
    assert client.conversations.items.list(conversation.id).data == []


# -- a deleted object is the key's cursor, and nothing else -----------------------------------------


def test_another_key_naming_a_deleted_id_gets_another_keys_cursor_page_unasked(server, mock) -> None:
    mine_key, theirs_key = two_keys(server)
    alice, bob = server.openai(mine_key), server.openai(theirs_key)
    mine = [upload(alice, f"a{n}") for n in range(2)]
    upload(bob, "b")
    alice.files.delete(mine[1])
    stores = [alice.vector_stores.create(name="a").id, bob.vector_stores.create(name="b").id]
    alice.vector_stores.delete(stores[0])
    claude_alice, claude_bob = server.anthropic(mine_key).beta.files, server.anthropic(theirs_key).beta.files
    gone = claude_alice.upload(file=("a.txt", b"x", "text/plain")).id
    claude_bob.upload(file=("b.txt", b"x", "text/plain"))
    claude_alice.delete(gone)
    mock.clear()

    page = bob.files.list(purpose="cursor39", after=mine[1])
    assert page.data == [] and page.has_more is False
    assert bob.vector_stores.list(after=stores[0]).data == []
    for cursor in ("after_id", "before_id"):
        assert claude_bob.list(extra_query={cursor: gone}).data == []
    assert mock.requests == []  # nothing asked of the provider for another key's cursor
    assert [f.id for f in alice.files.list(purpose="cursor39", after=mine[1])] == [mine[0]]  # its own, asked


def test_a_deleted_id_is_not_found_as_before_and_not_counted_as_the_keys(server, mock) -> None:
    """A GET or DELETE of it is the provider's 404 as before; a key whose objects were all deleted
    holds none: its lists are the empty page unasked, from its deleted cursor or none."""
    client = server.openai(new_key(server, ADMIN)[0])
    claude = server.anthropic(new_key(server, ADMIN)[0]).beta.files
    file_id = upload(client, "only")
    client.files.delete(file_id)
    claude_file = claude.upload(file=("only.txt", b"x", "text/plain")).id
    claude.delete(claude_file)
    mock.clear()

    openai_pages = (client.files.list(), client.files.list(after=file_id))
    for page in (*openai_pages, claude.list(), claude.list(page=f"page_{claude_file}")):
        assert page.data == [] and page.has_more is False
    assert mock.requests == []  # no provider page read for a key holding none
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(file_id)
    with pytest.raises(anthropic.NotFoundError):
        claude.retrieve_metadata(claude_file)
    assert not server.db_rows("SELECT 1 FROM owned_objects WHERE id IN (?, ?)", (file_id, claude_file))


def test_another_conversations_deleted_item_is_still_an_unknown_cursor(server) -> None:
    """A deleted item is its own conversation's cursor: in another (of the same key, or another key's
    with that id) it is the unknown item's 400, as before."""
    client = server.openai(new_key(server, ADMIN)[0])
    first = client.conversations.create(items=[{"type": "message", "role": "user", "content": "one"}])
    second = client.conversations.create(items=[{"type": "message", "role": "user", "content": "two"}])
    (item,) = client.conversations.items.list(first.id).data
    client.conversations.items.delete(item.id, conversation_id=first.id)
    assert client.conversations.items.list(first.id, after=item.id).data == []
    with pytest.raises(openai.BadRequestError) as err:
        client.conversations.items.list(second.id, after=item.id)
    assert err.value.body["param"] == "after"


def test_a_day_old_deleted_cursor_is_no_longer_the_keys_and_its_row_goes(server, mock) -> None:
    """The table holds a day's deletes: an older mark is no cursor, and the next delete removes it."""
    client = server.openai(new_key(server, ADMIN)[0])
    kept, old, last = (upload(client, f"f{n}") for n in range(3))
    client.files.delete(old)
    server.db_write("UPDATE deleted_objects SET deleted_at = deleted_at - ? WHERE id = ?", (DAY_MS + 60_000, old))
    mock.clear()
    assert client.files.list(purpose="cursor39", after=old).data == [] and mock.requests == []
    client.files.delete(last)
    assert server.db_rows("SELECT id FROM deleted_objects WHERE id IN (?, ?)", (old, last)) == [{"id": last}]
    assert [f.id for f in client.files.list(purpose="cursor39", after=last)] == [kept]


# -- money -----------------------------------------------------------------------------------------


def test_videos_deleted_as_they_are_listed_are_each_billed_once(server) -> None:
    """Each video's hold becomes its bill exactly once across the walk (the delete bills a video that
    ended unseen): the budget then holds room for exactly one more."""
    secret, name = new_key(server, ADMIN, budget_usd="1.20", budget_period="total")
    client = server.openai(secret)
    made = [client.videos.create(prompt=f"clip {n}", seconds="4").id for n in range(2)]
    assert {client.videos.retrieve(v).status for v in made} == {"in_progress"}  # each ends by its delete's look
    walked = []
    for video in client.videos.list(limit=1):
        walked.append(video.id)
        client.videos.delete(video.id)
    assert walked == made[::-1]
    bills = [row for row in key_traces(server, name) if row["endpoint"] == "videos.usage"]
    assert sorted(row["cost_uc"] for row in bills) == [SORA_4S_UC, SORA_4S_UC]
    assert client.videos.create(prompt="one more", seconds="4").id  # $0.80 spent of $1.20: room for one
    with pytest.raises(openai.RateLimitError):
        client.videos.create(prompt="and another", seconds="4")
