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
from tests.billing.events import Event, add_events, setup, utc
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

        def units(
            feature: str,
            n: int,
            priority: int,
            expires: datetime | None,
            why: str,
            at: datetime = BEFORE,
        ) -> None:
            grant_units(
                con, catalog, "acme", feature, n, granted_by="test", reason=why,
                priority=priority, expires_at=expires, now=at,
            )  # fmt: skip

        units("tokens-in", 200_000, 5, datetime(2027, 1, 1, tzinfo=UTC), "later expiry")
        units("tokens-in", 1_000_000, 5, datetime(2026, 12, 1, tzinfo=UTC), "sooner expiry")
        units("tokens-in", 100_000, 1, None, "first by priority")
        # expired before the period began (one expiring during it covers it, as money does)
        units("tokens-in", 50_000, 0, BEFORE, "expired", at=datetime(2026, 9, 1, tzinfo=UTC))
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
    # September, not invoiced, is built first (as the runs in order will): its fee takes
    # the 1.00 of money; October's usage takes units.
    assert [ln.amount for ln in inv.lines if ln.kind == "credit"] == [
        Decimal("-3.09"),
        Decimal("-0.33"),
    ]
    assert left == 200_000 + 1_000_000 + 100_000 + 50_000 + 33_333
    with billing_store(billed.db) as con:
        generate_invoices(con, catalog, "2026-09", now=GENERATED_AT)
        october = generate_invoices(con, catalog, "2026-10", now=GENERATED_AT).invoices
    [stored] = [i for i in october if i.customer_key == "acme"]
    assert [(ln.kind, ln.amount) for ln in inv.lines] == [
        (ln.kind, ln.amount) for ln in stored.lines
    ]


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


GRANT_CATALOG = """
version: 1
consumers:
  - name: agent-a
  - name: agent-b
  - name: agent-c
features:
  - key: out
    name: Output tokens
    meter: {token_types: [output]}
plans:
  - key: volume
    name: Volume
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: out
        name: Output tokens
        feature: out
        price:
          type: tiered
          mode: volume
          per: 1000
          tiers:
            - {up_to: 10000, unit_amount: "10.00"}
            - {unit_amount: "5.00"}
  - key: minimum
    name: Minimum
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: out
        name: Output tokens
        feature: out
        min_amount: "9.00"
        price: {type: unit, amount: "1.00", per: 1000}
customers:
  - key: vol
    name: Volume Co
    currency: USD
    consumers: [agent-a]
    subscriptions: [{plan: volume, start: "2026-10-01T00:00:00Z"}]
  - key: small
    name: Small Co
    currency: USD
    consumers: [agent-b]
    subscriptions: [{plan: minimum, start: "2026-10-01T00:00:00Z"}]
  - key: big
    name: Big Co
    currency: USD
    consumers: [agent-c]
    subscriptions: [{plan: minimum, start: "2026-10-01T00:00:00Z"}]
"""


def test_a_unit_grant_never_raises_the_bill_and_takes_only_units_that_lower_it(
    tmp_path: Path,
) -> None:
    s = setup(tmp_path, GRANT_CATALOG)
    add_events(
        s.db,
        Event(utc("2026-10-05"), consumer="agent-a", output=11_000),
        Event(utc("2026-10-05"), consumer="agent-b", output=3_000),
        Event(utc("2026-10-05"), consumer="agent-c", output=10_000),
    )
    catalog = s.catalog
    with billing_store(s.db) as con:
        for customer, units in (("vol", 2_000), ("small", 2_000), ("big", 5_000)):
            grant_units(
                con, catalog, customer, "out", units, granted_by="test", reason=customer,
                now=BEFORE,
            )  # fmt: skip
        gen = generate_invoices(con, catalog, "2026-10", now=utc("2026-11-02T00:00:00Z"))
        left = {g.customer_key: g.remaining for g in list_unit_grants(con)}
        consumed = con.execute("SELECT customer_key, amount FROM credit_consumptions").fetchall()
    by = {inv.customer_key: inv for inv in gen.invoices}

    def shown(key: str) -> list[tuple[str, Decimal, Decimal]]:
        return [(ln.kind, ln.quantity, ln.amount) for ln in by[key].lines]

    # Volume tiers: 11,000 units at 5.00/1k = 55.00. All 2,000 units would bill 9,000 at
    # 10.00/1k = 90.00 (more); the lowest price the grant can reach is 10,001 units at
    # 5.00/1k = 50.005 -> 50.01, which takes 999 units: credit 50.01 - 55.00.
    assert shown("vol") == [
        ("usage", Decimal(11_000), Decimal("55.00")),
        ("credit", Decimal(999), Decimal("-4.99")),
    ]
    assert by["vol"].total == Decimal("50.01")
    # Under the minimum: 3,000 units cost 3.00, the minimum bills 9.00, and so would
    # 1,000: the units lower nothing, so none is taken and there is no credit line.
    assert shown("small") == [("usage", Decimal(3_000), Decimal("9.00"))]
    # 10,000 units cost 10.00; 1,000 granted units bring it to the 9.00 minimum, and
    # more would not lower it further: 1,000 are taken, 4,000 kept.
    assert shown("big") == [
        ("usage", Decimal(10_000), Decimal("10.00")),
        ("credit", Decimal(1_000), Decimal("-1.00")),
    ]
    assert left == {"vol": Decimal(1_001), "small": Decimal(2_000), "big": Decimal(4_000)}
    assert sorted((ck, Decimal(a)) for ck, a in consumed) == [
        ("big", Decimal(1_000)),
        ("vol", Decimal(999)),
    ]
