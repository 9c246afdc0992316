"""Fast mode and US-only inference through the real proxy: the ``usage.speed`` and
``usage.inference_geo`` a fake Anthropic answers (as the API does, in the message's and
``message_start``'s usage) are stored with each event, and the real ``billing`` CLI prices
them by the documented Opus 4.6 features (fast 6x, US 1.1x, both 6.6x). Official SDK,
real mitmdump with the addon."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
import yaml

from tests.billing.test_speed_geo import plan_from_the_docs
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_billing_e2e import billing
from tests.e2e.test_governance import rows_where
from tests.support.clients import Clients
from tests.support.governance import governed_catalog
from tests.support.upstream import FakeProvider

MODEL = "claude-opus-4-6"
HI = [{"role": "user", "content": "hi"}]
FAST_MODE = ["fast-mode-2026-02-01"]
OUTPUT = {"x-fake": "output=4000"}  # $0.10 at $25 per million


def opus_catalog(proxy_catalog: Path, path: Path, start: datetime, end: datetime) -> Path:
    """The proxy's catalog (providers, consumers) with docs/catalog.md's Opus 4.6 plan,
    metering the fake Anthropic, and alice on it from ``start`` to ``end``."""
    doc: dict[str, Any] = yaml.safe_load(proxy_catalog.read_text())
    plan = yaml.safe_load(plan_from_the_docs())
    for feature in plan["features"]:
        feature["meter"]["provider"] = "fake-anthropic"
    doc["features"], doc["plans"] = plan["features"], plan["plans"]
    subscription = {"plan": "opus", "start": start.isoformat(), "end": end.isoformat()}
    doc["customers"] = [{"key": "acme", "name": "ACME", "currency": "USD",
                         "consumers": ["alice"], "subscriptions": [subscription]}]  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_fast_and_us_calls_are_stored_and_invoiced_at_their_rates(
    tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider, test_catalog: Path
) -> None:
    """Five calls of 4,000 output tokens: fast in the US (streamed), fast, fast that fell
    back to standard speed, US, and plain. Before, all five were billed $0.10 each."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    proxy = start_proxy()
    made = Clients(proxy, fake_provider)
    try:
        claude = made.anthropic(KEYS["alice"])
        stream = claude.beta.messages.create(
            model=MODEL, max_tokens=5000, messages=HI, betas=FAST_MODE, speed="fast",
            inference_geo="us", stream=True, extra_headers=OUTPUT,
        )  # fmt: skip
        started = [e.message.usage for e in stream if e.type == "message_start"]
        assert [(u.speed, u.inference_geo) for u in started] == [("fast", "us")]
        fast = claude.beta.messages.create(
            model=MODEL, max_tokens=5000, messages=HI, betas=FAST_MODE, speed="fast",
            extra_headers=OUTPUT,
        )  # fmt: skip
        assert fast.usage.speed == "fast"
        fell_back = claude.beta.messages.create(
            model=MODEL, max_tokens=5000, messages=HI, betas=FAST_MODE, speed="fast",
            extra_headers={"x-fake": "output=4000,speed=standard"},
        )  # fmt: skip
        assert fell_back.usage.speed == "standard"
        us = claude.messages.create(
            model=MODEL, max_tokens=5000, messages=HI, inference_geo="us", extra_headers=OUTPUT
        )
        assert us.usage.inference_geo == "us"
        claude.messages.create(model=MODEL, max_tokens=5000, messages=HI, extra_headers=OUTPUT)
    finally:
        made.close()
    rows = rows_where(proxy, "provider = 'fake-anthropic'", 5)
    assert sorted(
        (r["speed"] or "", r["inference_geo"] or "", r["output_tokens"]) for r in rows
    ) == [
        ("", "", 4000),
        ("", "us", 4000),
        ("fast", "", 4000),
        ("fast", "us", 4000),
        ("standard", "", 4000),
    ]
    end = datetime.now(UTC) + timedelta(seconds=1)
    while datetime.now(UTC) < end:  # the subscription (and so the period) must have closed
        time.sleep(0.05)
    catalog = opus_catalog(test_catalog, tmp_path / "billing.yaml", start, end)

    out = billing(proxy.db, catalog, "invoice", "generate", "--period", f"{end:%Y-%m}")
    [invoice] = out["invoices"]
    lines = {
        ln["rate_card"]: (int(ln["quantity"]), Decimal(ln["amount"])) for ln in invoice["lines"]
    }
    assert lines == {
        "out": (8000, Decimal("0.20")),  # the fallback and the plain call
        "fast-out": (4000, Decimal("0.60")),  # exactly 6x
        "us-out": (4000, Decimal("0.11")),
        "fast-us-out": (4000, Decimal("0.66")),
    }
    assert Decimal(invoice["total"]) == Decimal("1.57")
    by_speed = billing(proxy.db, catalog, "usage", "--group-by", "speed,geo")
    assert sorted((r["speed"] or "", r["inference_geo"] or "", r["output"]) for r in by_speed) == [
        ("", "", 4000),
        ("", "us", 4000),
        ("fast", "", 4000),
        ("fast", "us", 4000),
        ("standard", "", 4000),
    ]


