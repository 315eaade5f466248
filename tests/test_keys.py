"""Client keys: open mode on loopback until a key exists, one auth path for Bearer and x-api-key,
401/403 in the client's dialect, rate limits, the CLI and /api/keys, and no key ever stored.

One server for the module; the first test sees it open, every later test makes its own keys.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import anthropic
import openai
import pytest
from conftest import OPENAI_KEY, ServerProcess, mock_env, served, wait_for

from stockyard.errors import ProxyError
from stockyard.keys import KeyRecord, KeyRing, hash_key, new_secret, presented_key
from stockyard.store import db

ADMIN = "admin-key-for-tests-0123456789"
ANTHROPIC_KEY = "sk-ant-test-keys-0123456789abcdefSECRET"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
MESSAGES = {"model": "claude-3-5-haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def server_env(cache_home, mock) -> dict[str, str]:
    return mock_env(
        cache_home, mock, ANTHROPIC_API_KEY=ANTHROPIC_KEY, ANTHROPIC_BASE_URL=mock.url, STOCKYARD_ADMIN_KEY=ADMIN
    )


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = server_env(cache_home, mock)
    with served(pyz_path, tmp_path_factory, "keys", env) as srv:
        yield srv


def admin(server: ServerProcess, method: str, path: str, body=None, raw: bytes | None = None):
    status, headers, data = server.request(method, path, body, headers={"Authorization": f"Bearer {ADMIN}"}, raw=raw)
    return status, json.loads(data) if data else None


_names = iter(range(1_000_000))


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def make_key(server: ServerProcess, **fields) -> tuple[str, dict]:
    """A fresh key through the API (in effect at once): (the key, its description)."""
    fields.setdefault("name", f"k{next(_names)}")
    status, body = admin(server, "POST", "/api/keys", fields)
    assert status == 201, body
    return body.pop("key"), body


def chat(server: ServerProcess, key: str | None = None, body: dict = CHAT, header: str = "bearer"):
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key}
    status, resp_headers, data = server.request("POST", "/v1/chat/completions", body, headers=headers)
    return status, resp_headers, json.loads(data)


# -- open mode and the switch ---------------------------------------------------------------


def test_open_on_loopback_until_the_first_key_then_keys_required(server, mock):
    wait_for(lambda: "auth: OPEN" in server.log, timeout=5, what="the banner's auth line")
    status, _, _ = chat(server)
    assert status == 200

    made = server.cli("keys", "create", "--name", "first")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("sk-sy-") and len(secret) == 49
    assert "only time the key is shown" in made.stderr

    # the CLI committed in another process: the running server notices (how soon: the perf test below)
    wait_for(lambda: chat(server)[0] == 401, timeout=15, what="auth to switch on")
    wait_for(lambda: "auth: client keys required" in server.log, timeout=5, what="the log line (written in batches)")
    status, headers, body = chat(server, secret)
    assert status == 200
    trace = server.trace(headers["x-stockyard-trace-id"])
    key_id = server.db_rows("SELECT id FROM client_keys WHERE name = 'first'")[0]["id"]
    assert trace["key_id"] == key_id


@pytest.mark.perf
def test_the_running_server_notices_the_first_key_within_a_second(pyz_path, cache_home, mock, tmp_path):
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", server_env(cache_home, mock)).start()
    try:
        assert chat(srv)[0] == 200
        made = srv.cli("keys", "create", "--name", "first")
        assert made.returncode == 0, made.stderr
        started = time.monotonic()
        wait_for(lambda: chat(srv)[0] == 401, timeout=3, what="auth to switch on")
        assert time.monotonic() - started < 1.5
    finally:
        srv.stop()


def test_bearer_and_x_api_key_are_one_path(server):
    secret, described = make_key(server, project="web")
    by_bearer = chat(server, secret, header="bearer")
    by_header = chat(server, secret, header="x-api-key")
    assert by_bearer[0] == by_header[0] == 200
    for _, headers, _ in (by_bearer, by_header):
        trace = server.trace(headers["x-stockyard-trace-id"])
        assert (trace["key_id"], trace["project"]) == (described["id"], "web")
    wrong_bearer = chat(server, secret + "x", header="bearer")
    wrong_header = chat(server, secret + "x", header="x-api-key")
    assert wrong_bearer[0] == wrong_header[0] == 401
    assert wrong_bearer[2] == wrong_header[2]
    # both headers, different keys: refused rather than guessed
    status, _, body = server.request(
        "POST", "/v1/chat/completions", CHAT, headers={"Authorization": f"Bearer {secret}", "x-api-key": "sk-sy-other"}
    )
    assert status == 401


@pytest.mark.parametrize("case", ["missing", "wrong", "revoked", "expired"])
def test_refused_keys_get_401_in_the_clients_dialect(server, case):
    secret = {"missing": None, "wrong": new_secret()}.get(case)
    if case == "revoked":
        secret, described = make_key(server)
        assert chat(server, secret)[0] == 200
        revoked = server.cli("keys", "revoke", described["name"])
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: chat(server, secret)[0] == 401, timeout=3, what="the revocation")
    if case == "expired":
        soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
        secret, _ = make_key(server, expires=soon.isoformat())
        assert chat(server, secret)[0] == 200
        wait_for(lambda: time.time() > soon.timestamp() + 1, timeout=5, what="the expiry")

    status, _, body = chat(server, secret)
    assert status == 401
    assert body["error"]["type"] == "authentication_error"
    if case in ("revoked", "expired"):
        assert case in body["error"]["message"]

    headers = {"x-api-key": secret} if secret else {}
    status, _, raw = server.request("POST", "/v1/messages", MESSAGES, headers=headers)
    assert status == 401
    assert json.loads(raw)["type"] == "error"
    assert json.loads(raw)["error"]["type"] == "authentication_error"


def test_model_restriction_is_403(server):
    secret, _ = make_key(server, models=["gpt-4o-mini", "gpt-5*"])
    assert chat(server, secret)[0] == 200
    assert chat(server, secret, {**CHAT, "model": "openai/gpt-4o-mini"})[0] == 200
    assert chat(server, secret, {**CHAT, "model": "gpt-5-nano"})[0] == 200
    status, _, body = chat(server, secret, {**CHAT, "model": "gpt-4o"})
    assert status == 403
    assert body["error"]["code"] == "model_not_allowed"
    assert body["error"]["type"] == "permission_error"


def test_allow_list_names_the_provider_routing_picks(server):
    """A bare entry allows a model only where routing sends the bare name; `provider/x` entries name it."""
    secret, _ = make_key(server, models=["gpt-4o-mini", "anthropic/claude-3-5-haiku*"])
    allowed = ("gpt-4o-mini", "openai/gpt-4o-mini", "claude-3-5-haiku", "anthropic/claude-3-5-haiku-latest")
    refused = ("anthropic/gpt-4o-mini", "openai/claude-3-5-haiku", "gpt-4o")
    for model in allowed:
        assert chat(server, secret, {**CHAT, "model": model})[0] == 200, model
    for model in refused:
        status, _, body = chat(server, secret, {**CHAT, "model": model})
        assert (status, body["error"]["code"]) == (403, "model_not_allowed"), model


@pytest.mark.parametrize(
    "entry, model, allowed",
    [
        ("gpt-4o-mini", "gpt-4o-mini", True),
        ("gpt-4o-mini", "openai/gpt-4o-mini", True),  # the provider routing picks anyway
        ("gpt-4o-mini", "azure/gpt-4o-mini", False),
        ("gpt-4o-mini", "anthropic/gpt-4o-mini", False),
        ("azure/gpt-4o-mini", "azure/gpt-4o-mini", True),
        ("azure/gpt-4o-mini", "gpt-4o-mini", False),  # routes to openai, not azure
        ("azure/*", "azure/my-deployment", True),
        ("azure/*", "openai/gpt-4o", False),
        ("openai/gpt-4o-mini", "gpt-4o-mini", True),
        ("gpt-*", "azure/gpt-4o", False),
        ("o*", "ollama/llama3", False),  # a bare prefix never reaches into provider names
        ("*", "azure/anything", True),
        ("fast", "fast", True),  # an alias routes nowhere: matched as written
        ("meta-llama/*", "meta-llama/Llama-3-8b", True),  # a slash in a model name is not a provider
        ("meta-llama/*", "groq/meta-llama/Llama-3-8b", False),
    ],
)
def test_allow_list_entries_against_a_real_registry(entry, model, allowed):
    from stockyard.providers import ENV_SPECS, Provider, Registry

    prefixes = {spec.name: spec.models for spec in ENV_SPECS}
    registry = Registry(
        [
            Provider(name, kind, "http://x", models=prefixes.get(name, ()))
            for name, kind in (
                ("openai", "openai"),
                ("anthropic", "anthropic"),
                ("azure", "azure"),
                ("ollama", "openai-compatible"),
                ("groq", "openai-compatible"),
                ("together", "openai-compatible"),
            )
        ]
    )
    record = KeyRecord(id="key_1", name="k", prefix="sk-sy-abcdef", hash="0", models=(entry,))
    assert record.allows_model(model, registry.routes_to) is allowed


def test_official_sdks_send_the_key_their_own_way(server, mock):
    secret, _ = make_key(server)
    client = server.openai(secret)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from mock"
    assert mock.last("/chat/completions").headers["authorization"] == f"Bearer {OPENAI_KEY}"
    with pytest.raises(openai.AuthenticationError):
        server.openai(new_secret()).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )

    # the anthropic SDK sends x-api-key; upstream gets the provider's key, never the client's
    message = server.anthropic(secret).messages.create(**MESSAGES)
    assert message.content[0].text == "Hello from mock"
    assert mock.last("/messages").headers["x-api-key"] == ANTHROPIC_KEY
    assert all(secret not in value for r in mock.requests for value in r.headers.values())
    with pytest.raises(anthropic.AuthenticationError) as bad:
        server.anthropic(new_secret()).messages.create(**MESSAGES)
    assert bad.value.body["error"]["type"] == "authentication_error"


# -- rate limits ------------------------------------------------------------------------------


def test_rpm_limit_is_429_with_retry_after_and_never_reaches_the_provider(server, mock):
    secret, _ = make_key(server, rpm=2)
    assert [chat(server, secret)[0] for _ in range(2)] == [200, 200]
    before = len(mock.requests)
    status, headers, body = chat(server, secret)
    assert status == 429
    assert 1 <= int(headers["retry-after"]) <= 60
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"
    status, headers, raw = server.request("POST", "/v1/messages", MESSAGES, headers={"x-api-key": secret})
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    assert len(mock.requests) == before


def test_tpm_counts_the_worst_case_then_the_real_usage(server):
    # CHAT with max_tokens 40 is estimated at ceil(len(body)/4) + 40 tokens; the mock uses 12 + 5 = 17.
    body = {**CHAT, "max_tokens": 40}
    estimate = -(-len(json.dumps(body).encode()) // 4) + 40
    tpm = estimate + 17  # room for one estimate plus one real request, not two estimates
    secret, _ = make_key(server, tpm=tpm)
    for _ in range(2):  # window: 17 after the first correction; then 17 + estimate fits, 2 estimates would not
        status, headers, _ = chat(server, secret, body)
        assert status == 200
        server.trace(headers["x-stockyard-trace-id"])  # traced after the correction to the real usage
    status, headers, reply = chat(server, secret, body)  # 17 + 17 + estimate > tpm
    assert status == 429 and int(headers["retry-after"]) >= 1
    status, headers, reply = chat(server, secret, {**CHAT, "max_tokens": tpm})
    assert status == 429 and "lower max_tokens" in reply["error"]["message"]
    assert headers["x-should-retry"] == "false"


# -- bookkeeping --------------------------------------------------------------------------------


def test_last_used_is_written_in_batches(server):
    secret, described = make_key(server)
    assert chat(server, secret)[0] == 200
    row = wait_for(
        lambda: [
            r
            for r in json_lines(server.cli("keys", "list", "--json").stdout)
            if r["id"] == described["id"] and r["last_used_at"]
        ],
        timeout=6,
        what="last_used_at",
    )
    assert row[0]["last_used_at"].startswith(dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"))


def test_no_key_is_stored_logged_or_audited(server):
    secret, described = make_key(server, name="secret-check")
    assert chat(server, secret)[0] == 200
    server.trace(chat(server, secret)[1]["x-stockyard-trace-id"])
    raw = b"".join(p.read_bytes() for p in server.db.parent.iterdir() if p.name.startswith("stockyard.db"))
    assert secret.encode() not in raw
    assert secret not in server.log
    row = server.db_rows("SELECT prefix, hash FROM client_keys WHERE id = ?", (described["id"],))[0]
    assert row == {"prefix": secret[:12], "hash": hash_key(secret)}
    entry = server.db_rows(
        "SELECT details FROM audit_log WHERE action = 'keys.create' AND target = ?", (f"key:{described['id']}",)
    )[0]
    assert json.loads(entry["details"])["prefix"] == secret[:12]
    status, listing = admin(server, "GET", "/api/keys")
    assert status == 200
    assert all("hash" not in k and "key" not in k for k in listing["keys"])


# -- the admin API and the CLI ------------------------------------------------------------------


def test_api_key_lifecycle(server):
    secret, described = make_key(
        server, name="api-life", project="p1", budget_usd="2.50", budget_period="month", rpm=100
    )
    assert described["budget_uc"] == 250_000_000 and described["budget"] == "$2.50"
    status, headers, _ = chat(server, secret)
    assert status == 200
    server.trace(headers["x-stockyard-trace-id"])  # the spend is read from the rollup committed with the trace
    status, got = admin(server, "GET", "/api/keys/api-life")
    assert status == 200 and got["id"] == described["id"] and got["spend_uc"] > 0
    # JSON numbers are read as their decimal text: 1.10 is exactly 110_000_000 µ¢
    status, updated = admin(
        server,
        "PATCH",
        f"/api/keys/{described['id']}",
        raw=b'{"budget_usd": 1.10, "rpm": null, "models": ["gpt-4o-mini"]}',
    )
    assert status == 200, updated
    assert (updated["budget_uc"], updated["budget_period"], updated["rpm"]) == (110_000_000, "month", None)
    assert chat(server, secret, {**CHAT, "model": "gpt-4o"})[0] == 403
    status, revoked = admin(server, "POST", "/api/keys/api-life/revoke")
    assert status == 200 and revoked["status"] == "revoked"
    assert chat(server, secret)[0] == 401
    assert admin(server, "POST", "/api/keys/api-life/revoke")[0] == 409
    actions = [
        r["action"]
        for r in server.db_rows(
            "SELECT action FROM audit_log WHERE target = ? ORDER BY seq", (f"key:{described['id']}",)
        )
    ]
    assert actions == ["keys.create", "keys.update", "keys.revoke"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "b1", "budget_usd": "-5", "budget_period": "month"}, "budget_usd"),
        ({"name": "b1", "budget_usd": "5", "budget_period": "week"}, "budget_period"),
        ({"name": "b1", "budget_usd": "5"}, "budget_period"),
        ({"name": "b1", "budget_usd": "0.123456789", "budget_period": "day"}, "budget_usd"),
        ({"name": "b1", "expires": "2026-02-30"}, "expires"),
        ({"name": "b1", "expires": "2001-01-01"}, "expires"),
        ({"name": "b1", "rpm": 0}, "rpm"),
        ({"name": "b1", "tpm": "lots"}, "tpm"),
        ({"name": "has space"}, "name"),
        ({"name": "key_looks_like_an_id"}, "name"),
        ({"name": "b1", "project": "sk-looks-like-a-key-0123"}, "project"),
        ({"name": "b1", "models": "a b"}, "models"),
        ({}, "name"),
    ],
)
def test_api_refuses_bad_key_settings_with_400(server, body, field):
    status, reply = admin(server, "POST", "/api/keys", body)
    assert status == 400, reply
    assert reply["error"]["param"] == field
    assert not server.db_rows("SELECT 1 FROM client_keys WHERE name = 'b1'")


def test_api_errors_for_unknown_duplicate_and_malformed(server):
    assert admin(server, "POST", "/api/keys", {"name": "b2", "colour": "red"})[0] == 400
    assert admin(server, "POST", "/api/keys", raw=b"{nope")[0] == 400
    assert admin(server, "GET", "/api/keys/no-such-key")[0] == 404
    make_key(server, name="dup")
    assert admin(server, "POST", "/api/keys", {"name": "dup"})[0] == 409
    assert admin(server, "PATCH", "/api/keys/dup", {})[0] == 400


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget-usd", "-1", "--budget-period", "month"], "negative"),
        (["--budget-usd", "abc", "--budget-period", "month"], "not a decimal"),
        (["--budget-usd", "5", "--budget-period", "fortnight"], "day, month, total"),
        (["--expires", "tomorrow"], "ISO date"),
        (["--rpm", "-3"], "above 0"),
    ],
)
def test_cli_refuses_bad_key_settings_with_exit_1(server, args, message):
    result = server.cli("keys", "create", "--name", "cli-bad", *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_list_update_and_json(server):
    made = server.cli(
        "keys",
        "create",
        "--name",
        "cli-ok",
        "--project",
        "ops",
        "--budget-usd",
        "3",
        "--budget-period",
        "day",
        "--rpm",
        "9",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["key"].startswith("sk-sy-") and created["budget_uc"] == 300_000_000
    updated = server.cli("keys", "update", "cli-ok", "--rpm", "none", "--tpm", "5000", "--json")
    assert updated.returncode == 0, updated.stderr
    assert (json.loads(updated.stdout)["rpm"], json.loads(updated.stdout)["tpm"]) == (None, 5000)
    table = server.cli("keys", "list")
    assert "cli-ok" in table.stdout and "$3.00/day" in table.stdout and created["key"] not in table.stdout
    assert server.cli("keys", "revoke", "no-such").returncode == 1


def test_beyond_loopback_keys_are_required_even_with_none(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN)  # serve refuses to listen beyond loopback without it
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env, ["--host", "0.0.0.0"]).start()
    try:
        wait_for(
            lambda: "client keys required (listening beyond loopback)" in srv.log,
            timeout=5,
            what="the banner's auth line",
        )
        assert chat(srv)[0] == 401
    finally:
        srv.stop()


def test_a_key_made_before_the_first_start_means_the_proxy_is_never_open(pyz_path, cache_home, mock, tmp_path):
    env = mock_env(cache_home, mock)
    srv = ServerProcess(pyz_path, tmp_path / "fresh" / "stockyard.db", env)
    made = srv.cli("keys", "create", "--name", "day-one")  # creates the database
    assert made.returncode == 0, made.stderr
    srv.start()
    try:
        wait_for(lambda: "auth: client keys required" in srv.log, timeout=5, what="the banner's auth line")
        assert "auth: OPEN" not in srv.log
        assert chat(srv)[0] == 401 and chat(srv, made.stdout.strip())[0] == 200
    finally:
        srv.stop()


# -- units ------------------------------------------------------------------------------------


def test_key_ring_finds_by_hash_and_presented_key_reads_both_headers():
    secret = new_secret()
    record = KeyRecord("key_1", "n", secret[:12], hash_key(secret))
    ring = KeyRing([record])
    assert ring.find(secret) is record and ring.find(secret[:-1]) is None
    assert presented_key({"authorization": f"Bearer {secret}"}) == secret
    assert presented_key({"authorization": f"bearer {secret}"}) == secret
    assert presented_key({"x-api-key": secret}) == secret
    assert presented_key({"authorization": f"Bearer {secret}", "x-api-key": secret}) == secret
    assert presented_key({}) is None
    with pytest.raises(ProxyError):
        presented_key({"authorization": f"Bearer {secret}", "x-api-key": "other"})
    assert len({new_secret() for _ in range(100)}) == 100


def test_the_second_look_at_a_key_in_the_same_ring_checks_state_and_model_not_the_hash(monkeypatch):
    """A proxied request is authenticated from its headers, then with its model: the key is hashed
    and looked up once per ring snapshot; a new snapshot (a revocation) or an expiry in between
    still refuses, and the model is checked the second time."""
    from types import SimpleNamespace

    import stockyard.keys as keys
    from stockyard.auth import Gatekeeper
    from stockyard.context import RequestContext

    secret = new_secret()
    record = KeyRecord("key_1", "n", secret[:12], hash_key(secret), models=("gpt-4o-mini",))
    registry = SimpleNamespace(routes_to=lambda model: "openai")
    gate = Gatekeeper(None, True, lambda: registry)  # type: ignore[arg-type]
    gate.use(KeyRing([record]))
    hashed = []
    monkeypatch.setattr(keys, "hash_key", lambda s: hashed.append(s) or hash_key(s))

    def request(model: str) -> RequestContext:
        ctx = RequestContext("chat", "openai", "127.0.0.1", {"authorization": f"Bearer {secret}"})
        gate.authenticate(ctx)  # from the headers
        ctx.model = model
        return ctx

    ctx = request("gpt-4o-mini")
    gate.authenticate(ctx)
    assert ctx.key is record and len(hashed) == 1
    with pytest.raises(ProxyError) as refused:
        gate.authenticate(request("gpt-4o"))
    assert refused.value.status == 403 and len(hashed) == 2
    ctx = request("gpt-4o-mini")
    gate.use(KeyRing([KeyRecord("key_1", "n", secret[:12], hash_key(secret), revoked_at="2026-01-01")]))
    with pytest.raises(ProxyError) as refused:
        gate.authenticate(ctx)
    assert refused.value.status == 401 and len(hashed) == 4  # looked up again in the new ring
    gate.use(KeyRing([record]))
    ctx = request("gpt-4o-mini")
    object.__setattr__(record, "expires_ts", time.time() - 1)  # expired between the two looks
    with pytest.raises(ProxyError) as refused:
        gate.authenticate(ctx)
    assert refused.value.code == "expired_api_key"


def test_migration_numbers_may_arrive_out_of_order(tmp_path):
    """Branches merge in any order: a database migrated by a build that had 0005 but not yet
    0004 gets 0004 applied later, and the gap in between bothers nobody. (0004 is one no later
    migration builds on; 0005 alters the providers table of 0002.)"""
    shipped = db.available_migrations()
    assert {1, 2, 3, 4, 5} <= {m.version for m in shipped}
    conn = db.connect(tmp_path / "a.db")
    db.applied_migrations(conn)  # creates the bookkeeping table
    for m in shipped:
        if m.version != 4:
            db.apply_migration(conn, m)
    assert [m.version for m in db.pending_migrations(conn)] == [4]
    assert [m.version for m in db.migrate(conn)] == [4]
    assert db.pending_migrations(conn) == []
    conn.close()
