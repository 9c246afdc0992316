from __future__ import annotations

import pytest

from addons.metering.providers import ProviderRegistry, is_billed_path, parse_host_pattern
from meterline.catalog import parse_catalog


@pytest.fixture
def registry() -> ProviderRegistry:
    catalog = parse_catalog(
        """
providers:
  - {name: vllm, flavor: openai, hosts: ["127.0.0.1:8000", "llm.internal"]}
  - {name: gateway, flavor: anthropic, hosts: ["*.gw.example.com"]}
  - {name: my-openai, flavor: openai, hosts: ["api.openai.com:8443"]}
  - {name: azure-apim, flavor: openai, hosts: ["llm.apim.example.com"], auth: api-key}
"""
    )
    return ProviderRegistry.from_catalog(catalog)


@pytest.mark.parametrize(
    "host,port,name,flavor,auth",
    [
        ("api.openai.com", 443, "openai", "openai", "bearer"),
        ("API.OpenAI.com", 443, "openai", "openai", "bearer"),
        ("myres.openai.azure.com", 443, "azure-openai", "openai", "api-key"),
        ("a.b.cognitiveservices.azure.com", 443, "azure-openai", "openai", "api-key"),
        ("gov.openai.azure.us", 443, "azure-openai", "openai", "api-key"),
        ("cn.openai.azure.cn", 443, "azure-openai", "openai", "api-key"),
        ("hub.services.ai.azure.com", 443, "azure-openai", "openai", "api-key"),
        ("llm.apim.example.com", 443, "azure-apim", "openai", "api-key"),  # catalog auth
        ("api.mistral.ai", 443, "mistral", "openai", "bearer"),
        ("api.groq.com", 443, "groq", "openai", "bearer"),
        ("api.deepseek.com", 443, "deepseek", "openai", "bearer"),
        ("api.together.xyz", 443, "together", "openai", "bearer"),
        ("openrouter.ai", 443, "openrouter", "openai", "bearer"),
        ("api.fireworks.ai", 443, "fireworks", "openai", "bearer"),
        ("api.x.ai", 443, "xai", "openai", "bearer"),
        ("api.anthropic.com", 443, "anthropic", "anthropic", "x-api-key"),
        ("generativelanguage.googleapis.com", 443, "gemini", "gemini", "x-goog-api-key"),
        ("127.0.0.1", 8000, "vllm", "openai", "bearer"),
        ("llm.internal", 80, "vllm", "openai", "bearer"),
        ("eu.gw.example.com", 443, "gateway", "anthropic", "x-api-key"),
        ("api.openai.com", 8443, "my-openai", "openai", "bearer"),  # catalog wins on its port
    ],
)
def test_known_hosts(
    registry: ProviderRegistry, host: str, port: int, name: str, flavor: str, auth: str
) -> None:
    p = registry.lookup(host, port)
    assert p is not None and (p.name, p.flavor, p.auth) == (name, flavor, auth)


@pytest.mark.parametrize(
    "host,port",
    [
        ("example.com", 443),
        ("127.0.0.1", 8001),
        ("openai.azure.com", 443),  # *.suffix needs a subdomain
        ("gw.example.com", 443),
        ("evil-api.openai.com.example.org", 443),
    ],
)
def test_other_hosts(registry: ProviderRegistry, host: str, port: int) -> None:
    assert registry.lookup(host, port) is None
    assert registry.lookup(host, port) is None  # memoised negative


def test_lookup_is_memoised(registry: ProviderRegistry) -> None:
    first = registry.lookup("api.openai.com", 443)
    assert registry._memo[("api.openai.com", 443)] is first


