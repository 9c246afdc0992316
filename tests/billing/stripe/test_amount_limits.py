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
BIG_KRW = (
    CATALOG.replace("currency: JPY", "currency: KRW")
    .replace('amount: "1500", per: 1000000', 'amount: "200000000", per: 1000000')
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
