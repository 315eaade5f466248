"""The web console at /ui/: served from the pyz with strict security headers, no traversal,
same-origin only, no HTML injection sinks in its JavaScript, only documented admin routes,
and its JavaScript modules (money, charts, DOM building, CSV) tested in node."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess, mock_env, served, wait_for

ADMIN_KEY = "console-test-admin-key-0123456789"
UI = ROOT / "stockyard" / "ui"
STATIC = sorted(p for p in UI.iterdir() if p.suffix in (".html", ".css", ".js"))
JS = [p for p in STATIC if p.suffix == ".js"]
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
SECURITY = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory) -> ServerProcess:
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY)
    with served(pyz_path, tmp_path_factory, "console", env) as srv:
        yield srv


def raw_get(server: ServerProcess, path: str, method: str = "GET", headers: dict | None = None):
    """A request with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_secure(headers: dict) -> None:
    for name, value in SECURITY.items():
        assert headers.get(name) == value, (name, headers)
    csp = headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["default-src"] == "'self'" and directives["frame-ancestors"] == "'none'"


def test_every_console_file_is_served_from_the_pyz_with_its_type_and_security_headers(server):
    assert {p.name for p in STATIC} >= {"index.html", "app.css", "app.js", "api.js", "charts.js", "dom.js"}
    status, headers, body = raw_get(server, "/ui/")
    assert status == 200 and headers["content-type"] == TYPES[".html"]
    assert body == (UI / "index.html").read_bytes()
    assert_secure(headers)
    for path in STATIC:
        status, headers, body = raw_get(server, f"/ui/{path.name}")
        assert status == 200, path.name
        assert headers["content-type"] == TYPES[path.suffix]
        assert headers["cache-control"] == "no-cache" and headers["etag"]
        assert body == path.read_bytes()
        assert_secure(headers)


def test_unchanged_file_answers_304(server):
    _, headers, _ = raw_get(server, "/ui/app.js")
    status, again, body = raw_get(server, "/ui/app.js", headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body == b""
    assert_secure(again)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../api/status",
        "/ui/..%2fapi%2fstatus",
        "/ui/%2e%2e/server.py",
        "/ui/%2E%2E%2F__main__.py",
        "/ui/.%2e/x",
        "/ui/..\\__init__.py",
        "/ui/%5c..%5c__init__.py",
        "/ui//etc/passwd",
        "/ui/__init__.py",
        "/ui/package.json",
        "/ui/nope.js",
        "/ui/app.js.map",
        "/ui/.hidden.js",
        "/ui/sub/app.js",
        "/ui/app.js%00.html",
    ],
)
def test_unknown_files_and_traversal_are_404(server, path):
    status, headers, body = raw_get(server, path)
    assert status == 404, path
    assert b"stockyard" not in body.lower() or b"import" not in body
    assert_secure(headers)


def test_root_and_bare_ui_redirect_to_the_console(server):
    for path in ("/", "/ui"):
        status, headers, _ = raw_get(server, path)
        assert status == 302 and headers["location"] == "/ui/"
        assert_secure(headers)


def test_only_get_is_allowed(server):
    status, headers, _ = raw_get(server, "/ui/app.js", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_console_files_need_no_key_but_its_data_does(server):
    assert raw_get(server, "/ui/traces.js")[0] == 200
    assert raw_get(server, "/api/traces")[0] == 401


def test_html_has_no_inline_script_or_style():
    for path in STATIC:
        if path.suffix != ".html":
            continue
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path.name
        assert not re.search(r"\sstyle\s*=|\son[a-z]+\s*=|<style", text, re.I), path.name


def test_console_refers_only_to_its_own_origin():
    allowed = {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched
    for path in STATIC:
        urls = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", path.read_text(), re.I))
        assert urls <= allowed, (path.name, urls - allowed)


def test_javascript_has_no_html_or_code_injection_sinks():
    sinks = re.compile(
        r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\s*\(|new\s+Function\b"
        r"|setTimeout\s*\(\s*[\"'`]|setInterval\s*\(\s*[\"'`]|setAttribute\(\s*[\"'](style|on\w+)"
    )
    for path in JS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not sinks.search(line), f"{path.name}:{number}: {line.strip()}"


def api_paths_in_js() -> set[str]:
    """Every /api/… path literal in the JavaScript, with ${…} parts as {param}."""
    found = set()
    for path in JS:
        for literal in re.findall(r"[\"'`](/api/[^\"'`?]*)", path.read_text()):
            found.add(re.sub(r"\$\{[^}]*\}", "{param}", literal))
    return found


def test_every_api_path_the_console_uses_is_documented(server):
    status, _, body = raw_get(server, "/api/openapi.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 200
    documented = [
        re.compile("^" + re.sub(r"\\\{\w+\\\}", r"[^/]+", re.escape(p)) + "$") for p in json.loads(body)["paths"]
    ]
    used = api_paths_in_js()
    assert {"/api/traces", "/api/costs", "/api/keys", "/api/modules", "/api/audit/verify"} <= used
    for path in used:
        concrete = path.replace("{param}", "x")
        assert any(r.match(concrete) for r in documented), f"{path} is not in /api/openapi.json"


def test_javascript_modules_in_node():
    assert NODE, "node is needed to test the console's JavaScript"
    result = subprocess.run([NODE, "--test", str(ROOT / "tests" / "js")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_console_csv_and_money_match_the_costs_command(server, mock):
    assert NODE, "node is needed to test the console's JavaScript"
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
        status, _, _ = server.request(
            "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert status == 200
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def report():
        body = json.loads(raw_get(server, "/api/costs?by=model", headers=auth)[2])
        return body if body["total"]["requests"] >= 3 else None

    data = wait_for(report, what="rollups")
    script = (
        "import {costsCsv, formatUsd} from './stockyard/ui/format.js';"
        "const r = JSON.parse(process.argv[1]);"
        "process.stdout.write(JSON.stringify({csv: costsCsv(r), total: formatUsd(r.total.cost_uc)}));"
    )
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", script, json.dumps(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    console = json.loads(out.stdout)
    cli = server.cli("costs", "--by", "model", "--csv")
    assert cli.returncode == 0, cli.stderr
    assert console["csv"] == cli.stdout.replace("\r\n", "\n").replace("\n", "\r\n")
    assert console["total"] == data["total"]["cost_usd"]


def test_requests_for_unknown_console_files_leave_nothing_behind():
    """Was: every name that fit the file-name pattern was remembered, found or not, and a name can
    be nearly as long as the 64 KiB request line: 3,000 such 404s (no key needed) grew the server
    by 185 MB, never given back. Only the console's own files are kept."""
    from stockyard import ui
    from stockyard.httpio import Request

    known = dict(ui.files())
    for i in range(200):
        name = f"{'a' * 60_000}{i}.js"
        assert ui.handle(None, Request("GET", ui.PREFIX + name, {}, b"", "127.0.0.1")).status == 404  # type: ignore[arg-type]
    assert ui.files() == known
    assert set(known) == {p.name for p in (ROOT / "stockyard" / "ui").iterdir() if ui._NAME.match(p.name)}
    grown = [n for n, v in vars(ui).items() if isinstance(v, dict) and len(v) > len(known) and not n.startswith("__")]
    assert grown == []
