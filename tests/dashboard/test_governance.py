"""The customer page's entitlement gauges: ``billing entitlements``' figures, in Chromium.

Granted units raise a limit (the proxy admits while ``used + reserved < limit +
granted``), so a gauge fills against the limit plus the grant, never the limit alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.dashboard.governance import gauge, gauges_html
from billing.store import billing_store
from billing.unitgrants import grant_units
from tests.billing.cli.runner import run
from tests.billing.events import Setup, utc
from tests.dashboard.conftest import Server, load, start_dashboard, stop, variant
from tests.dashboard.seed import CATALOG

ENTITLEMENTS = """
    entitlements:
      - {feature: claude-all, limit: 200000, period: P1M}
      - {feature: gpt-out, limit: 100000, period: P1M}
customers:
"""
GRANTED = 5_000_000


@pytest.fixture(scope="module")
def governed_store(store: Setup, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """The seed with limits on the plan and 5,000,000 claude-all units granted to alpha
    on 2026-01-01, before the instants the pages are read at (``?at=`` reads the store as
    it stood then: a grant made later does not count)."""
    s = variant(store, tmp_path_factory.mktemp("governed"),
                CATALOG.replace("\ncustomers:\n", ENTITLEMENTS, 1))  # fmt: skip
    with billing_store(s.db) as con:
        grant_units(con, s.catalog, "alpha", "claude-all", GRANTED, granted_by="test",
                    reason="seed", now=utc("2026-01-01"))  # fmt: skip
    return s


@pytest.fixture(scope="module")
def governed(governed_store: Setup) -> Iterator[Server]:
    server = start_dashboard(governed_store)
    yield server
    stop(server)


def test_the_panel_is_the_cli_rows(governed: Server, governed_store: Setup) -> None:
    cli = run(governed_store, "entitlements", "--customer", "alpha", "--format", "json")
    assert cli.exit_code == 0, cli.output
    page = governed.json("/customers/alpha.json")
    assert page["panels"]["entitlements"] == json.loads(cli.stdout)


def test_granted_units_raise_the_gauge(page: Any, governed: Server, shots: Path) -> None:
    rows = governed.json("/customers/alpha.json?at=2026-02-20")["panels"]["entitlements"]
    claude = next(r for r in rows if r["feature"] == "claude-all")
    assert claude["granted_units"] == GRANTED and 200_000 < claude["used"] < GRANTED
    load(page, governed, "/customers/alpha?at=2026-02-20", shots, "gauges")
    assert page.problems == []
    bars = page.locator("#panel-entitlements .gauge")
    assert bars.count() == 2
    ceiling = 200_000 + GRANTED
    first = bars.nth(0)
    assert first.get_attribute("class") == "gauge ok"  # not "over": the grant counts
    assert first.locator(".gauge-figures").inner_text() == (
        f"{claude['used']:,} / {ceiling:,} (limit 200,000 + {GRANTED:,} granted · "
        f"{claude['remaining']:,} left)"
    )
    share = (Decimal(claude["used"]) * 100 / ceiling).quantize(Decimal("0.1"))
    assert first.locator("meter").get_attribute("value") == str(share)
    gpt = next(r for r in rows if r["feature"] == "gpt-out")
    second = bars.nth(1)
    assert second.get_attribute("class") == "gauge over"  # no grant: over its limit
    assert second.locator(".gauge-figures").inner_text() == f"{gpt['used']:,} / 100,000 (0 left)"


def test_the_gauges_count_usage_up_to_the_page_instant(
    page: Any, governed: Server, shots: Path
) -> None:
    """``?at=`` is the reading at that instant: the period's usage before it, not the
    whole period's (at the period's first instant, nothing yet)."""

    def used(at: str) -> dict[str, int]:
        rows = governed.json(f"/customers/alpha.json?at={at}")["panels"]["entitlements"]
        return {r["feature"]: r["used"] for r in rows if r["type"] == "metered"}

    assert used("2026-02-01T00:00:00Z") == {"claude-all": 0, "gpt-out": 0}
    early, late = used("2026-02-10"), used("2026-02-28T23:59:59Z")
    for feature in ("claude-all", "gpt-out"):
        assert 0 < early[feature] < late[feature], feature
    load(page, governed, "/customers/alpha?at=2026-02-10", shots, "gauges-early")
    assert page.problems == []
    figures = page.locator("#panel-entitlements .gauge .gauge-figures")
    assert figures.nth(0).inner_text().startswith(f"{early['claude-all']:,} / ")
    assert figures.nth(1).inner_text().startswith(f"{early['gpt-out']:,} / ")


@pytest.mark.parametrize(
    ("row", "figures", "level"),
    [
        # the tester's case: 1 web search a month, 5 granted, 2 used
        ({"limit": 1, "granted_units": 5, "used": 2, "reserved": 0, "remaining": 4},
         "2 / 6 (limit 1 + 5 granted · 4 left)", "ok"),
        # calls in flight count like used ones, as the proxy counts them
        ({"limit": 10, "granted_units": 0, "used": 7, "reserved": 2, "remaining": 1},
         "9 / 10 (2 reserved · 1 left)", "near"),
        ({"limit": 0, "granted_units": 0, "used": 0, "reserved": 0, "remaining": 0},
         "0 / 0 (0 left)", "over"),
        # a prepaid credit: money, as the CLI prints it
        ({"limit": "50.00", "granted_units": None, "used": "12.50", "reserved": None,
          "remaining": "37.50", "type": "credit"}, "12.50 / 50.00 (37.50 left)", "ok"),
    ],
)  # fmt: skip
def test_gauge_figures(row: dict[str, Any], figures: str, level: str) -> None:
    html = gauges_html([{"feature": "f", "enforcement": "hard", "type": "metered", **row}])
    assert f'<div class="gauge {level}">' in html
    assert f'<span class="gauge-figures">{figures}</span>' in html
    assert gauge({"limit": "unlimited", "used": 3}) is None
