"""Which adapter speaks to which provider for which client dialect."""

from __future__ import annotations

from ..errors import ANTHROPIC, GEMINI, RESPONSES, ProxyError
from . import OPENAI_KINDS, Provider, anthropic, gemini
from .anthropic import AnthropicChatAdapter, AnthropicNativeAdapter
from .azure import AzureAdapter
from .base import Adapter
from .chatshape import table_rows
from .gemini import GeminiAdapter
from .gemini_native import GeminiNativeAdapter
from .media import AZURE_ENDPOINTS, AzureMediaAdapter, MediaAdapter
from .media import ENDPOINTS as MEDIA_ENDPOINTS
from .media import PATHS as MEDIA_PATHS
from .messages_adapters import MessagesOverChat
from .openai import OpenAIAdapter
from .responses_adapters import CompactOverChat, ResponsesOverChat, ResponsesPassThrough

_OPENAI = OpenAIAdapter()
# OpenAI-dialect clients (chat, completions, embeddings) by provider kind.
_FOR_OPENAI_CLIENTS: dict[str, Adapter] = {
    **{kind: _OPENAI for kind in OPENAI_KINDS},
    "anthropic": AnthropicChatAdapter(),
    "gemini": GeminiAdapter(),
    "azure": AzureAdapter(),
}
# Anthropic-dialect clients (/v1/messages): passed through to Anthropic, else over the provider's chat adapter.
_FOR_ANTHROPIC_CLIENTS: dict[str, Adapter] = {
    **{kind: MessagesOverChat(a) for kind, a in _FOR_OPENAI_CLIENTS.items() if kind != "anthropic"},
    "anthropic": AnthropicNativeAdapter(),
}
# Responses API clients (/v1/responses): passed through where the provider speaks it, else over its chat adapter.
_RESPONSES_PASS_THROUGH = ResponsesPassThrough()
_RESPONSES_OVER_CHAT: dict[str, Adapter] = {kind: ResponsesOverChat(a) for kind, a in _FOR_OPENAI_CLIENTS.items()}
_COMPACT_OVER_CHAT: dict[str, Adapter] = {kind: CompactOverChat(a) for kind, a in _FOR_OPENAI_CLIENTS.items()}
# Gemini-native clients (/v1beta/models/…): passed through to Gemini providers only.
_FOR_GEMINI_CLIENTS: dict[str, Adapter] = {"gemini": GeminiNativeAdapter()}


_MEDIA = MediaAdapter()
_AZURE_MEDIA = AzureMediaAdapter()


def media_adapter(provider: Provider, endpoint: str) -> Adapter:
    """Audio, images and moderations: OpenAI-kind providers (Azure where its deployments have the
    route); any other kind is a 400 naming it and the endpoint."""
    if provider.kind in OPENAI_KINDS:
        return _MEDIA
    if provider.kind == "azure" and endpoint in AZURE_ENDPOINTS:
        return _AZURE_MEDIA
    raise ProxyError(
        400,
        f"provider {provider.name!r} is of kind {provider.kind!r}, which does not serve "
        f"/v1{MEDIA_PATHS[endpoint]}; route this model to an OpenAI or OpenAI-compatible provider",
        param="model",
        code="unsupported_provider",
    )


def adapter_for(provider: Provider, dialect: str, endpoint: str = "") -> Adapter:
    """The adapter for this provider, client dialect and endpoint, or a 400 saying why there is none."""
    if endpoint in MEDIA_ENDPOINTS:
        return media_adapter(provider, endpoint)
    if dialect == RESPONSES:
        if provider.speaks_responses:
            return _RESPONSES_PASS_THROUGH
        # its OpenAI-dialect chat adapter, wrapped (compaction: the model writes the summary)
        table = _COMPACT_OVER_CHAT if endpoint == "compact" else _RESPONSES_OVER_CHAT
    elif dialect == GEMINI:
        table = _FOR_GEMINI_CLIENTS
    else:
        table = _FOR_ANTHROPIC_CLIENTS if dialect == ANTHROPIC else _FOR_OPENAI_CLIENTS
    adapter = table.get(provider.kind)
    if adapter is not None:
        return adapter
    if dialect == GEMINI:
        raise ProxyError(
            400,
            f"provider {provider.name!r} is of kind {provider.kind!r}, not gemini: the Gemini API "
            "(/v1beta/models/…) reaches only models served by a Gemini provider; use "
            "/v1/chat/completions or /v1/messages for this one",
            param="model",
            code="unsupported_provider",
        )
    if dialect == ANTHROPIC:
        raise ProxyError(
            400,
            f"provider {provider.name!r} ({provider.kind}) does not speak the Anthropic "
            "Messages API; /v1/messages needs a model served by an Anthropic provider "
            "(use /v1/chat/completions for this one)",
            param="model",
            code="unsupported_provider",
        )
    raise ProxyError(
        400,
        f"provider {provider.name!r} ({provider.kind}) cannot serve {dialect}-style requests",
        code="unsupported_provider",
    )


def field_tables() -> list[dict]:
    """Each translating adapter's field table as rows (kind, endpoint, field, how, note), for
    ``stockyard providers capabilities``; pass-through kinds send every field as it came."""
    tables = [
        ("anthropic", "chat", anthropic.CHAT_FIELDS),
        ("gemini", "chat", gemini.CHAT_FIELDS),
        ("gemini", "embeddings", gemini.EMBEDDING_FIELDS),
    ]
    return [
        {"kind": kind, "endpoint": endpoint, **row}
        for kind, endpoint, table in tables
        for row in sorted(table_rows(table), key=lambda r: r["field"])
    ]
