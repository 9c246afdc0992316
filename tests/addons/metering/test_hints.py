"""Start-up hints: catalog providers that are probably plain HTTP."""

from __future__ import annotations

from addons.metering.hints import plain_http_providers, plain_http_warning
from meterline.catalog import parse_catalog

CATALOG = """
version: 1
providers:
  - {name: vllm, flavor: openai, hosts: ["localhost:8000", "*.llm.internal"]}
  - {name: gateway, flavor: openai, hosts: ["llm.example.com:443", "llm.example.com"]}
  - {name: ollama, flavor: openai, hosts: ["127.0.0.1:11434"]}
"""


def test_hosts_with_a_port_other_than_443_are_named() -> None:
    catalog = parse_catalog(CATALOG)
    assert plain_http_providers(catalog) == [
        ("vllm", "localhost:8000"),
        ("ollama", "127.0.0.1:11434"),
    ]
    warning = plain_http_warning(catalog)
    assert warning is not None
    assert "vllm localhost:8000, ollama 127.0.0.1:11434" in warning
    assert "HTTP_PROXY as well as HTTPS_PROXY" in warning


def test_no_warning_without_such_hosts() -> None:
    assert plain_http_warning(parse_catalog("version: 1")) is None
    assert plain_http_warning(None) is None
