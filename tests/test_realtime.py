"""OpenAI's Realtime API (``ws://…/v1/realtime?model=…``) through a real Stockyard process: the
official SDK's ``client.realtime.connect()`` relayed to the mock upstream's Realtime WebSocket, each
``response.done`` billed to the µ¢ at the model's text, audio and cached rates (computed here from
the usage the client itself received, at the prices OpenAI publishes), budgets refused at the upgrade
and ending a session that uses them up, the provider key kept from the client, and bad input
closed with the right code over a raw socket."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import socket
import struct
import threading
import time
from fractions import Fraction

import pytest
from conftest import OPENAI_KEY, TEST_STORE, ServerProcess, mock_env, open_database, served, wait_for
from mock_upstream import RT_AUDIO_BYTES, RT_IMAGE_TOKENS, TEXT, Reply
from module_helpers import ADMIN_KEY, api, put_module
from test_responses_websocket import KEY, Raw

MAX_MESSAGE = 256 * 1024
# OpenAI's prices, USD per 1M tokens (developers.openai.com/api/docs/models/gpt-realtime, -mini, -2):
# (text in, cached text, text out, audio in, cached audio, audio out, image in, cached image); no
# image price published for gpt-realtime and -mini: their images at the text rates
RATES = {
    "gpt-realtime": ("4.00", "0.40", "16.00", "32.00", "0.40", "64.00", "4.00", "0.40"),
    "gpt-realtime-mini": ("0.60", "0.06", "2.40", "10.00", "0.30", "20.00", "0.60", "0.06"),
    "gpt-realtime-2": ("4.00", "0.40", "24.00", "32.00", "0.40", "64.00", "5.00", "0.50"),
}


def expected_uc(model: str, usage: dict) -> int:
    """The cost in µ¢ of one response's usage (as the client saw it), rounded half up once."""
    t_in, t_cached, t_out, a_in, a_cached, a_out, i_in, i_cached = (Fraction(r) for r in RATES[model])
    details, out = usage["input_token_details"], usage["output_token_details"]
    cached = details["cached_tokens_details"]
    images, cached_images = details.get("image_tokens") or 0, cached.get("image_tokens") or 0
    usd = (
        (details["text_tokens"] - cached["text_tokens"]) * t_in
        + cached["text_tokens"] * t_cached
        + (details["audio_tokens"] - cached["audio_tokens"]) * a_in
        + cached["audio_tokens"] * a_cached
        + (images - cached_images) * i_in
        + cached_images * i_cached
        + out["text_tokens"] * t_out
        + out["audio_tokens"] * a_out
    ) / 1_000_000
    exact = usd * 10**8
    return int(exact + Fraction(1, 2))


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_MAX_BODY_BYTES=str(MAX_MESSAGE))
    env["STOCKYARD_ADMIN_KEY"] = ADMIN_KEY
    keys = {
        "alice": [],
        "sdk": [],
        "budgeted": ["--budget-usd", "0.01", "--budget-period", "day"],
        "minionly": ["--models", "gpt-realtime-mini"],
        "onerpm": ["--rpm", "1"],
        "tworpm": ["--rpm", "2"],
        "burstrpm": ["--rpm", "2"],
        "leaver": [],
        "faulter": [],
        "revoked": [],
        "burst": ["--budget-usd", "0.01", "--budget-period", "day"],
        "dropped": [],
        "dropped_budget": ["--budget-usd", "0.05", "--budget-period", "day"],
        "raced": ["--budget-usd", "1", "--budget-period", "day"],
        "stalled": ["--rpm", "1000"],
    }
    with served(pyz_path, tmp_path_factory, "realtime", env, keys) as srv:
        yield srv


def until(connection, kind: str) -> list:
    """The SDK connection's events up to the first of ``kind`` (or an error)."""
    events = [connection.recv()]
    while events[-1].type not in (kind, "error"):
        events.append(connection.recv())
    return events


def traces(server: ServerProcess, key: str, count: int) -> list[dict]:
    """The realtime traces of ``key`` (a name), oldest first, once ``count`` are committed."""
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = ?", (key,))[0]["id"]
    sql = "SELECT * FROM traces WHERE endpoint = 'realtime' AND key_id = ? ORDER BY ts_ms, id"

    def committed() -> list[dict] | None:
        rows = server.db_rows(sql, (key_id,))
        return rows if len(rows) >= count else None

    return wait_for(committed, 10, "traces")


def pcm(seconds: float) -> str:
    """Silence as pcm16 at 24 kHz, base64: what input_audio_buffer.append carries."""
    return base64.b64encode(b"\0" * int(seconds * 10 * RT_AUDIO_BYTES)).decode()


# -- the official SDK -----------------------------------------------------------------------------


def test_sdk_text_and_audio_responses_billed_exactly(server, mock):
    """A text response, then an audio one after appended audio (the second reads cached text and
    audio): each is one trace whose cost is the usage the client saw at the published rates; the
    provider was sent its key, which no event the client got carries."""
    client = server.openai("sdk")
    with client.realtime.connect(model="gpt-realtime") as conn:
        created = conn.recv()
        assert created.type == "session.created" and created.session.model == "gpt-realtime"
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "instructions": "Be brief."})
        until(conn, "session.updated")
        conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello"}]}
        )
        conn.response.create()
        events = until(conn, "response.done")
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == TEXT
        first = events[-1].response.usage.model_dump()
        conn.input_audio_buffer.append(audio=pcm(1.5))
        conn.input_audio_buffer.commit()
        conn.response.create(response={"output_modalities": ["audio"]})
        events = until(conn, "response.done")
        assert any(e.type == "response.output_audio.delta" for e in events)
        second = events[-1].response.usage.model_dump()
        seen = json.dumps([e.model_dump() for e in events])
    assert second["input_token_details"]["audio_tokens"] == 15
    assert second["input_token_details"]["cached_tokens_details"]["text_tokens"] == 64
    assert second["output_token_details"]["audio_tokens"] == 300
    rows = traces(server, "sdk", 2)
    assert [r["cost_uc"] for r in rows] == [expected_uc("gpt-realtime", first), expected_uc("gpt-realtime", second)]
    assert all(r["cost_status"] == "exact" and r["model"] == "gpt-realtime" and r["status"] == 200 for r in rows)
    assert rows[1]["prompt_tokens"] == second["input_tokens"]
    assert rows[1]["completion_tokens"] == second["output_tokens"]
    assert rows[1]["cached_tokens"] == second["input_token_details"]["cached_tokens"]
    upstream = mock.last("/realtime")
    assert upstream.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert upstream.query == {"model": "gpt-realtime"}
    assert OPENAI_KEY not in seen and OPENAI_KEY not in server.log
    ended = "gpt-realtime responses=2 cost=$0.0"  # the session's line: its model, responses and cost
    line = wait_for(lambda: next((x for x in server.log_lines if ended in x), None), 10, "the log line")
    assert "WS /v1/realtime 1000 " in line