@pytest.mark.parametrize(
    "flavor,path,billed",
    [
        ("openai", "/v1/chat/completions", True),
        ("openai", "/v1/completions", True),
        ("openai", "/v1/embeddings", True),
        ("openai", "/v1/responses", True),
        ("openai", "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21", True),
        ("openai", "/api/v1/chat/completions", True),
        ("openai", "/anthropic/v1/messages", True),  # Claude on Azure AI Foundry
        ("openai", "/x/anthropic/v1/messages", False),
        ("openai", "/api/chat", True),  # Ollama's native API
        ("openai", "/api/generate", True),
        ("openai", "/api/embed", True),
        ("openai", "/api/tags", False),
        ("openai", "/x/api/chat", False),
        ("openai", "/v1/models", False),
        ("openai", "/v1/responses/resp_123", False),  # POST: not a call (GET: a read)
        ("openai", "/v1/responses/compact", True),  # runs the model, reports usage
        ("openai", "/openai/v1/responses/compact", True),  # Azure
        ("openai", "/v1/responses/input_tokens", False),  # a free count
        ("openai", "/v1/responses/resp_123/cancel", True),  # returns the response, usage
        ("openai", "/v1/files", False),
        ("anthropic", "/v1/messages", True),
        ("anthropic", "/v1/messages/count_tokens", False),
        ("anthropic", "/v1/messages/batches", False),
        ("gemini", "/v1beta/models/gemini-2.5-pro:generateContent", True),
        ("gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", True),
        ("gemini", "/v1beta/models/gemini-2.5-pro:countTokens", False),
        ("gemini", "/v1beta/models", False),
        ("gemini", "/v1beta/tunedModels/my-model-1:generateContent", True),
        ("gemini", "/v1beta/openai/chat/completions", True),  # OpenAI-compatible
        ("gemini", "/v1beta/openai/embeddings", True),
        ("gemini", "/v1beta/openai/models", False),
        ("openai", "/v1/chat/completions#x", True),  # a fragment: servers drop it
        ("openai", "/v1/chat/completions%23x", False),  # %23 is part of the path
    ],
)
def test_billed_paths(flavor: str, path: str, billed: bool) -> None:
    assert is_billed_path(flavor, path) is billed


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("api.example.com", ("api.example.com", None, False)),
        ("API.example.com:8443", ("api.example.com", 8443, False)),
        ("*.example.com", ("example.com", None, True)),
        # IPv6: bare (two or more colons: an address, any port) or in brackets
        ("::1", ("::1", None, False)),
        ("FD00::5", ("fd00::5", None, False)),  # before: ("fd00:", 5, False)
        ("[::1]", ("::1", None, False)),
        ("[::1]:8000", ("::1", 8000, False)),
    ],
)
def test_parse_host_pattern(pattern: str, expected: tuple[str, int | None, bool]) -> None:
    assert parse_host_pattern(pattern) == expected


@pytest.mark.parametrize(
    "pattern",
    ["", "*.", "host:abc", "host:70000", "a*b.com", "x/y", "[::1", "[::1]x", "[host]:80", "fd::zz"],
)
def test_bad_host_pattern(pattern: str) -> None:
    with pytest.raises(ValueError):
        parse_host_pattern(pattern)


