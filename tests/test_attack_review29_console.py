"""Review 29, the console from outside: client-chosen text stored by any request — an end user id,
a tag's value, a model name no provider serves, a refused admin request's path (the audit log's,
written for anyone who reaches the port) — shown on every console page in headless Chromium
stays text (found sound: the pages build the DOM from text nodes and attributes only, under a CSP
with no inline script). Also no cookie is ever set, so the admin API has no session to fix or to
ride from another site (CSRF): its bearer key lives in the tab's sessionStorage alone.
"""

from __future__ import annotations

import pytest
from conftest import ServerProcess, mock_env, served
from test_console_browser import ADMIN_KEY, ARGS, CHROMIUM, SECRET, Console, playwright  # noqa: F401

MARK = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>"
PAGES = ("overview", "traces", "costs", "keys", "providers", "models", "modules", "webhooks", "audit")


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY, STOCKYARD_ENCRYPTION_KEY=SECRET)
    with served(pyz_path, tmp_path_factory, "attack29-console", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def console(tmp_path_factory, server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        c = Console(browser, server)
        yield c
        browser.close()


def stored_marks(server: ServerProcess) -> str:
    """Requests that store MARK where a page shows it; the last one's trace id."""
    hello = [{"role": "user", "content": "hi"}]
    marked = {"x-stockyard-user": MARK, "x-stockyard-tags": f"team={MARK}"}
    status, headers, _ = server.request(
        "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": hello}, headers=marked
    )
    assert status == 200
    status, _, _ = server.request("POST", "/v1/chat/completions", {"model": MARK, "messages": hello}, headers=marked)
    assert status < 500  # routed to the OpenAI provider or refused: its name is traced either way
    for path in ("/api/<script>window.__xss=3</script>", "/api/%3Cscript%3Ewindow.__xss=4%3C/script%3E"):
        status, _, _ = server.request("GET", path, headers={"Authorization": "Bearer no"})  # audited: a wrong key
        assert status == 401
    server.trace(headers["x-stockyard-trace-id"])
    return headers["x-stockyard-trace-id"]


# Counts the console's API calls not yet read to the end (their JSON parsed), and notes each route
# taken: app.js's hashchange listener, registered first, has then begun the page, whose first call
# goes out before anything else is awaited. A page whose calls are all read has drawn what they brought.
WATCH_CALLS = """() => {
  window.__calls = 0;
  const send = window.fetch;
  window.fetch = (...args) => {
    window.__calls++;
    return send(...args).then(
      (resp) => {
        const read = resp.json.bind(resp);
        resp.json = () => read().finally(() => window.__calls--);
        return resp;
      },
      (err) => { window.__calls--; throw err; });
  };
  window.addEventListener("hashchange", () => { window.__routed = location.hash; });
}"""


def test_client_text_stays_text_on_every_page(console, server):
    trace_id = stored_marks(server)
    console.signed_in()
    page = console.page
    page.evaluate(WATCH_CALLS)
    for name in (*PAGES, f"traces/{trace_id}"):
        console.go(name)
        page.wait_for_selector("main h1")
        page.wait_for_function(  # the page's data fetched and drawn
            "(hash) => window.__routed === hash && window.__calls === 0", arg=f"#/{name}"
        )
        if name == "costs":
            for group in ("user", "tag"):
                page.select_option("main form select >> nth=0", group)
                if group == "tag":
                    page.fill("main form input[name=tag]", "team")
                    page.get_by_role("button", name="Show").click()
                page.locator("main tr", has_text=MARK).first.wait_for()
        if name == "audit":  # the refused admin request's row
            page.fill("main form input >> nth=0", "admin.auth_failed")
            page.get_by_role("button", name="Filter").click()
        if name in ("traces", f"traces/{trace_id}"):
            page.locator("main", has_text=MARK).first.wait_for()
        if name == "audit":  # each path as it came
            page.locator("main td", has_text="<script>window.__xss=3</script>").first.wait_for()
            page.locator("main td", has_text="%3Cscript%3Ewindow.__xss=4").first.wait_for()
        assert page.evaluate("window.__xss") is None, name
        assert page.locator("main img, main script").count() == 0, name
    assert console.context.cookies() == []
    console.check()