def test_mini_audio_cached_at_its_own_rate(server):
    """gpt-realtime-mini caches audio ($0.30) dearer than text ($0.06): both rates apply."""
    client = server.openai("alice")
    with client.realtime.connect(model="gpt-realtime-mini") as conn:
        conn.recv()
        conn.input_audio_buffer.append(audio=pcm(2))
        conn.input_audio_buffer.commit()
        conn.response.create(response={"output_modalities": ["audio"]})
        until(conn, "response.done")
        conn.response.create(response={"output_modalities": ["text"]})
        usage = until(conn, "response.done")[-1].response.usage.model_dump()
    assert usage["input_token_details"]["cached_tokens_details"]["audio_tokens"] == 20
    wanted = expected_uc("gpt-realtime-mini", usage)
    sql = "SELECT cost_uc FROM traces WHERE endpoint = 'realtime' AND model = 'gpt-realtime-mini' AND cost_uc = ?"
    wait_for(lambda: server.db_rows(sql, (wanted,)), 10, "the cached-audio response billed")


def test_image_input_billed_at_the_image_rates(server):
    """An image in the conversation (gpt-realtime-2: images $5, cached $0.50; audio $32 per 1M): the
    first response reads it uncached, the second cached; each at the image rates, not the audio ones."""
    client = server.openai("alice")
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    with client.realtime.connect(model="gpt-realtime-2") as conn:
        conn.recv()
        conn.conversation.item.create(item={"type": "message", "role": "user", "content": [image]})
        conn.response.create(response={"output_modalities": ["text"]})
        first = until(conn, "response.done")[-1].response.usage.model_dump()
        conn.response.create(response={"output_modalities": ["text"]})
        second = until(conn, "response.done")[-1].response.usage.model_dump()
    assert first["input_token_details"]["image_tokens"] == RT_IMAGE_TOKENS
    assert second["input_token_details"]["cached_tokens_details"]["image_tokens"] == RT_IMAGE_TOKENS
    sql = "SELECT cost_uc FROM traces WHERE endpoint = 'realtime' AND model = 'gpt-realtime-2' AND cost_uc = ?"
    for usage in (first, second):
        wait_for(lambda u=usage: server.db_rows(sql, (expected_uc("gpt-realtime-2", u),)), 10, "billed at image rates")


# -- budgets, allow-lists, refusals at the upgrade --------------------------------------------------


def upgrade(
    server: ServerProcess, key: str | None, path: str = "/v1/realtime?model=gpt-realtime", extra: str = ""
) -> Raw:
    """A raw handshake on ``path`` with ``key`` (a name; None: no key) and ``extra`` header lines:
    its status and head read."""
    return Raw(server, server.secret(key) if key else None, extra, path)


def audio_until_error(raw: Raw) -> list[dict]:
    """An audio response asked on ``raw``: its events to the ``error`` that ends the session."""
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["audio"]}})
    events = [raw.event()]
    while events[-1]["type"] != "error":
        events.append(raw.event())
    return events


def refusal(raw: Raw) -> dict:
    """The JSON error body of a refused handshake."""
    lines = raw.head.split("\r\n")
    length = int(next(line.split(":")[1] for line in lines if line.lower().startswith("content-length")))
    while len(raw.buf) < length:
        raw.buf += raw.sock.recv(65536)
    raw.sock.close()
    return json.loads(raw.buf[:length])


def test_budget_used_up_mid_session_ends_it_then_refuses_the_upgrade(server):
    """A $0.01 budget: the audio response (~2 cents) is billed whole and ends the session with an
    ``error`` event and close 1008; the next upgrade is a 429 in OpenAI's shape; another key goes on."""
    raw = upgrade(server, "budgeted")
    assert raw.status == 101
    assert raw.event()["type"] == "session.created"
    events = audio_until_error(raw)
    assert events[-2]["type"] == "response.done"
    assert events[-1]["error"]["code"] == "budget_exceeded"
    assert raw.close_code() == 1008
    raw.close()
    (row,) = traces(server, "budgeted", 1)
    assert row["cost_uc"] == expected_uc("gpt-realtime", events[-2]["response"]["usage"]) > 1_000_000
    again = upgrade(server, "budgeted")
    assert again.status == 429
    error = refusal(again)["error"]
    assert error["code"] == "budget_exceeded" and "budget" in error["message"]
    ok = upgrade(server, "alice")
    assert ok.status == 101
    ok.close()


def test_key_allow_list_and_unknown_model_refused_at_upgrade(server):
    """A key limited to gpt-realtime-mini may not open gpt-realtime (403); no model is a 400."""
    refused = upgrade(server, "minionly")
    assert refused.status == 403, refused.head
    assert refusal(refused)["error"]["type"]
    missing = upgrade(server, "alice", "/v1/realtime")
    assert missing.status == 400
    assert refusal(missing)["error"]["code"] == "missing_model"
    keyless = upgrade(server, None)
    assert keyless.status == 401
    refusal(keyless)


