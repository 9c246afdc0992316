"""Late usage of a period whose invoice took units of unit grants: the period's invoices
add up to what one invoice with all its events and the same granted units charges.

The late line used to price ``price(metered before + late) - amount before the credit``:
the units granted counted for nothing (graduated tiers: billed 10.50 for a 6.00 period),
or the credit was lost against a volume bound (undercharged by 23.01).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from billing.invoices import generate_invoices
from billing.model import Invoice
from billing.store import billing_store
from billing.unitgrants import grant_units
from tests.billing.cli.runner import run
from tests.billing.events import Event, Setup, add_events, setup, utc

CATALOG = """
version: 1
consumers: [{name: a1}, {name: b1}]
features:
  - key: f
    name: F
    meter: {provider: openai, model: "m*", token_types: [output]}
plans:
  - key: grad
    name: Graduated
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: grad
        name: Grad
        feature: f
        price:
          type: tiered
          mode: graduated
          per: 1000
          tiers: [{up_to: 1000, unit_amount: "1.00"}, {unit_amount: "10.00"}]
  - key: two
    name: Volume and unit
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: vol
        name: Vol
        feature: f
        price:
          type: tiered
          mode: volume
          per: 1000
          tiers: [{up_to: 10000, unit_amount: "10.00"}, {unit_amount: "5.00"}]
      - {key: unit, name: Unit, feature: f, price: {type: unit, amount: "1.00", per: 1000}}
customers:
  - key: a
    name: A
    currency: USD
    consumers: [a1]
    subscriptions: [{plan: grad, start: "2026-01-01T00:00:00Z"}]
  - key: b
    name: B
    currency: USD
    consumers: [b1]
    subscriptions: [{plan: two, start: "2026-01-01T00:00:00Z"}]
"""

JANUARY = utc("2026-01-01")


def _invoices(s: Setup, month: str, now: str, customer: str) -> list[Invoice]:
    with billing_store(s.db) as con:
        return generate_invoices(con, s.catalog, month, customer=customer, now=utc(now)).invoices


def _grant(s: Setup, customer: str, units: int) -> None:
    with billing_store(s.db) as con:
        grant_units(
            con, s.catalog, customer, "f", units,
            granted_by="test", reason="", now=utc("2025-12-01"),
        )  # fmt: skip


def _january_charge(invoices: list[Invoice]) -> Decimal:
    """What the invoices charged for January's usage: usage, unit credits, late usage."""
    return sum(
        (ln.amount for inv in invoices for ln in inv.lines if ln.usage_start == JANUARY),
        Decimal(0),
    )


def _billed(
    tmp_path: Path,
    customer: str,
    consumer: str,
    units: int,
    on_time: int,
    late: int,
    *,
    february: bool = True,
) -> tuple[Setup, list[Invoice]]:
    """January billed with ``on_time`` tokens, then February with ``late`` January ones."""
    s = setup(tmp_path, CATALOG)
    add_events(s.db, Event(utc("2026-01-05"), consumer=consumer, model="m1", output=on_time))
    _grant(s, customer, units)
    invoices = _invoices(s, "2026-01", "2026-02-01T00:00:05Z", customer)
    if late:
        add_events(
            s.db,
            Event(
                utc("2026-01-06"), consumer=consumer, model="m1", output=late,
                ingested_at=utc("2026-02-02"),
            ),
        )  # fmt: skip
    if late and february:
        invoices += _invoices(s, "2026-02", "2026-03-01T00:00:05Z", customer)
    return s, invoices


def test_graduated_late_usage_counts_the_units_granted(tmp_path: Path) -> None:
    _, whole = _billed(tmp_path / "whole", "a", "a1", 500, on_time=2000, late=0)
    assert _january_charge(whole) == Decimal("6.00")  # 1,500 billed: 1.00 + 500 at 10.00/1k

    s, split = _billed(tmp_path / "split", "a", "a1", 500, on_time=1000, late=1000)
    jan, feb = split
    assert [(ln.kind, ln.quantity, ln.amount) for ln in jan.lines] == [
        ("usage", Decimal(1000), Decimal("1.00")),
        ("credit", Decimal(500), Decimal("-0.50")),
    ]
    late = feb.lines[-1]
    assert (late.kind, late.quantity, late.amount) == ("late_usage", Decimal(1000), Decimal("5.50"))
    assert late.detail["late"] == {
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"},
        "billed_quantity": "1000",
        "billed_amount": "0.50",  # 1.00 billed, 0.50 of it taken off by the granted units
        "total_quantity": "2000",
        "total_amount": "6.00",  # 2,000 metered less the 500 granted units
        "granted_units": "500",
    }
    assert _january_charge(split) == _january_charge(whole)

    shown = run(s, "invoice", "show", feb.number or "")
    assert "period total 2000 units = 6.00 (after 500 granted units)" in shown.stdout
    assert "billed before 1000 units = 0.50" in shown.stdout


def test_volume_late_usage_spreads_the_granted_units_as_one_invoice_would(
    tmp_path: Path,
) -> None:
    _, whole = _billed(tmp_path / "whole", "b", "b1", 3000, on_time=11000, late=0)
    # vol: 55.00 less 999 units (10,001 billed: 50.01); unit: 11.00 less 2,001 units (9.00)
    assert _january_charge(whole) == Decimal("59.01")

    s, split = _billed(tmp_path / "split", "b", "b1", 3000, on_time=9000, late=2000)
    jan, feb = split
    assert [(ln.kind, ln.rate_card_key, ln.amount) for ln in jan.lines] == [
        ("usage", "vol", Decimal("90.00")),
        ("credit", "vol", Decimal("-30.00")),  # all 3,000 units on vol: 6,000 billed
        ("usage", "unit", Decimal("9.00")),
    ]
    late = [(ln.kind, ln.rate_card_key, ln.amount) for ln in feb.lines if ln.kind != "usage"]
    assert late[:2] == [
        ("late_usage", "vol", Decimal("-9.99")),  # 50.01 for the period, 60.00 before
        ("late_usage", "unit", Decimal("0.00")),  # 9.00 for the period, 9.00 before
    ]
    assert _january_charge(split) == _january_charge(whole)

    s, _ = _billed(tmp_path / "preview", "b", "b1", 3000, 9000, 2000, february=False)
    preview = run(
        s, "invoice", "preview", "--customer", "b", "--at", "2026-02-20", "--format", "json"
    )
    late_lines = [
        (ln["rate_card"], ln["amount"]) for ln in json.loads(preview.stdout)["lines"]
        if ln["kind"] == "late_usage"
    ]  # fmt: skip
    assert late_lines == [("vol", "-9.99"), ("unit", "0.00")]
