"""Unit grants: units of a feature taken by priority then expiry, shown on invoices as a
credit line right after the usage line (exact money, never below zero), in Stripe the same
way, audited, and listed by ``billing credits list``."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from billing.cli import main as billing_cli
from billing.credits import grant_credits
from billing.invoices import explain_line, generate_invoices, get_invoice, preview_invoice
from billing.store import billing_store
from billing.unitgrants import grant_units, list_unit_grants
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


def unit_store(tmp_path: Path, *, generate: bool = True) -> Billed:
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(CATALOG, encoding="utf-8")
    catalog = load_catalog(catalog_path)
    db = tmp_path / "meterline.duckdb"
    with billing_store(db, create=True) as con:
        for n, (consumer, inp, out, day) in enumerate(USAGE):
            _insert_event(con, n, consumer, inp, out, day)

        def units(feature: str, n: int, priority: int, expires: datetime | None, why: str) -> None:
            grant_units(
                con, catalog, "acme", feature, n, granted_by="test", reason=why,
                priority=priority, expires_at=expires, now=BEFORE,
            )  # fmt: skip

        units("tokens-in", 200_000, 5, datetime(2027, 1, 1, tzinfo=UTC), "later expiry")
        units("tokens-in", 1_000_000, 5, datetime(2026, 12, 1, tzinfo=UTC), "sooner expiry")
        units("tokens-in", 100_000, 1, None, "first by priority")
        units("tokens-in", 50_000, 0, datetime(2026, 10, 15, tzinfo=UTC), "expired")
        units("tokens-out", 33_333, 5, None, "some output")
        grant_credits(
            con, catalog, "acme", Decimal("1.00"), granted_by="test", reason="money", now=BEFORE
        )
        if generate:
            generate_invoices(con, catalog, "2026-10", now=GENERATED_AT)
    return Billed(db, catalog_path)


def test_unit_grants_are_taken_in_order_and_reduce_the_billed_quantity_exactly(
    tmp_path: Path,
) -> None:
    billed = unit_store(tmp_path)
    with billing_store(billed.db) as con:
        inv = get_invoice(con, "INV-000001")
        left = {g.reason: g.remaining for g in list_unit_grants(con, "acme")}
        consumed = dict(con.execute("SELECT grant_id, amount FROM credit_consumptions").fetchall())
        explained = explain_line(con, "INV-000001", 2)
    shown = [(ln.kind, ln.feature_key, ln.quantity, ln.amount) for ln in inv.lines]
    assert shown == [
        ("flat", None, Decimal(1), Decimal("49.00")),
        ("usage", "tokens-in", Decimal(1_234_567), Decimal("3.09")),
        # Every input token granted: the line priced at 0 minus the line as metered.
        ("credit", "tokens-in", Decimal(1_234_567), Decimal("-3.09")),
        ("usage", "tokens-out", Decimal(333_333), Decimal("3.33")),
        # 300,000 tokens billed: 3.00, so the credit is 3.00 - 3.33.
        ("credit", "tokens-out", Decimal(33_333), Decimal("-0.33")),
        ("credit", None, Decimal(1), Decimal("-1.00")),  # the currency grant, after
    ]
    assert inv.total == Decimal("51.00")
    assert inv.lines[2].detail["billed_quantity"] == "0"
    assert [t["grant_id"] for t in inv.lines[2].detail["grants"]] == [
        "grant-000003",  # priority 1
        "grant-000002",  # priority 5, sooner expiry
        "grant-000001",  # priority 5, later expiry; grant-000004 had expired
    ]
    assert left == {
        "first by priority": 0,
        "sooner expiry": 0,
        "later expiry": 200_000 - (1_234_567 - 1_100_000),
        "expired": 50_000,
        "some output": 0,
    }
    assert {g: Decimal(a) for g, a in consumed.items()} == {
        "grant-000003": Decimal(100_000),
        "grant-000002": Decimal(1_000_000),
        "grant-000001": Decimal(134_567),
        "grant-000005": Decimal(33_333),
        "grant-000006": Decimal("1.00"),
    }
    assert explained.quantity == 1_234_567  # the usage line still adds up to its events


def test_preview_shows_unit_grants_without_consuming_them(tmp_path: Path) -> None:
    billed = unit_store(tmp_path, generate=False)
    catalog = load_catalog(billed.catalog)
    with billing_store(billed.db) as con:
        inv = preview_invoice(
            con, catalog, "acme", at=datetime(2026, 10, 31, tzinfo=UTC), now=GENERATED_AT
        )
        left = sum(g.remaining for g in list_unit_grants(con, "acme"))
    assert [ln.amount for ln in inv.lines if ln.kind == "credit"] == [
        Decimal("-3.09"),
        Decimal("-0.33"),
        Decimal("-1.00"),
    ]
    assert left == 200_000 + 1_000_000 + 100_000 + 50_000 + 33_333


def test_unit_credit_lines_go_to_stripe_as_negative_items(tmp_path: Path) -> None:
    billed = unit_store(tmp_path)
    with FakeStripe() as fake:
        result = CliRunner().invoke(
            billing_cli,
            ["--db", str(billed.db), "--catalog", str(billed.catalog), "stripe", "sync",
             "--period", "2026-10", "--api-base", fake.url, "--max-network-retries", "0"],
            env={"STRIPE_API_KEY": DEFAULT_API_KEY},
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        [acme] = [
            i
            for i in client_for(fake).v1.invoices.list().data
            if i.metadata["meterline_invoice"] == "INV-000001"
        ]
        amounts = {int(ln.metadata["meterline_line"]): ln.amount for ln in acme.lines.data}
        assert amounts == {1: 4900, 2: 309, 3: -309, 4: 333, 5: -33, 6: -100}
        assert acme.total == 5100


def test_cli_grants_units_audited_and_lists_them(tmp_path: Path) -> None:
    billed = unit_store(tmp_path)
    base = ["--db", str(billed.db), "--catalog", str(billed.catalog), "credits"]
    run = CliRunner().invoke
    result = run(billing_cli, [*base, "grant", "--customer", "globex", "--feature",
                               "tokens-out", "--units", "5000", "--priority", "3",
                               "--reason", "promo"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output == "grant-000007: 5000 tokens-out units to globex (priority 3)\n"
    listed = run(billing_cli, [*base, "list", "--customer", "globex", "--format", "json"])
    assert '"feature": "tokens-out"' in listed.output and '"reason": "promo"' in listed.output
    table = run(billing_cli, [*base, "list", "--customer", "globex"])
    assert "globex: balance 5000 tokens-out units" in table.output
    with billing_store(billed.db) as con:
        row = con.execute(
            "SELECT granted_by, reason, feature_key, amount FROM credit_grants "
            "WHERE grant_id = 'grant-000007'"
        ).fetchone()
    assert row is not None and row[1:] == ("promo", "tokens-out", Decimal(5000))
    assert row[0]  # who ran the command
    bad = run(billing_cli, [*base, "grant", "--customer", "acme", "--feature", "nope",
                            "--units", "5"])  # fmt: skip
    assert bad.exit_code == 1 and bad.output.startswith("Error: unknown feature 'nope'")
    bad = run(billing_cli, [*base, "grant", "--customer", "acme", "--units", "5"])
    assert bad.output == "Error: give either --amount, or --feature with --units\n"
    bad = run(billing_cli, [*base, "grant", "--customer", "acme", "--feature", "tokens-in",
                            "--units", "0"])  # fmt: skip
    assert bad.output == "Error: a grant must be positive, got 0 units\n"
