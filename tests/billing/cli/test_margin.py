"""``billing margin --period``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from billing.listprice import list_cost
from tests.billing.cli.runner import run
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
            "cost": "0.000000",
            "margin": "60.000000",
            "margin_pct": "100.0",
        },
        {
            "customer": "alpha",
            "provider": "openai",
            "model": "gpt-4o",
            "currency": "USD",
            "tokens": 5500,
            "revenue": "43.00",  # 1500 * 2/1000 + 4000 * 10/1000
            "cost": str(cost.quantize(Decimal("0.000001"))),
            "margin": str(Decimal("43.00") - cost.quantize(Decimal("0.000001"))),
            "margin_pct": str(
                (
                    (Decimal("43.00") - cost.quantize(Decimal("0.000001"))) * 100 / Decimal("43.00")
                ).quantize(Decimal("0.1"))
            ),
        },
    ]


def test_margin_needs_generated_invoices(tmp_path: Path) -> None:
    s = setup(tmp_path)
    result = run(s, "margin", "--period", "2026-01")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: no invoices for 2026-01: run `billing invoice generate --period 2026-01` first\n",
    )
    assert run(s, "margin", "--period", "January").exit_code == 2
