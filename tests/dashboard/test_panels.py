"""The customer page's extension point: a registered panel shows up on the page and in
its JSON twin; without one (no ``billing.entitlements`` yet) nothing is shown."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import duckdb
import pytest

from billing.dashboard import panels
from billing.dashboard.app import Dashboard
from billing.dashboard.governance import gauges_html
from meterline.catalog import Catalog
from tests.billing.events import Setup
from tests.dashboard.seed import seeded


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

    panels.register(
        panels.CustomerPanel("entitlements", "Entitlements", events_so_far, gauges_html)
    )
    yield
    panels.PANELS.pop("entitlements")


def test_no_panel_without_governance(store: Setup) -> None:
    app = Dashboard(str(store.db), str(store.catalog_path))
    page = json.loads(app.handle("/customers/alpha.json", {"at": "2026-02-10"}).body)
    assert page["panels"] == {}
    assert b"Entitlements" not in app.handle("/customers/alpha", {"at": "2026-02-10"}).body


def test_a_registered_panel_is_on_the_page_and_its_twin(store: Setup, registered: None) -> None:
    app = Dashboard(str(store.db), str(store.catalog_path))
    page = json.loads(app.handle("/customers/alpha.json", {"at": "2026-02-10"}).body)
    used = page["panels"]["entitlements"][0]["used"]
    # the seed: one event every 7 minutes, agent-a's when i % 10 < 6; 40 days to Feb 10
    assert used == sum(1 for i in range(12137) if i * 7 < 40 * 1440 and i % 10 < 6)
    body = app.handle("/customers/alpha", {"at": "2026-02-10"}).body.decode()
    assert '<section class="panel" id="panel-entitlements"><h2>Entitlements</h2>' in body
    pct = f"{used * 100 / 20000:.1f}"
    assert f'<meter min="0" max="100" value="{pct}"' in body
    assert f"{used} / 20000" in body


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
