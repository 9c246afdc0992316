"""Routes: a page, its ``.json`` twin and ``?format=``, with customer keys that end in
``.json`` or ``.pdf`` (the catalog's keys may: ``acme.json``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.billing.events import Setup
from tests.dashboard.conftest import Server, load, start_dashboard, stop, variant
from tests.dashboard.seed import CATALOG

DOTTED = """
  - key: alpha.json
    name: Alpha Json Inc
    currency: USD
    consumers: [stray]
  - key: alpha.pdf
    name: Alpha Pdf Inc
    currency: USD
    consumers: []
"""


@pytest.fixture(scope="module")
def dotted(store: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The seed plus customers ``alpha.json`` and ``alpha.pdf`` beside ``alpha``."""
    server = start_dashboard(variant(store, tmp_path_factory.mktemp("dotted"), CATALOG + DOTTED))
    yield server
    stop(server)


def test_a_key_ending_in_a_suffix_is_its_own_page(dotted: Server) -> None:
    for key, name in (("alpha.json", "Alpha Json Inc"), ("alpha.pdf", "Alpha Pdf Inc")):
        status, body = dotted.get(f"/customers/{key}")
        assert status == 200, key
        assert f'<h1 dir="auto">{name}</h1>' in body.decode(), key
        twin = dotted.json(f"/customers/{key}.json?at=2026-02-10")
        assert twin["customer"]["customer"] == key
        assert dotted.json(f"/customers/{key}?format=json&at=2026-02-10") == twin
    # alpha's own JSON: its .json URL is alpha.json's page now, ?format=json is alpha's
    assert dotted.json("/customers/alpha?format=json")["customer"]["customer"] == "alpha"
    # documented URLs keep working where nothing is shadowed
    assert dotted.json("/customers/beta.json")["customer"]["customer"] == "beta"
    assert dotted.json("/usage.json?from=2026-01-01&to=2026-01-02")["totals"]["events"] > 0
    assert dotted.json("/usage?from=2026-01-01&to=2026-01-02&format=json")["totals"]["events"] > 0
    status, body = dotted.get("/usage?format=xml")
    assert (
        status == 400 and "format: &#x27;xml&#x27; is not one of html, json, pdf" in body.decode()
    )
    status, body = dotted.get("/invoices/INV-000001?format=pdf")
    assert status == 200 and body.startswith(b"%PDF-")


def test_the_json_link_names_the_page_shown(page: Any, dotted: Server, shots: Path) -> None:
    """Each page's JSON link leads to its own twin, not to a customer named like it."""
    names = {"alpha": "Alpha Ltd", "alpha.json": "Alpha Json Inc", "beta": "Beta GmbH"}
    for key, name in names.items():
        load(page, dotted, f"/customers/{key}?at=2026-02-10", shots, f"customer-{key}")
        assert page.title() == f"{name} · Meterline", key
        href = page.locator("nav a.json").get_attribute("href")
        status, body = dotted.get(href)
        assert status == 200, href
        assert json.loads(body)["customer"]["customer"] == key, href
    assert href == "/customers/beta.json?at=2026-02-10"
