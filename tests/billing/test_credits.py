"""Prepaid credits: grants consumed by priority then expiry, a credit line on invoices
(never below zero) and the same line carried to Stripe as a negative item."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from billing.cli import main as billing_cli
from billing.credits import grant_credits, list_grants
from billing.invoices import generate_invoices, get_invoice
from billing.store import billing_store
from meterline.catalog import load_catalog
from tests.billing.stripe.conftest import (
    CATALOG,
    GENERATED_AT,
    USAGE,
    Billed,
    _insert_event,
    client_for,
)
from tests.fakestripe import DEFAULT_API_KEY, FakeStripe

BEFORE = datetime(2026, 10, 1, tzinfo=UTC)


def credited_store(tmp_path: Path) -> Billed:
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(CATALOG, encoding="utf-8")
    catalog = load_catalog(catalog_path)
    db = tmp_path / "meterline.duckdb"
    with billing_store(db, create=True) as con:
        for n, (consumer, inp, out, day) in enumerate(USAGE):
            _insert_event(con, n, consumer, inp, out, day)

        def grant(amount: str, priority: int, expires: datetime | None, why: str) -> str:
            g = grant_credits(
                con, catalog, "acme", Decimal(amount), granted_by="test", reason=why,
                priority=priority, expires_at=expires, now=BEFORE,
            )  # fmt: skip
            return g.grant_id

        grant("20.00", 5, datetime(2027, 1, 1, tzinfo=UTC), "later expiry")
        grant("100.00", 5, datetime(2026, 12, 1, tzinfo=UTC), "sooner expiry")
        grant("10.00", 1, None, "first by priority")
        grant("5.00", 0, datetime(2026, 10, 15, tzinfo=UTC), "expired before invoicing")
        generate_invoices(con, catalog, "2026-10", now=GENERATED_AT)
    return Billed(db, catalog_path)


def test_credits_are_consumed_by_priority_then_expiry_and_never_below_zero(
    tmp_path: Path,
) -> None:
    billed = credited_store(tmp_path)
    with billing_store(billed.db) as con:
        inv = get_invoice(con, "INV-000001")
        grants = {g.reason: g for g in list_grants(con, "acme")}
        consumed = con.execute(
            "SELECT grant_id, amount FROM credit_consumptions ORDER BY grant_id"
        ).fetchall()
    charges = sum((ln.amount for ln in inv.lines if ln.kind != "credit"), Decimal(0))
    [credit] = [ln for ln in inv.lines if ln.kind == "credit"]
    assert charges == Decimal("55.42")  # 49.00 + 3.09 input + 3.33 output
    assert credit.amount == -charges and inv.total == 0
    assert credit.line_no == len(inv.lines)
    assert [t["grant_id"] for t in credit.detail["grants"]] == ["grant-000003", "grant-000002"]
    assert grants["first by priority"].remaining == 0
    assert grants["sooner expiry"].remaining == Decimal("100.00") - (charges - 10)
    assert grants["later expiry"].remaining == Decimal("20.00")
    assert {g: Decimal(a) for g, a in consumed} == {
        "grant-000003": Decimal("10"),
        "grant-000002": charges - 10,
    }


def test_credit_line_goes_to_stripe_as_a_negative_item(tmp_path: Path, monkeypatch: object) -> None:
    billed = credited_store(tmp_path)
    with FakeStripe() as fake:
        result = CliRunner().invoke(
            billing_cli,
            ["--db", str(billed.db), "--catalog", str(billed.catalog), "stripe", "sync",
             "--period", "2026-10", "--api-base", fake.url, "--max-network-retries", "0"],
            env={"STRIPE_API_KEY": DEFAULT_API_KEY},
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        client = client_for(fake)
        [acme] = [
            i
            for i in client.v1.invoices.list().data
            if i.metadata["meterline_invoice"] == "INV-000001"
        ]
        amounts = {int(ln.metadata["meterline_line"]): ln.amount for ln in acme.lines.data}
        assert amounts == {1: 4900, 2: 309, 3: 333, 4: -5542}
        # A zero total: Stripe marks it paid on finalization, as the real API does.
        assert (acme.total, acme.status) == (0, "paid")


def test_cli_grants_and_lists_credits(tmp_path: Path) -> None:
    billed = credited_store(tmp_path)
    base = ["--db", str(billed.db), "--catalog", str(billed.catalog), "credits"]
    run = CliRunner().invoke
    result = run(billing_cli, [*base, "grant", "--customer", "globex", "--amount", "12.50",
                               "--reason", "goodwill"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("grant-000005: 12.50 USD to globex (priority 10)")
    listed = run(billing_cli, [*base, "list", "--customer", "globex"])
    assert "goodwill" in listed.output and "globex: balance 12.50 USD" in listed.output
    bad = run(billing_cli, [*base, "grant", "--customer", "nobody", "--amount", "1"])
    assert (
        bad.exit_code == 1
        and bad.output
        == "Error: unknown customer 'nobody' (known customers: acme, globex, umbrella)\n"
    )
    bad = run(billing_cli, [*base, "grant", "--customer", "acme", "--amount", "0.001"])
    assert bad.output == "Error: 0.001 USD has more decimals than the currency\n"