def test_a_port_of_digits_int_does_not_read_says_what_a_port_must_be() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises its own, unhelpful message."""
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        parse_host_pattern("host:\u00b2")


@pytest.mark.parametrize(
    "host,canonical",
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.1"),  # all of 127/8 reaches a server listening on 0.0.0.0
        ("127.1.2.3", "127.0.0.1"),
        ("::ffff:127.0.0.9", "127.0.0.1"),
        ("128.0.0.1", "128.0.0.1"),
        ("LOCALHOST", "127.0.0.1"),
        ("api.localhost", "127.0.0.1"),
        ("[::1]", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("API.OpenAI.com.", "api.openai.com"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("999.1.1.1", "999.1.1.1"),
        ("0.0.0.0", "127.0.0.1"),  # "this host": a connection reaches the loopback
        ("0", "127.0.0.1"),
        ("[::]", "127.0.0.1"),
    ],
)
def test_canonical_host(host: str, canonical: str) -> None:
    from addons.metering.providers import canonical_host

    assert canonical_host(host) == canonical


@pytest.mark.parametrize(
    "path,normal",
    [
        ("/v1/chat/complet%69ons", "/v1/chat/completions"),
        ("/v1//chat/./completions/", "/v1/chat/completions/"),
        ("/v1/x/../chat/completions?key=1", "/v1/chat/completions"),
        ("/v1beta/models/g%3AgenerateContent", "/v1beta/models/g:generateContent"),
        ("/v1/chat/completions", "/v1/chat/completions"),
    ],
)
def test_spellings_of_a_billed_path(path: str, normal: str) -> None:
    from addons.metering.providers import is_billed_path, normalise_path

    assert normalise_path(path) == normal
    flavor = "gemini" if "models" in path else "openai"
    assert is_billed_path(flavor, path)


def test_other_spellings_of_a_catalog_host() -> None:
    from addons.metering.providers import MeteredProvider, lookup_named

    reg = ProviderRegistry([(MeteredProvider("vllm", "openai", "bearer"), ["localhost:8000"])])
    assert reg.lookup("127.1", 8000) is not None
    assert reg.lookup("127.0.0.2", 8000) is not None  # before: unmetered, no key check
    assert reg.lookup("[::1]", 8000) is not None
    assert reg.lookup("127.0.0.1", 8001) is None
    named = ProviderRegistry([(MeteredProvider("o", "openai", "bearer"), ["api.openai.com"])])
    ip = "162.159.140.245"  # a CONNECT to an IP literal
    assert lookup_named(named, ip, 443, "api.openai.com:443", None) is not None
    assert lookup_named(named, ip, 443, None, "api.openai.com") is not None
    assert lookup_named(named, ip, 443, "example.com", "example.com") is None
    # the Host header and SNI naming the destination itself are not looked up again
    assert lookup_named(named, "example.com", 443, "example.com", "example.com") is None


@pytest.mark.parametrize(
    "flavor,path,billed",
    [
        ("openai", "/v1/responses/resp_123", True),  # a background response polled
        ("openai", "/v1/responses/resp_123?stream=true&starting_after=4", True),  # resumed
        ("openai", "/openai/v1/responses/resp_1", True),  # Azure v1
        ("openai", "/openai/responses/resp_1?api-version=2025-04-01-preview", True),  # Azure
        ("openai", "/v1/responses/resp_123/input_items", False),  # a listing
        ("openai", "/v1/responses", False),
        ("openai", "/v1/models", False),
        ("openai", "/v1/chat/completions", False),
        ("anthropic", "/v1/responses/resp_123", False),
    ],
)
def test_metered_gets_are_responses_read_back(flavor: str, path: str, billed: bool) -> None:
    from addons.metering.providers import billed_flavor

    assert (billed_flavor(flavor, path, "GET") is not None) is billed  # type: ignore[arg-type]
    assert billed_flavor(flavor, path, "DELETE") is None  # type: ignore[arg-type]


def test_gemini_openai_compatible_endpoints_are_metered_as_openai() -> None:
    from addons.metering.providers import MeteredProvider, billed_flavor, speaking

    gemini = MeteredProvider("gemini", "gemini", "x-goog-api-key")
    assert billed_flavor("gemini", "/v1beta/models/g:generateContent") == "gemini"
    assert billed_flavor("gemini", "/v1beta/openai/chat/completions") == "openai"
    assert billed_flavor("openai", "/v1beta/models/g:generateContent") is None
    compat = speaking(gemini, "openai")
    assert (compat.name, compat.flavor, compat.auth, compat.keep_request) == (
        "gemini", "openai", "bearer", True
    )  # fmt: skip
    assert speaking(gemini, "openai") is compat and speaking(gemini, "gemini") is gemini


def test_other_apis_compatible_endpoints_are_metered_in_their_format() -> None:
    """Anthropic's OpenAI-compatible chat endpoint; Anthropic's Messages API on
    OpenAI-flavor hosts under one prefix (OpenRouter /api, DeepSeek and Azure /anthropic,
    vLLM and Ollama none)."""
    from addons.metering.attribution import WS_PROTOCOL, places
    from addons.metering.providers import MeteredProvider, billed_flavor, speaking

    assert billed_flavor("anthropic", "/v1/chat/completions") == "openai"
    assert billed_flavor("anthropic", "/v1/embeddings") is None
    for path in ("/api/v1/messages", "/anthropic/v1/messages", "/v1/messages"):
        assert billed_flavor("openai", path) == "anthropic", path
    for path in ("/v1/threads/t_1/messages", "/a/b/v1/messages", "/v1/messages/count_tokens"):
        assert billed_flavor("openai", path) is None, path
    claude = speaking(MeteredProvider("anthropic", "anthropic", "x-api-key"), "openai")
    # x-api-key, then Authorization: a known x-api-key beside a Bearer was billed to nobody
    assert (claude.flavor, claude.auth, claude.keep_request) == ("openai", "x-api-key", False)
    assert places(claude) == ("x-api-key", "authorization", WS_PROTOCOL)
