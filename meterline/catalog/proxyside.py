"""What the proxy uses: extra providers, consumers and their keys, gateway routes."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from meterline.catalog.base import FINGERPRINT_RE, KEY_RE, _Model
from meterline.providers import AuthStyle, Flavor


class Provider(_Model):
    """An extra provider host (vLLM, Ollama, a company gateway, a test upstream)."""

    name: str = Field(pattern=KEY_RE)
    flavor: Flavor
    hosts: list[str] = Field(min_length=1)
    """``host`` or ``host:port``; ``*.example.com`` matches any subdomain."""
    auth: AuthStyle | None = None
    """The header the provider reads its own key from, where it is not the flavor's:
    ``api-key`` for Azure OpenAI behind another host (a sovereign cloud, an API
    gateway), ``bearer``, ``x-api-key`` or ``x-goog-api-key``. The proxy bills the key
    found there first, and injects keys there."""
    include_usage: bool | None = None
    """``false``: never add ``stream_options.include_usage`` to its streamed chat requests
    (a server that refuses members it does not know). Default: as the built-in provider
    of the same name (off for ``mistral``), else on."""

    @model_validator(mode="after")
    def _auth_for_openai_only(self) -> Provider:
        # Anthropic and Gemini servers read their key where their API says; only the
        # OpenAI format is served behind gateways that read it elsewhere (Azure).
        if self.auth is not None and self.flavor != "openai":
            raise ValueError(
                f"auth: only for flavor openai (the {self.flavor} API says where its key goes)"
            )
        return self


class ConsumerKey(_Model):
    fingerprint: str = Field(pattern=FINGERPRINT_RE.pattern)
    """``sha256:<hex>`` of the raw key, as printed by ``billing consumers fingerprint``."""
    label: str | None = None


class Consumer(_Model):
    """Whoever holds API keys (an agent, a team): usage is attributed to a consumer."""

    name: str = Field(pattern=KEY_RE)
    keys: list[ConsumerKey] = Field(default_factory=list)
    inject: dict[str, str] = Field(default_factory=dict)
    """Key injection: provider name -> environment variable holding the real provider key.

    When set, the key the consumer presents is a gateway key: the proxy strips it and
    sends the provider key from that variable instead, so agents never hold it.
    """


RouteType = Literal["llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings"]


class Route(_Model):
    """A gateway path (the proxy in reverse mode) mapped to a provider endpoint.

    ``POST <path>`` is sent to the provider's endpoint for ``type`` (or ``upstream_path``)
    and metered as that provider's traffic. With ``model`` set, the request's own
    ``model`` is overridden (Kong's AI Proxy with a pinned model): clients may omit it.
    """

    path: str = Field(pattern=r"^/[^?#\s]*$")
    type: RouteType = "llm/v1/chat"
    provider: str = Field(pattern=KEY_RE)
    """A built-in provider (``openai``, ``anthropic``, ...) or one of ``providers``."""
    model: str | None = Field(default=None, min_length=1)
    upstream_path: str | None = Field(default=None, pattern=r"^/\S*$")
    """The provider path to call instead of the one ``type`` implies (e.g. Azure's)."""
