"""The plain request's cheaper steps (hot39, issue 18) answer as before: a bare model name's provider,
remembered per name (``Registry._prefixed``), is the rule's on every later ask; a price is looked up under
the client's name only when the route renamed the model (``Pricer.price_of``); a usage's counts are
checked by ``Usage`` itself; the scrubber's secrets are encoded once, on reload."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_registry_resolve import NAMES, PREFIXES, by_the_rule

from stockyard.billing import Pricer
from stockyard.context import Route
from stockyard.errors import ProxyError
from stockyard.pricing import PriceTable, Usage
from stockyard.providers import Provider, Registry
from stockyard.scrub import Scrubber


def routed(registry: Registry, model: str) -> str | None:
    """The provider name ``resolve`` gives ``model``, None for its 400."""
    try:
        return registry.resolve(model)[0].name
    except ProxyError:
        return None


@given(
    st.lists(st.tuples(st.sampled_from(NAMES), PREFIXES), min_size=2, max_size=5),
    st.lists(st.sampled_from(["gpt-4o-mini", "GPT-4O", "gpt-4o", "claude-3-5", "o1-pro", "llama", "o"]), max_size=8),
)
def test_a_name_asked_again_goes_where_the_rule_says(entries, models) -> None:
    registry = Registry([Provider(name, "openai", "http://x", "k", tuple(prefixes)) for name, prefixes in entries])
    sole = registry.providers[0].name if len(registry.providers) == 1 else None  # takes a name no prefix routes
    for model in [*models, *models, *(m.upper() for m in models)]:  # each remembered, then asked again
        assert routed(registry, model) == (by_the_rule(registry, model) or sole)


def test_names_that_begin_alike_are_remembered_apart() -> None:
    registry = Registry(
        [Provider("a", "openai", "http://x", "k", ("o",)), Provider("b", "openai", "http://y", "k", ("o1",))]
    )
    asked = ["o1-pro", "o3", "o1-pro", "O1-PRO", "o3", "llama"]
    assert [routed(registry, model) for model in asked] == ["b", "a", "b", "b", "a", None]


def test_a_price_is_the_routed_names_else_the_clients() -> None:
    pricer = Pricer(PriceTable.load())
    openai = Provider("openai", "openai", "http://x", "k", ("gpt-",))
    shipped = pricer.table.lookup("gpt-4o-mini", "openai")
    assert shipped is not None
    assert pricer.price_of(Route(openai, "gpt-4o-mini"), "gpt-4o-mini") is shipped
    assert pricer.price_of(Route(openai, "house-model"), "gpt-4o-mini") is shipped  # renamed: the client's name
    assert pricer.price_of(Route(openai, "house-model"), "house-model") is None
    assert pricer.price_of(Route(openai, "house-model"), "house-model", "priority") is None


@pytest.mark.parametrize("count", [-1, 1.5, None, "3"])
def test_a_usage_refuses_a_count_that_is_not_a_non_negative_int(count) -> None:
    with pytest.raises(ValueError, match="Usage.completion_tokens must be a non-negative int"):
        Usage(prompt_tokens=3, completion_tokens=count)


def test_usage_from_json_objects_only() -> None:
    usage = {"prompt_tokens": 13, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}
    assert Usage.from_openai(usage) == Usage(prompt_tokens=13, completion_tokens=5, cached_tokens=4)
    assert Usage.from_openai([("prompt_tokens", 13)]) == Usage()  # type: ignore[arg-type]
    assert Usage.from_anthropic({"input_tokens": 2, "cache_read_input_tokens": 3}).prompt_tokens == 5


def test_the_scrubber_redacts_bytes_with_its_secrets_encoded_once() -> None:
    scrub = Scrubber()
    scrub.use(["sk-provider-key-1", "sk-provider-key-12"], ["adm\udcff-secret"])  # a lone surrogate: no error
    assert scrub.bytes(b'{"k": "sk-provider-key-12 sk-provider-key-1"}') == b'{"k": "[redacted] [redacted]"}'
    scrub.use(["other-key"], [])
    assert scrub.bytes(b"sk-provider-key-1 other-key") == b"sk-provider-key-1 [redacted]"
