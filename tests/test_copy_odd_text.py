"""Client-controlled text of every odd kind in one burst of traces, on either store.

On PostgreSQL the writer sends a batch of 16 traces or more as one ``COPY`` in text format
(``store.pg._copy_rows``): a backslash, ``\\.``, a tab, a line end, a NUL or a lone surrogate in a
model name, an end user, a tag or a body must neither break the batch (every other client's trace
kept) nor be stored differently than SQLite stores it. Runs on PostgreSQL with
``STOCKYARD_TEST_STORE=postgresql``.
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerProcess, mock_env, wait_for

from stockyard.store.traces import clean_text

ODD = ["back\\slash", "\\.", "\\N", "tab\there", "line\nend", "cr\rlf", "nul\x00x", "lone\ud800", "ü 🦙", "\\x00ff"]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("copyodd") / "stockyard.db", mock_env(cache_home, mock))
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log


def test_a_burst_of_odd_client_text_keeps_every_trace_as_written(server):
    """48 requests at once (a model name, an end user and a message each holding odd text; some
    refused, as a NUL in a model name or a line end in an end user is): a trace each (but the refusals
    past the 20 a sender's burst traces), each model name and end user of an answered one as
    ``clean_text`` makes it (this server has no other traces)."""
    run = secrets.token_hex(4)

    def send(i: int) -> int:
        odd = ODD[i % len(ODD)]
        model = "gpt-4o-mini" if i % 2 else f"gpt-4o-mini{odd}"
        body = {"model": model, "user": f"{run}-{odd}", "messages": [{"role": "user", "content": odd * 50}]}
        raw = json.dumps(body).encode()  # a lone surrogate as its JSON escape
        status, _, _ = server.request(
            "POST", "/v1/chat/completions", raw=raw, headers={"x-stockyard-tags": f"run={run},n={i}"}
        )
        return status

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(48)))
    assert all(s < 500 for s in statuses), statuses
    traced = statuses.count(200) + min(statuses.count(400), 20)  # a sender's refusals: a burst of 20 traced
    rows = wait_for(
        lambda: len(r := server.db_rows("SELECT model, end_user, tags, status FROM traces")) == traced and r
    )
    tagged = [row for row in rows if row["tags"] is not None]
    for row in tagged:
        i = int(json.loads(row["tags"])["n"])
        odd = ODD[i % len(ODD)]
        assert row["model"] == clean_text("gpt-4o-mini" if i % 2 else f"gpt-4o-mini{odd}"), (i, row)
        assert row["end_user"] == clean_text(f"{run}-{odd}"), (i, row)
    assert len(tagged) == statuses.count(200), rows
