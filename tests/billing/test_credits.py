"""Prepaid credits: grants consumed by priority then expiry, a credit line on invoices
(never below zero) and the same line carried to Stripe as a negative item."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from billing.cli import main as billing_cli
from billing.credits import grant_credits, list_grants
from billing.invoices import generate_invoices, get_invoice
from billing.store import billing_store
from meterline.catalog import load_catalog
from tests.billing.cli.runner import run
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


def credited_store(tmp_path: Path) -> Billed:
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(CATALOG, encoding="utf-8")
    catalog = load_catalog(catalog_path)
    db = tmp_path / "meterline.duckdb"
    with billing_store(db, create=True) as con:
        for n, (consumer, inp, out, day) in enumerate(USAGE):
            _insert_event(con, n, consumer, inp, out, day)

        def grant(
            amount: str, priority: int, expires: datetime | None, why: str, at: datetime = BEFORE
        ) -> str:
            g = grant_credits(
                con, catalog, "acme", Decimal(amount), granted_by="test", reason=why,
                priority=priority, expires_at=expires, now=at,
            )  # fmt: skip
            return g.grant_id

        grant("20.00", 5, datetime(2027, 1, 1, tzinfo=UTC), "later expiry")
        grant("100.00", 5, datetime(2026, 12, 1, tzinfo=UTC), "sooner expiry")
        grant("10.00", 1, None, "first by priority")
        grant("5.00", 0, BEFORE, "expired before the period", at=datetime(2026, 9, 1, tzinfo=UTC))
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


def _grant_store(tmp_path: Path) -> Billed:
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(CATALOG, encoding="utf-8")
    db = tmp_path / "meterline.duckdb"
    with billing_store(db, create=True):
        pass
    return Billed(db, catalog_path)


def test_an_amount_in_exponent_notation_is_stored_as_the_amount_it_means(tmp_path: Path) -> None:
    """``1E+3`` is 1000.00 (DuckDB's binding reads a positive-exponent Decimal as 1.00)."""
    billed = _grant_store(tmp_path)
    catalog = load_catalog(billed.catalog)
    with billing_store(billed.db) as con:
        for text in ("1E+3", "5E+1", "2.5E+2"):
            g = grant_credits(
                con, catalog, "acme", Decimal(text), granted_by="test", reason=text, now=BEFORE
            )
            assert str(g.amount) == f"{Decimal(text):.2f}"
        listed = [(g.reason, g.amount, g.remaining) for g in list_grants(con, "acme")]
        stored = [
            r[0] for r in con.execute("SELECT amount FROM credit_grants ORDER BY seq").fetchall()
        ]
    assert listed == [
        ("1E+3", Decimal("1000.00"), Decimal("1000.00")),
        ("5E+1", Decimal("50.00"), Decimal("50.00")),
        ("2.5E+2", Decimal("250.00"), Decimal("250.00")),
    ]
    assert stored == [Decimal(1000), Decimal(50), Decimal(250)]
    result = CliRunner().invoke(
        billing_cli,
        ["--db", str(billed.db), "--catalog", str(billed.catalog), "credits", "grant",
         "--customer", "acme", "--amount", "1E+3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("grant-000004: 1000.00 USD to acme (priority 10)")


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("NaN", "Error: --amount 'NaN' is not a number such as 50.00"),
        ("sNaN", "Error: --amount 'sNaN' is not a number such as 50.00"),
        ("Infinity", "Error: --amount 'Infinity' is not a number such as 50.00"),
        ("-inf", "Error: --amount '-inf' is not a number such as 50.00"),
        # Decimal() takes other scripts' digits and blanks: granted 30.00 from '٣٠'
        ("٣٠", "Error: --amount '٣٠' is not a number such as 50.00"),
        ("5\n", "Error: --amount '5\\n' is not a number such as 50.00"),
        ("5 0", "Error: --amount '5 0' is not a number such as 50.00"),
        (
            "1E+26",
            "Error: 100000000000000000000000000.00 USD is too large for a grant "
            "(at most 26 digits before the point)",
        ),
        (
            "123456789012345678901234567.00",
            "Error: 123456789012345678901234567.00 USD is too large for a grant "
            "(at most 26 digits before the point)",
        ),
    ],
)
def test_an_amount_that_is_not_a_finite_storable_number_is_one_line(
    tmp_path: Path, amount: str, message: str
) -> None:
    billed = _grant_store(tmp_path)
    result = CliRunner().invoke(
        billing_cli,
        ["--db", str(billed.db), "--catalog", str(billed.catalog), "credits", "grant",
         "--customer", "acme", "--amount", amount],
    )  # fmt: skip
    assert (result.exit_code, result.output) == (1, message + "\n")
    with billing_store(billed.db) as con:
        assert list_grants(con) == []


def test_an_amount_of_26_digits_before_the_point_is_granted(tmp_path: Path) -> None:
    """The documented limit: 26 digits before the point are stored, 27 refused (the docs
    said 26 were refused)."""
    billed = _grant_store(tmp_path)
    amount = "9" * 26 + ".00"
    result = CliRunner().invoke(
        billing_cli,
        ["--db", str(billed.db), "--catalog", str(billed.catalog), "credits", "grant",
         "--customer", "acme", "--amount", amount],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with billing_store(billed.db) as con:
        assert [g.amount for g in list_grants(con)] == [Decimal(amount)]


def test_a_grant_that_expires_at_the_period_end_covers_that_periods_invoice(
    tmp_path: Path,
) -> None:
    """The proxy admits usage against a grant until it expires; the invoice for that
    usage is made after the period, when the grant has expired: it still takes from it
    (before, the grant was judged at generation time: billed in full, the credit lost)."""
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(CATALOG, encoding="utf-8")
    catalog = load_catalog(catalog_path)
    with billing_store(tmp_path / "meterline.duckdb", create=True) as con:
        for n, (consumer, inp, out, day) in enumerate(USAGE):
            _insert_event(con, n, consumer, inp, out, day)
        grant_credits(
            con, catalog, "acme", Decimal("1000.00"), granted_by="test", reason="October",
            expires_at=datetime(2026, 11, 1, tzinfo=UTC), now=BEFORE,
        )  # fmt: skip
        assert datetime(2026, 11, 1, tzinfo=UTC) < GENERATED_AT
        generated = generate_invoices(con, catalog, "2026-10", now=GENERATED_AT).invoices
        [inv] = [i for i in generated if i.customer_key == "acme"]
        [grant] = list_grants(con, "acme")
    [credit] = [ln for ln in inv.lines if ln.kind == "credit"]
    assert credit.amount == Decimal("-55.42") and inv.total == 0
    assert grant.remaining == Decimal("944.58")


def test_credit_can_be_granted_before_the_first_call(tmp_path: Path) -> None:
    """A prepaid customer is given credit before any traffic: the store is made then (a
    private DuckDB file the proxy later appends to), not refused as "no such database"."""
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(CATALOG, encoding="utf-8")
    db = tmp_path / "meterline.duckdb"
    base = ["--db", str(db), "--catalog", str(catalog_path), "credits"]
    result = CliRunner().invoke(
        billing_cli, [*base, "grant", "--customer", "acme", "--amount", "50.00"]
    )
    assert result.exit_code == 0, result.output
    assert db.stat().st_mode & 0o777 == 0o600
    listed = CliRunner().invoke(billing_cli, [*base, "list", "--customer", "acme"])
    assert "acme: balance 50.00 USD" in listed.output
    with billing_store(db) as con:  # the proxy's table is there, as the proxy makes it
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)


def test_credits_list_shows_money_in_its_decimals_and_refuses_an_unknown_customer(
    tmp_path: Path,
) -> None:
    billed = credited_store(tmp_path)  # acme's grants: one expired, one used up, two left
    base = ["--db", str(billed.db), "--catalog", str(billed.catalog), "credits", "list"]
    listed = CliRunner().invoke(billing_cli, [*base, "--customer", "acme", "--format", "json"])
    remaining = {g["reason"]: g["remaining"] for g in json.loads(listed.output)}
    # used up, and expired (the others depend on today's date: only their form is checked)
    assert (remaining["first by priority"], remaining["expired before the period"]) == (
        "0.00",
        "0.00",
    )
    assert all(re.fullmatch(r"\d+\.\d\d", v) for v in remaining.values())
    unknown = CliRunner().invoke(billing_cli, [*base, "--customer", "nosuch"])
    assert unknown.exit_code == 1 and unknown.output.startswith("Error: unknown customer 'nosuch'")


@pytest.mark.parametrize(
    ("currency", "fee", "grant", "credit", "total", "grants"),
    [
        ("USD", "15.00", "20.00", ["-15.00", "-5.00"], ["0.00", "10.00"], ["15.00", "5.00"]),
        ("JPY", "7", "12", ["-7", "-5"], ["0", "2"], ["7", "5"]),
    ],
)
def test_a_grant_used_before_credits_the_next_invoice_in_the_currency_decimals(
    tmp_path: Path,
    currency: str,
    fee: str,
    grant: str,
    credit: list[str],
    total: list[str],
    grants: list[str],
) -> None:
    """What a grant has left after an invoice took from it is read back from a 12-decimal
    column; the next invoice's credit line, total and ``detail.grants`` are still money
    in the currency's decimals, in ``generate``'s output as in ``show``'s."""
    s = setup(
        tmp_path,
        f"""
        version: 1
        consumers: [{{name: agent-a}}]
        features: []
        plans:
          - key: monthly
            name: Monthly
            currency: {currency}
            billing_cadence: P1M
            rate_cards:
              - key: fee
                name: Fee
                price: {{type: flat, amount: "{fee}", payment_term: in_arrears}}
        customers:
          - key: acme
            name: Acme
            currency: {currency}
            consumers: [agent-a]
            subscriptions: [{{plan: monthly, start: "2024-01-01T00:00:00Z"}}]
        """,
    )
    add_events(s.db, Event(utc("2024-01-05")))
    assert run(s, "credits", "grant", "--customer", "acme", "--amount", grant).exit_code == 0
    for n, month in enumerate(["2024-01", "2024-02"]):
        out = run(s, "invoice", "generate", "--period", month, "--format", "json")
        [inv] = json.loads(out.output)["invoices"]
        shown = json.loads(run(s, "invoice", "show", inv["number"], "--format", "json").output)
        for doc in (inv, shown):
            [line] = [ln for ln in doc["lines"] if ln["kind"] == "credit"]
            assert (line["amount"], doc["total"]) == (credit[n], total[n])
            assert [g["amount"] for g in line["detail"]["grants"]] == [grants[n]]
        table = run(s, "invoice", "generate", "--period", month).output
        assert "000000000" not in table


def test_an_amount_with_blanks_around_it_is_the_number(tmp_path: Path) -> None:
    billed = _grant_store(tmp_path)
    result = CliRunner().invoke(
        billing_cli,
        ["--db", str(billed.db), "--catalog", str(billed.catalog), "credits", "grant",
         "--customer", "acme", "--amount", " 5.00 "],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("grant-000001: 5.00 USD to acme")


def test_a_grant_that_creates_the_store_says_so(tmp_path: Path) -> None:
    """A grant may come before the proxy's first event, so it creates the store: it did
    so silently, and a mistyped --db put the grant where nothing reads it."""
    s = setup(tmp_path)
    typo = tmp_path / "meterlin.duckdb"
    opts = ["--db", str(typo), "--catalog", str(s.catalog_path)]
    grant = ["credits", "grant", "--customer", "alpha", "--amount", "5"]
    first = CliRunner().invoke(billing_cli, [*opts, *grant], catch_exceptions=False)
    assert first.exit_code == 0, first.stderr
    assert first.stderr == (
        f"Note: {typo} did not exist: created a new, empty store "
        "(point the proxy's meter_db at it)\n"
    )
    again = CliRunner().invoke(billing_cli, [*opts, *grant], catch_exceptions=False)
    assert again.exit_code == 0, again.stderr
    assert again.stderr == ""
