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

DEFAULT_BASE_PATH: dict[Flavor, str] = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta"}
"""The path a flavor's endpoints hang under (``/v1`` + ``/chat/completions``), unless the
provider's own differs (:attr:`BuiltinProvider.base_path`)."""


@dataclass(frozen=True, slots=True)
class BuiltinProvider:
    name: str
    flavor: Flavor
    hosts: tuple[str, ...]
    """``host``, ``host:port`` or ``*.suffix`` (any subdomain)."""
    auth: AuthStyle | None = None
    """Where it differs from the flavor's (:data:`DEFAULT_AUTH`)."""
    base_path: str | None = None
    """The path its API's endpoints hang under, where it differs from the flavor's
    (:data:`DEFAULT_BASE_PATH`): what its SDKs' base URL adds to the host. A gateway route
    calls ``base_path`` + the endpoint (Groq's ``/openai/v1/chat/completions``)."""
    include_usage: bool = True
    """Whether the proxy may add ``stream_options.include_usage`` to its streamed chat
    requests. Mistral's API refuses members it does not know (422 ``extra_forbidden``
    on ``stream_options``) and reports usage on a stream's last chunk unasked."""


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
    # the v1 API (no api-version); a deployment's path is a route's upstream_path
    BuiltinProvider(
        "azure-openai", "openai", AZURE_OPENAI_HOSTS, auth="api-key", base_path="/openai/v1"
    ),
    BuiltinProvider("mistral", "openai", ("api.mistral.ai",), include_usage=False),
    BuiltinProvider("groq", "openai", ("api.groq.com",), base_path="/openai/v1"),
    BuiltinProvider("deepseek", "openai", ("api.deepseek.com",)),
    BuiltinProvider("together", "openai", ("api.together.xyz",)),
    BuiltinProvider("openrouter", "openai", ("openrouter.ai",), base_path="/api/v1"),
    BuiltinProvider("fireworks", "openai", ("api.fireworks.ai",), base_path="/inference/v1"),
    BuiltinProvider("xai", "openai", ("api.x.ai",)),
    BuiltinProvider("anthropic", "anthropic", ("api.anthropic.com",)),
    BuiltinProvider("gemini", "gemini", ("generativelanguage.googleapis.com",)),
)

BUILTIN_NAMES: frozenset[str] = frozenset(p.name for p in BUILTIN_PROVIDERS)


def base_path(name: str, flavor: Flavor) -> str:
    """The path the endpoints of the provider called ``name`` hang under: the built-in's,
    for a built-in of that flavor (a catalog provider named like one adds hosts to it),
    else the flavor's."""
    builtin = next((p for p in BUILTIN_PROVIDERS if p.name == name and p.flavor == flavor), None)
    if builtin is not None and builtin.base_path is not None:
        return builtin.base_path
    return DEFAULT_BASE_PATH[flavor]


def includes_usage(name: str, flavor: Flavor, setting: bool | None = None) -> bool:
    """Whether the proxy adds ``stream_options.include_usage`` to streamed chat requests
    of the provider called ``name``: ``setting`` (a catalog provider's ``include_usage``)
    when given, else the built-in's of that name and flavor, else yes."""
    if setting is not None:
        return setting
    builtin = next((p for p in BUILTIN_PROVIDERS if p.name == name and p.flavor == flavor), None)
    return builtin is None or builtin.include_usage


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