def test_client_secrets_refused_with_the_reason(server):
    """An ephemeral key would let a browser talk to OpenAI unmetered: a 403 saying so."""
    status, _, body = server.request("POST", "/v1/realtime/client_secrets", {}, server.auth("alice"))
    assert status == 403
    error = json.loads(body)["error"]
    assert error["code"] == "unsupported_endpoint" and "meter" in error["message"]


def test_provider_refusal_relayed_without_its_key(server, mock):
    """The provider refusing the handshake (its 401 naming the key) is a 502 to the client, scrubbed."""
    message = f"Incorrect API key provided: {OPENAI_KEY}."
    mock.enqueue(Reply(status=401, json={"error": {"message": message, "type": "invalid_request_error"}}))
    raw = upgrade(server, "alice")
    assert raw.status == 502
    error = refusal(raw)["error"]
    assert "refused the session" in error["message"] and OPENAI_KEY not in error["message"]


# -- bad input, a provider that drops ----------------------------------------------------------------


def test_non_json_message_closes_1007(server):
    raw = upgrade(server, "alice")
    assert raw.event()["type"] == "session.created"
    raw.send_frame(0x1, b"this is not json")
    error = raw.event()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
    assert raw.close_code() == 1007
    raw.close()


def test_message_over_the_limit_closes_1009(server):
    raw = upgrade(server, "alice")
    assert raw.event()["type"] == "session.created"
    raw.send_frame(0x1, b"x" * (MAX_MESSAGE + 1))
    assert raw.close_code() == 1009
    raw.close()


def test_provider_drop_bills_what_was_done_and_closes_1014(server):
    """The provider's connection ends mid-session: the response done before it is billed, the
    client gets close 1014 (bad gateway), never a hang."""
    raw = upgrade(server, "alice")
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    done = raw.until("response.done")[-1]
    raw.send_json({"type": "mock.drop"})
    assert raw.close_code() == 1014
    raw.close()
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'alice'")[0]["id"]
    sql = "SELECT cost_uc FROM traces WHERE endpoint = 'realtime' AND key_id = ? AND ts_ms >= 0"
    wanted = expected_uc("gpt-realtime", done["response"]["usage"])
    wait_for(lambda: wanted in [r["cost_uc"] for r in server.db_rows(sql, (key_id,))], 10, "the billed response")


def drop_mid_response(server: ServerProcess, key: str, first: bool = True) -> list[dict]:
    """A text response done (if ``first``), a second begun (held at the mock), then the provider
    drops: no ``response.done`` ever comes for it. The events the client saw (it is closed 1014)."""
    raw = upgrade(server, key)
    assert raw.event()["type"] == "session.created"
    done = []
    if first:
        raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = raw.until("response.done")
    held = {"output_modalities": ["text"], "metadata": {"mock": "hold"}}
    raw.send_json({"type": "response.create", "response": held})
    events = raw.until("response.output_text.delta")
    assert events[-1]["type"] == "response.output_text.delta", events[-1]
    raw.send_json({"type": "mock.drop"})
    assert raw.close_code() == 1014
    raw.close()
    return done + events


def test_a_response_without_response_done_is_traced_as_an_estimate(server):
    """The provider drops mid-response: the response that never sent ``response.done`` still has a
    trace (status 502, outcome stream_broken, its cost an estimate: the input the last response read
    and the output it relayed), never silently free."""
    events = drop_mid_response(server, "dropped")
    done = next(e for e in events if e["type"] == "response.done")
    first, lost = traces(server, "dropped", 2)
    assert first["status"] == 200 and first["cost_status"] == "exact"
    assert lost["status"] == 502 and lost["outcome"] == "stream_broken", lost
    assert lost["cost_status"] == "estimate" and lost["cost_uc"] > 0
    assert lost["prompt_tokens"] == done["response"]["usage"]["input_tokens"]
    assert lost["completion_tokens"] == -(-len(TEXT) // 4)  # the held response relayed its text whole


def test_a_first_response_lost_before_any_output_is_of_unknown_cost(server):
    """The provider drops during the session's first response, before it relayed any output: neither
    its input (no ``response.done`` read one before it) nor its output is known, so its trace's cost
    is unknown (NULL), as an answer billed at an amount no price tells — counted as unpriced by the
    reports, not as free (an estimate of 0)."""
    server.keys.update(server.create_keys({"lost_first": []}))
    wait_for(lambda: server.request("GET", "/v1/models", headers=server.auth("lost_first"))[0] == 200, 10, "key")
    raw = upgrade(server, "lost_first")
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "response.create", "response": {"metadata": {"mock": "hold-silent"}}})
    assert raw.until("response.output_item.added")[-1]["type"] == "response.output_item.added"
    raw.send_json({"type": "mock.drop"})
    assert raw.close_code() == 1014
    raw.close()
    (lost,) = traces(server, "lost_first", 1)
    assert (lost["status"], lost["outcome"], lost["usage_estimated"]) == (502, "stream_broken", 1)
    assert (lost["cost_status"], lost["cost_uc"]) == ("unknown", None), lost
    status, report = api(server, "GET", "/api/costs?by=key")
    assert status == 200
    (row,) = [r for r in report["rows"] if r["key_name"] == "lost_first"]
    assert (row["requests"], row["unknown_cost"], row["cost_uc"]) == (1, 1, 0)


def test_a_lost_response_spends_a_budget_its_worst_case(server):
    """Under a budget ($0.05) a response without ``response.done`` spends its worst case (the
    input the last one read, none here, and the model's whole output ceiling as audio: gpt-realtime's
    4,096 tokens, $0.26), as an answer whose cost cannot be known spends its hold: the next upgrade is a 429."""
    drop_mid_response(server, "dropped_budget", first=False)
    traces(server, "dropped_budget", 1)
    again = wait_for(
        lambda: (r := upgrade(server, "dropped_budget")).status == 429 and r or r.sock.close(), 10, "the 429"
    )
    assert refusal(again)["error"]["code"] == "budget_exceeded"
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'dropped_budget'")[0]["id"]
    (row,) = server.db_rows("SELECT spent_uc FROM budget_unpriced WHERE key_id = ?", (key_id,))
    assert row["spent_uc"] > 4000 * 64 * 100  # µ¢: the output ceiling at $64 per 1M, less the estimate's few


