"""Which model and bound a limit is checked against: the one the call is sent and billed
as (a gateway route's pinned model, the model a provider resolves an alias to) and the
request's own top-level ``max_tokens``; real mitmdump, official SDKs."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import yaml

from tests.conftest import KEYS
from tests.e2e.test_governance import rows_where
from tests.support.clients import anthropic_client, ca_context
from tests.support.governance import governed_catalog
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

ALICE = {"alice": KEYS["alice"], "bob": KEYS["bob"]}
HI = [{"role": "user", "content": "hi"}]


def with_route(path: Path, **route: Any) -> Path:
    doc = yaml.safe_load(path.read_text())
    doc["routes"] = [{"path": "/gw/chat/completions", "type": "llm/v1/chat", **route}]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def gateway(tmp_path: Path, confdir: Path, catalog: Path, upstream: FakeProvider) -> MeterProxy:
    """The proxy as a gateway: reverse mode in front of the fake OpenAI."""
    reverse = f"reverse:{upstream.base_url('openai')}"
    return MeterProxy(
        tmp_path / "gateway",
        catalog=catalog,
        confdir=confdir,
        options={"ssl_insecure": True},
        mitm_args=("--mode", reverse),
    ).start()


def gateway_client(proxy: MeterProxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/gw", api_key=KEYS["alice"], max_retries=0)


def test_a_route_that_pins_a_model_is_checked_as_that_model(
    tmp_path: Path, fake_provider: FakeProvider, mitm_confdir: Path
) -> None:
    """The route sends every call as gpt-4o: a limit on gpt-4o* holds whatever model the
    client names (before, the check read o3-mini: 50 of 50 admitted at a limit of 100)."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 100}],
    )
    with_route(catalog, provider="fake-openai", model="gpt-4o")
    proxy = gateway(tmp_path, mitm_confdir, catalog, fake_provider)
    try:
        with gateway_client(proxy) as client:
            for _ in range(3):  # 40, 80, 120: the call that crosses is the last one allowed
                reply = client.chat.completions.create(
                    model="o3-mini",
                    messages=HI,
                    max_tokens=40,
                    extra_headers={"x-fake": "output=40"},
                )
                assert reply.model == "gpt-4o"
            with pytest.raises(openai.RateLimitError) as err:
                client.chat.completions.create(
                    model="o3-mini",
                    messages=HI,
                    max_tokens=40,
                    extra_headers={"x-fake": "output=40"},
                )
        assert "limit of 100 gpt-out units" in err.value.message
        refused = rows_where(proxy, "reason IS NOT NULL", 1)
        assert [(r["model"], r["reason"]) for r in refused] == [("gpt-4o", "limit:gpt-out")]
    finally:
        proxy.stop()


def test_a_route_that_pins_a_granted_model_is_allowed(
    tmp_path: Path, fake_provider: FakeProvider, mitm_confdir: Path
) -> None:
    """An allow-list granting gpt-4o admits the route's calls, with no model or another
    (before: 403 "does not include model '(unknown)'" / 'o3-mini')."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "type": "boolean"}],
    )
    with_route(catalog, provider="fake-openai", model="gpt-4o")
    proxy = gateway(tmp_path, mitm_confdir, catalog, fake_provider)
    try:
        with gateway_client(proxy) as client:
            reply = client.chat.completions.create(model="o3-mini", messages=HI, max_tokens=5)
            assert reply.model == "gpt-4o"
            raw = client.post(
                "/chat/completions",
                body={"messages": HI, "max_tokens": 5},  # no model: the route names it
                cast_to=dict,
            )
            assert raw["model"] == "gpt-4o"
        assert [json.loads(ex.body)["model"] for ex in fake_provider.exchanges[-2:]] == [
            "gpt-4o",
            "gpt-4o",
        ]
    finally:
        proxy.stop()


def test_a_limit_on_the_billed_model_holds_for_an_azure_deployment_name(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: Any
) -> None:
    """Azure bills deployment ``prod-chat`` as gpt-4o-2024-08-06: the first call teaches
    the proxy the name, the next ones are held against the gpt-4o* limit (before: 10 of
    10 admitted, 400 tokens against 100)."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 100}],
    )
    proxy = start_proxy(catalog=catalog)
    azure = openai.AzureOpenAI(
        azure_ad_token=KEYS["alice"],  # Authorization: Bearer, as Entra ID tokens are sent
        api_version="2024-06-01",
        azure_endpoint=fake_provider.base_url("openai", tls=True),
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ca_context(proxy)),
    )
    fake = {"x-fake": "output=40,model=gpt-4o-2024-08-06"}
    with azure:
        for _ in range(3):  # unseen: admitted on its own name; then 80, 120
            azure.chat.completions.create(
                model="prod-chat", messages=HI, max_tokens=40, extra_headers=fake
            )
        with pytest.raises(openai.RateLimitError) as err:
            azure.chat.completions.create(
                model="prod-chat", messages=HI, max_tokens=40, extra_headers=fake
            )
    assert "limit of 100 gpt-out units" in err.value.message
    proxy.wait_for_log("fake-openai bills calls naming 'prod-chat' as 'gpt-4o-2024-08-06'")
    admitted = rows_where(proxy, "reason IS NULL", 3)
    assert sum(r["output_tokens"] for r in admitted) == 120


