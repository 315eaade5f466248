"""The providers Stockyard can route to, and how a model name picks one.

Routing is deterministic: ``provider/model`` names the provider; otherwise the longest
matching model prefix across providers wins (ties go to the provider listed first);
otherwise, with exactly one provider, that one; otherwise a 400 listing the providers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..errors import ProxyError
from ..memo import remember
from ..vault import last4

OPENAI_KINDS = ("openai", "openai-compatible")
KINDS = ("openai", "openai-compatible", "anthropic", "gemini", "azure")
RESPONSES_KINDS = ("openai", "azure")  # always speak the Responses API; openai-compatible ones when marked
RESPONSES_ENV = "STOCKYARD_RESPONSES_PROVIDERS"  # comma-separated names of env providers that speak it
AZURE_API_VERSION = "2024-10-21"  # used when none is configured


@dataclass(frozen=True)
class Provider:
    """One upstream: where it is, how to talk to it, which models it serves."""

    name: str
    kind: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = ()
    source: str = "env"
    api_version: str | None = None
    key_error: str | None = None  # set when a stored key could not be decrypted
    id: int | None = None  # the database row (None for environment providers)
    key_hint: str | None = None  # "…abcd"; derived from api_key when not given
    responses: bool = False  # an openai-compatible provider that speaks the Responses API itself

    def __post_init__(self) -> None:
        if self.api_key and self.key_hint is None:
            object.__setattr__(self, "key_hint", last4(self.api_key))

    @property
    def speaks_responses(self) -> bool:
        """True when /v1/responses is passed through to this provider (else it is translated)."""
        return self.kind in RESPONSES_KINDS or (self.responses and self.kind == "openai-compatible")

    @property
    def key_status(self) -> str:
        """ok, cannot decrypt, or none: what an operator needs to know about the key."""
        if self.key_error:
            return "cannot decrypt"
        return "ok" if self.api_key else "none"

    def public(self) -> dict:
        """What may be shown about this provider: never the key itself."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "base_url": self.base_url,
            "models": list(self.models),
            "api_version": self.api_version,
            "responses": self.speaks_responses,
            "source": self.source,
            "key": self.key_hint,
            "key_status": self.key_status,
            "key_error": self.key_error,
        }


@dataclass(frozen=True)
class EnvSpec:
    name: str
    kind: str
    key_var: str | None
    url_var: str | None
    default_url: str | None
    models: tuple[str, ...]


# Order matters: on an equal prefix the provider listed first wins.
ENV_SPECS: tuple[EnvSpec, ...] = (
    EnvSpec(
        "openai",
        "openai",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "https://api.openai.com/v1",
        (
            "gpt-",
            "o1",
            "o3",
            "o4",
            "chatgpt-",
            "text-embedding-",
            "omni-moderation",
            "text-moderation",
            "davinci",
            "babbage",
            "codex-",
            "dall-e-",
            "whisper-",
            "tts-",
        ),
    ),
    EnvSpec(
        "anthropic", "anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com", ("claude-",)
    ),
    EnvSpec(
        "gemini",
        "gemini",
        "GEMINI_API_KEY",
        "GEMINI_BASE_URL",
        "https://generativelanguage.googleapis.com",
        ("gemini-", "gemma-", "text-embedding-004"),
    ),
    EnvSpec(
        "groq",
        "openai-compatible",
        "GROQ_API_KEY",
        "GROQ_BASE_URL",
        "https://api.groq.com/openai/v1",
        ("llama-", "llama3-", "meta-llama/llama-4", "mixtral-", "gemma2-", "qwen-qwq", "moonshotai/", "openai/gpt-oss"),
    ),
    EnvSpec(
        "mistral",
        "openai-compatible",
        "MISTRAL_API_KEY",
        "MISTRAL_BASE_URL",
        "https://api.mistral.ai/v1",
        ("mistral-", "open-mistral", "open-mixtral", "codestral", "pixtral", "ministral", "magistral", "devstral"),
    ),
    EnvSpec(
        "deepseek",
        "openai-compatible",
        "DEEPSEEK_API_KEY",
        "DEEPSEEK_BASE_URL",
        "https://api.deepseek.com/v1",
        ("deepseek-chat", "deepseek-reasoner", "deepseek-coder"),
    ),
    EnvSpec(
        "together",
        "openai-compatible",
        "TOGETHER_API_KEY",
        "TOGETHER_BASE_URL",
        "https://api.together.xyz/v1",
        ("meta-llama/", "mistralai/", "Qwen/", "deepseek-ai/", "google/gemma", "togethercomputer/"),
    ),
    EnvSpec(
        "fireworks",
        "openai-compatible",
        "FIREWORKS_API_KEY",
        "FIREWORKS_BASE_URL",
        "https://api.fireworks.ai/inference/v1",
        ("accounts/fireworks/",),
    ),
    EnvSpec(
        "openrouter",
        "openai-compatible",
        "OPENROUTER_API_KEY",
        "OPENROUTER_BASE_URL",
        "https://openrouter.ai/api/v1",
        (),
    ),
    EnvSpec(
        "perplexity",
        "openai-compatible",
        "PERPLEXITY_API_KEY",
        "PERPLEXITY_BASE_URL",
        "https://api.perplexity.ai",
        ("sonar",),
    ),
    EnvSpec("xai", "openai-compatible", "XAI_API_KEY", "XAI_BASE_URL", "https://api.x.ai/v1", ("grok-",)),
    EnvSpec("ollama", "openai-compatible", None, "OLLAMA_BASE_URL", None, ()),
)