def test_a_provider_error_event_reaches_the_client_scrubbed(server):
    """An ``error`` event from the provider mid-session that echoes the provider key reaches the
    client with the key redacted, as an HTTP path's provider error body does; the session goes on."""
    raw = upgrade(server, "alice")
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "mock.error"})
    error = raw.event()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
    assert OPENAI_KEY not in json.dumps(error) and "[redacted]" in error["error"]["message"]
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    assert raw.until("response.done")[-1]["type"] == "response.done"
    raw.close()


def test_session_update_to_another_model_refused(server):
    raw = upgrade(server, "alice", "/v1/realtime?model=gpt-realtime-mini")
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime"}})
    error = raw.event()
    assert error["type"] == "error" and error["error"]["code"] == "model_change_not_allowed"
    raw.send_frame(0x8, struct.pack("!H", 1000))
    assert raw.close_code() == 1000
    raw.close()


def test_end_user_budget_ends_the_session_then_refuses_the_upgrade(server):
    """``userlimits``' budget for an end user (x-stockyard-user) is spent by each response as the
    key's is: used up, the session ends (1008) and the user's next upgrade is a 429; another user's is not."""
    put_module(server, "userlimits", {"budget_usd": "0.01", "budget_period": "day"})
    try:
        raw = upgrade(server, "alice", extra="x-stockyard-user: carol\r\n")
        assert raw.status == 101 and raw.event()["type"] == "session.created"
        events = audio_until_error(raw)
        assert events[-2]["type"] == "response.done" and events[-1]["error"]["code"] == "budget_exceeded"
        assert raw.close_code() == 1008
        raw.close()
        again = upgrade(server, "alice", extra="x-stockyard-user: carol\r\n")
        assert again.status == 429, again.head
        refusal(again)
        other = upgrade(server, "alice", extra="x-stockyard-user: dave\r\n")
        assert other.status == 101
        other.close()
    finally:
        put_module(server, "userlimits", {}, enabled=False)


def test_guard_deny_list_refused_at_upgrade(server):
    put_module(server, "guard", {"deny_models": ["gpt-realtime-mini"]})
    try:
        refused = upgrade(server, "alice", "/v1/realtime?model=gpt-realtime-mini")
        assert refused.status == 403
        assert refusal(refused)["error"]["code"] == "model_not_allowed"
        allowed = upgrade(server, "alice")
        assert allowed.status == 101
        allowed.close()
    finally:
        put_module(server, "guard", {}, enabled=False)


def test_browser_key_as_subprotocol(server, mock):
    """A browser's key in ``Sec-WebSocket-Protocol`` (``openai-insecure-api-key.<key>``) is accepted,
    and ``realtime`` agreed; the key is in neither the 101, the provider's handshake, a trace nor the log."""
    secret = server.secret("alice")
    raw = Raw(
        server,
        None,
        f"Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.{secret}\r\n",
        "/v1/realtime?model=gpt-realtime",
    )
    assert raw.status == 101, raw.head
    assert "sec-websocket-protocol: realtime" in raw.head.lower() and secret not in raw.head
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    assert raw.until("response.done")[-1]["type"] == "response.done"
    raw.close()
    handshake = mock.last("/realtime")
    assert handshake is not None and secret not in repr(handshake.headers)
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'alice'")[0]["id"]
    wait_for(lambda: server.db_rows("SELECT * FROM traces WHERE endpoint = 'realtime' AND key_id = ?", (key_id,)))
    rows = server.db_rows("SELECT * FROM traces WHERE key_id = ?", (key_id,))
    assert rows and secret not in repr(rows)  # nor in a trace (its headers, its body)
    assert secret not in server.log


def test_each_response_counts_against_the_keys_rpm(server):
    """A key with rpm 1: its session's response is one request in its window, so its next upgrade
    within the minute is a 429 (rate_limit_exceeded), with Retry-After."""
    raw = upgrade(server, "onerpm")
    assert raw.status == 101 and raw.event()["type"] == "session.created"
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    assert raw.until("response.done")[-1]["type"] == "response.done"
    raw.close()
    traces(server, "onerpm", 1)
    again = upgrade(server, "onerpm")
    assert again.status == 429, again.head
    assert "retry-after" in again.head.lower()
    refusal(again)


def test_an_open_session_past_the_keys_rpm_refuses_the_next_response(server, mock):
    """A key with rpm 2: two responses in one session are its two requests of the minute; the third
    ``response.create`` is answered with an ``error`` event ``rate_limit_exceeded`` and never reaches
    the provider; the session stays open (a ``session.update`` still goes through)."""
    raw = upgrade(server, "tworpm", extra="OpenAI-Beta: tworpm\r\n")
    assert raw.status == 101 and raw.event()["type"] == "session.created"
    for _ in range(2):
        raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert raw.until("response.done")[-1]["type"] == "response.done"
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    error = raw.event()
    assert error["type"] == "error" and error["error"]["code"] == "rate_limit_exceeded", error
    raw.send_json({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})
    assert raw.event()["type"] == "session.updated"
    raw.close()
    assert [beta for beta, _ in mock.realtime_asked].count("tworpm") == 2


def burst(raw: Raw, response: dict, count: int, went_on: str) -> tuple[int, int]:
    """``count`` ``response.create`` of ``response`` sent in one write (masked text frames, one segment):
    how many went on (events of type ``went_on``) and how many were refused past a rate limit."""
    create = json.dumps({"type": "response.create", "response": response}).encode()
    raw.sock.sendall((bytes([0x81, 0x80 | len(create), 0, 0, 0, 0]) + create) * count)
    on = refused = 0
    while on + refused < count:
        event = raw.event()
        if event["type"] == went_on:
            on += 1
        elif event["type"] == "error":
            assert event["error"]["code"] == "rate_limit_exceeded", event
            refused += 1
    return on, refused


