"""Keys through the real proxy: attribution, unknown-key policies, provider-key injection."""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest

from meterline.fingerprint import fingerprint
from tests.conftest import KEYS, PROVIDER_KEYS, UNKNOWN_KEY, ProxyFactory
from tests.support.clients import Clients, ca_context
from tests.support.proxy import MeterProxy, row_usage, write_catalog
from tests.support.upstream import FakeProvider

MESSAGES = [{"role": "user", "content": "hi"}]
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_unknown_key_recorded(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    clients.openai(UNKNOWN_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    ex = fake_provider.last()
    assert ex.headers["authorization"] == f"Bearer {UNKNOWN_KEY}"  # forwarded untouched
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert row["consumer"] is None
    assert row["key_fingerprint"] == fingerprint(UNKNOWN_KEY)
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert UNKNOWN_KEY not in meter_proxy.log_text()


def test_no_key_recorded(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    url = fake_provider.base_url("gemini") + "/v1beta/models/gemini-2.5-flash:generateContent"
    assert clients.raw().post(url, json=GEMINI).status_code == 200
    [row] = meter_proxy.wait_for_events([fake_provider.last().request_id])
    assert (row["consumer"], row["key_fingerprint"]) == (None, None)


def test_unknown_key_rejected(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    proxy = start_proxy(options={"meter_unknown_keys": "reject"})
    made = clients.for_proxy(proxy)
    mark = proxy.log_mark()

    with pytest.raises(openai.AuthenticationError) as oe:
        made.openai(UNKNOWN_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert oe.value.status_code == 401
    assert oe.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as ae:
        made.anthropic(UNKNOWN_KEY).messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES
        )
    assert ae.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    url = fake_provider.base_url("gemini", tls=True)
    resp = made.raw().post(
        f"{url}/v1beta/models/gemini-2.5-flash:generateContent?key={UNKNOWN_KEY}", json=GEMINI
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
    assert fake_provider.exchanges == []  # never forwarded

    proxy.wait_for_log(f"unknown key \\({fingerprint(UNKNOWN_KEY)}\\)", since=mark)
    assert UNKNOWN_KEY not in proxy.log_text()

    # A known key still goes through and is metered.
    made.openai(KEYS["alice"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [ex] = fake_provider.exchanges
    [row] = proxy.wait_for_events([ex.request_id])
    assert row["consumer"] == "alice"
    assert [r["consumer"] for r in proxy.events()] == ["alice"]  # rejections bill nothing


def test_key_injection(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """carol holds a gateway key; the proxy sends each provider's real key instead."""
    clients.openai(KEYS["carol"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    clients.anthropic(KEYS["carol"], tls=False).messages.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES
    )
    url = fake_provider.base_url("gemini", tls=True)
    clients.raw().post(
        f"{url}/v1beta/models/gemini-2.5-flash:generateContent?key={KEYS['carol']}&x=1",
        json=GEMINI,
    )
    oa, an, ge = fake_provider.exchanges
    assert oa.headers["authorization"] == f"Bearer {PROVIDER_KEYS['METERLINE_TEST_OPENAI_KEY']}"
    assert an.headers["x-api-key"] == PROVIDER_KEYS["METERLINE_TEST_ANTHROPIC_KEY"]
    assert ge.headers["x-goog-api-key"] == PROVIDER_KEYS["METERLINE_TEST_GEMINI_KEY"]
    assert ge.query == "x=1"
    for ex in (oa, an, ge):
        assert KEYS["carol"] not in str(ex.headers) + ex.query
    rows = meter_proxy.wait_for_events([oa.request_id, an.request_id, ge.request_id])
    assert {r["consumer"] for r in rows} == {"carol"}
    assert {r["key_fingerprint"] for r in rows} == {fingerprint(KEYS["carol"])}
    for ex, row in zip((oa, an, ge), rows, strict=True):
        assert ex.usage is not None and row_usage(row) == ex.usage


def test_key_injection_without_env_var(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    mark = meter_proxy.log_mark()
    with pytest.raises(openai.InternalServerError) as e:
        clients.openai(KEYS["dave"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.status_code == 502
    assert "METERLINE_TEST_UNSET_VARIABLE is not set" in e.value.message
    assert fake_provider.exchanges == []
    meter_proxy.wait_for_log("METERLINE_TEST_UNSET_VARIABLE is not set", since=mark)


def test_a_catalog_provider_read_by_its_api_key_header(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Azure OpenAI behind a host that is not built in (a sovereign cloud, an API
    gateway), declared with ``auth: api-key`` and called with the official AzureOpenAI
    client: billed to the key's consumer in reject mode, and injected into that header
    (before: the catalog had no ``auth``, so the key was read from ``Authorization``:
    billed to no one, and refused in reject mode)."""
    providers = fake_provider.catalog_providers()
    for p in providers:
        if p["flavor"] == "openai":
            p["auth"] = "api-key"
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        providers,
        {"alice": [KEYS["alice"]], "carol": [KEYS["carol"]]},
        inject={"carol": {"fake-openai": "METERLINE_TEST_OPENAI_KEY"}},
    )
    proxy = start_proxy(
        catalog=catalog, env=PROVIDER_KEYS, options={"meter_unknown_keys": "reject"}
    )
    fake_provider.reset()
    for key in (KEYS["alice"], KEYS["carol"]):
        with openai.AzureOpenAI(
            api_key=key,
            azure_endpoint=fake_provider.base_url("openai", tls=True),
            api_version="2024-10-21",
            http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ca_context(proxy)),
        ) as azure:
            azure.chat.completions.create(model="my-gpt-4o", messages=MESSAGES)
    alice, carol = fake_provider.exchanges
    assert alice.path == "/openai/deployments/my-gpt-4o/chat/completions"
    assert alice.headers["api-key"] == KEYS["alice"]
    assert carol.headers["api-key"] == PROVIDER_KEYS["METERLINE_TEST_OPENAI_KEY"]
    rows = proxy.wait_for_events([alice.request_id, carol.request_id])
    assert [r["consumer"] for r in rows] == ["alice", "carol"]
    assert alice.usage is not None and row_usage(rows[0]) == alice.usage
