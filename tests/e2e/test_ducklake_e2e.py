"""A fleet of proxies on one DuckLake (PostgreSQL catalog), billed with the same SQL.

Two real ``mitmdump -s addons/meter.py`` processes write to one DuckLake whose catalog
is a real PostgreSQL server started for the test; ``billing invoice generate --db
ducklake:...`` then bills the usage that both recorded, exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from meterline.store import store
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_billing_e2e import billing, billing_catalog, money, usage
from tests.support.clients import Clients
from tests.support.postgres import postgres_server
from tests.support.upstream import Exchange, FakeProvider


@pytest.fixture(scope="module")
def lake() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield f"ducklake:postgres:{conninfo}"


def lake_events(locator: str) -> list[tuple[str, str, str]]:
    with store(locator) as con:
        tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
        if "usage_events" not in tables:
            return []
        rows = con.execute("SELECT request_id, proxy_id, consumer FROM usage_events").fetchall()
    return [tuple(r) for r in rows]


def test_two_proxies_one_lake_one_invoice(
    lake: str,
    tmp_path: Path,
    start_proxy: ProxyFactory,
    fake_provider: FakeProvider,
    test_catalog: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "lake-data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(data))  # for this process's reads
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    proxies = [
        start_proxy(
            options={"meter_db": lake, "meter_proxy_id": name},
            env={"METERLINE_LAKE_DATA": str(data)},
            name=name,
        )
        for name in ("proxy-a", "proxy-b")
    ]
    exchanges: list[Exchange] = []
    for proxy in proxies:
        made = Clients(proxy, fake_provider)
        try:
            gpt = made.openai(KEYS["alice"])
            for _ in range(3):
                gpt.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                )
                exchanges.append(fake_provider.last())
        finally:
            made.close()

    wanted = {ex.request_id for ex in exchanges}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = lake_events(lake)
        if wanted <= {r[0] for r in rows}:
            break
        time.sleep(0.2)
    mine = [r for r in rows if r[0] in wanted]
    assert sorted(r[1] for r in mine) == ["proxy-a"] * 3 + ["proxy-b"] * 3
    assert len({r[0] for r in mine}) == 6  # once each

    end = datetime.now(UTC) + timedelta(seconds=1)
    while datetime.now(UTC) < end:
        time.sleep(0.05)
    catalog = billing_catalog(test_catalog, tmp_path / "billing.yaml", start, end)
    # the other tests' events in the shared fake provider's lake are not ours: only the
    # subscription window [start, end) counts, and only alice/bob belong to the customer
    out = billing(lake, catalog, "invoice", "generate", "--period", f"{end:%Y-%m}", "--settle", "0")
    [invoice] = out["invoices"]
    lines = {ln["rate_card"]: Decimal(ln["amount"]) for ln in invoice["lines"]}
    gpt_in = usage(exchanges, "input", "cached_input")
    gpt_out = usage(exchanges, "output")
    assert lines["gpt-in"] == money(Decimal(gpt_in) * Decimal("2.50") / 1000)
    assert lines["gpt-out"] == money(
        Decimal(min(gpt_out, 100)) * Decimal("10.00") / 1000
        + Decimal(max(gpt_out - 100, 0)) * Decimal("4.00") / 1000
    )
    again = billing(
        lake, catalog, "invoice", "generate", "--period", f"{end:%Y-%m}", "--settle", "0"
    )
    assert again["created"] == [] and again["invoices"] == out["invoices"]
