"""Review 14 of the day's changes (a stream held for its claim, the writes that keep a Responses turn,
the erase and admin deletes of stored responses and conversations, the busy timeout, provider JSON
nested past the parser's depth), as an attacker and as an operator, with real parts: a writer on a
real SQLite file, a PostgreSQL cluster, server processes of the built pyz and the mock upstream.

Found and fixed: a relay claim waited up to 30 s for room in a full writer queue (stalling every
stream); a busy timeout past the 30 s a write's caller waits reported committed writes as failed;
a provider's tool arguments nested too deep were the client's 400. Checked and sound: a held stream
ends at SIGTERM's grace and at its deadline, a client leaving it is no hang, an erase beside a
replica's item delete subtracts each item once, an erase of 1,000 traces' turns fits both stores."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import sqlite3
import threading
import time
from typing import Callable, Iterator

import clirun
import pytest
from conftest import base_env, hold_database, wait_for
from mock_upstream import Reply
from module_helpers import ADMIN_KEY, put_module
from test_leftovers_review import CLAUDE, CODE_TOOL, RESULT, START, WRITTEN, post_stream, read_until, sse, started

from stockyard.errors import described
from stockyard.files_api import Ownership
from stockyard.operations.stored import erase_turns
from stockyard.store import Store, Writer, db


def held_writer(tmp_path, maxsize: int) -> tuple[Writer, sqlite3.Connection]:
    """A writer on a real SQLite file whose queue is full while another connection holds the
    database (``BEGIN EXCLUSIVE``): its first job waits out the busy timeout meanwhile."""
    path = tmp_path / "stockyard.db"
    conn, _ = db.open_and_migrate(path)
    conn.close()
    writer = Writer(path, maxsize=maxsize).start()
    lock = sqlite3.connect(path, isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    stuck = writer.later(lambda c: c.execute("INSERT INTO meta (key, value) VALUES ('stuck', 'v')"))
    deadline = time.monotonic() + 5
    while writer.depth and time.monotonic() < deadline:  # the writer took it: it waits for the lock now
        time.sleep(0.01)
    assert writer.depth == 0 and not stuck.done()
    for i in range(maxsize):
        writer.submit(lambda c, i=i: c.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (f"k{i}",)))
    assert writer.depth == maxsize
    return writer, lock


def test_a_claim_made_on_the_relay_thread_never_waits_for_room_in_a_full_queue(tmp_path):
    """Was: ``Ownership.claim_new_later`` (the claim of a file Anthropic's code execution tool wrote,
    or of a Responses stream's auto container, made on the stream relay's one thread) queued its job
    with ``Store.write_later``'s default 30 s wait for room: a full writer queue (a database held by
    another process) stalled every relayed stream until room came. It must fail at once instead:
    its future's ``queue.Full`` ends that one stream, as the kept turn's writes already do."""
    writer, lock = held_writer(tmp_path, maxsize=2)
    store = Store(tmp_path / "stockyard.db")
    store.writer = writer
    try:
        began = time.monotonic()
        future = Ownership(store, None).claim_new_later({"file_review14"}, "anthropic_file", "k1", "anthropic")
        took = time.monotonic() - began
        assert took < 1.0, f"the relay thread waited {took:.1f} s for room in the writer's queue"
        failed = future.exception(timeout=0)
        assert isinstance(failed, queue.Full)
        assert described(failed) == "Full: the database writer's queue is full (2 waiting)"  # the log line's
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        writer.stop()


def test_an_erase_beside_a_replicas_item_delete_subtracts_each_item_once(pg_url):
    """Checked, found sound: ``erase_turns`` sums the bytes of a trace's conversation items in one
    statement and deletes them in the next; on PostgreSQL (read committed) an item another replica
    deleted in between (a client's ``DELETE /v1/conversations/{id}/items/{item}``, which subtracts its
    bytes itself) would be subtracted twice — but every write transaction queues on one advisory lock
    (``BEGIN IMMEDIATE``, store/pg.py), so the erase waits for that replica's whole delete and sums
    after it: the conversation's ``bytes`` stays its items' (was it not so, it would be 0 here)."""
    from stockyard.dburl import parse_postgres
    from stockyard.store.backends import PostgresBackend

    backend = PostgresBackend(parse_postgres(pg_url, {}))
    backend.open_and_migrate()
    setup, replica, eraser, watch = (backend.connect() for _ in range(4))
    made = "INSERT INTO conversations (id, key_id, created_at, updated_at, bytes) VALUES ('conv_r', 'k', 1, 1, 300)"
    setup.execute(made)
    for seq, (item, trace) in enumerate([("msg_a", "tr_erased"), ("msg_b", "tr_erased"), ("msg_c", "tr_other")]):
        sql = "INSERT INTO conversation_items (conversation_id, seq, id, bytes, item, trace_id) VALUES "
        setup.execute(sql + "(?, ?, ?, ?, ?, ?)", ("conv_r", seq, item, 100, b"x", trace))
    # the other replica's delete of msg_a (ConversationStore.delete_item), not committed yet
    replica.execute("BEGIN IMMEDIATE")
    replica.execute("DELETE FROM conversation_items WHERE conversation_id = 'conv_r' AND seq = 0")
    erased: list = []

    def erase() -> None:
        eraser.execute("BEGIN IMMEDIATE")
        erased.append(erase_turns(eraser, ["tr_erased"]))
        eraser.execute("COMMIT")

    thread = threading.Thread(target=erase)
    thread.start()
    blocked = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    wait_for(lambda: watch.execute(blocked).fetchone()[0] == 1, what="the erase waiting for the deleted row")
    replica.execute("UPDATE conversations SET bytes = bytes - 100 WHERE id = 'conv_r'")
    replica.execute("COMMIT")
    thread.join(30)
    assert not thread.is_alive() and erased
    left = setup.execute("SELECT bytes FROM conversations WHERE id = 'conv_r'").fetchone()[0]
    items = setup.execute("SELECT COALESCE(SUM(bytes), 0) FROM conversation_items WHERE conversation_id = 'conv_r'")
    assert left == items.fetchone()[0] == 100, f"the conversation's bytes say {left}, its items hold 100"
    assert erased[0][1] == {"conv_r": 1}  # what the audit entry says went: the one item this erase deleted
    for conn in (setup, replica, eraser, watch):
        conn.close()


@pytest.mark.parametrize("value", ["15001", "600000"])
def test_a_busy_timeout_past_what_a_writes_caller_waits_is_refused_at_start(pyz_path, cache_home, tmp_path, value):
    """Was: ``STOCKYARD_BUSY_TIMEOUT_MS`` went up to 600000, but whoever waits for a write gives up
    after 30 s (``Writer.call``: an admin change, a claim, a conversation's items; the kept turn's
    settle and a conversation's read 30 s too): with the database held 40 s under a 45 s busy timeout
    the caller was told ``TimeoutError`` (an admin's 500) at 30 s and the write committed afterwards,
    a change reported failed that was made. The bound is 15000: twice it (a batch waiting behind
    another that waited as long) fits in the 30 s, so the caller hears how its write ended."""
    env = {**base_env(cache_home), "STOCKYARD_BUSY_TIMEOUT_MS": value}
    done = clirun.run(pyz_path, ["serve", "--port", "0", "--db", str(tmp_path / "stockyard.db")], env, timeout=30)
    assert done.returncode != 0, "the server started"
    assert "STOCKYARD_BUSY_TIMEOUT_MS must be between 100 and 15000" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def database_held(server) -> Callable[[], None]:
    """Another session holds the server's database (its write lock, on either store); the call lets it go."""
    return hold_database(server.db)


@contextlib.contextmanager
def held_for_its_claim(server, mock, hold=database_held) -> Iterator[tuple[socket.socket, bytes]]:
    """A relayed Messages stream of alice's whose next event names a file the code execution tool
    wrote, while another process holds the database (``hold(server)``: it returns the release):
    its bytes wait for the claim (up to the 10 s busy timeout, PostgreSQL's lock_timeout). The client's socket and
    what it read so far; the database is let go on the way out."""
    start = {**START, "message": {**START["message"], "id": "msg_held", "usage": {"input_tokens": 5}}}
    events = [
        sse("message_start", json.dumps(start)),
        sse("content_block_start", json.dumps({"type": "content_block_start", "index": 0, "content_block": RESULT})),
        sse("message_stop", json.dumps({"type": "message_stop"})),
    ]
    gate, all_sent = threading.Event(), threading.Event()
    mock.enqueue(Reply(sse=events, held_after=1, held=gate, all_sent=all_sent))
    ask = [{"role": "user", "content": "csv"}]
    body = {"model": CLAUDE, "max_tokens": 16, "stream": True, "tools": [CODE_TOOL], "messages": ask}
    sock = post_stream(server, "/v1/messages", body, "alice")
    release = None
    try:
        got = read_until(sock, b"msg_held")
        release = hold(server)
        gate.set()
        assert all_sent.wait(10)  # the event naming the file reached Stockyard: its claim waits for the lock
        yield sock, got
    finally:
        gate.set()
        if release is not None:
            release()
        sock.close()


def test_a_stream_held_for_its_claim_ends_within_the_shutdown_grace(pyz_path, cache_home, mock, tmp_path):
    """Checked: a stream whose bytes wait for a claim the writer cannot commit (another process holds
    the database, a 10 s busy timeout) is among the relay's live streams, so SIGTERM's drain ends it
    when its 1 s grace is up — an error event saying the server shut down, before the claim's busy
    timeout would — and the server exits once the database is free, its trace written."""
    server = next(started(pyz_path, cache_home, mock, tmp_path, STOCKYARD_SHUTDOWN_GRACE="1s"))
    with held_for_its_claim(server, mock) as (sock, got):
        began = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        got = read_until(sock, b"0\r\n\r\n", got, timeout=8)
        took = time.monotonic() - began
    assert took < 5, f"the held stream ended {took:.1f} s after SIGTERM"
    assert b"the server shut down before the answer was complete" in got, got[-400:]
    assert WRITTEN.encode() not in got  # the event naming the unclaimed file never went out
    assert server.proc.wait(30) == 0
    assert server.db_rows("SELECT outcome FROM traces WHERE endpoint = 'messages'"), server.log
    assert "Traceback" not in server.log


def test_a_stream_held_for_its_claim_ends_at_its_deadline(pyz_path, cache_home, mock, tmp_path):
    """Checked: while its bytes wait for the claim the stream is not read (no read timer), but the
    request's deadline (the timeout module's ``deadline_s``) still runs: it ends at 2 s with the
    deadline's error event, not when the claim fails at the busy timeout (10 s)."""
    gen = started(pyz_path, cache_home, mock, tmp_path, STOCKYARD_ADMIN_KEY=ADMIN_KEY)
    server = next(gen)
    try:
        put_module(server, "timeout", {"deadline_s": 2})
        with held_for_its_claim(server, mock) as (sock, got):
            began = time.monotonic()
            got = read_until(sock, b"0\r\n\r\n", got, timeout=9)
            took = time.monotonic() - began
        assert took < 6, f"the held stream ended {took:.1f} s after its claim began waiting"
        assert b"deadline" in got.split(b"msg_held", 1)[1], got[-400:]
        assert WRITTEN.encode() not in got
    finally:
        next(gen, None)  # stopped: no key and no traceback in its log


def test_a_client_that_leaves_while_its_stream_is_held_ends_once_the_claim_does(pyz_path, cache_home, mock, tmp_path):
    """Checked: the relay does not watch a held stream's client (nothing to write to it), so a client
    that leaves meanwhile is found when the held bytes go out once the claim is committed: the
    request ends, its trace written, nothing left waiting."""
    gen = started(pyz_path, cache_home, mock, tmp_path)
    server = next(gen)
    try:
        with held_for_its_claim(server, mock) as (sock, _):
            sock.close()
        rows = wait_for(
            lambda: server.db_rows("SELECT outcome FROM traces WHERE endpoint = 'messages'"),
            timeout=15,
            what="the left stream's trace",
        )
        # gone, or "ok" when the kernel took the held bytes and the end before the client's reset came
        assert rows in ([{"outcome": "client_disconnected"}], [{"outcome": "ok"}]), rows
        assert server.db_rows("SELECT kind FROM owned_objects WHERE id = ?", (WRITTEN,))  # claimed all the same
    finally:
        next(gen, None)


def test_the_erase_of_1000_traces_stored_turns_fits_one_statement_each(database):
    """Checked on both stores: ``erase_turns`` for the most trace ids one erase takes (``MAX_ERASE``),
    each with a stored response (its item ids too) and a turn appended to one conversation, binds
    them in single statements within either store's parameter limit, and leaves the conversation's
    ``bytes`` its remaining items'."""
    from stockyard.operations.maintenance import MAX_ERASE

    database.open_and_migrate()
    conn = database.connect()
    traces = [f"tr_{n:024x}" for n in range(MAX_ERASE)]
    conn.execute("BEGIN IMMEDIATE")
    sql = "INSERT INTO conversations (id, key_id, created_at, updated_at, bytes, next_seq) VALUES (?, ?, 1, 1, ?, ?)"
    conn.execute(sql, ("conv_many", "k", 10 * (2 * MAX_ERASE + 1), 2 * MAX_ERASE + 1))
    for n, trace in enumerate(traces):
        made = "INSERT INTO responses (id, key_id, provider, created_at, passthrough, trace_id) VALUES "
        conn.execute(made + "(?, 'k', 'p', 1, 1, ?)", (f"resp_{n}", trace))
        conn.execute("INSERT INTO response_items (item_id, response_id) VALUES (?, ?)", (f"msg_{n}", f"resp_{n}"))
        sql = "INSERT INTO conversation_items (conversation_id, seq, id, bytes, item, trace_id) VALUES "
        for seq in (2 * n, 2 * n + 1):
            conn.execute(sql + "('conv_many', ?, ?, 10, ?, ?)", (seq, f"msg_{seq}", b"x", trace))
    conn.execute(sql + "('conv_many', ?, 'msg_kept', 10, ?, NULL)", (2 * MAX_ERASE, b"x"))
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    responses, items = erase_turns(conn, traces)
    conn.execute("COMMIT")
    assert len(responses) == MAX_ERASE and items == {"conv_many": 2 * MAX_ERASE}
    assert conn.execute("SELECT count(*) FROM responses").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM response_items").fetchone()[0] == 0
    assert conn.execute("SELECT bytes FROM conversations WHERE id = 'conv_many'").fetchone()[0] == 10
    conn.close()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    groq = {"GROQ_API_KEY": "gsk-test-groq-review14-0123456789abcdef", "GROQ_BASE_URL": mock.url + "/v1"}
    yield from started(pyz_path, cache_home, mock, tmp_path_factory.mktemp("review14"), ("review14-0123",), **groq)


def deep_arguments(depth: int = 5000) -> str:
    """Tool call arguments a provider wrote: a JSON object nested past the parser's depth."""
    return '{"a": ' + "[" * depth + "]" * depth + "}"


def chat_answer_calling(name: str, arguments: str) -> dict:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    return {
        "id": "chatcmpl-deep",
        "object": "chat.completion",
        "model": "llama-3.3-70b",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


@pytest.mark.parametrize("dialect", ["messages", "responses"])
def test_a_providers_tool_arguments_nested_too_deep_are_not_the_clients_400(server, mock, dialect):
    """A provider's chat answer whose tool call arguments nest past the parser's depth, translated
    (as a Messages answer: ``messages.tool_input``; as a Responses one for a custom tool:
    ``responses.custom_input``; also ``search_item`` and Anthropic's streamed server-tool input):
    the arguments are the provider's malformed ones, read as the unreadable arguments they already
    stood for — never the 400 blaming the client's body ("request body nests …", ``invalid_json``)
    that a RecursionError becomes at the dispatch (as today's fix did for provider events)."""
    if dialect == "messages":
        mock.enqueue(Reply(json=chat_answer_calling("lookup", deep_arguments())))
        tool = {"name": "lookup", "input_schema": {"type": "object"}}
        ask = [{"role": "user", "content": "hi"}]
        body = {"model": "groq/llama-3.3-70b", "max_tokens": 16, "tools": [tool], "messages": ask}
        headers = {"x-api-key": server.keys["alice"], "anthropic-version": "2023-06-01"}
        status, _, raw = server.request("POST", "/v1/messages", body, headers=headers)
        assert status == 200, (status, raw[:300])
        assert [b["input"] for b in json.loads(raw)["content"] if b["type"] == "tool_use"] == [{}]
    else:
        mock.enqueue(Reply(json=chat_answer_calling("apply_patch", deep_arguments())))
        tool = {"type": "custom", "name": "apply_patch"}
        body = {"model": "groq/llama-3.3-70b", "input": "fix it", "tools": [tool]}
        status, _, raw = server.request("POST", "/v1/responses", body, headers=server.auth("alice"))
        assert status == 200, (status, raw[:300])
        [item] = [i for i in json.loads(raw)["output"] if i["type"] == "custom_tool_call"]
        assert item["input"] == deep_arguments()  # as written, as arguments that are not JSON are
