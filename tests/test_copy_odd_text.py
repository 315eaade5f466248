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
from conftest import mock_env, served, wait_for

from stockyard.store.traces import clean_text

ODD = ["back\\slash", "\\.", "\\N", "tab\there", "line\nend", "cr\rlf", "nul\x00x", "lone\ud800", "ü 🦙", "\\x00ff"]


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    with served(pyz_path, tmp_path_factory, "copyodd", mock_env(cache_home, mock)) as srv:
        yield srv


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
    answered, refused = statuses.count(200), statuses.count(400)
    query = "SELECT model, end_user, tags, status FROM traces"

    def all_written() -> list[dict] | None:
        """The traces once every answered request's and at least a burst of 20 refusals' are in."""
        rows = server.db_rows(query)
        tagged = sum(r["tags"] is not None for r in rows)
        return rows if tagged == answered and len(rows) >= answered + min(refused, 20) else None

    rows = wait_for(all_written)
    assert len(rows) <= len(statuses)
    for row in (row for row in rows if row["tags"] is not None):
        i = int(json.loads(row["tags"])["n"])
        odd = ODD[i % len(ODD)]
        assert row["model"] == clean_text("gpt-4o-mini" if i % 2 else f"gpt-4o-mini{odd}"), (i, row)
        assert row["end_user"] == clean_text(f"{run}-{odd}"), (i, row)