def test_a_burst_of_response_creates_is_held_to_the_keys_rpm(server, mock):
    """A key with rpm 2 sends eight ``response.create`` in one write, before any ``response.created``
    came back: each is counted as it is sent on (as an HTTP request is at admission), so two reach the
    provider and six are ``rate_limit_exceeded`` error events (counted only at their response.created,
    all eight passed the check: a burst was a way past the key's rpm)."""
    raw = upgrade(server, "burstrpm", extra="OpenAI-Beta: burstrpm\r\n")
    assert raw.status == 101 and raw.event()["type"] == "session.created"
    assert burst(raw, {"output_modalities": ["text"]}, 8, "response.done") == (2, 6)
    raw.close()
    assert [beta for beta, _ in mock.realtime_asked].count("burstrpm") == 2
    # ended and logged before the next test reads the log for its own session's line
    wait_for(lambda: server.metric("websocket_connections_open") == 0, 10, "the session's end")


def key_for_a_response_and_a_half(server: ServerProcess, name: str) -> None:
    """A key ``name`` whose tpm holds one response's worst case (the estimate its upgrade is
    checked with, read from a probe key's refusal) and not two."""
    probe = f"{name}-probe"
    server.keys.update(server.create_keys({probe: ["--tpm", "1"]}))
    wait_for(lambda: server.request("GET", "/v1/models", headers=server.auth(probe))[0] == 200, 10, "key")
    worst = int(refusal(upgrade(server, probe))["error"]["message"].split(" may use ")[1].split()[0])
    server.keys.update(server.create_keys({name: ["--tpm", str(worst + worst // 2)]}))
    wait_for(lambda: server.request("GET", "/v1/models", headers=server.auth(name))[0] == 200, 10, "key")


def test_a_burst_of_response_creates_is_held_to_the_keys_tpm(server, mock):
    """A key whose tpm holds one response's worst case (the estimate its upgrade is checked with) and
    not two sends four ``response.create`` in one write: each is counted with that estimate as it is
    sent on (as an HTTP request is at admission, then corrected to what it used), so one reaches the
    provider and three are ``rate_limit_exceeded``. Counted with no tokens until it ended, all four
    passed the tpm check."""
    key_for_a_response_and_a_half(server, "bursttpm")
    raw = upgrade(server, "bursttpm", extra="OpenAI-Beta: bursttpm\r\n")
    assert raw.status == 101 and raw.event()["type"] == "session.created"
    held = {"output_modalities": ["text"], "metadata": {"mock": "hold"}}  # running until cancelled: no
    assert burst(raw, held, 4, "response.created") == (1, 3)  # usage frees the window
    raw.send_json({"type": "response.cancel"})
    assert raw.until("response.done")[-1]["type"] == "response.done"
    raw.close()
    assert [beta for beta, _ in mock.realtime_asked].count("bursttpm") == 1
    wait_for(lambda: server.metric("websocket_connections_open") == 0, 10, "the session's end")


def test_drain_closes_the_session_1001(pyz_path, cache_home, mock, tmp_path):
    """SIGTERM: an open session is closed with 1001 (going away) and the server exits."""
    srv = ServerProcess(pyz_path, tmp_path / "drain.db", mock_env(cache_home, mock)).start()
    try:
        raw = upgrade(srv, None)
        assert raw.status == 101 and raw.event()["type"] == "session.created"
        srv.proc.send_signal(signal.SIGTERM)
        assert raw.close_code() == 1001
        raw.close()
        assert srv.proc.wait(30) == 0  # the one SIGTERM ends it: a second, sent as it still drains, would kill it
    finally:
        srv.stop()


def test_alias_routes_the_session(server, mock):
    """``alias``: a session opened for an alias goes to its target, billed at the target's price."""
    put_module(server, "alias", {"aliases": {"voice": "gpt-realtime-mini"}})
    try:
        raw = upgrade(server, "alice", "/v1/realtime?model=voice")
        assert raw.status == 101, raw.head
        assert raw.event()["type"] == "session.created"
        raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = raw.until("response.done")[-1]
        raw.close()
    finally:
        put_module(server, "alias", {}, enabled=False)
    assert mock.last("/realtime").query == {"model": "gpt-realtime-mini"}
    wanted = expected_uc("gpt-realtime-mini", done["response"]["usage"])
    sql = "SELECT cost_uc FROM traces WHERE endpoint = 'realtime' AND model = 'voice'"
    wait_for(lambda: [r["cost_uc"] for r in server.db_rows(sql)] == [wanted], 10, "the aliased response")


def test_model_served_by_deployments_is_refused(server):
    """A session names a provider/model: a name served by deployments is a 400 saying so, not sent
    to whichever provider the bare name would reach."""
    deployment = {"name": "a", "provider": "openai", "model": "gpt-realtime"}
    status, view = api(server, "POST", "/api/models/voice-pool/deployments", deployment)
    assert status == 201, view
    try:
        refused = upgrade(server, "alice", "/v1/realtime?model=voice-pool")
        assert refused.status == 400
        error = refusal(refused)["error"]
        assert error["code"] == "unsupported_model" and "deployments" in error["message"]
    finally:
        api(server, "DELETE", "/api/models/voice-pool")


def test_server_vad_responses_billed_and_ending_a_budget(server):
    """With server VAD the provider answers speech on its own, with no response.create to hold: its
    response is billed from its response.done as any is, and the one that uses the budget up ends
    the session (1008)."""
    key = server.create_keys({"vad": ["--budget-usd", "0.01", "--budget-period", "day"]})["vad"]
    server.keys["vad"] = key
    wait_for(lambda: server.request("GET", "/v1/models", headers=server.auth("vad"))[0] == 200, 10, "the key")
    raw = upgrade(server, "vad")
    assert raw.event()["type"] == "session.created"
    vad = {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}, "type": "realtime"}
    raw.send_json({"type": "session.update", "session": vad})
    assert raw.event()["type"] == "session.updated"
    raw.send_json({"type": "input_audio_buffer.append", "audio": pcm(1)})
    events = [raw.event()]
    while events[-1]["type"] != "error":
        events.append(raw.event())
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_stopped" in kinds and "response.create" not in kinds
    assert kinds[-2:] == ["response.done", "error"] and events[-1]["error"]["code"] == "budget_exceeded"
    assert raw.close_code() == 1008
    raw.close()
    (row,) = traces(server, "vad", 1)
    assert row["cost_uc"] == expected_uc("gpt-realtime", events[-2]["response"]["usage"])


@pytest.fixture(scope="module")
def quick(pyz_path, cache_home, mock, tmp_path_factory):
    """A server whose limits come quickly: a message must arrive whole within 1 s, a session
    with no data frame either way closes after 2 s."""
    env = mock_env(cache_home, mock, STOCKYARD_REQUEST_READ_TIMEOUT="1", STOCKYARD_WEBSOCKET_IDLE_TIMEOUT="2")
    with served(pyz_path, tmp_path_factory, "quick", env) as srv:
        yield srv


def test_message_never_finished_closes_1008(quick):
    raw = upgrade(quick, None)
    assert raw.event()["type"] == "session.created"
    raw.send_frame(0x1, b'{"type": "input_audio', fin=False)
    assert raw.close_code() == 1008
    raw.close()


def test_pings_alone_do_not_keep_a_session_open(quick):
    """Idle: the client's pings are answered but are not activity; the session closes (1000)."""
    raw = upgrade(quick, None)
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "input_audio_buffer.append", "audio": pcm(0.1)})  # a data frame first
    started = time.monotonic()
    code = None
    while code is None and time.monotonic() - started < 8:
        raw.send_frame(0x9, b"hi")
        opcode, payload = raw.frame()
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0]
    assert code == 1000
    raw.close()


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="a settlement waits for a row lock in the shared ledger only")
def test_a_response_done_billed_while_the_session_ends_is_billed_once(server):
    """The reader is billing a ``response.done`` (its settlement waiting on the shared ledger's row,
    which another session holds) when the client leaves: the session's end, after its waits (5 s for
    running responses, 3 s for the reader), still finds the response running and must not bill it
    again as lost. Before: a second trace (502, an estimate) and its worst case spent beside its cost."""
    raw = upgrade(server, "raced")
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    raw.until("response.done")  # the key's ledger rows are there now
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'raced'")[0]["id"]
    other = open_database(server.db)
    other.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    other.execute("SELECT spent_uc FROM budget_ledger WHERE scope = ? FOR UPDATE", (f"key:{key_id}",)).fetchall()
    logged = len(server.log_lines)
    try:
        raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert raw.until("response.done")[-1]["type"] == "response.done"  # relayed, its bill now waiting
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()

        def ended() -> bool:  # the session's log line, or (before) the lost bill's trace written first
            lines = server.log_lines[logged:]
            return any("WS /v1/realtime" in x for x in lines) or len(traces(server, "raced", 2)) > 2

        wait_for(ended, 20, "the session's end")
    finally:
        other.execute("ROLLBACK")
        other.close()
    line = wait_for(lambda: next((x for x in server.log_lines[logged:] if "WS /v1/realtime" in x), None), 20, "log")
    rows = traces(server, "raced", 2)
    assert [(r["status"], r["cost_status"]) for r in rows] == [(200, "exact")] * 2, rows
    assert " responses=2 " in line, line
    spent = sum(r["cost_uc"] for r in rows)
    sql = "SELECT spent_uc FROM budget_ledger WHERE scope = ? AND period_key <> 'total'"
    wait_for(lambda: {r["spent_uc"] for r in server.db_rows(sql, (f"key:{key_id}",))} == {spent}, 20, "the spend")


