"""What docs/catalog.md says about money limits and subscription times, checked against
the catalog and the billing schedule: the quoted errors are the real ones, and a start
with a UTC offset anchors its periods at its UTC instant."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from billing.schedule import customer_periods
from meterline.catalog import CatalogError, parse_catalog

DOC = " ".join((Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text().split())

CATALOG = """
consumers: [{name: a}]
features:
  - key: out
    name: Out
    meter: {provider: openai, model: "gpt-4o*", token_types: [output]}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - {key: out, name: Out, feature: out, price: {type: unit, amount: "AMOUNT", per: 1000}}
customers:
  - {key: c, name: C, currency: USD, consumers: [a], subscriptions: [{plan: p, start: "START"}]}
"""


def catalog_text(amount: str = "1.00", start: str = "2026-03-01T00:00:00Z") -> str:
    return CATALOG.replace("AMOUNT", amount).replace("START", start)


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        ("0.0000000000001", "Decimal input should have no more than 12 decimal places"),
        ("1e15", "Input should be less than 1000000000000000"),
    ],
)
def test_the_documented_money_limits_are_the_catalogs(amount: str, problem: str) -> None:
    assert f"`{amount}`" in DOC or f'`"{amount}"`' in DOC
    assert f"({problem})" in DOC.replace("`", "")
    with pytest.raises(CatalogError) as err:
        parse_catalog(catalog_text(amount), "cat.yaml")
    assert problem in str(err.value)
    parse_catalog(catalog_text("0.000000000001"), "cat.yaml")  # 12 decimals: fine


def test_a_start_with_an_offset_anchors_the_periods_in_utc() -> None:
    start = "2026-03-01T00:00:00+05:30"
    assert f'`start: "{start}"` is 2026-02-28T18:30Z' in DOC
    assert "the periods start Feb 28, Mar 28, Apr 28 at 18:30Z" in DOC
    catalog = parse_catalog(catalog_text(start=start), "cat.yaml")
    [customer] = catalog.customers
    periods = customer_periods(catalog, customer, datetime(2026, 5, 1, tzinfo=UTC))
    assert [p.start for p in periods[:3]] == [
        datetime(2026, 2, 28, 18, 30, tzinfo=UTC),
        datetime(2026, 3, 28, 18, 30, tzinfo=UTC),
        datetime(2026, 4, 28, 18, 30, tzinfo=UTC),
    ]
