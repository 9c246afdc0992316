"""``billing margin --period``."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from billing.listprice import list_cost
from billing.money import round_money
from tests.billing.cli.runner import error, run
from tests.billing.events import Event, add_events, setup, utc


def test_margin_json(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, Event(utc("2026-01-05"), input=1000, cached_input=500, output=4000))
    assert run(s, "invoice", "generate", "--period", "2026-01").exit_code == 0
    rows = json.loads(run(s, "margin", "--period", "2026-01", "--format", "json").stdout)
    cost = list_cost(
        "openai",
        "gpt-4o",
        input=1000,
        cached_input=500,
        cache_write=0,
        output=4000,
        at=utc("2026-01-05"),
    )
    assert cost is not None
    assert rows == [
        {
            "customer": "alpha",
            "provider": None,
            "model": "(fees)",
            "currency": "USD",
            "tokens": 0,
            "revenue": "60.00",
            "cost": "0.00",
            "margin": "60.00",
            "margin_pct": "100.0",
        },
        {
            "customer": "alpha",
            "provider": "openai",
            "model": "gpt-4o",
            "currency": "USD",
            "tokens": 5500,
            "revenue": "43.00",  # 1500 * 2/1000 + 4000 * 10/1000
            "cost": str(round_money(cost, "USD")),  # money: the currency's decimals
            "margin": str(round_money(Decimal("43.00") - cost, "USD")),
            "margin_pct": str(
                ((Decimal("43.00") - cost) * 100 / Decimal("43.00")).quantize(
                    Decimal("0.1"), rounding=ROUND_HALF_UP
                )
            ),
        },
    ]


def test_margin_needs_generated_invoices(tmp_path: Path) -> None:
    s = setup(tmp_path)
    result = run(s, "margin", "--period", "2026-01")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: no invoices for 2026-01: that month was never generated; "
        "run `billing invoice generate --period 2026-01` first\n",
    )
    assert run(s, "margin", "--period", "January").exit_code == 2


def test_a_model_no_rate_card_prices_has_revenue_in_minor_units(tmp_path: Path) -> None:
    """Billed events of a model the plan does not price earn nothing: "0.00", not "0"."""
    s = setup(tmp_path)
    add_events(
        s.db,
        Event(utc("2026-01-05"), input=1000, output=4000),
        Event(utc("2026-01-06"), model="o3-mini", input=1000, output=2000),
    )
    assert run(s, "invoice", "generate", "--period", "2026-01").exit_code == 0
    rows = json.loads(run(s, "margin", "--period", "2026-01", "--format", "json").stdout)
    unpriced = next(r for r in rows if r["model"] == "o3-mini")
    assert (unpriced["tokens"], unpriced["revenue"]) == (3000, "0.00")
    table = run(s, "margin", "--period", "2026-01").stdout
    line = next(line for line in table.splitlines() if "o3-mini" in line)
    assert line.split()[5] == "0.00"  # REVENUE


def test_margin_of_an_unknown_customer_says_so_as_every_command(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, Event(utc("2026-01-05"), input=1000))
    assert run(s, "invoice", "generate", "--period", "2026-01").exit_code == 0
    result = run(s, "margin", "--period", "2026-01", "--customer", "nobody")
    assert result.exit_code == 1
    assert error(result) == "Error: unknown customer 'nobody' (known customers: alpha, beta, gamma)"
    known = run(s, "margin", "--period", "2026-02", "--customer", "alpha")
    assert error(known) == "Error: no invoices of 'alpha' for 2026-02"
