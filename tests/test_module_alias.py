"""The alias module: names mapped to models (any provider), weighted A/B splits, plain and
streamed, the trace keeping the model as asked; switched at run time.

Most tests run the modules in process (``module_harness``); routing through a real server,
the run-time switch and the API's validation go through a server."""

from __future__ import annotations

import collections
import json

import pytest
from conftest import wait_for
from module_harness import inproc  # noqa: F401 (fixture)
from module_helpers import api, chat, fresh, providers_called, put_module, raw_stream, server_fixture, stream_text  # noqa: F401

server = server_fixture("alias")

ALIASES = {
    "aliases": {"fast": "groq/llama-3.3-70b", "default": "gpt-4o-mini"},
    "splits": {
        "ab": [{"model": "gpt-4o-mini", "weight": 1}, {"model": "groq/gpt-4o", "weight": 1}],
        "always-a": [{"model": "gpt-4o-mini", "weight": 5}, {"model": "gpt-4o", "weight": 0}],
    },
}


@pytest.fixture
def alias_on(fresh, server, mock):
    put_module(server, "alias", ALIASES)


@pytest.fixture
def aliased(inproc):
    inproc.configure("alias", ALIASES)
    return inproc


# -- through a server ------------------------------------------------------------------------------


def test_alias_routes_to_its_provider_and_model(server, alias_on, mock):
    status, headers, _ = chat(server, model="fast")
    assert status == 200 and headers["x-stockyard-routed-model"] == "groq/llama-3.3-70b"
    assert providers_called(mock) == ["groq"] and mock.last("/chat/completions").json["model"] == "llama-3.3-70b"
    trace = server.trace(headers["x-stockyard-trace-id"])
    assert (trace["model"], trace["provider"], trace["served_model"]) == ("fast", "groq", "llama-3.3-70b")


def test_cli_changes_an_alias_at_run_time(server, alias_on, mock):
    assert server.cli("modules", "set", "alias", "aliases.fast=gpt-4o").returncode == 0

    def routed() -> str | None:
        return chat(server, model="fast")[1].get("x-stockyard-routed-model")

    wait_for(lambda: routed() == "gpt-4o", what="the new alias target")
    assert server.cli("modules", "disable", "alias").returncode == 0
    wait_for(lambda: routed() is None, what="alias off")


def test_bad_split_is_rejected(server, alias_on):
    status, body = api(
        server, "PATCH", "/api/modules/alias", {"config": {"splits": {"ab": [{"model": "a", "weight": 0}]}}}
    )
    assert status == 400 and body["error"]["param"] == "alias.splits"
    assert "at least one weight above 0" in body["error"]["message"]


# -- in process ------------------------------------------------------------------------------------


def test_alias_routes_in_process_too(aliased, mock):
    status, headers, _ = aliased.chat(model="fast")
    assert status == 200 and headers["x-stockyard-routed-model"] == "groq/llama-3.3-70b"
    assert providers_called(mock) == ["groq"] and mock.last("/chat/completions").json["model"] == "llama-3.3-70b"
    trace = aliased.trace(headers["x-stockyard-trace-id"])
    assert (trace["model"], trace["provider"], trace["served_model"]) == ("fast", "groq", "llama-3.3-70b")


def test_alias_on_a_streamed_request(aliased, mock):
    status, headers, data = aliased.stream({"model": "default", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and stream_text(data) == "Hello from mock"
    assert mock.last("/chat/completions").json["model"] == "gpt-4o-mini" and providers_called(mock) == ["openai"]
    assert aliased.trace(headers["x-stockyard-trace-id"])["model"] == "default"


def test_weighted_split_sends_requests_to_every_arm(aliased):
    def routed(model: str) -> str:
        ctx = aliased.context({"model": model, "messages": []})
        assert aliased.before(ctx) is None
        return ctx.reply_headers["x-stockyard-routed-model"]

    seen = collections.Counter(routed("ab") for _ in range(40))
    assert set(seen) == {"gpt-4o-mini", "groq/gpt-4o"} and min(seen.values()) >= 5
    assert {routed("always-a") for _ in range(10)} == {"gpt-4o-mini"}


def test_the_route_is_resolved_once_after_aliasing(aliased):
    ctx = aliased.context({"model": "fast", "messages": []})
    assert aliased.before(ctx) is None
    assert (ctx.route.provider.name, ctx.route.model) == ("groq", "llama-3.3-70b")


def test_unknown_names_pass_untouched(aliased, mock):
    status, headers, _ = aliased.chat(model="gpt-4o")
    assert status == 200 and "x-stockyard-routed-model" not in headers
    assert mock.last("/chat/completions").json["model"] == "gpt-4o"


def test_disabled_alias_has_no_effect(aliased):
    aliased.configure("alias", ALIASES, enabled=False)
    status, _, body = aliased.chat(model="fast")
    assert status == 400 and json.loads(body)["error"]["code"] == "model_not_routable"
