"""The module chain: its registry and order, configuration through the admin API and the CLI
(validated, audited, in effect from the next request), overrides per key and project, and
modules from elsewhere (budgets, rate limits) registered with one line."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from module_helpers import ADMIN_KEY, api, chat, fresh, put_module, raw_stream, server_fixture  # noqa: F401

from stockyard import modules as registry
from stockyard.context import RequestContext
from stockyard.errors import ProxyError
from stockyard.modules import ConfigError, ModuleRow, Modules
from stockyard.modules.guard import Guard
from stockyard.modules.schema import Field

ORDER = ["ratelimit", "alias", "guard", "redact", "budget", "userlimits", "timeout", "cache", "fallback"]


server = server_fixture("modules")


# -- listing ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh")
def test_api_lists_every_module_in_chain_order_with_its_schema(server):
    status, listing = api(server, "GET", "/api/modules")
    assert status == 200
    modules = listing["modules"]
    assert [m["name"] for m in modules] == ORDER
    assert [m["position"] for m in modules] == list(range(1, len(ORDER) + 1))
    cache = modules[ORDER.index("cache")]
    assert cache["enabled"] is False and cache["default_enabled"] is False
    assert cache["options"]["ttl_s"] == {
        "type": "int",
        "default": 3600,
        "help": cache["options"]["ttl_s"]["help"],
        "min": 1,
        "max": 366 * 86_400,
    }
    assert cache["config"]["ttl_s"] == 3600 and cache["set"] == []
    assert "status" in cache  # run-time state: entries and bytes held


@pytest.mark.usefixtures("fresh")
def test_cli_lists_and_shows(server):
    out = server.cli("modules", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[1] for line in lines[1:]] == ORDER
    rows = [json.loads(line) for line in server.cli("modules", "list", "--json").stdout.splitlines()]
    assert [r["name"] for r in rows] == ORDER
    shown = server.cli("modules", "show", "fallback", "--json")
    assert json.loads(shown.stdout)["config"]["retries"] == 1
    text = server.cli("modules", "show", "fallback").stdout
    assert "fallback: off" in text and "retries = 1  (default)" in text
    missing = server.cli("modules", "show", "nope")
    assert missing.returncode == 1 and "no module named 'nope'" in missing.stderr


@pytest.mark.usefixtures("fresh")
def test_every_verb_has_help(server):
    for verb in ("list", "show", "enable", "disable", "set", "reset"):
        out = server.cli("modules", verb, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, config, field",
    [
        ("cache", {"ttl_s": "soon"}, "cache.ttl_s"),
        ("cache", {"ttl_s": 0}, "cache.ttl_s"),
        ("cache", {"ttl": 5}, "cache.ttl"),
        ("cache", {"endpoints": ["chat", "images"]}, "cache.endpoints"),
        ("guard", {"max_tokens_mode": "cut"}, "guard.max_tokens_mode"),
        ("guard", {"allow_models": "gpt-4o"}, "guard.allow_models"),
        ("redact", {"pii": ["email", "ssn"]}, "redact.pii"),
        ("redact", {"secrets": "yes"}, "redact.secrets"),
        ("alias", {"splits": {"ab": [{"model": "a", "weight": -1}]}}, "alias.splits"),
        ("alias", {"aliases": {"fast": ""}}, "alias.aliases"),
        ("timeout", {"models": {"gpt-4o*": 0}}, "timeout.models"),
        ("fallback", {"retries": 11}, "fallback.retries"),
        ("fallback", {"chains": {"gpt-4o": "groq/llama"}}, "fallback.chains"),
        ("fallback", {"backoff_ms": 500, "max_backoff_ms": 100}, "fallback.max_backoff_ms"),
        ("cache", {"overrides": {"user:1": {"enabled": False}}}, "cache.overrides"),
        ("cache", {"overrides": {"key:k1": {"ttl_s": -5}}}, "cache.overrides['key:k1'].ttl_s"),
    ],
)
@pytest.mark.usefixtures("fresh")
def test_api_rejects_bad_config_naming_the_field(server, name, config, field):
    status, body = api(server, "PUT", f"/api/modules/{name}", {"enabled": True, "config": config})
    assert status == 400, body
    assert body["error"]["param"] == field and body["error"]["message"].startswith(field + ":")
    status, view = api(server, "GET", f"/api/modules/{name}")
    assert view["enabled"] is False and view["set"] == [], "a rejected change changes nothing"


@pytest.mark.usefixtures("fresh")
def test_api_rejects_malformed_change_bodies(server):
    assert api(server, "PUT", "/api/modules/cache", {"enabled": "yes"})[0] == 400
    assert api(server, "PUT", "/api/modules/cache", {"config": [1]})[0] == 400
    status, body = api(server, "PATCH", "/api/modules/cache", {"ttl_s": 5})
    assert status == 400 and "unknown field 'ttl_s'" in body["error"]["message"]
    status, body = api(server, "POST", "/api/modules/nope/enable")
    assert status == 404 and "no module named 'nope'" in body["error"]["message"]
    assert api(server, "GET", "/api/modules")[0] == 200
    status, _, _ = server.request("GET", "/api/modules")  # no admin key
    assert status == 401


@pytest.mark.parametrize(
    "args, field",
    [
        (["cache", "ttl_s=soon"], "cache.ttl_s"),
        (["cache", "ttl=5"], "cache.ttl"),
        (["guard", "max_tokens_mode=cut"], "guard.max_tokens_mode"),
        (["alias", "aliases={not json"], "alias.aliases"),
        (["cache", "--config", '{"ttl_s": -1}'], "cache.ttl_s"),
    ],
)
@pytest.mark.usefixtures("fresh")
def test_cli_rejects_bad_config_with_exit_1_naming_the_field(server, args, field):
    out = server.cli("modules", "set", *args)
    assert out.returncode == 1 and field in out.stderr and "Traceback" not in out.stderr
    out = server.cli("modules", "set", "cache", "--config", "{oops")
    assert out.returncode == 1 and "--config is not valid JSON" in out.stderr


@pytest.mark.usefixtures("fresh")
def test_patch_merges_and_null_resets_to_default(server):
    put_module(server, "guard", {"max_tokens": 10}, enabled=False)
    status, view = api(server, "PATCH", "/api/modules/guard", {"config": {"max_messages": 3}})
    assert status == 200 and view["config"]["max_tokens"] == 10 and view["config"]["max_messages"] == 3
    status, view = api(server, "PATCH", "/api/modules/guard", {"config": {"max_tokens": None}})
    assert view["config"]["max_tokens"] == 0 and view["set"] == ["max_messages"]
    status, view = api(server, "PUT", "/api/modules/guard", {"config": {"max_input_bytes": 100}})
    assert view["set"] == ["max_input_bytes"], "PUT replaces the whole configuration"


@pytest.mark.usefixtures("fresh")
def test_cli_sets_one_entry_of_an_object_and_resets(server):
    out = server.cli("modules", "set", "alias", "aliases.fast=gpt-4o-mini", "aliases.gpt-4.1*=openai/gpt-4.1")
    assert out.returncode == 0, out.stderr
    out = server.cli("modules", "set", "alias", "aliases.smart=gpt-4o")
    view = json.loads(server.cli("modules", "show", "alias", "--json").stdout)
    assert view["config"]["aliases"] == {"fast": "gpt-4o-mini", "gpt-4.1*": "openai/gpt-4.1", "smart": "gpt-4o"}
    server.cli("modules", "set", "guard", "allow_models=gpt-4o-mini,gpt-4o", "max_tokens=64")
    view = json.loads(server.cli("modules", "show", "guard", "--json").stdout)
    assert view["config"]["allow_models"] == ["gpt-4o-mini", "gpt-4o"] and view["config"]["max_tokens"] == 64
    server.cli("modules", "reset", "guard", "max_tokens")
    view = json.loads(server.cli("modules", "show", "guard", "--json").stdout)
    assert view["set"] == ["allow_models"]
    server.cli("modules", "reset", "guard")
    assert json.loads(server.cli("modules", "show", "guard", "--json").stdout)["set"] == []


@pytest.mark.usefixtures("fresh")
def test_changes_are_audited_with_who_made_them(server):
    put_module(server, "cache", {"ttl_s": 60})
    api(server, "POST", "/api/modules/cache/disable")
    server.cli("modules", "set", "cache", "max_entries=5")
    rows = server.db_rows(
        "SELECT actor, action, target, details FROM audit_log WHERE target = 'module:cache' ORDER BY seq DESC LIMIT 3"
    )
    assert [r["action"] for r in rows] == ["module.configure", "module.disable", "module.configure"]
    assert rows[0]["actor"].startswith("cli:") and json.loads(rows[0]["details"]) == {"set": {"max_entries": 5}}
    assert rows[1]["actor"] == "admin-api:127.0.0.1"
    assert json.loads(rows[2]["details"])["set"] == {"ttl_s": 60}


# -- in effect from the next request ----------------------------------------------------------------


@pytest.mark.usefixtures("fresh")
def test_api_toggle_changes_the_next_request(server):
    put_module(server, "guard", {"deny_models": ["gpt-4o-mini"]}, enabled=False)
    assert chat(server)[0] == 200, "configured but disabled: no effect"
    assert api(server, "POST", "/api/modules/guard/enable")[0] == 200
    status, _, body = chat(server)
    assert status == 403 and json.loads(body)["error"]["code"] == "model_not_allowed"
    assert raw_stream(server, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})[0] == 403
    assert api(server, "POST", "/api/modules/guard/disable")[0] == 200
    assert chat(server)[0] == 200


@pytest.mark.usefixtures("fresh")
def test_cli_changes_reach_the_running_server(server):
    assert server.cli("modules", "set", "guard", "deny_models=gpt-4o-mini").returncode == 0
    assert chat(server)[0] == 200
    assert server.cli("modules", "enable", "guard").returncode == 0
    wait_for(lambda: chat(server)[0] == 403, what="CLI enable to reach the server")
    assert server.cli("modules", "set", "guard", "deny_models=gpt-4o").returncode == 0
    wait_for(lambda: chat(server)[0] == 200, what="CLI set to reach the server")
    assert chat(server, model="gpt-4o")[0] == 403
    assert server.cli("modules", "disable", "guard").returncode == 0
    wait_for(lambda: chat(server, model="gpt-4o")[0] == 200, what="CLI disable to reach the server")


@pytest.mark.usefixtures("fresh")
def test_openapi_documents_the_module_routes(server):
    status, doc = api(server, "GET", "/api/openapi.json")
    assert set(doc["paths"]["/api/modules/{name}"]) == {"get", "put", "patch"}
    assert "post" in doc["paths"]["/api/modules/{name}/enable"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture
def every_module_on(fresh, server):
    for name, config in {
        "alias": {"aliases": {"fast": "gpt-4o-mini"}},
        "guard": {"max_tokens": 100},
        "redact": {"mode": "upstream", "pii": ["email", "phone", "card"]},
        "cache": {},
        "timeout": {"read_timeout_s": 5, "deadline_s": 10},
        "fallback": {"chains": {"gpt-4o-mini": ["groq/gpt-4o-mini"]}, "backoff_ms": 10},
    }.items():
        put_module(server, name, config)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "model",
                "messages",
                "stream",
                "stream_options",
                "input",
                "user",
                "prompt",
                "max_tokens",
                "max_completion_tokens",
                "x",
            ]
        ),
        json_values,
        max_size=7,
    ),
    model=st.sampled_from(["fast", "gpt-4o-mini", "openai/gpt-4o", None]),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"]),
)
def test_arbitrary_json_through_every_module_never_gives_500(server, every_module_on, body, model, path):
    if model is not None:
        body = {**body, "model": model}
    status, _, payload = server.request("POST", path, body)
    assert status < 500 or status in (502, 503, 504), payload
    assert b"Traceback" not in payload


# -- registry, overrides and modules from elsewhere (in process) --------------------------------------


def ctx(key_id: str | None = None, project: str | None = None, model: str = "gpt-4o-mini") -> RequestContext:
    c = RequestContext("chat", "openai", "127.0.0.1", {}, raw=b"{}", body={"model": model}, model=model)
    c.key_id, c.project = key_id, project
    return c


def run(chain, c: RequestContext) -> str:
    try:
        chain.before(c)
    except ProxyError as exc:
        return str(exc.status)
    return "ok"


def test_overrides_per_key_and_project():
    mods = Modules(types.SimpleNamespace(), order=(Guard,))
    config = {
        "deny_models": ["gpt-4o*"],
        "overrides": {
            "key:k1": {"enabled": False},
            "project:lab": {"deny_models": []},
            "key:k2": {"deny_models": ["claude*"]},
        },
    }
    chain = mods.build({"guard": ModuleRow("guard", True, config, "")})
    assert run(chain, ctx()) == "403"
    assert run(chain, ctx(key_id="k1")) == "ok", "module off for this key"
    assert run(chain, ctx(project="lab")) == "ok", "project's options"
    assert run(chain, ctx(key_id="k2", project="lab")) == "ok", "the key's override wins over its project's"
    assert run(chain, ctx(key_id="k2", model="claude-3")) == "403"
    assert run(chain, ctx(key_id="k9", project="other")) == "403"


def test_module_off_everywhere_but_on_for_one_project():
    mods = Modules(types.SimpleNamespace(), order=(Guard,))
    chain = mods.build(
        {
            "guard": ModuleRow(
                "guard", False, {"deny_models": ["*"], "overrides": {"project:locked": {"enabled": True}}}, ""
            )
        }
    )
    assert run(chain, ctx()) == "ok" and run(chain, ctx(project="locked")) == "403"
    assert mods.build({}).modules == [], "disabled by default: not in the chain at all"


class Counting:
    """A module from elsewhere (like the budget and rate limit modules): no schema, own limits."""

    name = "counting"

    def __init__(self, app) -> None:
        self.app, self.before_calls, self.after_calls = app, 0, 0

    def before(self, ctx: RequestContext) -> None:
        self.before_calls += 1

    def after(self, ctx: RequestContext) -> None:
        self.after_calls += 1


def test_a_module_from_elsewhere_is_one_line_of_registration(monkeypatch):
    monkeypatch.setattr(registry, "ORDER", (Counting, *registry.ORDER))
    assert registry.describe(Counting)["default_enabled"] is True
    assert registry.describe(Counting)["summary"].startswith("A module from elsewhere")
    mods = Modules(types.SimpleNamespace(), order=registry.ORDER)
    counting = mods.get("counting")
    chain = mods.build({})
    on_by_default = {"ratelimit", "budget"}  # the keys' own modules: their limits live on the keys
    assert [m for m in chain.modules if m.name not in on_by_default] == [counting], (
        "on by default, every configurable module off"
    )
    c = ctx()
    chain.before(c)
    chain.after(c)
    assert (counting.before_calls, counting.after_calls) == (1, 1)
    assert counting not in mods.build({"counting": ModuleRow("counting", False, {}, "")}).modules
    scoped = mods.build({"counting": ModuleRow("counting", True, {"overrides": {"key:k1": {"enabled": False}}}, "")})
    scoped.before(ctx(key_id="k1"))
    assert counting.before_calls == 1, "switched off for that key"
    with pytest.raises(ConfigError, match=r"counting.limit: is not an option of counting"):
        registry.check_config(Counting, {"limit": 5})


def test_state_survives_reconfiguration():
    """Module instances live as long as the server: a reload configures them, it does not replace them."""
    mods = Modules(types.SimpleNamespace(), order=(Guard,))
    first = mods.build({"guard": ModuleRow("guard", True, {}, "")}).modules[0]
    second = mods.build({"guard": ModuleRow("guard", True, {"max_tokens": 5}, "")}).modules[0]
    assert first is second


def test_invalid_stored_config_turns_the_module_off(caplog):
    mods = Modules(types.SimpleNamespace(), order=(Guard,))
    chain = mods.build({"guard": ModuleRow("guard", True, {"max_tokens": "lots"}, "")})
    assert chain.modules == [] and "guard.max_tokens" in caplog.text


@pytest.mark.parametrize(
    "field, text, value",
    [
        (Field("bool", False, ""), "yes", True),
        (Field("bool", False, ""), "off", False),
        (Field("int", 1, "", min=0), "42", 42),
        (Field("float", 1.0, ""), "2.5", 2.5),
        (Field("list", [], ""), "a, b,c", ["a", "b", "c"]),
        (Field("list", [], ""), '["a,b"]', ["a,b"]),
        (Field("dict", {}, ""), '{"a": 1}', {"a": 1}),
        (Field("str", "", ""), "  spaced ", "  spaced "),
        (Field("enum", "x", "", choices=("x", "y")), "y", "y"),
    ],
)
def test_command_line_values_parse_by_field_type(field, text, value):
    assert field.parse("m.f", text) == value


@pytest.mark.usefixtures("fresh")
def test_admin_key_is_needed(server):
    assert server.request("POST", "/api/modules/cache/enable", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert ADMIN_KEY not in server.log


# Modules whose README section the lead writes when merging (helpers do not edit README.md);
# remove a name from here together with adding its section.
README_PENDING: set[str] = set()


def _as_documented(value: object) -> str:
    """A default as README's option tables write it: `3600`, `10` (for 10.0), `clamp`, `""`, `[]`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, str) and value else json.dumps(value)


def test_docs_describe_every_module_and_option():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for cls in registry.ORDER:
        if cls.name in README_PENDING and f"### `{cls.name}`" not in text:
            continue
        assert f"### `{cls.name}`" in text
        section = text.split(f"### `{cls.name}`", 1)[1].split("\n### ", 1)[0]
        for option, field in registry.schema_of(cls).items():
            assert f"| `{option}` |" in text, f"{cls.name}.{option} is not documented"
            # | `option` | type | default | meaning |: a default in backticks is the code's default
            row = section.split(f"| `{option}` |", 1)[1].split("\n", 1)[0]
            cells = [c.strip() for c in row.replace("\\|", "/").split(" | ")]
            if len(cells) >= 2 and cells[1].startswith("`") and cells[1].endswith("`"):
                documented = cells[1][1:-1]
                assert documented == _as_documented(field.default), f"{cls.name}.{option}: README says {documented}"
