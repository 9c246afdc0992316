"""The customer page's extension point: a registered panel shows up on the page and in
its JSON twin; a panel without data is not shown; governance's limits become gauges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from billing.dashboard import panels
from billing.dashboard.app import Dashboard
from billing.dashboard.governance import gauges_html
from meterline.catalog import Catalog, load_catalog
from tests.billing.events import Setup, utc, write_catalog
from tests.dashboard.seed import CATALOG, EVENTS_SQL, seeded


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return seeded(tmp_path_factory.mktemp("panels"))


@pytest.fixture
def registered() -> Iterator[None]:
    def events_so_far(
        con: duckdb.DuckDBPyConnection, catalog: Catalog, key: str, at: datetime
    ) -> list[dict[str, Any]]:
        consumers = catalog.customer(key).consumers
        (n,) = con.execute(
            "SELECT count(*) FROM usage_events WHERE list_contains(?, consumer) AND ts < ?",
            [list(consumers), at.replace(tzinfo=None)],
        ).fetchone() or (0,)
        return [{"feature": "events", "type": "metered", "enforcement": "soft",
                 "limit": 20000, "used": n}]  # fmt: skip

    panels.register(panels.CustomerPanel("events", "Events so far", events_so_far, gauges_html))
    yield
    panels.PANELS.pop("events")


def test_no_panel_without_limits(store: Setup) -> None:
    app = Dashboard(str(store.db), str(store.catalog_path))
    page = json.loads(app.handle("/customers/alpha.json", {"at": "2026-02-10"}).body)
    assert page["panels"] == {}  # the catalog sets no limits: no rows, no panel
    assert b"Entitlements" not in app.handle("/customers/alpha", {"at": "2026-02-10"}).body


def test_a_registered_panel_is_on_the_page_and_its_twin(store: Setup, registered: None) -> None:
    app = Dashboard(str(store.db), str(store.catalog_path))
    page = json.loads(app.handle("/customers/alpha.json", {"at": "2026-02-10"}).body)
    used = page["panels"]["events"][0]["used"]
    # the seed: one event every 7 minutes, agent-a's when i % 10 < 6; 40 days to Feb 10
    assert used == sum(1 for i in range(12137) if i * 7 < 40 * 1440 and i % 10 < 6)
    body = app.handle("/customers/alpha", {"at": "2026-02-10"}).body.decode()
    assert '<section class="panel" id="panel-events"><h2>Events so far</h2>' in body
    pct = f"{used * 100 / 20000:.1f}"
    assert f'<meter min="0" max="100" value="{pct}"' in body
    assert f'<span class="gauge-figures">{used:,} / 20,000</span>' in body


def test_gauges_text_for_unlimited_and_boolean() -> None:
    out = gauges_html(
        [
            {"feature": "gpt-in", "type": "metered", "enforcement": "hard",
             "limit": "unlimited", "used": 5},
            {"feature": "(models granted)", "type": "boolean", "enforcement": "hard",
             "limit": None, "used": None},
            {"feature": "gpt-out", "type": "metered", "enforcement": "hard", "limit": 100,
             "used": 150},
        ]
    )  # fmt: skip
    assert "<span>unlimited</span>" in out and "<span>granted</span>" in out
    assert '<div class="gauge over">' in out and 'value="100.0"' in out


def test_panel_module_list_is_importable() -> None:
    assert "billing.dashboard.governance" in panels.PANEL_MODULES
    assert panels.load_panels() is panels.PANELS


def test_entitlement_gauges_from_governance(store: Setup, tmp_path: Path) -> None:
    """With limits in the catalog, the page shows ``billing entitlements``' rows as gauges
    (the rows at the page's instant: what the CLI prints when run at that instant)."""
    from billing.entitlements import entitlement_rows
    from billing.render import to_json
    from billing.store import billing_store

    text = CATALOG.replace(
        "  - key: pro\n    name: Pro\n    currency: USD\n",
        "  - key: pro\n    name: Pro\n    currency: USD\n    entitlements:\n"
        "      - {feature: gpt-in, limit: 2000000, enforcement: soft}\n"
        "      - {feature: claude-all, limit: unlimited}\n",
    )
    catalog_path = write_catalog(tmp_path, text)
    app = Dashboard(str(store.db), str(catalog_path))
    at = "2026-02-10T00:00:00Z"
    page = json.loads(app.handle("/customers/alpha.json", {"at": at}).body)
    with billing_store(store.db) as con:
        rows = entitlement_rows(
            con, load_catalog(catalog_path), customer="alpha", now=utc("2026-02-10")
        )
    assert page["panels"]["entitlements"] == json.loads(to_json(rows))
    gpt = next(r for r in rows if r["feature"] == "gpt-in")
    assert 0 < gpt["used"] < 2000000
    body = app.handle("/customers/alpha", {"at": at}).body.decode()
    pct = f"{Decimal(gpt['used']) * 100 / 2000000:.1f}"
    assert f'<meter min="0" max="100" value="{pct}"' in body
    assert "<span>unlimited</span>" in body


def test_the_prepaid_gauge_at_an_instant_is_the_store_as_it_stood_then(tmp_path: Path) -> None:
    """``?at=T`` reads the credit as it stood at T: the grants granted by T less what the
    invoices issued by T consumed, and the period's cost up to T. It took every stored
    invoice, so once January was invoiced its gauge at January 20 counted January's
    spend twice (the invoice's consumption and the cost so far): 27.28 used of 373.13
    where it had been 27.28 of 500.00. The live reading is the proxy's balance."""
    from billing.credits import grant_credits
    from billing.entitlements import entitlement_rows
    from billing.store import billing_store
    from meterline.entitlements import credit_balances
    from tests.billing.cli.runner import run

    catalog_path = write_catalog(
        tmp_path,
        CATALOG.replace("    name: Pro\n    currency: USD\n",
                        "    name: Pro\n    currency: USD\n    prepaid: true\n", 1),
    )  # fmt: skip
    s = Setup(tmp_path / "meterline.duckdb", catalog_path)
    with billing_store(s.db, create=True) as con:  # the seed's events, no invoice yet
        con.execute(EVENTS_SQL)
        grant_credits(con, s.catalog, "alpha", Decimal("500.00"), granted_by="test",
                      reason="prepaid", now=utc("2026-01-01"))  # fmt: skip
    later = run(s, "credits", "grant", "--customer", "alpha", "--amount", "100.00")
    assert later.exit_code == 0, later.output  # granted now: after every instant below
    app = Dashboard(str(s.db), str(catalog_path))

    def gauge(at: str) -> tuple[Any, Any, Any]:
        page = json.loads(app.handle("/customers/alpha.json", {"at": at}).body)
        rows = page["panels"]["entitlements"]
        credit = next(r for r in rows if r["type"] == "credit")
        return credit["limit"], credit["used"], credit["remaining"]

    jan20, feb10 = gauge("2026-01-20"), gauge("2026-02-10")
    assert jan20 == ("500.00", "27.28", "472.72")
    assert feb10[0] == "500.00"  # January not invoiced by then: the grant still whole
    invoiced = run(s, "invoice", "generate", "--period", "2026-01", "--customer", "alpha")
    assert invoiced.exit_code == 0, invoiced.output
    assert (gauge("2026-01-20"), gauge("2026-02-10")) == (jan20, feb10)  # issued after both
    with billing_store(s.db) as con:
        live = entitlement_rows(con, s.catalog, customer="alpha")
        balance = credit_balances(con, datetime.now(UTC))["alpha"]
    credit = next(r for r in live if r["type"] == "credit")
    assert credit["limit"] == balance < Decimal("600.00")  # January's invoice took from it
