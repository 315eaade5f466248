"""``Registry.resolve``: the longest model prefix routes a bare model, the provider listed first
among equal lengths, ``provider/model`` names its provider. Checked against the rule written out
plainly (every prefix of every provider compared, as the registry did before it sorted them once)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stockyard.errors import ProxyError
from stockyard.providers import Provider, Registry

NAMES = ["openai", "anthropic", "gemini", "local", "groq"]
PREFIXES = st.lists(
    st.sampled_from(["gpt", "gpt-4", "GPT-4o", "claude", "claude-3", "gem", "o1", "o", "l"]), max_size=4
)


def by_the_rule(registry: Registry, model: str) -> str | None:
    """The provider name the documented rule picks for a bare model, None if no prefix matches."""
    best: tuple[int, int, str] | None = None
    for order, p in enumerate(registry.providers):
        for prefix in p.models:
            if model.lower().startswith(prefix.lower()):
                rank = (len(prefix), -order)
                if best is None or rank > best[:2]:
                    best = (rank[0], rank[1], p.name)
    return best[2] if best else None


@given(
    st.lists(st.tuples(st.sampled_from(NAMES), PREFIXES), min_size=2, max_size=5),
    st.sampled_from(["gpt-4o-mini", "GPT-4O", "claude-3-5", "o1-pro", "gemini-2", "llama", "o"]),
)
def test_a_bare_model_goes_where_the_rule_says(entries, model) -> None:
    registry = Registry([Provider(name, "openai", "http://x", "k", tuple(prefixes)) for name, prefixes in entries])
    expected = by_the_rule(registry, model)
    try:
        got = registry.resolve(model)
    except ProxyError:
        assert expected is None and len(registry.providers) > 1
        return
    if expected is None:  # no prefix: only a single provider takes it
        assert len(registry.providers) == 1
    else:
        assert got == (registry.by_name[expected], model)


def test_a_named_provider_wins_over_any_prefix() -> None:
    registry = Registry([Provider("a", "openai", "http://x", "k", ("gpt",)), Provider("b", "openai", "http://y", "k")])
    assert registry.resolve("b/gpt-4o")[0].name == "b"
    assert registry.resolve("gpt-4o")[0].name == "a"
