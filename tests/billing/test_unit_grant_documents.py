"""A unit-grant credit line everywhere an invoice is shown or summed: statements, margin,
``invoice show`` (text, HTML) and ``credits list``.

The store: customer ``vol`` on volume tiers (10.00/1k up to 10,000 units, 5.00/1k above)
used 11,000 output tokens in October 2026 (55.00) with 2,000 units granted: the grant takes
999 units (10,001 billed: 50.005 -> 50.01), a credit of -4.99, and keeps 1,001. A prepaid
credit of 10.00 then pays part of the 50.01.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billing.credits import grant_credits
from billing.invoices import generate_invoices
from billing.margin import margin_report
from billing.store import billing_store
from billing.unitgrants import grant_units
from tests.billing.cli.runner import run
from tests.billing.events import Event, Setup, add_events, setup, utc
from tests.billing.test_unit_grants import GRANT_CATALOG

BEFORE = datetime(2026, 10, 1, tzinfo=UTC)


def granted_store(tmp_path: Path) -> Setup:
    """The store the module docstring describes, October 2026 invoiced."""
    s = setup(tmp_path, GRANT_CATALOG)
    add_events(s.db, Event(utc("2026-10-05"), consumer="agent-a", output=11_000))
    catalog = s.catalog
    with billing_store(s.db) as con:
        grant_units(con, catalog, "vol", "out", 2_000, granted_by="t", reason="u", now=BEFORE)
        grant_credits(con, catalog, "vol", Decimal("10.00"), granted_by="t", reason="m", now=BEFORE)
        gen = generate_invoices(
            con, catalog, "2026-10", customer="vol", now=utc("2026-11-02T00:00:00Z")
        )
    [inv] = gen.invoices
    assert [(ln.kind, ln.amount) for ln in inv.lines] == [
        ("usage", Decimal("55.00")),
        ("credit", Decimal("-4.99")),
        ("credit", Decimal("-10.00")),
    ]
    return s


@pytest.fixture
def granted(tmp_path: Path) -> Setup:
    return granted_store(tmp_path)


def test_statement_of_a_customer_with_a_unit_grant_credit_line(granted: Setup) -> None:
    """The credit line names the feature but bills no events: the statement's usage chart
    counts the usage line's tokens once and lists the credit with the invoice's lines."""
    result = run(granted, "statement", "--customer", "vol", "--period", "2026-10",
                 "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    st = json.loads(result.stdout)
    assert [(f["feature"], f["tokens"]) for f in st["features"]] == [("out", 11_000)]
    [inv] = st["invoices"]
    assert [ln["description"] for ln in inv["lines"]] == [
        "Output tokens",
        "Granted units applied: 999 out",
        "Prepaid credit applied",
    ]
    html = run(granted, "statement", "--customer", "vol", "--period", "2026-10",
               "--format", "html")  # fmt: skip
    assert html.exit_code == 0, html.stderr
    assert "Granted units applied: 999 out" in html.stdout


def test_margin_charges_a_unit_grant_to_its_model_and_not_prepaid_credit(
    granted: Setup,
) -> None:
    """The unit credit lowers gpt-4o's revenue (55.00 - 4.99); the prepaid credit pays the
    invoice and lowers no model's revenue, and nothing is booked as ``(minimums)``."""
    with billing_store(granted.db) as con:
        rows = margin_report(con, "2026-10")
    assert [(r["customer"], r["model"], r["tokens"], r["revenue"]) for r in rows] == [
        ("vol", "gpt-4o", 11_000, Decimal("50.01")),
    ]


def test_credits_list_shows_what_is_left_of_a_unit_grant_in_whole_units(
    granted: Setup,
) -> None:
    """999 of 2,000 units taken: 1001 left, not the store's ``1001.000000000000``."""
    listed = run(granted, "credits", "list", "--customer", "vol", "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    left = {g["feature"] or g["currency"]: g["remaining"] for g in json.loads(listed.stdout)}
    assert left == {"out": "1001", "USD": "0.00"}
    table = run(granted, "credits", "list", "--customer", "vol")
    assert "vol: balance 1001 out units\n" in table.stdout
    assert "1001.0" not in table.stdout


def test_a_unit_grant_credit_line_shows_the_tiers_of_the_units_still_billed(
    granted: Setup,
) -> None:
    """The credit line keeps the rate card it was priced with: its tier row says 5.00 per
    1,000 (not per unit) above 10,000 (not above 0), for the 10,001 units still billed."""
    text = run(granted, "invoice", "show", "INV-000001").stdout
    assert (
        "      priced as 10001 of 11000 units billed:\n"
        "      tier 2: 10001 units at 5.00 per 1000 = 50.005\n"
    ) in text
    page = run(granted, "invoice", "show", "INV-000001", "--format", "html").stdout
    credit = page[page.index("Granted units applied") : page.index("Prepaid credit applied")]
    assert "10,001 of 11,000 tokens billed" in credit
    assert "Tier 2: above 10,000 tokens" in credit
    assert "5.00 USD / 1K tokens" in credit
    assert "above 0" not in credit and "USD / token" not in credit
