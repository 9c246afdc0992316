"""Gateway routes: catalog route -> provider endpoint, path matching, model pinning."""

from __future__ import annotations

import json
import re

import pytest

from addons.metering.providers import ProviderRegistry
from addons.metering.routes import Home, RouteTable, pin_model
from meterline.catalog import CatalogError, parse_catalog
from meterline.routecheck import endpoint


def _table(routes: str, providers: str = "") -> RouteTable:
    catalog = parse_catalog(f"version: 1\n{providers}\nroutes:\n{routes}")
    return RouteTable.from_catalog(catalog, ProviderRegistry.from_catalog(catalog))


def test_chat_route_to_openai_with_pinned_model() -> None:
    table = _table("  - {path: /chat, type: llm/v1/chat, provider: openai, model: gpt-4o}")
    route = table.match("/chat")
    assert route is not None
    assert (route.provider.name, route.upstream_path, route.model) == (
        "openai",
        "/v1/chat/completions",
        "gpt-4o",
    )
    assert route.pins_body_model
    assert table.match("/chat/") is route and table.match("/chat?x=1") is route
    assert route.upstream("/chat?x=1") == "/v1/chat/completions?x=1"
    assert table.match("/chat/completions") is None and table.match("/other") is None


@pytest.mark.parametrize(
    "flavor,route_type,model,expected",
    [
        ("openai", "llm/v1/chat", None, "/v1/chat/completions"),
        ("openai", "llm/v1/completions", None, "/v1/completions"),
        ("openai", "llm/v1/embeddings", None, "/v1/embeddings"),
        ("anthropic", "llm/v1/chat", "claude-sonnet-4-5", "/v1/messages"),
        ("gemini", "llm/v1/chat", "gemini-2.5-flash",
         "/v1beta/models/gemini-2.5-flash:generateContent"),
    ],
)  # fmt: skip
def test_endpoints(flavor: str, route_type: str, model: str | None, expected: str) -> None:
    assert endpoint(flavor, route_type, model) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "provider,route_type,expected",
    [
        ("openai", "llm/v1/chat", "/v1/chat/completions"),
        ("mistral", "llm/v1/embeddings", "/v1/embeddings"),
        ("deepseek", "llm/v1/chat", "/v1/chat/completions"),
        ("together", "llm/v1/completions", "/v1/completions"),
        ("xai", "llm/v1/chat", "/v1/chat/completions"),
        # before: /v1/... for every OpenAI-flavor provider, where these have no API
        ("groq", "llm/v1/chat", "/openai/v1/chat/completions"),
        ("openrouter", "llm/v1/chat", "/api/v1/chat/completions"),
        ("openrouter", "llm/v1/embeddings", "/api/v1/embeddings"),
        ("fireworks", "llm/v1/completions", "/inference/v1/completions"),
        ("azure-openai", "llm/v1/chat", "/openai/v1/chat/completions"),
        ("anthropic", "llm/v1/chat", "/v1/messages"),
        ("gemini", "llm/v1/chat", "/v1beta/models/m:generateContent"),
    ],
)  # fmt: skip
def test_a_route_calls_its_built_in_providers_base_path(
    provider: str, route_type: str, expected: str
) -> None:
    table = _table(f"  - {{path: /p, type: {route_type}, provider: {provider}, model: m}}")
    route = table.match("/p")
    assert route is not None and route.upstream_path == expected


def test_a_catalog_provider_named_like_a_built_in_keeps_its_base_path() -> None:
    """It adds hosts to the built-in (a test upstream, a local mirror): the same API."""
    table = _table(
        "  - {path: /p, provider: groq}\n  - {path: /q, provider: my-groq}",
        "providers:\n  - {name: groq, flavor: openai, hosts: ['127.0.0.1:8000']}\n"
        "  - {name: my-groq, flavor: openai, hosts: ['127.0.0.1:8001']}",
    )
    routed = {path: table.match(path) for path in ("/p", "/q")}
    assert {p: r.upstream_path for p, r in routed.items() if r} == {
        "/p": "/openai/v1/chat/completions",
        "/q": "/v1/chat/completions",  # a provider of its own: the flavor's
    }


def test_upstream_path_overrides_the_base_path() -> None:
    table = _table("  - {path: /p, provider: groq, upstream_path: /v2/chat/completions}")
    route = table.match("/p")
    assert route is not None and route.upstream_path == "/v2/chat/completions"


@pytest.mark.parametrize(
    "spelling",
    ["//chat", "/ch%61t", "/x/../chat", "/chat/.", "/./chat", "/chat//", "/%63hat?x=1"],
)
def test_any_spelling_of_a_route_path_matches_it(spelling: str) -> None:
    """As provider paths: the upstream resolves them to the same path (before, they were
    not routed, and the route's pinned model was bypassed)."""
    table = _table("  - {path: /chat, type: llm/v1/chat, provider: openai, model: gpt-4o}")
    assert table.match(spelling) is table.match("/chat") is not None


@pytest.mark.parametrize("route_path", ["//chat", "/ch%61t", "/x/../chat", "/chat/."])
def test_a_route_path_spelt_otherwise_matches_the_plain_path(route_path: str) -> None:
    table = _table(f"  - {{path: '{route_path}', provider: openai}}")
    assert table.match("/chat") is not None


@pytest.mark.parametrize("path", ["/CHAT", "/Chat", "/chat;a=b"])
def test_other_paths_do_not_match(path: str) -> None:
    """Case is kept (as for provider paths, the servers route case-sensitively), and
    ``;params`` are part of the path to them."""
    table = _table("  - {path: /chat, provider: openai}")
    assert table.match(path) is None