@pytest.mark.skipif(TEST_STORE != "postgresql", reason="a response's rate count waits for a lock on PostgreSQL only")
def test_a_response_begun_while_its_reader_was_held_is_billed_after_the_session_ends(server):
    """The provider's reader is held counting a ``response.created`` of server VAD's (a response the
    client did not ask for: counted as it begins) in the key's rpm window (another session holds the
    window's lock) when the client leaves: the session's end finds no response running (its
    response.created not read yet) and bills none; the reader, let go after that, saw the response
    begin. It is billed all the same (an estimate, status 502), never free. Before: no trace."""
    raw = upgrade(server, "stalled")
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    raw.until("response.done")  # a first response: the input a lost one is estimated by
    vad = {"audio": {"input": {"turn_detection": {"type": "server_vad"}}}, "type": "realtime"}
    raw.send_json({"type": "session.update", "session": vad})
    assert raw.event()["type"] == "session.updated"
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'stalled'")[0]["id"]
    other = open_database(server.db)
    other.execute("START TRANSACTION")
    other.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"rate:{key_id}",))
    logged = len(server.log_lines)
    try:
        raw.send_json({"type": "input_audio_buffer.append", "audio": pcm(1)})  # speech: the provider answers it
        assert raw.until("response.created")[-1]["type"] == "response.created"  # relayed; its count waits
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        ended = lambda: next((x for x in server.log_lines[logged:] if "WS /v1/realtime" in x), None)  # noqa: E731
        assert " responses=1 " in wait_for(ended, 20, "the session's end")
    finally:
        other.execute("ROLLBACK")
        other.close()
    first, lost = traces(server, "stalled", 2)
    assert (first["status"], lost["status"], lost["outcome"]) == (200, 502, "stream_broken"), lost
    assert lost["cost_status"] == "estimate" and lost["cost_uc"] > 0


def test_client_leaving_mid_response_cancels_and_bills_it(server, mock):
    """The client leaves while a response runs: Stockyard cancels it at the provider and waits a
    moment for its response.done (status cancelled, with what it used), which it bills."""
    raw = upgrade(server, "alice")
    assert raw.event()["type"] == "session.created"
    ident = "resp_mock_1"
    held = {"output_modalities": ["text"], "metadata": {"mock": "hold"}}
    raw.send_json({"type": "response.create", "response": held})
    assert raw.until("response.output_text.delta")[0]["type"] == "response.created"
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # gone, mid-response
    done = wait_for(lambda: next((d for d in mock.realtime_done if d["status"] == "cancelled"), None), 10, "the cancel")
    assert done["id"] == ident
    wanted = expected_uc("gpt-realtime", done["usage"])
    sql = "SELECT cost_uc FROM traces WHERE endpoint = 'realtime' AND cost_uc = ?"
    wait_for(lambda: server.db_rows(sql, (wanted,)), 10, "the cancelled response billed")


