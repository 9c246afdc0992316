"""Stripe's 8-digit amount limit is checked before sending: an invoice with an item above
99,999,999 minor units is refused (dry run too) and nothing of it reaches the fake Stripe,
which refuses such an item (``amount_too_large``) as Stripe does; the others sync."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from billing.cli import main as billing_cli
from tests.billing.stripe.conftest import CATALOG, Billed, client_for, make_billed
from tests.fakestripe import DEFAULT_API_KEY, FakeStripe

# umbrella bills in KRW, its output tokens at 200,000,000 KRW per million: 777,777 tokens
# make a 155,555,400 KRW line, over Stripe's 99,999,999.
BIG_KRW = CATALOG.replace("currency: JPY", "currency: KRW").replace(
    'amount: "1500", per: 1000000', 'amount: "200000000", per: 1000000'
)


def _sync(billed: Billed, fake: FakeStripe, *extra: str) -> Result:
    return CliRunner().invoke(
        billing_cli,
        ["--db", str(billed.db), "--catalog", str(billed.catalog), "stripe", "sync",
         "--period", "2026-10", "--api-base", fake.url, "--max-network-retries", "0", *extra],
        env={"STRIPE_API_KEY": DEFAULT_API_KEY},
        catch_exceptions=False,
    )  # fmt: skip


def test_an_item_over_stripes_amount_limit_is_refused_before_sending(tmp_path: Path) -> None:
    billed = make_billed(tmp_path, BIG_KRW)
    with FakeStripe() as fake:
        dry = _sync(billed, fake, "--dry-run")
        assert dry.exit_code == 1
        assert (
            "INV-000003  umbrella  NOT SENT: line 2 (Output tokens) is 155555400 KRW, but "
            "Stripe allows at most 99999999 minor units (99999999 KRW) per invoice item"
        ) in dry.output
        assert "Error: 1 invoice(s) not sent: INV-000003" in dry.output

        for _ in range(2):  # a rerun refuses it the same way, still sending nothing
            real = _sync(billed, fake)
            assert real.exit_code == 1, real.output
            assert "INV-000003  umbrella  NOT SENT: line 2 (Output tokens)" in real.output
        client = client_for(fake)
        invoices = client.v1.invoices.list({"limit": 100}).data
        assert sorted(i.metadata["meterline_invoice"] for i in invoices) == [
            "INV-000001",
            "INV-000002",
        ]
        assert all(i.status == "open" for i in invoices)
        items = client.v1.invoice_items.list({"limit": 100}).data
        assert all(i.currency != "krw" for i in items)
        customers = client.v1.customers.list({"limit": 100}).data
        assert "umbrella" not in {c.metadata["meterline_customer"] for c in customers}


# umbrella bills in KWD: a 10.125 KWD fee and 777,777 output tokens at 1.500 KWD per
# million (1166.666 KWD), thousandths Stripe wants rounded to tens for payments.
KWD = CATALOG.replace("currency: JPY", "currency: KWD").replace(
    'amount: "5000", payment_term', 'amount: "10.125", payment_term'
)


def test_a_three_decimal_invoice_not_in_tens_gets_a_note_and_is_sent_as_billed(
    tmp_path: Path,
) -> None:
    billed = make_billed(tmp_path, KWD)
    note = (
        "INV-000003  umbrella  NOTE: total 1176.791 KWD, line(s) 1, 2 not a multiple of 10 "
        "minor units; Stripe wants KWD amounts rounded to the nearest ten for payments and "
        "may refuse to charge this invoice; sent as billed"
    )
    with FakeStripe() as fake:
        dry = _sync(billed, fake, "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert note in dry.output.splitlines()
        real = _sync(billed, fake)
        assert real.exit_code == 0, real.output
        assert note in real.output.splitlines()
        assert sum("NOTE" in line for line in real.output.splitlines()) == 1  # USD: none
        [kwd] = [i for i in client_for(fake).v1.invoices.list().data if i.currency == "kwd"]
        assert (kwd.status, kwd.total) == ("open", 1176791)
