"""review32: an attacker's look at the late merges (background responses' ``keep_usage``).

The real pyz and SQLite file (or PostgreSQL: ``STOCKYARD_TEST_STORE=postgresql``) against the mock
upstream; a careless compatible provider that repeats response ids is scripted with ``Reply``.
"""

from __future__ import annotations

import json
import zlib

import pytest
from conftest import ServerProcess, wait_for
from mock_upstream import RESPONSES_STATE, Reply, responses_object
from module_helpers import client_key, server_fixture

MODEL = "gpt-4o-mini"  # passed through: its provider keeps the conversation


# The batch watch looks every second: it bills background responses nobody retrieves.
server = server_fixture("review32", STOCKYARD_BATCH_POLL="1s")


@pytest.fixture(autouse=True)
def no_replies_left(mock):
    """A test that fails midway leaves no scripted reply for the next one (the mock is the session's)."""
    yield
    mock.clear_replies()


def respond(server: ServerProcess, key: str, **body) -> tuple[int, dict]:
    status, _, raw = server.request("POST", "/v1/responses", body, headers={"Authorization": f"Bearer {key}"})
    return status, json.loads(raw)


def kept_usage(server: ServerProcess, response_id: str) -> dict:
    """The usage the responses row keeps (what the next turn of its key's conversation holds). The
    row is the writer's, not waited for by the answer: waited for here."""
    sql = "SELECT response FROM responses WHERE id = ?"
    (row,) = wait_for(lambda: server.db_rows(sql, (response_id,)), what=f"the responses row {response_id}")
    return json.loads(zlib.decompress(row["response"]))["usage"]


def billed_usage(server: ServerProcess, response_id: str) -> list[dict]:
    return server.db_rows(
        "SELECT 1 FROM owned_objects WHERE id = ? AND kind = 'background_response' AND billed = 1", (response_id,)
    )


def test_a_background_response_with_a_repeated_id_does_not_write_its_usage_on_another_keys_row(server, mock):
    """Bob's stored response X; a provider that repeats ids gives Alice's background response X too
    (kept as Bob's, recorded as Alice's to bill). When the watch bills Alice's, its usage must not
    replace the usage Bob's row keeps: Bob's next turn would hold Alice's conversation (more or less)."""
    alice, bob = client_key(server), client_key(server)
    mine = responses_object({}, 93_201, MODEL)
    RESPONSES_STATE.keep({}, mine)
    huge = {"input_tokens": 900_000, "output_tokens": 90_000, "total_tokens": 990_000}
    mock.enqueue(
        Reply(json=mine),
        Reply(json={**mine, "status": "queued", "usage": None, "background": True}),
        Reply(json={**mine, "background": True, "usage": {**mine["usage"], **huge}}),
    )
    status, first = respond(server, bob, model=MODEL, input="bob's")
    assert status == 200, first
    bobs = kept_usage(server, first["id"])
    status, second = respond(server, alice, model=MODEL, input="alice's", background=True)
    assert status == 200 and second["id"] == first["id"], second
    wait_for(lambda: billed_usage(server, first["id"]), timeout=20, what="the watch's bill of Alice's response")
    assert kept_usage(server, first["id"]) == bobs


def test_deleting_a_stored_response_that_is_not_background_neither_looks_nor_cancels(server, mock):
    """The cancel-before-delete is for a key's own unbilled background response only: a normal stored
    response (passed through) is deleted with one DELETE at the provider, no retrieve, no cancel; and
    another key's background response is OpenAI's 404 to delete, nothing of it reaching the provider."""
    alice, bob = client_key(server), client_key(server)
    status, made = respond(server, bob, model=MODEL, input="a stored one")
    assert status == 200 and made["status"] == "completed", made
    status, running = respond(server, alice, model=MODEL, input="a long job", background=True)
    assert status == 200 and running["status"] == "queued", running
    mock.clear()
    as_bob = {"Authorization": f"Bearer {bob}"}
    assert server.request("DELETE", f"/v1/responses/{running['id']}", headers=as_bob)[0] == 404
    assert server.request("DELETE", f"/v1/responses/{made['id']}", headers=as_bob)[0] == 200
    sent = [(r.method, r.path) for r in mock.requests]
    assert [s for s in sent if made["id"] in s[1]] == [("DELETE", f"/v1/responses/{made['id']}")], sent
    # Alice's: only the watch's own looks (GET), never Bob's delete nor a cancel
    assert {s[0] for s in sent if running["id"] in s[1]} <= {"GET"} and not any("/cancel" in p for _, p in sent)
