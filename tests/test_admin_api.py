"""The admin API against a real server: auth, throttling, every route, bad input, OpenAPI, reload."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import OPENAI_KEY, ServerProcess, base_env, mock_env, served, wait_for
from openapi_spec_validator import validate

from stockyard.api import ROUTES

ADMIN_KEY = "admin-test-key-0123456789abcdefXYZ"
SECRET = "admin-api-test-secret-0123456789abcdef"


def call(
    server: ServerProcess,
    method: str,
    path: str,
    body=None,
    *,
    key: str | None = ADMIN_KEY,
    source: str = "127.0.0.1",
    raw: bytes | None = None,
) -> tuple[int, dict, dict]:
    """One admin request from ``source`` (any 127.x address reaches the loopback server)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(payload or b"null")
    finally:
        conn.close()


def ok(server: ServerProcess, path: str) -> dict:
    status, _, body = call(server, "GET", path)
    assert status == 200, body
    return body


def assert_error(status: int, body: dict, expected: int, *words: str) -> dict:
    assert status == expected, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    return error


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY, STOCKYARD_ENCRYPTION_KEY=SECRET)
    with served(pyz_path, tmp_path_factory, "admin", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyless(pyz_path, cache_home, tmp_path_factory) -> ServerProcess:
    """A server started without STOCKYARD_ADMIN_KEY: the admin API is off."""
    with served(pyz_path, tmp_path_factory, "keyless", base_env(cache_home)) as srv:
        yield srv


@pytest.fixture(scope="module")
def traces(server) -> list[dict]:
    """Three proxied requests: two answered, one failed upstream; newest first."""
    for model in ("gpt-4o-mini", "gpt-4o", "mock-error-500"):
        req = urllib.request.Request(
            server.url + "/v1/chat/completions",
            method="POST",
            data=json.dumps({"model": model, "messages": [{"role": "user", "content": f"hello {model}"}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=30).read()
        except urllib.error.HTTPError as err:
            assert err.code == 500
    rows = wait_for(
        lambda: (
            len(server.db_rows("SELECT id FROM traces")) == 3
            and server.db_rows("SELECT * FROM traces ORDER BY id DESC")
        ),
        what="3 traces",
    )
    return rows


def sample_path(pattern: str) -> str:
    return pattern.replace("{id}", "tr_000000000000000000000000")


# --- authentication ------------------------------------------------------------------------


def test_a_failed_login_keeps_only_the_start_of_its_path_in_the_audit_log(server):
    """Was: the whole path went into the audit log, which is never pruned: a 60,000-character
    path per failed login (no key needed), ten a minute per sender."""
    source = "127.0.0.250"
    path = "/api/" + "a" * 60_000
    status, _, _ = call(server, "GET", path, key="wrong-key-0123456789", source=source)
    assert status in (401, 404, 414, 431)
    rows = server.db_rows("SELECT target, details FROM audit_log WHERE actor = ?", (f"admin-api:{source}",))
    paths = [json.loads(r["details"])["path"] for r in rows]
    assert rows and all(len(p) <= 201 for p in paths) and all(r["target"] == source for r in rows)
    assert paths[0].startswith("/api/aaaa")


@pytest.mark.parametrize("index", range(len(ROUTES)), ids=[f"{r.method} {r.pattern}" for r in ROUTES])
def test_every_route_refuses_missing_and_wrong_keys_and_audits_wrong_ones(server, index):
    route = ROUTES[index]
    source = f"127.0.0.{10 + index}"  # the throttle counts per address: one address per route
    path = sample_path(route.pattern)
    body = {"note": "x"} if route.method == "POST" else None
    for key, _reason in ((None, "missing"), ("wrong-key-0123456789", "wrong key")):
        status, headers, payload = call(server, route.method, path, body, key=key, source=source)
        error = assert_error(status, payload, 401, "Authorization: Bearer")
        assert error["type"] == "authentication_error" and error["code"] == "invalid_admin_key"
        assert "access-control-allow-origin" not in headers
        assert ADMIN_KEY not in json.dumps(payload)
    entries = ok(server, "/api/audit?action=admin.auth_failed&limit=1000")["data"]
    mine = [e for e in entries if e["actor"] == f"admin-api:{source}"]
    # no key is not a login attempt (a page loading images sends none): only the wrong key is audited
    assert [(e["target"], e["details"]) for e in mine] == [(source, {"reason": "wrong key", "path": path})]
    assert "wrong-key" not in json.dumps(mine)
    assert (
        server.db_rows(
            "SELECT COUNT(*) AS n FROM audit_log WHERE action = 'audit.note' AND actor = ?", (f"admin-api:{source}",)
        )[0]["n"]
        == 0
    )


def test_repeated_failures_are_throttled_per_address(server):
    source, other = "127.0.0.200", "127.0.0.201"
    for _ in range(10):
        assert call(server, "GET", "/api/status", key="guess-0123456789", source=source)[0] == 401
    status, headers, payload = call(server, "GET", "/api/status", key="guess-0123456789", source=source)
    assert_error(status, payload, 429, "too many failed admin logins")
    assert 1 <= int(headers["retry-after"]) <= 61
    # the right key always gets through, even from the blocked address
    assert call(server, "GET", "/api/status", source=source)[0] == 200
    assert call(server, "GET", "/api/status", key="guess-0123456789", source=source)[0] == 429
    assert call(server, "GET", "/api/status", source=other)[0] == 200
    failed = server.db_rows(
        "SELECT COUNT(*) AS n FROM audit_log WHERE action = 'admin.auth_failed' AND actor = ?", (f"admin-api:{source}",)
    )[0]["n"]
    assert failed == 10  # refusals while blocked are not written: no log flooding


def test_requests_without_a_key_and_preflights_never_lock_the_admin_out(server):
    source = "127.0.0.202"
    for _ in range(25):  # a web page loading images, or a script probing without a key
        status, _, payload = call(server, "GET", "/api/status", key=None, source=source)
        assert_error(status, payload, 401, "Authorization: Bearer")
    # CORS preflights (no CORS origin configured: refused, not counted); a foreign origin is
    # refused before the admin key is looked at, our own reaches it
    for origin, refused in (("http://evil.example", 403), (f"http://127.0.0.1:{server.port}", 401)):
        for _ in range(25):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
            conn.request(
                "OPTIONS",
                "/api/status",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "GET",
                    "Authorization": "Bearer wrong-0123456789",
                },
            )
            assert conn.getresponse().status == refused
            conn.close()
    assert call(server, "GET", "/api/status", source=source)[0] == 200
    # none of them counted: a wrong key is still answered 401, not 429
    assert call(server, "GET", "/api/status", key="guess-0123456789", source=source)[0] == 401
    assert (
        server.db_rows(
            "SELECT COUNT(*) AS n FROM audit_log WHERE action = 'admin.auth_failed' AND actor = ?",
            (f"admin-api:{source}",),
        )[0]["n"]
        == 1
    )


def test_admin_api_without_admin_key_explains_how_to_enable_it(keyless):
    for method, path in (("GET", "/api/status"), ("GET", "/api/audit"), ("POST", "/api/audit/note")):
        status, _, payload = call(keyless, method, path, {"note": "x"} if method == "POST" else None, key="anything")
        error = assert_error(status, payload, 401, "set STOCKYARD_ADMIN_KEY", "export", "CLI works")
        assert error["code"] == "admin_key_not_set"
    assert keyless.db_rows("SELECT COUNT(*) AS n FROM audit_log WHERE action = 'audit.note'")[0]["n"] == 0


def test_non_loopback_start_is_refused_without_admin_key(pyz_path, cache_home, tmp_path):
    db = tmp_path / "never.db"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--host", "0.0.0.0", "--port", "0", "--db", str(db)],
        env=base_env(cache_home),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode != 0 and time.monotonic() - started < 15
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "STOCKYARD_ADMIN_KEY" in lines[0] and "0.0.0.0" in lines[0], proc.stderr
    assert "listening" not in proc.stdout + proc.stderr
    assert not db.exists()  # refused before anything was touched


@pytest.mark.parametrize("key", ["x", "short-key-15chr"])
def test_a_short_admin_key_refuses_to_start(pyz_path, cache_home, tmp_path, key):
    db = tmp_path / "never.db"
    proc = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", str(db)],
        env={**base_env(cache_home), "STOCKYARD_ADMIN_KEY": key},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "STOCKYARD_ADMIN_KEY is" in lines[0] and "at least 16" in lines[0], proc.stderr
    assert len(key) == 1 or key not in lines[0]  # the key itself is never echoed
    assert not db.exists()


# --- traces ----------------------------------------------------------------------------------


def test_list_traces_newest_first_with_filters(server, traces):
    ids = [t["id"] for t in traces]
    page = ok(server, "/api/traces")
    assert [t["id"] for t in page["data"]] == ids and page["next_cursor"] is None
    first = page["data"][-1]
    assert first["model"] == "gpt-4o-mini" and first["provider"] == "openai" and first["status"] == 200
    assert "request_body" not in first  # bodies only on the single-trace route

    def found(query: str) -> list[str]:
        return [t["model"] for t in ok(server, "/api/traces?" + query)["data"]]

    assert found("model=gpt-4o-mini") == ["gpt-4o-mini"]
    assert found("status=500") == ["mock-error-500"]
    assert found("outcome=upstream_error") == ["mock-error-500"]
    assert found("outcome=ok") == ["gpt-4o", "gpt-4o-mini"]
    assert len(found("provider=openai")) == 3 and found("provider=anthropic") == []
    assert found("key=k_nobody") == []
    assert len(found("since=2000-01-01")) == 3 and found("until=2000-01-01T00:00:00Z") == []
    assert found("since=2999-01-01") == []
    middle = traces[1]
    assert found(f"since={middle['ts']}") == ["mock-error-500", "gpt-4o"]
    assert found(f"until={middle['ts']}") == ["gpt-4o-mini"]


def test_traces_cursor_pagination(server, traces):
    seen, cursor = [], None
    for _ in range(5):
        page = ok(server, "/api/traces?limit=1" + (f"&cursor={cursor}" if cursor else ""))
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [t["id"] for t in traces]
    two = ok(server, "/api/traces?limit=2")
    assert two["next_cursor"] == traces[1]["id"]
    assert [t["id"] for t in ok(server, f"/api/traces?cursor={two['next_cursor']}")["data"]] == [traces[2]["id"]]


def test_trace_with_bodies(server, traces):
    trace = ok(server, f"/api/traces/{traces[-1]['id']}")
    assert trace["id"] == traces[-1]["id"]
    assert json.loads(trace["request_body"])["messages"][0]["content"] == "hello gpt-4o-mini"
    assert json.loads(trace["response_body"])["object"] == "chat.completion"
    assert trace["attempts"] == [] and trace["response_truncated"] is False
    assert OPENAI_KEY not in json.dumps(trace)


@pytest.mark.parametrize(
    "query, param, words",
    [
        ("limit=0", "limit", "between 1 and 500"),
        ("limit=501", "limit", "between 1 and 500"),
        ("limit=ten", "limit", "whole number"),
        ("since=yesterday", "since", "ISO date"),
        ("until=2024-13-01", "until", "ISO date"),
        ("since=2024-02-01&until=2024-01-01", "until", "later than since"),
        ("cursor=abc", "cursor", "next_cursor"),
        ("cursor=tr_xyz' OR 1=1 --", "cursor", "next_cursor"),
        ("status=teapot", "status", "whole number"),
    ],
)
def test_traces_bad_query_values(server, query, param, words):
    status, _, payload = call(server, "GET", "/api/traces?" + query.replace(" ", "%20"))
    error = assert_error(status, payload, 400, words)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_trace_is_404(server):
    status, _, payload = call(server, "GET", "/api/traces/tr_000000000000000000000000")
    assert assert_error(status, payload, 404, "tr_000000000000000000000000")["code"] == "not_found"
    status, _, payload = call(server, "GET", "/api/traces/no-such-trace")  # no trace id: a 400 naming it
    assert assert_error(status, payload, 400, "not a trace id", "no-such-trace")["param"] == "id"


# --- audit -----------------------------------------------------------------------------------


def test_note_is_recorded_and_listed(server):
    status, _, entry = call(server, "POST", "/api/audit/note", {"note": "  maintenance window: start  "})
    assert status == 201
    assert (entry["actor"], entry["action"], entry["target"]) == ("admin-api:127.0.0.1", "audit.note", "audit_log")
    assert entry["details"] == {"note": "maintenance window: start"}
    assert entry["mac"].startswith("hmac-sha256:")  # the server has the secret: keyed chain
    head = ok(server, "/api/audit/head")
    assert head["seq"] >= entry["seq"]
    listed = ok(server, f"/api/audit?after_seq={entry['seq'] - 1}&limit=1")
    assert listed["data"][0] == entry
    notes = ok(server, "/api/audit?action=audit.note&limit=1000")["data"]
    assert entry in notes and all(e["action"] == "audit.note" for e in notes)
    from stockyard.store import db

    n = len(db.available_migrations())
    first = [(e["seq"], e["actor"], e["action"]) for e in ok(server, f"/api/audit?limit={n + 1}")["data"]]
    assert first == [(i, "server", "migration.apply") for i in range(1, n + 1)] + [(n + 1, "server", "server.start")]


@pytest.mark.parametrize(
    "raw, status, words",
    [
        (b'{"note": ', 400, "not valid JSON"),
        (b'["note"]', 400, "JSON object"),
        (b"{}", 400, "non-empty string"),
        (b'{"note": "   "}', 400, "non-empty string"),
        (b'{"note": 7}', 400, "non-empty string"),
        (b'{"note": "x", "extra": 1}', 400, "unknown field 'extra'"),
        (json.dumps({"note": "x" * 2001}).encode(), 400, "limit is 2000"),
        (json.dumps({"note": "rotated to sk-proj-abcdefghijklmnop1234"}).encode(), 400, "last 4"),
    ],
)
def test_note_bad_input(server, raw, status, words):
    before = ok(server, "/api/audit/head")
    got, _, payload = call(server, "POST", "/api/audit/note", raw=raw)
    assert_error(got, payload, status, words)
    assert "sk-proj-abcdefghijklmnop1234" not in json.dumps(payload)
    assert ok(server, "/api/audit/head") == before


def test_audit_paging_and_bad_queries(server):
    call(server, "POST", "/api/audit/note", {"note": "paging one"})
    call(server, "POST", "/api/audit/note", {"note": "paging two"})
    everything = ok(server, "/api/audit?limit=1000")["data"]
    seqs, after = [], 0
    while True:
        page = ok(server, f"/api/audit?limit=3&after_seq={after}")
        seqs += [e["seq"] for e in page["data"]]
        if page["next_after_seq"] is None:
            break
        after = page["next_after_seq"]
    assert seqs == [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    assert ok(server, "/api/audit?since=2999-01-01")["data"] == []
    assert len(ok(server, "/api/audit?since=2000-01-01T00:00:00Z&limit=1000")["data"]) == len(everything)
    for query, param in (
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after_seq=-1", "after_seq"),
        ("since=last-week", "since"),
    ):
        status, _, payload = call(server, "GET", "/api/audit?" + query)
        assert assert_error(status, payload, 400)["param"] == param


def test_verify_and_head(server):
    call(server, "POST", "/api/audit/note", {"note": "before verify"})
    head = ok(server, "/api/audit/head")
    result = ok(server, "/api/audit/verify")
    assert result["ok"] is True and result["broken_seq"] is None
    assert result["count"] >= head["seq"] and result["reason"].startswith("ok, ")
    pinned = ok(server, f"/api/audit/verify?expect_head={head['hash']}")
    assert pinned["ok"] is True
    missing = ok(server, "/api/audit/verify?expect_head=" + "ab" * 32)
    assert missing["ok"] is False and "expected head not found" in missing["reason"]
    status, _, payload = call(server, "GET", "/api/audit/verify?expect_head=nothex")
    assert assert_error(status, payload, 400, "64 lowercase hex")["param"] == "expect_head"


# --- changes from the CLI reach the running server ------------------------------------------------


def test_cli_note_is_visible_immediately(server):
    proc = server.cli("audit", "note", "from the cli")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("noted as entry ")
    notes = ok(server, "/api/audit?action=audit.note&limit=1000")["data"]
    assert notes[-1]["details"] == {"note": "from the cli"} and notes[-1]["actor"].startswith("cli:")


def test_cli_reload_is_picked_up_within_a_second(server):
    before = ok(server, "/api/status")
    assert {"config_version", "loaded_config_version", "reloads"} <= set(before)
    proc = server.cli("reload")
    assert proc.returncode == 0, proc.stderr
    assert "running servers reload" in proc.stdout
    after = wait_for(
        lambda: (s := ok(server, "/api/status"))["reloads"] > before["reloads"] and s,
        timeout=1.0,
        what="the server to reload",
    )
    assert after["config_version"] == after["loaded_config_version"] == before["config_version"] + 1
    entry = ok(server, "/api/audit?action=config.reload")["data"][-1]
    assert entry["actor"].startswith("cli:") and entry["target"] == "config"


# --- the OpenAPI document ---------------------------------------------------------------------------


def test_openapi_document_validates_and_lists_every_route(server):
    doc = ok(server, "/api/openapi.json")
    validate(doc)
    served = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert served == {(r.method, r.pattern) for r in ROUTES}
    expected = {
        ("GET", "/api/traces"),
        ("GET", "/api/traces/{id}"),
        ("GET", "/api/audit"),
        ("GET", "/api/audit/verify"),
        ("GET", "/api/audit/head"),
        ("POST", "/api/audit/note"),
        ("GET", "/api/status"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/webhooks"),
        ("POST", "/api/webhooks/{id}/test"),
        ("GET", "/api/webhooks/deliveries"),
    }
    assert expected <= served
    params = {p["name"] for p in doc["paths"]["/api/traces"]["get"]["parameters"]}
    filters = {"since", "until", "model", "provider", "status", "key", "outcome", "user", "tag", "q"}
    assert params == {*filters, "limit", "cursor"}
    note = doc["paths"]["/api/audit/note"]["post"]
    assert "requestBody" in note and "201" in note["responses"] and "200" not in note["responses"]


def _readme_admin_routes() -> set[tuple[str, str]]:
    """README's list of admin routes: `GET/POST /api/x[/{id}|/y]` items after "Its routes"."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "Its routes (" in text, "README's Administer it section lists no admin routes"
    listing = text.split("Its routes (", 1)[1].split("\n\n", 1)[0]
    routes: set[tuple[str, str]] = set()
    for methods, path in re.findall(r"`((?:[A-Z]+/)*[A-Z]+) (/api/[^`]*)`", listing):
        paths = [path]
        while any("[" in p for p in paths):  # `/a[/b|/c]` → /a, /a/b, /a/c
            p = next(p for p in paths if "[" in p)
            head, rest = p.split("[", 1)
            inner, tail = rest.split("]", 1)
            paths.remove(p)
            paths += [head + tail] + [head + alt + tail for alt in inner.split("|")]
        routes |= {(m, p) for m in methods.split("/") for p in paths}
    return routes


def test_readme_lists_every_admin_route():
    """README's admin route list is the API: every route served is listed, every one listed is served."""
    served = {(r.method, r.pattern) for r in ROUTES}
    listed = _readme_admin_routes()
    assert listed - served == set(), "README lists admin routes that do not exist"
    assert served - listed == set(), "admin routes missing from README's list"


METRICS_KEY = "metrics-scrape-token-0123456789"


def test_a_metrics_key_guards_metrics_and_only_metrics(pyz_path, cache_home, mock, tmp_path):
    """With STOCKYARD_METRICS_KEY, /metrics answers only a scraper that sends it (it names the
    busiest keys and their costs); the health routes stay open, and the key is never logged."""
    env = mock_env(cache_home, mock, STOCKYARD_METRICS_KEY=METRICS_KEY)
    srv = ServerProcess(pyz_path, tmp_path / "s.db", env).start()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789ab"}, {"Authorization": METRICS_KEY}):
            status, answer_headers, body = srv.request("GET", "/metrics", headers=headers)
            assert status == 401 and answer_headers["www-authenticate"] == "Bearer", headers
            error = json.loads(body)["error"]
            assert error["code"] == "invalid_metrics_key" and METRICS_KEY not in body.decode()
        status, _, body = srv.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert status == 200 and b"stockyard_requests_total" in body
        assert srv.request("GET", "/healthz")[0] == 200 and srv.request("GET", "/readyz")[0] == 200
    finally:
        srv.stop()
    assert METRICS_KEY not in srv.log


def test_a_short_metrics_key_refuses_to_start(pyz_path, cache_home, tmp_path):
    db = tmp_path / "never.db"
    proc = subprocess.run(
        [sys.executable, str(pyz_path), "serve", "--port", "0", "--db", str(db)],
        env={**base_env(cache_home), "STOCKYARD_METRICS_KEY": "short-key-15chr"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1 and "STOCKYARD_METRICS_KEY is 15 characters" in proc.stderr
    assert "short-key-15chr" not in proc.stderr and not db.exists()
