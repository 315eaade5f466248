"""Full-text search over stored bodies: found within a second, redacted text never, gone with retention."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from module_helpers import api, chat, put_module, server_fixture
from ops_helpers import sample_trace

from stockyard.retention import Retention
from stockyard.store import db
from stockyard.store import traces as trace_store

SECRET = "sk-proj-" + "Z9y8X7w6V5u4T3s2R1q0" * 2

server = server_fixture("search", never_logged=(SECRET,))


def search(server, text: str) -> list[str]:
    status, page = api(server, "GET", "/api/traces?" + urllib.parse.urlencode({"q": text}))
    assert status == 200, page
    return [t["id"] for t in page["data"]]


def found_within_a_second(server, text: str, trace_id: str) -> float:
    """Seconds from the answer until search finds ``trace_id`` (fails after one second)."""
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        if trace_id in search(server, text):
            return time.monotonic() - start
    raise AssertionError(f"{trace_id} not found by {text!r} within a second")


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_prompt_is_found_by_a_word_within_a_second(server):
    status, headers, _ = chat(server, messages=ask("please summarise the quarterly zebrafish migration report"))
    assert status == 200
    trace_id = headers["x-stockyard-trace-id"]
    found_within_a_second(server, "zebrafish", trace_id)
    assert search(server, "zebrafish quarterly") == [trace_id], "every word must appear"
    assert search(server, "zebrafish unicornish") == []
    assert trace_id in search(server, "mock"), "answers are searched too ('Hello from mock')"
    assert search(server, 'zebra" OR *') == [], "FTS operators in user text are plain words, not errors"
    cli = server.cli("traces", "--search", "zebrafish", "--json")
    assert cli.returncode == 0, cli.stderr
    assert [json.loads(line)["id"] for line in cli.stdout.splitlines()] == [trace_id]


def test_redacted_text_is_never_found(server):
    put_module(server, "redact", {"mode": "store"})
    try:
        status, headers, _ = chat(server, messages=ask(f"my narwhal key is {SECRET}"))
        assert status == 200
        trace_id = headers["x-stockyard-trace-id"]
        found_within_a_second(server, "narwhal", trace_id)
        assert search(server, SECRET) == []
        assert search(server, "Z9y8X7w6V5u4T3s2R1q0") == []
        assert trace_id in search(server, "REDACTED")
    finally:
        put_module(server, "redact", enabled=False)


@pytest.mark.parametrize("what", ["bodies", "traces"])
def test_retention_takes_text_out_of_the_index(tmp_path, what):
    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn)
    now_ms = int(time.time() * 1000)
    old = sample_trace(now_ms - 10 * 86_400_000, body=b'{"messages": "an old axolotl"}')
    new = sample_trace(now_ms, body=b'{"messages": "a new axolotl"}')
    with conn:
        old.write(conn)
        new.write(conn)
    found = lambda: [t["id"] for t in trace_store.list_traces(conn, search="axolotl")]  # noqa: E731
    assert found() == [new.id, old.id]
    ages = {"bodies_max_age_s": 86_400.0} if what == "bodies" else {"traces_max_age_s": 86_400.0}
    r = Retention(**ages)
    with conn:
        while r.run(conn):
            pass
    assert found() == [new.id]
    assert conn.execute("SELECT count(*) FROM trace_search").fetchone()[0] == 1


def test_bodies_stored_before_the_index_are_indexed_after_the_upgrade(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_store, "BACKFILL_ROWS", 3)  # several steps
    conn = db.connect(tmp_path / "old.db")
    db.migrate(conn, upto=8)  # before 0009: the search index
    now_ms = int(time.time() * 1000)
    old = [sample_trace(now_ms - i, body=f'{{"messages": "platypus {i}"}}'.encode()) for i in range(7)]
    conn.execute("BEGIN")
    for row in old:
        row.write(conn, v9=False)
    conn.execute("COMMIT")
    db.migrate(conn)
    new = sample_trace(now_ms + 1, body=b'{"messages": "a newer platypus"}')
    with conn:
        new.write(conn)
    assert [t["id"] for t in trace_store.list_traces(conn, search="platypus")] == [new.id]
    steps = 1
    while trace_store.backfill_search(conn):
        steps += 1
    assert steps == 3
    found = [t["id"] for t in trace_store.list_traces(conn, search="platypus")]
    assert sorted(found) == sorted([new.id, *(r.id for r in old)]), "each once"
    assert conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'search_backfill_%'").fetchone()[0] == 0
    assert trace_store.backfill_search(conn) is False


def test_search_and_tag_filters_answer_alike_on_each_store(database):
    """The same rows, the same answers from SQLite (FTS5, json_each) and PostgreSQL (tsvector, jsonb)."""
    conn = database.connect()
    db.migrate(conn)
    now = int(time.time() * 1000)
    specs = [
        (b'{"content": "The Quarterly okapi report"}', "ana", {"team": "search", "feature": "summaries"}),
        (b'{"content": "an okapi, alone"}', "ben", {"team": "ads"}),
        (b'{"content": "zebra crossing"}', None, None),
    ]
    rows = [
        sample_trace(now + i, body=body, end_user=user, tags=json.dumps(tags) if tags else None)
        for i, (body, user, tags) in enumerate(specs)
    ]
    conn.execute("BEGIN IMMEDIATE")
    for row in rows:
        row.write(conn)
    conn.execute("COMMIT")

    def ids(**filters) -> list[str]:
        return [t["id"] for t in trace_store.list_traces(conn, **filters)]

    ana, ben, other = (r.id for r in rows)
    assert ids(search="okapi") == [ben, ana]
    assert ids(search="OKAPI quarterly") == [ana], "every word, any case"
    assert ids(search="okapi zebra") == []
    assert ids(search='okapi" OR *') == [], "operators in user text are plain words"
    assert ids(search="   ") == [ana, ben, other][::-1]
    assert ids(tag=("team", "ads")) == [ben]
    assert ids(tag=("feature", "summaries"), search="okapi") == [ana]
    assert ids(tag=("team", "nobody")) == []
    assert ids(user="ana", search="report") == [ana]
    conn.close()
