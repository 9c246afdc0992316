"""A plan that begins while the proxy runs, through the real proxy and the openai SDK:
calls admitted before it and still in flight count against it, and the first call after
it is checked at once (no 503 while the store is read)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
import yaml

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import ALICE, chat, rows_where
from tests.support.clients import openai_client
from tests.support.governance import governed_catalog
from tests.support.upstream import FakeProvider


def wait_until(moment: datetime) -> None:
    while datetime.now(UTC) < moment:
        time.sleep(0.02)


@pytest.mark.parametrize("before", ["no subscription", "a plan without limits"])
def test_calls_in_flight_when_a_capped_plan_begins_count_against_it(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory, before: str
) -> None:
    """Five calls of 100 admitted before a hard cap of 500 begins, answering after it:
    the calls made after the start are refused as held by them. Before, the customer had
    no policy when they were admitted, so nothing held them: 5 of 6 later calls were
    admitted and the period used 2,500 at a cap of 500."""
    begin = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=10)
    path = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        start=begin,
        entitlements=[{"feature": "gpt-out", "limit": 500}],
    )
    if before == "a plan without limits":
        doc = yaml.safe_load(path.read_text())
        doc["plans"].append({"key": "free", "name": "Free", "currency": "USD"})
        first = {"plan": "free", "start": "2026-01-01T00:00:00Z", "end": doc["customers"][0]
                 ["subscriptions"][0]["start"]}  # fmt: skip
        doc["customers"][0]["subscriptions"].insert(0, first)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proxy = start_proxy(catalog=path, options={"meter_governance_refresh": "0.5"})
    left = (begin - datetime.now(UTC)).total_seconds()
    assert left > 3, "the proxy took too long to start for this test"
    with (
        openai_client(proxy, fake_provider, KEYS["alice"]) as client,
        ThreadPoolExecutor(5) as pool,
    ):
        # Answered 2 s after the plan begins: admitted before it, in flight across it.
        flights = [pool.submit(chat, client, 100, think=left + 2) for _ in range(5)]
        wait_until(begin + timedelta(seconds=0.3))
        assert not any(f.done() for f in flights)
        with pytest.raises(openai.RateLimitError, match="held by calls in flight"):
            chat(client, 100)
        for f in flights:
            f.result()
    ts = begin.replace(tzinfo=None).isoformat(" ")
    rows = rows_where(proxy, f"reason IS NULL AND ts >= TIMESTAMP '{ts}'", 5)
    assert sum(r["output_tokens"] for r in rows) == 500  # the cap, not over it
    assert rows_where(proxy, "reason IS NOT NULL", 1)[0]["reason"] == "limit:gpt-out"


def test_the_first_call_after_a_scheduled_plan_switch_is_not_asked_to_retry(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """Starter ends and Pro begins while the proxy runs, no call in between. The store
    is re-read every 0.2 s; a read after the switch used the policy from before it (the
    event loop rebuilds its own only when a call comes), so its snapshot lacked Pro's
    counter and the first call after the switch got a 503 "being read"."""
    switch = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=10)
    path = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 1000}],
    )
    doc = yaml.safe_load(path.read_text())
    stamp = switch.isoformat().replace("+00:00", "Z")
    doc["plans"].append({**doc["plans"][0], "key": "starter", "name": "Starter",
                         "entitlements": [{"feature": "gpt-out", "limit": 100}]})  # fmt: skip
    doc["customers"][0]["subscriptions"] = [
        {"plan": "starter", "start": "2026-01-01T00:00:00Z", "end": stamp},
        {"plan": "capped", "start": stamp},
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proxy = start_proxy(catalog=path, options={"meter_governance_refresh": "0.2"})
    assert datetime.now(UTC) < switch - timedelta(seconds=1), "the proxy took too long to start"
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 10)
        wait_until(switch + timedelta(seconds=1.5))  # several reads after the switch
        chat(client, 10)  # no retry asked (max_retries=0: a 503 raises)
    rows_where(proxy, "reason IS NULL", 2)
    assert proxy.events("reason IS NOT NULL") == []
