from __future__ import annotations

import pytest
from mitmproxy.http import Headers

from addons.metering.attribution import presented_keys
from addons.metering.keys import InjectionError, KeyBook, inject_key
from addons.metering.providers import MeteredProvider
from meterline.catalog import parse_catalog
from meterline.fingerprint import fingerprint


@pytest.mark.parametrize(
    "headers,query,keys",
    [
        ({"Authorization": "Bearer sk-1"}, "", ["sk-1"]),
        ({"authorization": "bearer  sk-1 "}, "", ["sk-1"]),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "", []),
        ({"x-api-key": "sk-ant"}, "", ["sk-ant"]),
        ({"api-key": "azure-key"}, "", ["azure-key"]),
        ({"x-goog-api-key": "AIza"}, "", ["AIza"]),
        ({"apikey": "kong-key"}, "", ["kong-key"]),
        ({}, "alt=sse&key=AIza-q", ["AIza-q"]),
        ({"apikey": "kong", "authorization": "Bearer sk-2"}, "", ["sk-2", "kong"]),
        ({}, "monkey=1", []),
    ],
)
def test_presented_keys(headers: dict[str, str], query: str, keys: list[str]) -> None:
    assert (
        presented_keys(Headers(**{k.replace("-", "_"): v for k, v in headers.items()}), query)
        == keys
    )


CATALOG = parse_catalog(
    f"""
consumers:
  - name: alice
    keys: [{{fingerprint: "{fingerprint("sk-alice")}"}}]
"""
)


def test_identify_known_unknown_and_none() -> None:
    book = KeyBook(CATALOG)
    ident = book.identify(["sk-alice"])
    assert ident.consumer is not None and ident.consumer.name == "alice"
    assert ident.fingerprint == fingerprint("sk-alice")
    # A gateway key and the consumer's key: the one that belongs to a consumer wins.
    ident = book.identify(["gw-unknown", "sk-alice"])
    assert ident.consumer is not None and ident.fingerprint == fingerprint("sk-alice")
    ident = book.identify(["sk-stranger"])
    assert ident.consumer is None and ident.fingerprint == fingerprint("sk-stranger")
    ident = book.identify([])
    assert ident.consumer is None and ident.fingerprint is None


@pytest.mark.parametrize(
    "auth,header,value",
    [
        ("bearer", "authorization", "Bearer real"),
        ("x-api-key", "x-api-key", "real"),
        ("api-key", "api-key", "real"),
        ("x-goog-api-key", "x-goog-api-key", "real"),
    ],
)
def test_inject_key(auth: str, header: str, value: str) -> None:
    headers = Headers(authorization="Bearer gw", apikey="gw", x_api_key="gw")
    provider = MeteredProvider("p", "openai", auth)  # type: ignore[arg-type]
    query = inject_key(headers, "key=gw&alt=sse", provider, "REAL", {"REAL": " real\n"})
    assert query == "alt=sse"
    assert headers[header] == value
    assert "gw" not in str(headers.fields)


def test_injection_strips_every_key_the_url_carries() -> None:
    """Google reads ``?access_token=`` too, and a %-encoded ``?%6Bey=`` is ``?key=``:
    the gateway key must not travel on beside the injected one."""
    headers = Headers(apikey="gw")
    provider = MeteredProvider("gemini", "gemini", "x-goog-api-key")
    query = "alt=sse&access_token=gw&%6Bey=gw"
    assert inject_key(headers, query, provider, "REAL", {"REAL": "real"}) == "alt=sse"
    assert headers["x-goog-api-key"] == "real"


def test_a_key_that_is_not_utf8_is_only_unknown() -> None:
    """A header byte that is not UTF-8 arrives as a surrogate escape: fingerprinted as
    sent (no exception in the proxy's hook), matching no consumer."""
    book = KeyBook(CATALOG)
    ident = book.identify_key("sk-alice\udcff")
    assert ident.consumer is None and ident.fingerprint == fingerprint("sk-alice\udcff")


def test_inject_key_missing_variable() -> None:
    with pytest.raises(InjectionError, match="NOPE is not set"):
        inject_key(Headers(), "", MeteredProvider("p", "openai", "bearer"), "NOPE", {})
