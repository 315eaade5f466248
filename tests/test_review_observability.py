"""An adversarial review of observability and operations (any client key): budget.exhausted told
for a budget with nothing spent (and then never for the real one), end-user ids flooding its
records, Slack control sequences in a client-chosen end user id, a model name that breaks or
forges samples on the /metrics page of ``serve --workers``, Gemini-native spans against the GenAI
conventions. Each test failed on the code it was written against."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from conftest import ServerProcess, mock_env, served, wait_for
from module_helpers import ADMIN_KEY, api, module_env, put_module, start_server
from test_otel import Receiver as Collector
from test_otel import attrs
from webhook_receiver import Receiver

SECRET = "review-obs-encryption-secret-0123456789"
BODY = {"model": "openai/mock-budget", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def server(pyz_path, cache_home, mock, tmp_path_factory):
    env = module_env(cache_home, mock, STOCKYARD_ENCRYPTION_KEY=SECRET)
    with served(pyz_path, tmp_path_factory, "reviewobs", env) as srv:
        status, _ = api(srv, "POST", "/api/prices", {"model": "mock-budget", "input": "0", "output": "1"})
        assert status == 200
        yield srv


@pytest.fixture(scope="module")
def hook(server, receiver) -> dict:
    status, body = api(server, "POST", "/api/webhooks", {"url": receiver.url, "events": ["all"]})
    assert status == 201, body
    return body


def _reseller(server: ServerProcess, name: str) -> dict:
    """A key whose end users each have a budget of 1,000 µ¢ a day (two 5-token answers)."""
    status, key = api(server, "POST", "/api/keys", {"name": name})
    assert status == 201
    put_module(server, "userlimits", {"overrides": {f"key:{key['id']}": {"budget_usd": "0.00001"}}})
    return key


def refused_until(server: ServerProcess, headers: dict, told, what: str):
    """Send refused requests until ``told()`` has something: the budget is told exhausted at a
    refusal once its spend reached it, and the last answer's spend may settle just after the
    client has it (the after hooks run once the answer is out)."""

    def poll():
        assert server.request("POST", "/v1/chat/completions", BODY, headers=headers)[0] == 429
        return told()

    return wait_for(poll, what=what)


# -- 1. budget.exhausted told for a budget with nothing spent -------------------------------------


def test_an_oversized_request_is_not_a_spent_budget_and_does_not_swallow_the_real_exhaustion(server, receiver, hook):
    key = _reseller(server, "reseller-dave")
    try:
        headers = {"Authorization": f"Bearer {key['key']}", "x-stockyard-user": "dave"}
        big = {**BODY, "max_tokens": 50}  # worst case 5,000 µ¢ > 1,000: refused, nothing spent
        assert server.request("POST", "/v1/chat/completions", big, headers=headers)[0] == 429
        statuses = [server.request("POST", "/v1/chat/completions", BODY, headers=headers)[0] for _ in range(2)]
        assert statuses == [200, 200]  # now really spent: 1,000 of 1,000 µ¢
        told = lambda: [e for e in receiver.events("budget.exhausted") if e[2]["data"].get("user") == "dave"]  # noqa: E731
        refused_until(server, headers, told, "dave's budget.exhausted")
    finally:
        put_module(server, "userlimits", {}, enabled=False)
    daves = [e[2]["data"] for e in receiver.events("budget.exhausted") if e[2]["data"].get("user") == "dave"]
    assert [d["spent_uc"] for d in daves] == [1000], (
        "budget.exhausted must be told when the budget is spent, not when one request is larger than "
        f"the budget; got {daves}"
    )


def test_random_end_users_cannot_make_unbounded_exhausted_rows_and_webhooks_for_free(server, receiver, hook):
    key = _reseller(server, "reseller-flood")
    n = 150
    try:
        big = {**BODY, "max_tokens": 50}
        for _ in range(n):
            headers = {"Authorization": f"Bearer {key['key']}", "x-stockyard-user": "u-" + uuid.uuid4().hex}
            assert server.request("POST", "/v1/chat/completions", big, headers=headers)[0] == 429
    finally:
        put_module(server, "userlimits", {}, enabled=False)
    like = f"user:key:{key['id']}|%"
    later = {"Authorization": f"Bearer {key['key']}", "x-stockyard-user": "u-last"}
    status, headers, _ = server.request("POST", "/v1/chat/completions", BODY, headers=later)
    assert status == 200  # a later record: the writer keeps order, so the refusals' records are in before it
    server.trace(headers["x-stockyard-trace-id"])
    rows = server.db_rows("SELECT count(*) AS n FROM budget_warnings WHERE scope LIKE ?", (like,))[0]["n"]
    assert rows == 0, f"{rows} permanent budget_warnings rows (and webhook events) from {n} refused requests"


# -- 2. Slack control sequences from client-chosen end user ids -------------------------------------


def test_a_slack_webhook_gets_the_end_user_id_escaped(server, receiver):
    status, body = api(
        server,
        "POST",
        "/api/webhooks",
        {"url": receiver.url + "/slack", "events": ["budget.exhausted"], "format": "slack"},
    )
    assert status == 201, body
    key = _reseller(server, "reseller-slack")
    try:
        headers = {
            "Authorization": f"Bearer {key['key']}",
            "x-stockyard-user": "<!channel> <https://evil.example|login>",
        }
        statuses = [server.request("POST", "/v1/chat/completions", BODY, headers=headers)[0] for _ in range(2)]
        assert statuses == [200, 200]

        def slack_texts() -> list[str]:
            with receiver.lock:
                got = list(receiver.got)
            bodies = [json.loads(b) for _, b in got]
            return [m for m in bodies if isinstance(m.get("text"), str) and "channel" in m["text"]]

        [message] = refused_until(server, headers, slack_texts, "the slack message")
        text = message["text"]
        # what Slack shows is a verbatim section: a bare URL in a client-chosen end user id is not made a link
        assert message["blocks"] == [{"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}]
    finally:
        put_module(server, "userlimits", {}, enabled=False)
        api(server, "DELETE", f"/api/webhooks/{body['id']}")
    assert "<!channel>" not in text and "<https://" not in text, (
        f"Slack reads <!channel> and <url|label> as a mention and a link: escape & < > ({text!r})"
    )


# -- 3. /metrics of serve --workers N made unparseable by a model name ------------------------------

SAMPLE = re.compile(r'^stockyard_[a-z_]+(\{(?:[a-z_]+="(?:[^"\\\n]|\\.)*",?)*\})? \S+$')


def _group(pyz_path, cache_home, mock, tmp_path) -> tuple[ServerProcess, dict]:
    env = mock_env(cache_home, mock, STOCKYARD_ADMIN_KEY=ADMIN_KEY)
    group = ServerProcess(pyz_path, tmp_path / "stockyard.db", env, ["--workers", "2"])
    secret = group.cli("keys", "create", "--name", "attacker")
    assert secret.returncode == 0, secret.stderr
    group.start()
    return group, {"Authorization": f"Bearer {secret.stdout.strip()}"}


def _chat_model(group: ServerProcess, auth: dict, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    wait_for(lambda: group.request("POST", "/v1/chat/completions", body, headers=auth)[0] == 200, what="a 200")


def test_a_model_name_cannot_break_the_metrics_page_of_a_group(pyz_path, cache_home, mock, tmp_path):
    group, auth = _group(pyz_path, cache_home, mock, tmp_path)
    try:
        _chat_model(group, auth, "openai/gpt-4o-mini\u2028injected")
        for _ in range(6):  # whichever worker answers the scrape
            status, _, text = group.request("GET", "/metrics")
            assert status == 200
            bad = [
                line
                for line in text.decode().split("\n")
                if line and not line.startswith("# ") and not SAMPLE.match(line)
            ]
            assert not bad, f"lines a Prometheus parser refuses (the whole scrape fails): {bad[:3]}"
    finally:
        group.stop()


def test_a_model_name_cannot_forge_a_sample_in_the_metrics_of_a_group(pyz_path, cache_home, mock, tmp_path):
    group, auth = _group(pyz_path, cache_home, mock, tmp_path)
    try:
        # every fragment is a valid line: a sample the attacker chose, then a comment
        _chat_model(group, auth, "openai/gpt-4o-mini\u2028stockyard_database_writable 0\u2028# x")
        for _ in range(6):
            text = group.request("GET", "/metrics")[2].decode()
            forged = re.findall(r"^stockyard_database_writable\{[^}]*\} 0$", text, re.M)
            assert not forged, f"a forged sample of an alert README names: {forged}"
    finally:
        group.stop()


# -- 4. OpenTelemetry GenAI conventions for Gemini-native calls -------------------------------------


def test_gemini_native_spans_follow_the_genai_conventions(pyz_path, cache_home, mock, tmp_path):
    collector = Collector()
    env = mock_env(
        cache_home,
        mock,
        GEMINI_API_KEY="AIza-review-0123456789abcdef",
        GEMINI_BASE_URL=mock.url,
        STOCKYARD_OTLP_ENDPOINT=collector.url,
    )
    srv = ServerProcess(pyz_path, tmp_path / "stockyard.db", env).start()
    try:
        contents = [{"role": "user", "parts": [{"text": "Hello"}]}]
        status, headers, raw = srv.request(
            "POST", "/v1beta/models/gemini-review-plain:generateContent", {"contents": contents}
        )
        assert status == 200, raw
        assert b'"finishReason"' in raw
        trace_id = headers["x-stockyard-trace-id"]
        spans = wait_for(lambda: collector.of_request(trace_id), what="the spans")
        top = attrs(spans[0])
        found = (top["gen_ai.operation.name"], top.get("gen_ai.response.finish_reasons"))
        assert found == ("generate_content", ["STOP"]), f"(operation, finish reasons) = {found}"
    finally:
        srv.stop()
        collector.server.shutdown()
