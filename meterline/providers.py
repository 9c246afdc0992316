"""The built-in LLM providers: name, API flavor and hosts, the one table of them.

Both halves read it: the proxy (``addons.metering.providers``) recognises their hosts,
the catalog (``meterline.catalog``) checks that a feature's ``meter.provider`` or a
consumer's ``inject`` names a provider that exists. Extra providers (a vLLM, a gateway)
are declared in the catalog's ``providers`` section.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Flavor = Literal["openai", "anthropic", "gemini"]

AuthStyle = Literal["bearer", "x-api-key", "api-key", "x-goog-api-key"]
"""The header a provider reads its own key from: ``Authorization: Bearer``, or a named one."""

DEFAULT_AUTH: dict[Flavor, AuthStyle] = {
    "openai": "bearer",
    "anthropic": "x-api-key",
    "gemini": "x-goog-api-key",
}


@dataclass(frozen=True, slots=True)
class BuiltinProvider:
    name: str
    flavor: Flavor
    hosts: tuple[str, ...]
    """``host``, ``host:port`` or ``*.suffix`` (any subdomain)."""
    auth: AuthStyle | None = None
    """Where it differs from the flavor's (:data:`DEFAULT_AUTH`)."""


#: Azure OpenAI in Azure's public, US Government and China clouds, and AI Foundry's
#: model endpoints: all read the resource key from ``api-key``.
AZURE_OPENAI_HOSTS = (
    "*.openai.azure.com",
    "*.cognitiveservices.azure.com",
    "*.services.ai.azure.com",
    "*.openai.azure.us",
    "*.cognitiveservices.azure.us",
    "*.openai.azure.cn",
    "*.cognitiveservices.azure.cn",
)

BUILTIN_PROVIDERS: tuple[BuiltinProvider, ...] = (
    BuiltinProvider("openai", "openai", ("api.openai.com",)),
    BuiltinProvider("azure-openai", "openai", AZURE_OPENAI_HOSTS, auth="api-key"),
    BuiltinProvider("mistral", "openai", ("api.mistral.ai",)),
    BuiltinProvider("groq", "openai", ("api.groq.com",)),
    BuiltinProvider("deepseek", "openai", ("api.deepseek.com",)),
    BuiltinProvider("together", "openai", ("api.together.xyz",)),
    BuiltinProvider("openrouter", "openai", ("openrouter.ai",)),
    BuiltinProvider("fireworks", "openai", ("api.fireworks.ai",)),
    BuiltinProvider("xai", "openai", ("api.x.ai",)),
    BuiltinProvider("anthropic", "anthropic", ("api.anthropic.com",)),
    BuiltinProvider("gemini", "gemini", ("generativelanguage.googleapis.com",)),
)

BUILTIN_NAMES: frozenset[str] = frozenset(p.name for p in BUILTIN_PROVIDERS)


def unknown_provider(name: str, known: Iterable[str]) -> str:
    """The one-line problem for a provider name that is not in ``known``.

    Names are exact (events carry the provider's name as written here): ``OpenAI`` is
    not ``openai``. The closest known name is suggested (case-insensitively first, then
    by spelling, then a name containing it); without one, the known names are listed.
    """
    names = sorted(set(known))
    lowered = {n.lower(): n for n in names}
    hint = lowered.get(name.lower())
    if hint is None:
        close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        hint = lowered[close[0]] if close else None
    if hint is None:  # "azure" for "azure-openai"
        hint = next((n for n in names if name.lower() in n.lower() and name.strip()), None)
    if hint is not None:
        return f"unknown provider {name!r}; did you mean {hint!r}?"
    return (
        f"unknown provider {name!r}; known providers: {', '.join(names)} "
        "(declare others under providers:)"
    )