def test_a_feature_on_a_deployment_name_says_it_counts_nothing(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: Any
) -> None:
    """A feature metering ``prod-chat``, the deployment's name, which the provider bills
    as gpt-4o-2024-08-06: usage, limits and invoices read the billed name, so the feature
    counts nothing and its hard limit never fills. The proxy says so, once, when it
    learns the pair. Before, the limit stayed at 0 used without a word (6 of 6 calls
    admitted at a limit of 100)."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "prod-out", "limit": 100}],
    )
    doc = yaml.safe_load(catalog.read_text())
    meter = {"provider": "fake-openai", "model": "prod-chat", "token_types": ["output"]}
    doc["features"].append({"key": "prod-out", "name": "Deployment output", "meter": meter})
    catalog.write_text(yaml.safe_dump(doc, sort_keys=False))
    proxy = start_proxy(catalog=catalog)
    with openai.OpenAI(
        api_key=KEYS["alice"],
        base_url=fake_provider.base_url("openai", tls=True) + "/v1",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ca_context(proxy)),
    ) as client:
        fake = {"x-fake": "output=40,model=gpt-4o-2024-08-06"}
        for _ in range(2):
            client.chat.completions.create(
                model="prod-chat", messages=HI, max_tokens=40, extra_headers=fake
            )
    proxy.wait_for_log(
        "feature 'prod-out' matches calls naming 'prod-chat', which fake-openai bills as "
        "'gpt-4o-2024-08-06': it counts none of their tokens"
    )
    assert proxy.log_text().count("feature 'prod-out' matches") == 1


def test_a_max_tokens_nested_in_the_history_does_not_replace_the_real_one(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: Any
) -> None:
    """A tool_use input ``{"max_tokens": 10}`` earlier in the body: each call still
    reserves its own max_tokens=2000, so at a limit of 2,000 one of ten concurrent calls
    is admitted (before: it reserved 10; 10 admitted, 20,000 used)."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "claude-out", "limit": 2000}],
    )
    proxy = start_proxy(catalog=catalog)
    tool_use = {"type": "tool_use", "id": "t1", "name": "summarize", "input": {"max_tokens": 10}}
    tool_result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
    messages: list[Any] = [
        {"role": "user", "content": "Summarise the report."},
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [tool_result]},
    ]

    def one(_: int) -> str:
        with anthropic_client(proxy, fake_provider, KEYS["bob"]) as client:
            try:
                # The SDK's create() sends max_tokens first; other clients (and this
                # body, as the probe sent it) put it after the messages.
                body = {"model": "claude-sonnet-4-5", "messages": messages, "max_tokens": 2000}
                client.post(
                    "/v1/messages",
                    body=body,
                    cast_to=anthropic.types.Message,
                    options={"headers": {"x-fake": "output=2000,think=1"}},
                )
            except anthropic.RateLimitError:
                return "refused"
            return "admitted"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(one, range(10)))
    assert outcomes.count("admitted") == 1
    assert sum(r["output_tokens"] for r in rows_where(proxy, "reason IS NULL", 1)) == 2000
    assert len(rows_where(proxy, "reason IS NOT NULL", 9)) == 9


def test_a_gzip_request_is_pinned_and_checked_as_the_routes_model(
    tmp_path: Path, fake_provider: FakeProvider, mitm_confdir: Path
) -> None:
    """``Content-Encoding: gzip`` on the request (the fake upstream, like many servers,
    decodes it): before, such a body was neither pinned (o3 reached the upstream) nor
    read by the check (no model: 8 of 8 admitted at a limit of 100)."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 100}],
    )
    with_route(catalog, provider="fake-openai", model="gpt-4o")
    proxy = gateway(tmp_path, mitm_confdir, catalog, fake_provider)
    body = gzip.compress(json.dumps({"model": "o3", "messages": HI, "max_tokens": 40}).encode())
    headers = {
        "authorization": f"Bearer {KEYS['alice']}",
        "content-type": "application/json",
        "content-encoding": "gzip",
        "x-fake": "output=40",
    }
    seen = len(fake_provider.exchanges)  # the fake provider serves every test
    try:
        with httpx2.Client(timeout=30) as client:
            statuses = [
                client.post(
                    proxy.url + "/gw/chat/completions", content=body, headers=headers
                ).status_code
                for _ in range(4)
            ]
        assert statuses == [200, 200, 200, 429]
        sent = [json.loads(ex.body) for ex in fake_provider.exchanges[seen:]]  # aiohttp decodes
        assert [s["model"] for s in sent] == ["gpt-4o"] * 3
        [refused] = rows_where(proxy, "reason IS NOT NULL", 1)
        assert refused["model"] == "gpt-4o", refused  # was NULL: the event read the gzip bytes
    finally:
        proxy.stop()


def test_a_limit_on_web_searches_reserves_each_calls_max_uses(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: Any
) -> None:
    """A hard limit of 10 searches, ten concurrent calls whose web search tool may run 3
    each: a call reserves its ``max_uses``, so four are admitted (0, 3, 6, 9 < 10), 12
    searches at most (before: nothing was reserved, 10 of 10 admitted, 30 searches)."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "claude-search", "limit": 10}],
    )
    doc = yaml.safe_load(catalog.read_text())
    doc["features"].append(
        {
            "key": "claude-search",
            "name": "Claude web searches",
            "meter": {"provider": "fake-anthropic", "token_types": ["web_search"]},
        }
    )
    catalog.write_text(yaml.safe_dump(doc, sort_keys=False))
    proxy = start_proxy(catalog=catalog)
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]

    def one(_: int) -> str:
        with anthropic_client(proxy, fake_provider, KEYS["bob"]) as client:
            try:
                client.messages.create(
                    model="claude-sonnet-4-5",
                    max_tokens=50,
                    messages=HI,
                    tools=tools,  # type: ignore[arg-type]
                    extra_headers={"x-fake": "think=1"},
                )
            except anthropic.RateLimitError:
                return "refused"
            return "admitted"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(one, range(10)))
    assert outcomes.count("admitted") == 4
    searched = rows_where(proxy, "reason IS NULL", 4)
    assert sum(r["web_search_calls"] for r in searched) == 12