def test_past_the_websocket_cap_a_503_not_a_426(pyz_path, cache_home, mock, tmp_path):
    """Realtime has no HTTP to go on with: past STOCKYARD_WEBSOCKET_MAX_CONNECTIONS the handshake is
    the cap's own 503 with Retry-After (not the Responses WebSocket's 426)."""
    env = mock_env(cache_home, mock, STOCKYARD_WEBSOCKET_MAX_CONNECTIONS="1")
    srv = ServerProcess(pyz_path, tmp_path / "cap.db", env).start()
    try:
        first = upgrade(srv, None)
        assert first.status == 101 and first.event()["type"] == "session.created"
        second = upgrade(srv, None)
        assert second.status == 503 and "retry-after: 1" in second.head.lower()
        assert refusal(second)["error"]["code"] == "too_many_websockets"
        first.close()
    finally:
        srv.stop()


def test_each_response_counts_against_an_end_users_rpm(server):
    """``userlimits`` rpm 1: an end user's session response is counted in its window, so its next
    upgrade within the minute is a 429; another end user's is not."""
    put_module(server, "userlimits", {"rpm": 1})
    try:
        raw = upgrade(server, "alice", extra="x-stockyard-user: erin\r\n")
        assert raw.status == 101 and raw.event()["type"] == "session.created"
        raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert raw.until("response.done")[-1]["type"] == "response.done"
        raw.close()
        key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'alice'")[0]["id"]
        sql = "SELECT id FROM traces WHERE endpoint = 'realtime' AND key_id = ? AND end_user = 'erin'"
        wait_for(lambda: server.db_rows(sql, (key_id,)), 10, "erin's response")
        again = upgrade(server, "alice", extra="x-stockyard-user: erin\r\n")
        assert again.status == 429, again.head
        refusal(again)
        other = upgrade(server, "alice", extra="x-stockyard-user: frank\r\n")
        assert other.status == 101
        other.close()
    finally:
        put_module(server, "userlimits", {}, enabled=False)


def test_a_create_the_end_users_rpm_refuses_gives_the_keys_tokens_back(server):
    """The key's window counts a ``response.create`` first, then its end user's refuses it (rpm 1, used
    by an HTTP request of another key): never sent on, the key's entry keeps no tokens (as an HTTP
    request's that ``userlimits`` refuses after ``ratelimit`` counted it), so a key whose tpm holds one
    response's worst case and a half still opens another end user's session. Left at its worst case,
    the refused create filled it."""
    key_for_a_response_and_a_half(server, "rtusers")
    put_module(server, "userlimits", {"rpm": 1})
    try:
        raw = upgrade(server, "rtusers", extra="x-stockyard-user: gail\r\n")
        assert raw.status == 101 and raw.event()["type"] == "session.created"
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        headers = {**server.auth("alice"), "x-stockyard-user": "gail"}
        assert server.request("POST", "/v1/chat/completions", chat, headers=headers)[0] == 200  # gail's minute used
        raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        refused = raw.event()
        assert refused["type"] == "error" and "end user 'gail'" in refused["error"]["message"], refused
        raw.close()
        other = upgrade(server, "rtusers", extra="x-stockyard-user: hank\r\n")
        assert other.status == 101, refusal(other) if other.status == 429 else other.head
        other.close()
    finally:
        put_module(server, "userlimits", {}, enabled=False)


def test_a_second_response_cancelled_when_the_client_leaves_is_billed(server, mock):
    """One response done, a second running when the client leaves: the second is cancelled and
    its response.done awaited and billed too (the first's end must not count as "none running")."""
    raw = upgrade(server, "leaver")
    assert raw.event()["type"] == "session.created"
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    assert raw.until("response.done")[-1]["type"] == "response.done"
    held = {"output_modalities": ["text"], "metadata": {"mock": "hold"}}
    raw.send_json({"type": "response.create", "response": held})
    assert raw.until("response.output_text.delta")[0]["type"] == "response.created"
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # gone, mid-response
    first, second = traces(server, "leaver", 2)
    done = mock.realtime_done[-1]
    assert done["id"] == "resp_mock_2" and done["status"] == "cancelled"
    assert second["cost_uc"] == expected_uc("gpt-realtime", done["usage"])


def test_a_protocol_breach_mid_response_cancels_and_bills_it(server, mock):
    """A client that breaks the protocol (a binary frame) while a response runs is closed with
    the breach's code, and the response is cancelled at the provider and billed, as when it leaves:
    a breach is no way around the bill."""
    raw = upgrade(server, "faulter")
    assert raw.event()["type"] == "session.created"
    held = {"output_modalities": ["text"], "metadata": {"mock": "hold"}}
    raw.send_json({"type": "response.create", "response": held})
    assert raw.until("response.output_text.delta")[0]["type"] == "response.created"
    raw.send_frame(0x2, b"\0\1")
    assert raw.close_code() == 1003
    raw.close()
    (row,) = traces(server, "faulter", 1)
    done = mock.realtime_done[-1]
    assert done["id"] == "resp_mock_1" and done["status"] == "cancelled"
    assert row["cost_uc"] == expected_uc("gpt-realtime", done["usage"])


def test_a_key_revoked_mid_session_ends_it(server, mock):
    """``keys revoke`` while a session is open: its next response.create is refused with an
    ``error`` event and the session closes (1008); nothing more reaches the provider."""
    raw = upgrade(server, "revoked")
    assert raw.event()["type"] == "session.created"
    done = server.cli("keys", "revoke", "revoked")
    assert done.returncode == 0, done.stderr
    secret = server.secret("revoked")
    wait_for(lambda: server.request("GET", "/v1/models", headers={"Authorization": f"Bearer {secret}"})[0] == 401, 10)
    before = len(mock.realtime_done)
    raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
    event = raw.event()
    assert event["type"] == "error" and event["error"]["code"] == "revoked_api_key", event
    assert raw.close_code() == 1008
    raw.close()
    assert len(mock.realtime_done) == before


