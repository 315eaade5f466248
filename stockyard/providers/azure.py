"""Azure OpenAI: the OpenAI wire format behind deployment URLs.

The deployment is the model name the client asked for (after ``azure/``); the URL
carries ``api-version`` and the key goes in the ``api-key`` header (no Authorization).
Bodies and streams are handled exactly as for OpenAI.
"""

from __future__ import annotations

from urllib.parse import urlencode

from ..context import RequestContext
from . import AZURE_API_VERSION, Provider
from .base import UpstreamCall, model_segment
from .openai import PATHS, OpenAIAdapter, request_body


def deployment_path(provider: Provider, deployment: str, endpoint: str, path: str | None = None) -> str:
    """``/openai/deployments/{deployment}/…?api-version=…`` (base may already end in /openai);
    ``path`` is the endpoint's path when it is not one of ``openai.PATHS``."""
    prefix = "" if provider.base_url.rstrip("/").endswith("/openai") else "/openai"
    query = urlencode({"api-version": provider.api_version or AZURE_API_VERSION})
    return f"{prefix}/deployments/{model_segment(deployment, 'deployment')}{path or PATHS[endpoint]}?{query}"


class AzureAdapter(OpenAIAdapter):
    """OpenAI-dialect requests to an Azure OpenAI resource; answers parsed as OpenAI's."""

    def prepare(self, ctx: RequestContext, provider: Provider, model: str) -> UpstreamCall:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if ctx.stream else "application/json",
        }
        if provider.api_key:
            headers["api-key"] = provider.api_key
        return UpstreamCall(
            "POST",
            deployment_path(provider, model, ctx.endpoint),
            headers,
            request_body(ctx, model, force_usage=True, plain=True),
        )