@pytest.mark.parametrize(
    "provider,hosts,home",
    [
        ("openai", "", Home("https", "api.openai.com", 443)),
        ("anthropic", "", Home("https", "api.anthropic.com", 443)),
        ("azure-openai", "", None),  # wildcards only
        # the host as the catalog spells it: before, the canonical 127.0.0.1 for both
        ("vllm", "['localhost:8000']", Home("http", "localhost", 8000)),
        ("vllm", "['[::1]:8000']", Home("http", "::1", 8000)),
        ("vllm", "['::1', '[::1]']", Home("http", "::1", 80)),
        ("vllm", "['gw.example.com:8443']", Home("https", "gw.example.com", 8443)),
        ("vllm", "['gw.example.com', 'gw.example.com:443']", Home("https", "gw.example.com", 443)),
        ("vllm", "['127.0.0.1:8000', '127.0.0.1:8001']", None),
        ("vllm", "['*.example.com']", None),
    ],
)
def test_home_is_the_providers_one_host(provider: str, hosts: str, home: Home | None) -> None:
    declared = f"providers:\n  - {{name: vllm, flavor: openai, hosts: {hosts}}}" if hosts else ""
    table = _table(f"  - {{path: /p, provider: {provider}}}", declared)
    route = table.match("/p")
    assert route is not None and route.home == home


def test_gemini_model_is_in_the_path_not_the_body() -> None:
    table = _table("  - {path: /g, provider: gemini, model: gemini-2.5-flash}")
    route = table.match("/g")
    assert route is not None and not route.pins_body_model


def test_a_gemini_model_given_as_its_resource_name_calls_that_model() -> None:
    """The SDKs name a model ``models/gemini-2.5-flash``; before, the route called
    ``/v1beta/models/models/gemini-2.5-flash:generateContent`` (a 404)."""
    table = _table("  - {path: /g, provider: gemini, model: models/gemini-2.5-flash}")
    route = table.match("/g")
    assert route is not None
    assert route.upstream("/g") == "/v1beta/models/gemini-2.5-flash:generateContent"


def test_upstream_path_override_keeps_its_query() -> None:
    table = _table(
        "  - {path: /chat, provider: azure-openai, "
        "upstream_path: '/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21'}"
    )
    route = table.match("/chat")
    assert route is not None and route.model is None
    assert route.upstream("/chat?a=b") == (
        "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21&a=b"
    )


def test_catalog_provider_can_be_routed() -> None:
    table = _table(
        "  - {path: /local, provider: vllm}",
        "providers:\n  - {name: vllm, flavor: openai, hosts: ['localhost:8000']}",
    )
    route = table.match("/local")
    assert route is not None and route.provider.name == "vllm"


@pytest.mark.parametrize(
    "routes,message",
    [
        ("  - {path: /e, type: llm/v1/embeddings, provider: anthropic}",
         "routes[0] (/e): the anthropic API has no llm/v1/embeddings endpoint"),
        ("  - {path: /g, provider: gemini}",
         "routes[0] (/g): a route to the gemini API needs a model"),
        ("  - {path: /x, provider: openai, upstream_path: /v1/files}",
         "routes[0] (/x): /v1/files is not an endpoint Meterline meters"),
        ("  - {path: /g, provider: gemini, model: 'gemini-2.5-flash:streamGenerateContent'}",
         "a gemini model is one path segment"),
        ("  - {path: /g, provider: gemini, model: '../v1/files'}",
         "a gemini model is one path segment"),
    ],
)  # fmt: skip
def test_bad_routes_name_the_route(routes: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _table(routes)


@pytest.mark.parametrize(
    "routes,message",
    [
        ("  - {path: chat, provider: openai}", "routes[0].path: String should match pattern"),
        ("  - {path: /chat, provider: openai, type: llm/v1/images}",
         "routes[0].type: Input should be"),
        ("  - {path: /chat, provider: openai}\n  - {path: /chat/, provider: openai}",
         "routes: Value error, duplicate route path(s): /chat"),
        # One path as the proxy matches it (before: accepted, the proxy kept the last one,
        # and calls to /chat went out as the other route's pinned model).
        ("  - {path: /chat, provider: openai, model: gpt-4o-mini}\n"
         "  - {path: /x/../chat, provider: openai, model: o1}",
         "routes: Value error, duplicate route path(s): /chat"),
        ("  - {path: /chat, provider: openai}\n  - {path: /ch%61t, provider: openai}",
         "routes: Value error, duplicate route path(s): /chat"),
        ("  - {path: /chat, provider: openai, model: ''}", "routes[0].model: String should have"),
        ("  - {path: /chat, provider: opnai}",
         "routes[0].provider: unknown provider 'opnai'; did you mean 'openai'?"),
    ],
)  # fmt: skip
def test_route_validation_in_the_catalog(routes: str, message: str) -> None:
    with pytest.raises(CatalogError) as e:
        parse_catalog(f"version: 1\nroutes:\n{routes}")
    assert message.replace("Value error, ", "") in str(e.value)


def test_pin_model_overrides_or_adds_it() -> None:
    body = b'{"messages": [{"role": "user", "content": "h\\u00e9"}]}'
    pinned = pin_model(body, "gpt-4o")
    assert pinned is not None
    expected = {"messages": [{"role": "user", "content": "hé"}], "model": "gpt-4o"}
    assert json.loads(pinned) == expected
    other = pin_model(b'{"model": "gpt-3.5-turbo", "stream": true}', "gpt-4o")
    assert other is not None and json.loads(other) == {"model": "gpt-4o", "stream": True}


@pytest.mark.parametrize("body", [b'{"model": "gpt-4o"}', b"not json", b"[1, 2]", b""])
def test_pin_model_leaves_alone(body: bytes) -> None:
    assert pin_model(body, "gpt-4o") is None
