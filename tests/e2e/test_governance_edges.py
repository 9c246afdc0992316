"""Governance at its edges, through the real proxy: an error inside governance, calls
without an output bound, and a limit whose counter starts mid-period."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import ALICE, MESSAGES, chat, rows_where
from tests.support.clients import async_openai_client, ca_context, openai_client
from tests.support.governance import governed_catalog
from tests.support.upstream import FakeProvider


@pytest.mark.parametrize("enforcement", ["hard", "soft"])
def test_an_error_inside_governance_never_loses_the_event_nor_waives_a_hard_cap(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory, enforcement: str
) -> None:
    """A usage period of 8,000 years ends after the year 9999: the period maths raises on
    every call. Before: the call was forwarded past the hard cap and its event lost (a
    traceback per call, 0 events). Now a hard cap refuses (503, recorded), a soft limit lets
    the call through and its event is recorded, and the error is logged once."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[
            {"feature": "gpt-out", "limit": 40, "period": "P8000Y", "enforcement": enforcement}
        ],
    )
    proxy = start_proxy(catalog=catalog)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        for _ in range(2):
            if enforcement == "hard":
                with pytest.raises(openai.InternalServerError) as err:
                    chat(client, 40)
                assert err.value.status_code == 503
                assert "usage limits cannot be checked" in err.value.message
            else:
                chat(client, 40)
    rows = rows_where(proxy, "consumer = 'alice'", 2)
    if enforcement == "hard":
        assert [(r["reason"], r["status"], r["output_tokens"]) for r in rows] == [
            ("unavailable", 503, 0)
        ] * 2
    else:
        assert [(r["reason"], r["output_tokens"]) for r in rows] == [(None, 40)] * 2
    log = proxy.log_text()
    assert "Traceback" not in log
    assert log.count("governance check failed: PeriodRangeError") == 1


def test_calls_without_max_tokens_reserve_the_models_largest_output(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """10 concurrent gpt-4o streams without max_tokens, 8,000 output tokens each, at a hard
    limit of 10,000. Before: each reserved 4,096, so 3 were admitted and 24,000 used
    (overshoot 14,000, beyond one call). Now each reserves gpt-4o's 16,384: one runs at a
    time, and the overshoot stays within one call's usage beyond what remained."""
    limit, used_per_call = 10_000, 8_000
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    proxy = start_proxy(catalog=catalog)

    async def burst() -> list[int]:
        client = async_openai_client(proxy, fake_provider, KEYS["alice"], timeout=120)

        async def one() -> int:
            try:
                stream = await client.chat.completions.create(
                    model="gpt-4o",
                    messages=MESSAGES,
                    stream=True,
                    extra_headers={"x-fake": f"output={used_per_call},delay=0.05"},
                )
                async for _ in stream:
                    pass
                return 200
            except openai.RateLimitError:
                return 429

        try:
            return await asyncio.gather(*(one() for _ in range(10)))
        finally:
            await client.close()

    statuses = asyncio.run(burst())
    admitted = statuses.count(200)
    rows = rows_where(proxy, "reason IS NULL", admitted)
    used = sum(r["output_tokens"] for r in rows)
    print(f"no max_tokens: {admitted} admitted, used {used}, overshoot {used - limit}")
    assert admitted == 1 and used == used_per_call
    assert used - limit <= used_per_call


def test_a_limit_starting_mid_period_counts_the_usage_before_it(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """The plan leaves gpt-out open; 200 tokens are used; then an override caps it at 100
    from a moment later. Before: its new counter started at zero until the next store read
    (here 30 s away), so 3 more calls got through. Now the first call after the start is
    told to retry (503, retryable) while the counter is read, and the SDK's own retry
    gets the 429 that counts the 200."""
    path = tmp_path / "catalog.yaml"
    plan = [{"feature": "claude-out", "limit": 1000}]  # acme is governed
    governed_catalog(path, fake_provider, ALICE, entitlements=plan)
    proxy = start_proxy(catalog=path, options={"meter_governance_refresh": "30"})
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        for _ in range(5):
            chat(client, 40)
    rows_where(proxy, "reason IS NULL", 5)  # in the store
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    mark = proxy.log_mark()
    override = {"feature": "gpt-out", "limit": 100, "start": start.isoformat()}
    governed_catalog(path, fake_provider, ALICE, entitlements=plan, overrides=[override])
    proxy.wait_for_log("catalog .* reloaded", since=mark)
    while datetime.now(UTC) < start + timedelta(seconds=0.2):
        time.sleep(0.1)
    client = openai.OpenAI(
        api_key=KEYS["alice"],
        base_url=fake_provider.base_url("openai", tls=True) + "/v1",
        max_retries=2,  # the SDK's default
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ca_context(proxy)),
    )
    with client, pytest.raises(openai.RateLimitError) as err:
        chat(client, 40)
    assert "customer acme limit of 100 gpt-out units" in err.value.message
    assert "(200 used)" in err.value.message
    assert sum(r["output_tokens"] for r in proxy.events("reason IS NULL")) == 200


def test_a_subscription_that_starts_later_is_enforced_from_its_start(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """Alice's capped plan starts a few seconds after the proxy: no reload comes. Before,
    the policy was rebuilt only for a consumer already governed, so alice (governed by
    nothing when it was built) passed ungoverned: 3,000 used against a limit of 1,000."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 1000}],
        start=start,
    )
    proxy = start_proxy(catalog=catalog)
    # The SDK's retries take the 503 while the new counter is read ("retry in a moment").
    with openai_client(proxy, fake_provider, KEYS["alice"]).with_options(max_retries=3) as client:
        chat(client, 500)  # before the plan, as a rule: not governed
        [first] = rows_where(proxy, "reason IS NULL", 1)
        # On a slow machine the proxy may start after the plan did: the call then counts.
        before_plan = first["ts"].replace(tzinfo=UTC) < start
        while datetime.now(UTC) < start + timedelta(seconds=0.2):
            time.sleep(0.1)
        outcomes = []
        for _ in range(4):
            try:
                chat(client, 500)
                outcomes.append("admitted")
            except openai.RateLimitError:
                outcomes.append("refused")
    admitted = 2 if before_plan else 1
    assert outcomes == ["admitted"] * admitted + ["refused"] * (4 - admitted)
    rows = rows_where(proxy, "reason IS NULL", 1 + admitted)
    assert sum(r["output_tokens"] for r in rows) == 500 * (1 + admitted)