def test_under_a_budget_one_response_at_a_time(server, mock):
    """A budgeted key's session runs one response at a time: twenty ``response.create`` sent at once
    (out-of-band ones would run in parallel at OpenAI, each billed only as it ends) are the first
    sent on and the rest answered with an ``error`` event ``response_in_progress`` (or unread, once
    the first's end used the budget up and ended the session); so the budget
    ($0.01, one audio response ~2¢) is passed by that one response, not by twenty."""
    raw = upgrade(server, "burst", extra="OpenAI-Beta: burst\r\n")  # its responses told apart at the mock
    assert raw.event()["type"] == "session.created"
    create = {"type": "response.create", "response": {"output_modalities": ["audio"], "conversation": "none"}}
    payload = json.dumps(create).encode()
    assert len(payload) < 126
    one = bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload  # masked, with a key of zeros
    raw.sock.sendall(one * 20)  # in one write: the session may end (budget) while more would be sent
    events = []
    code = None
    while code is None:
        opcode, payload = raw.frame()
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0]
        else:
            events.append(json.loads(payload))
    errors = [e["error"]["code"] for e in events if e["type"] == "error"]
    # Those read before the first response's end are refused; those after it, unread (the session ended)
    assert set(errors) <= {"response_in_progress", "budget_exceeded"}, errors
    assert errors.count("budget_exceeded") == 1 and code == 1008, (code, [e["type"] for e in events][-8:], events[-1])
    raw.close()
    (row,) = traces(server, "burst", 1)
    assert [beta for beta, _ in mock.realtime_asked].count("burst") == 1
    (done,) = [e for e in events if e["type"] == "response.done"]
    assert row["cost_uc"] == expected_uc("gpt-realtime", done["response"]["usage"])


class BadProvider:
    """A provider's Realtime endpoint that misbehaves by model: ``gpt-realtime`` trickles its answer's
    head a byte at a time and never ends it, ``gpt-realtime-mini`` answers 101 with a wrong
    ``Sec-WebSocket-Accept``, ``gpt-realtime-2`` sends a masked frame after a right 101."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            lines = head.decode().split("\r\n")
            key = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            try:
                if "model=gpt-realtime-mini" in lines[0]:
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
                    conn.sendall(b"Sec-WebSocket-Accept: d3JvbmcgYWNjZXB0IGtleSE=\r\n\r\n")
                elif "model=gpt-realtime-2" in lines[0]:
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
                    conn.sendall(b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                    conn.sendall(bytes([0x81, 0x82]) + b"\1\2\3\4" + bytes([ord("{") ^ 1, ord("}") ^ 2]))
                else:
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
                    while not self.stop.wait(0.2):  # one byte a fifth of a second, never the head's end
                        conn.sendall(b"x")
                conn.recv(65536)  # until Stockyard closes
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_a_provider_misbehaving_in_the_handshake_or_after_it(pyz_path, cache_home, mock, tmp_path):
    """A provider trickling its handshake answer forever is cut within STOCKYARD_UPSTREAM_CONNECT_TIMEOUT
    (1 s here) in all, not per byte: a 502; a 101 with a wrong Sec-WebSocket-Accept is a 502
    ``upstream_protocol``; a masked frame from the provider closes the client 1014."""
    bad = BadProvider()
    env = mock_env(cache_home, mock, OPENAI_BASE_URL=f"http://127.0.0.1:{bad.port}/v1")
    env["STOCKYARD_UPSTREAM_CONNECT_TIMEOUT"] = "1"
    srv = ServerProcess(pyz_path, tmp_path / "bad.db", env).start()
    try:
        started = time.monotonic()
        trickled = upgrade(srv, None)
        assert trickled.status == 502, trickled.head
        assert time.monotonic() - started < 4
        assert refusal(trickled)["error"]["code"] == "upstream_connect"
        wrong = upgrade(srv, None, path="/v1/realtime?model=gpt-realtime-mini")
        assert wrong.status == 502 and refusal(wrong)["error"]["code"] == "upstream_protocol"
        masked = upgrade(srv, None, path="/v1/realtime?model=gpt-realtime-2")
        assert masked.status == 101
        assert masked.close_code() == 1014
        masked.close()
    finally:
        srv.stop()
        bad.close()
    assert "Traceback" not in srv.log


def test_a_create_the_provider_refuses_frees_a_budgeted_session_for_the_next(server, mock):
    """Was: a ``response.create`` counted as asked for stayed so until a ``response.created`` that a
    refused create never gets: under a budget every later create of the session was refused
    (``response_in_progress``), and its end waited out its 5 s for it. Now every create goes on with an
    ``event_id`` (the client's, or one Stockyard adds) and the provider's ``error`` naming it frees it."""
    server.keys.update(server.create_keys({"refusedcreate": ["--budget-usd", "1", "--budget-period", "day"]}))
    wait_for(lambda: server.request("GET", "/v1/models", headers=server.auth("refusedcreate"))[0] == 200, 10, "key")
    for given in (None, "evt_client_1"):
        raw = upgrade(server, "refusedcreate")
        assert raw.status == 101 and raw.event()["type"] == "session.created"
        refused = {"output_modalities": ["text"], "metadata": {"mock": "reject"}}
        raw.send_json({"type": "response.create", "response": refused, **({"event_id": given} if given else {})})
        error = raw.event()
        assert error["type"] == "error" and error["error"]["code"] == "invalid_value", error
        if given:
            assert error["error"]["event_id"] == given  # the client's own id goes on as it sent it
        raw.send_json({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = [raw.event()]
        while events[-1]["type"] not in ("response.done", "error"):
            events.append(raw.event())
        assert events[-1]["type"] == "response.done", events[-1]
        raw.close()
    wait_for(lambda: server.metric("websocket_connections_open") == 0, 10, "the sessions' end")