def limited_catalog(
    tmp_path: Path, fake_provider: FakeProvider, limits: list[dict[str, Any]]
) -> Path:
    """alice on a governed plan with ``limits`` and docs/catalog.md's Opus 4.6 features,
    metering the fake Anthropic."""
    path = governed_catalog(
        tmp_path / "catalog.yaml", fake_provider, {"alice": KEYS["alice"]}, entitlements=limits
    )
    doc = yaml.safe_load(path.read_text())
    for feature in yaml.safe_load(plan_from_the_docs())["features"]:
        doc["features"].append(
            {**feature, "meter": {**feature["meter"], "provider": "fake-anthropic"}}
        )
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_limits_count_fast_calls_only_on_the_fast_feature(
    tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """Hard limits of 100 output tokens on the standard and the fast feature; calls of 40.
    Three fast calls are admitted (40, 80, 120: the one that crosses is the last), the
    fourth is refused by the fast feature's limit. Standard calls (no ``speed`` asked)
    cannot run fast, so that full limit does not hold them: three are admitted and the
    fourth is refused by the standard feature's own limit (before the request's speed was
    read, the first standard call was refused by the fast feature's limit; before the
    proxy read speeds, the fast calls filled the standard limit). A fast call is then
    refused by the standard feature's limit too: it may fall back to standard speed."""
    limits = [{"feature": "opus-out", "limit": 100}, {"feature": "opus-fast-out", "limit": 100}]
    proxy = start_proxy(catalog=limited_catalog(tmp_path, fake_provider, limits))
    fake = {"x-fake": "output=40"}
    made = Clients(proxy, fake_provider)
    try:
        claude = made.anthropic(KEYS["alice"])

        def call(**fast: Any) -> None:
            claude.beta.messages.create(
                model=MODEL, max_tokens=40, messages=HI, extra_headers=fake, **fast
            )

        for _ in range(3):
            call(betas=FAST_MODE, speed="fast")
        with pytest.raises(anthropic.RateLimitError) as fast_full:
            call(betas=FAST_MODE, speed="fast")
        for _ in range(3):
            call()
        with pytest.raises(anthropic.RateLimitError) as standard:
            call()
        with pytest.raises(anthropic.RateLimitError) as fast:
            call(betas=FAST_MODE, speed="fast")
    finally:
        made.close()
    assert "limit of 100 opus-fast-out units" in str(fast_full.value)
    assert "limit of 100 opus-out units" in str(standard.value)
    assert "limit of 100 opus-" in str(fast.value)
    served = rows_where(proxy, "reason IS NULL", 6)
    assert sorted((r["speed"] or "", r["output_tokens"]) for r in served) == [
        ("", 40), ("", 40), ("", 40), ("fast", 40), ("fast", 40), ("fast", 40),
    ]  # fmt: skip
    refused = [r["reason"] for r in rows_where(proxy, "reason IS NOT NULL", 3)]
    assert {"limit:opus-fast-out", "limit:opus-out"} <= set(refused)
    assert all(reason.startswith("limit:opus-") for reason in refused)


def test_a_provider_running_unasked_calls_fast_loses_the_standard_check(
    tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """A hard limit of 100 on the fast feature only. A call that does not ask for fast mode
    is checked as a standard one, but the provider runs it fast (a deployment that sets
    the speed itself): it is counted on the fast feature (120, over the limit), and from
    then on every call of that provider meets the fast limit: a plain call is refused."""
    limits = [{"feature": "opus-fast-out", "limit": 100}]
    proxy = start_proxy(catalog=limited_catalog(tmp_path, fake_provider, limits))
    made = Clients(proxy, fake_provider)
    try:
        claude = made.anthropic(KEYS["alice"])
        claude.messages.create(
            model=MODEL, max_tokens=120, messages=HI,
            extra_headers={"x-fake": "output=120,speed=fast"},
        )  # fmt: skip
        rows_where(proxy, "reason IS NULL", 1)
        with pytest.raises(anthropic.RateLimitError) as refused:
            claude.messages.create(
                model=MODEL, max_tokens=40, messages=HI, extra_headers={"x-fake": "output=40"}
            )
    finally:
        made.close()
    assert "limit of 100 opus-fast-out units" in str(refused.value)
    assert [r["speed"] for r in rows_where(proxy, "reason IS NULL", 1)] == ["fast"]
