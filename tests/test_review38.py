"""An attacker's review of the day's changes (message threads, filtered lists, the relay's probe, paged costs).

Anthropic keeps more than threads under a reply's id: ``diagnostics.previous_message_id`` has it compare
this request's prompt with the one that got that reply and say how they differ (``cache_miss_reason``:
model, system, tools changed, or the messages, with the tokens a cache would have read). Anthropic sees
one owner, Stockyard's provider key, so a key naming another key's reply there would learn of that
conversation what a thread continue is refused for. Stockyard records the replies of requests that opt
in (``diagnostics`` present) as the key's, and a ``previous_message_id`` that is not the key's goes to
Anthropic as ``null`` (opted in, nothing to compare): another key's and a made-up id alike. Open mode has
one owner: its ids go as sent.
"""

from __future__ import annotations

import json

import anthropic
import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from mock_upstream import MockUpstream
from module_helpers import ADMIN_KEY

ANTHROPIC_KEY = "sk-ant-test-review38-0123456789abcdefANTHROPICSECRET"
MODEL = "anthropic/claude-thread-model"
HI = [{"role": "user", "content": "Hi"}]
MORE = [{"role": "user", "content": "And then?"}]
VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(
        cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN_KEY
    )
    keys = {"alice": [], "bob": [], "carol": []}
    with served(pyz_path, tmp_path_factory, "review38", env, keys, never_logged=(ANTHROPIC_KEY,)) as srv:
        yield srv


def diagnosed(previous: str | None) -> dict:
    return {"diagnostics": {"previous_message_id": previous}}


def sent_diagnostics(mock: MockUpstream, before: int) -> list[object]:
    """What each Messages call the provider got since ``before`` said in ``diagnostics``."""
    calls = [r for r in mock.requests[before:] if r.path.startswith("/v1/messages")]
    return [r.json.get("diagnostics") for r in calls]


def test_diagnostics_naming_another_keys_reply_reach_the_provider_as_null(
    server: ServerProcess, mock: MockUpstream
) -> None:
    alice = server.anthropic("alice").messages
    alices = alice.create(model=MODEL, max_tokens=16, messages=HI, extra_body=diagnosed(None)).id
    bob = server.anthropic("bob").messages
    before = len(mock.requests)
    for previous in (alices, "msg_011madeupbybob", alices.upper(), f" {alices}"):
        bob.create(model=MODEL, max_tokens=16, messages=MORE, extra_body=diagnosed(previous))
        with bob.stream(model=MODEL, max_tokens=16, messages=MORE, extra_body=diagnosed(previous)) as stream:
            stream.get_final_message()
        bob.count_tokens(model=MODEL, messages=MORE, extra_body=diagnosed(previous))
    assert sent_diagnostics(mock, before) == [{"previous_message_id": None}] * 12  # nothing of alice's compared
    before = len(mock.requests)
    second = alice.create(model=MODEL, max_tokens=16, messages=MORE, extra_body=diagnosed(alices))
    with alice.stream(model=MODEL, max_tokens=16, messages=MORE, extra_body=diagnosed(second.id)) as stream:
        third = stream.get_final_message()
    alice.create(model=MODEL, max_tokens=16, messages=MORE, extra_body=diagnosed(third.id))
    # the key's own replies go as sent, a streamed one's too (recorded at its message_start)
    assert sent_diagnostics(mock, before) == [{"previous_message_id": i} for i in (alices, second.id, third.id)]


def test_a_malformed_diagnostics_is_a_400_unasked(server: ServerProcess, mock: MockUpstream) -> None:
    before = len(mock.requests)
    for bad in ("msg_1", {"previous_message_id": 7}, {"previous_message_id": ["msg_1"]}):
        body = {"model": MODEL, "max_tokens": 16, "messages": HI, "diagnostics": bad}
        status, _, raw = server.request("POST", "/v1/messages", body, headers={**server.auth("bob"), **VERSION})
        assert status == 400, raw
        error = json.loads(raw)["error"]
        assert error["type"] == "invalid_request_error" and "diagnostics" in error["message"]
    assert sent_diagnostics(mock, before) == []


def test_a_message_batch_naming_a_reply_in_diagnostics_is_refused(server: ServerProcess, mock: MockUpstream) -> None:
    alice = server.anthropic("alice").messages
    alices = alice.create(model=MODEL, max_tokens=16, messages=HI, extra_body=diagnosed(None))
    before = len(mock.requests)
    params = {"model": MODEL, "max_tokens": 16, "messages": MORE, **diagnosed(alices.id)}
    with pytest.raises(anthropic.BadRequestError) as failure:
        server.anthropic("bob").messages.batches.create(requests=[{"custom_id": "a", "params": params}])
    assert "requests.0.params.diagnostics.previous_message_id" in failure.value.response.json()["error"]["message"]
    assert mock.requests[before:] == []


def owned_replies(server: ServerProcess, key: str) -> list[str]:
    sql = (
        "SELECT o.id FROM owned_objects o JOIN client_keys k ON k.id = o.key_id"
        " WHERE o.kind = 'message_reply' AND k.name = ? ORDER BY o.id"
    )
    return [row["id"] for row in server.db_rows(sql, (key,))]


def test_a_keys_replies_kept_for_diagnostics_are_one_a_chain_and_a_day_at_most(
    server: ServerProcess, mock: MockUpstream
) -> None:
    messages = server.anthropic("carol").messages
    first = messages.create(model=MODEL, max_tokens=16, messages=HI, extra_body=diagnosed(None)).id
    other = messages.create(model=MODEL, max_tokens=16, messages=HI, extra_body=diagnosed(None)).id
    assert wait_for(lambda: owned_replies(server, "carol") == sorted([first, other]))
    server.db_write("UPDATE owned_objects SET created_at = created_at - 86400001 WHERE id = ?", (other,))
    second = messages.create(model=MODEL, max_tokens=16, messages=MORE, extra_body=diagnosed(first)).id
    # the reply named gave way to its next; the one older than a day went
    assert wait_for(lambda: owned_replies(server, "carol") == [second])
    before = len(mock.requests)
    messages.create(model=MODEL, max_tokens=16, messages=MORE, extra_body=diagnosed(other))
    assert sent_diagnostics(mock, before) == [{"previous_message_id": None}]


def test_open_mode_sends_diagnostics_as_they_are(pyz_path, cache_home, mock, tmp_path_factory) -> None:
    env = mock_env(cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url)
    srv = ServerProcess(pyz_path, tmp_path_factory.mktemp("review38open") / "stockyard.db", env).start()
    try:
        client = srv.anthropic("sk-anything").messages
        first = client.create(model=MODEL, max_tokens=8, messages=HI).id  # not opted in: never recorded
        before = len(mock.requests)
        client.create(model=MODEL, max_tokens=8, messages=MORE, extra_body=diagnosed(first))
        assert sent_diagnostics(mock, before) == [{"previous_message_id": first}]  # one owner: nothing to hide
        assert srv.db_rows("SELECT id FROM owned_objects WHERE kind = 'message_reply'") == []
    finally:
        srv.stop()
    assert "Traceback" not in srv.log
