"""Governance while the proxy starts, through the real proxy: a subscription that begins
after the start."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import ALICE, chat, rows_where
from tests.support.clients import openai_client
from tests.support.governance import governed_catalog
from tests.support.upstream import FakeProvider


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_a_subscription_that_starts_while_the_proxy_runs_is_checked_at_once(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory, policy: str
) -> None:
    """No consumer is governed at start; the only subscription (hard limit 300) begins a
    few seconds later. Before, its first calls got 503 (``deny``: "the store is
    unreachable", though it was fine; ``allow``: "being read") until a read the first
    call triggered. Now the store is read at start, so the new period is known: the calls
    are checked at once, counted from the subscription's start (a call before it does
    not count)."""
    begin = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        start=begin,
        entitlements=[{"feature": "gpt-out", "limit": 300}],
    )
    proxy = start_proxy(catalog=catalog, options={"meter_governance_failure": policy})
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        if datetime.now(UTC) < begin:
            chat(client, 100)  # no subscription yet: forwarded, outside the period
        while datetime.now(UTC) < begin + timedelta(seconds=0.2):
            time.sleep(0.05)
        for _ in range(3):
            chat(client, 100)  # 300: reaches the limit, allowed
        with pytest.raises(openai.RateLimitError):
            chat(client, 100)
    ts = begin.replace(tzinfo=None)
    rows = rows_where(proxy, f"reason IS NULL AND ts >= TIMESTAMP '{ts.isoformat(' ')}'", 3)
    assert sum(r["output_tokens"] for r in rows) == 300
    assert rows_where(proxy, "reason IS NOT NULL", 1)[0]["reason"] == "limit:gpt-out"
