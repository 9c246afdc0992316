"""A fleet of proxies on one DuckLake (PostgreSQL catalog), billed with the same SQL.

Two real ``mitmdump -s addons/meter.py`` processes write to one DuckLake whose catalog
is a real PostgreSQL server started for the test; ``billing invoice generate --db
ducklake:...`` then bills the usage that both recorded, exactly once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from meterline.lakelease import lease_holder
from meterline.store import store
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_billing_e2e import billing, billing_catalog, money, usage
from tests.support.clients import Clients
from tests.support.postgres import create_database, postgres_server
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


def test_the_lease_holder_is_named_by_the_proxy_id(
    lake: str, tmp_path: Path, start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``billing lake maintain`` names the lease's holder: it was the host name
    (``proxy:vm:17096``), the same for every proxy of a host or random in a container;
    now the proxy's ``meter_proxy_id``, as docs/fleet.md shows (``proxy:eu-1:4711``)."""
    data = tmp_path / "lake-data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(data))
    lake = "ducklake:postgres:" + create_database(lake.removeprefix("ducklake:postgres:"), "eu1")
    proxy = start_proxy(
        options={"meter_db": lake, "meter_proxy_id": "eu-1"},
        env={"METERLINE_LAKE_DATA": str(data), "METERLINE_LAKE_MAINTAIN_EVERY": "0.5"},
        name="eu-1",
    )
    assert proxy.process is not None
    holder = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with store(lake) as con, contextlib.suppress(duckdb.CatalogException):
            holder = lease_holder(con)[0]
        if holder is not None and holder.startswith("proxy:eu-1:"):
            break
        time.sleep(0.2)
    assert holder == f"proxy:eu-1:{proxy.process.pid}"