def _ollama_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def from_env(env: Mapping[str, str]) -> list[Provider]:
    """Providers whose variables are set, in ENV_SPECS order (never written to the database).

    ``STOCKYARD_RESPONSES_PROVIDERS`` names the openai-compatible ones that speak the Responses API.
    """
    found: list[Provider] = []
    speaks = {n.strip() for n in env.get(RESPONSES_ENV, "").split(",") if n.strip()}
    for spec in ENV_SPECS:
        key = env.get(spec.key_var) if spec.key_var else None
        url = env.get(spec.url_var) if spec.url_var else None
        if spec.name == "ollama":
            if url:
                found.append(
                    Provider("ollama", spec.kind, _ollama_url(url), None, spec.models, responses="ollama" in speaks)
                )
            continue
        if not key and not (spec.name == "openai" and url):
            continue
        found.append(
            Provider(
                spec.name,
                spec.kind,
                (url or spec.default_url or "").rstrip("/"),
                key or None,
                spec.models,
                responses=spec.name in speaks,
            )
        )
    azure_key, azure_endpoint = env.get("AZURE_OPENAI_API_KEY"), env.get("AZURE_OPENAI_ENDPOINT")
    if azure_key and azure_endpoint:
        found.append(
            Provider(
                "azure",
                "azure",
                azure_endpoint.rstrip("/"),
                azure_key,
                (),
                api_version=env.get("AZURE_OPENAI_API_VERSION") or AZURE_API_VERSION,
            )
        )
    return found


class Registry:
    """An immutable snapshot of the configured providers; replaced whole on reload."""

    def __init__(self, providers: list[Provider]) -> None:
        merged: dict[str, Provider] = {}
        for p in providers:  # later entries (database) override earlier ones (env) by name
            merged[p.name] = p
        self.providers: list[Provider] = list(merged.values())
        self.by_name = merged
        # Every model prefix, lowered once, longest first (the earlier provider first among equals):
        # the first a model starts with is the one that routes it.
        found = [(prefix.lower(), order, p) for order, p in enumerate(self.providers) for prefix in p.models]
        self._prefixes = [(prefix, p) for prefix, _, p in sorted(found, key=lambda f: (-len(f[0]), f[1]))]
        self._routed: dict[str, Provider | None] = {}  # model name → the provider its prefix names

    def __bool__(self) -> bool:
        return bool(self.providers)

    def names(self) -> list[str]:
        return [p.name for p in self.providers]

    def resolve(self, model: str) -> tuple[Provider, str]:
        """The provider for ``model`` and the model name to send it."""
        head, sep, rest = model.partition("/")
        if sep and head in self.by_name and rest:
            return self.by_name[head], rest
        prefixed = self._prefixed(model)
        if prefixed is not None:
            return prefixed, model
        if len(self.providers) == 1:
            return self.providers[0], model
        if not self.providers:
            raise ProxyError(
                400,
                "no providers are configured: set OPENAI_API_KEY (or another "
                "provider's variables) and restart, or add one with `stockyard providers add`",
                code="no_providers",
            )
        raise ProxyError(
            400,
            f"cannot tell which provider serves model {model!r}; name it as "
            f"'provider/model' — configured providers: {', '.join(self.names())}",
            param="model",
            code="model_not_routable",
        )

    def _prefixed(self, model: str) -> Provider | None:
        """The provider of the longest model prefix ``model`` starts with (any case), or None.
        Remembered per name (bounded in count and size; the registry is replaced whole on reload):
        every request routes one, and a bare name is tried against each prefix of every provider
        (~18 for the environment's three, ``gpt-`` among the last: 1.3–3.3 µs, remembered 0.2–0.7)."""
        try:
            return self._routed[model]
        except KeyError:
            pass
        lowered = model.lower()
        found = next((p for prefix, p in self._prefixes if lowered.startswith(prefix)), None)
        remember(self._routed, model, model, found)
        return found

    def routes_to(self, model: str) -> str | None:
        """The provider name a bare model would route to, or None."""
        try:
            return self.resolve(model)[0].name
        except ProxyError:
            return None
