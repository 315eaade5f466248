"""Which adapter speaks to which provider for which client dialect."""

from __future__ import annotations

from ..errors import ProxyError
from . import OPENAI_KINDS, Provider
from .base import Adapter
from .openai import OpenAIAdapter

_OPENAI = OpenAIAdapter()


def adapter_for(provider: Provider, dialect: str) -> Adapter:
    """The adapter for this provider and client dialect, or a 400 saying why there is none."""
    if dialect == "openai" and provider.kind in OPENAI_KINDS:
        return _OPENAI
    raise ProxyError(400, f"provider {provider.name!r} ({provider.kind}) cannot serve "
                          f"{dialect}-style requests", code="unsupported_provider")
