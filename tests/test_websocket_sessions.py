"""The Responses API's WebSocket mode used as a coding agent uses it, for a long while: the server's
keys changing under an open socket, turns chained across the processes of a group or replicas,
keys refused mid-socket, the socket's limits at their ends (found by review ws26)."""

from __future__ import annotations

import pytest
from conftest import ServerProcess, open_database
from test_responses_websocket import ADMIN, MODELS, Raw, create, start

from stockyard.keys import PREFIX_LEN, hash_key, new_key_id, new_secret

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def unseen_key(server: ServerProcess, name: str) -> str:
    """A client key in the database that the server has not seen: committed without the change
    counter that tells servers to reload, as a replica's or the CLI's key is before the server's
    next look (``STOCKYARD_CONFIG_POLL``). Its secret."""
    secret = new_secret()
    conn = open_database(server.db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO client_keys (id, name, prefix, hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (new_key_id(), name, secret[:PREFIX_LEN], hash_key(secret), "2026-01-01T00:00:00Z"),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return secret


@pytest.mark.parametrize("model", list(MODELS.values()))
def test_a_socket_continues_its_own_turn_after_the_server_learns_its_key(
    pyz_path, cache_home, mock, tmp_path_factory, model
):
    """A key made by the CLI is known to the server only at its next look (``STOCKYARD_CONFIG_POLL``; a
    replica: on PostgreSQL's notice). A socket opened meanwhile is served in open mode and its turn
    stored without a key; the server then learns the keys, and the socket's next turn, now its key's,
    named its own previous response and got a 404 (the row was nobody's). The socket's own turns
    made without a key become its key's once the key is known."""
    server = start(pyz_path, cache_home, mock, tmp_path_factory, "late-key")
    try:
        secret = unseen_key(server, "late")
        assert server.request("POST", "/v1/responses", {"model": model, "input": "open"})[0] == 200  # not known yet
        raw = Raw(server, secret)
        assert raw.status == 101
        raw.send_json(create(model, "first"))
        first = raw.until("response.completed")[-1]
        assert first["type"] == "response.completed", first
        status, _, _ = server.request("POST", "/api/keys", {"name": "another"}, headers=ADMIN_AUTH)
        assert status == 201  # the admin API's change reloads the keys at once: the CLI's key is known now
        assert server.request("POST", "/v1/responses", {"model": model, "input": "open"})[0] == 401
        raw.send_json(create(model, "second", previous_response_id=first["response"]["id"]))
        second = raw.until("response.completed")[-1]
        assert second["type"] == "response.completed", second
        status, _, _ = server.request(
            "GET", f"/v1/responses/{first['response']['id']}", headers={"Authorization": f"Bearer {secret}"}
        )
        assert status == 200  # the key's over HTTP too, on any process
        raw.close()
    finally:
        server.stop()
    assert "Traceback" not in server.log
