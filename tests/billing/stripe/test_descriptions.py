"""Invoice item descriptions in Stripe tell the truth about the item's amount.

A description prints ``Q × P`` only when Q x P, rounded like the line, is the item's
amount: included units are taken off first, a long unit price is rounded to the fewest
decimals that still give the amount, and a discount, minimum or proration is named instead
of an arithmetic it would contradict. Read back from the fake Stripe with the SDK.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from billing.cli import main as billing_cli
from billing.invoices import generate_invoices
from billing.store import billing_store
from meterline.catalog import load_catalog
from tests.billing.events import Event, add_events, utc
from tests.billing.stripe.conftest import Billed, client_for, make_billed
from tests.fakestripe import DEFAULT_API_KEY, FakeStripe

CATALOG = """\
version: 1
consumers:
  - name: agent-a
  - name: agent-b
  - name: agent-c
features:
  - key: tokens-in
    name: Input tokens
    meter: {token_types: [input]}
plans:
  - key: p
    name: P
    currency: USD
    rate_cards:
      - key: fee
        name: Platform fee
        price: {type: flat, amount: "31.00", payment_term: in_arrears}
      - key: incl
        name: Input (100k included)
        feature: tokens-in
        included: 100000
        price: {type: unit, amount: "3.00", per: 1000000}
      - key: minc
        name: Input (minimum)
        feature: tokens-in
        min_amount: "10.00"
        price: {type: unit, amount: "3.00", per: 1000000}
      - key: disc
        name: Input (10% off)
        feature: tokens-in
        discount_percent: "10"
        price: {type: unit, amount: "3.00", per: 1000000}
      - key: sevenths
        name: Input (per 7)
        feature: tokens-in
        price: {type: unit, amount: "1.00", per: 7}
customers:
  - key: acme
    name: Acme Corp
    currency: USD
    consumers: [agent-a]
    subscriptions:
      - {plan: p, start: "2026-10-01T00:00:00Z", end: "2026-10-15T00:00:00Z"}
"""


def _synced_items(billed: Billed) -> dict[str, int]:
    """October's invoice synced to a fake Stripe: its items' descriptions and amounts."""
    with FakeStripe() as fake:
        result = CliRunner().invoke(
            billing_cli,
            ["--db", str(billed.db), "--catalog", str(billed.catalog), "stripe", "sync",
             "--period", "2026-10", "--api-base", fake.url, "--max-network-retries", "0"],
            env={"STRIPE_API_KEY": DEFAULT_API_KEY},
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        [inv] = client_for(fake).v1.invoices.list().data
        return {ln.description: ln.amount for ln in inv.lines.data}


def test_item_descriptions_never_imply_another_amount(tmp_path: Path) -> None:
    billed = make_billed(tmp_path, CATALOG)  # agent-a: 1,234,567 input tokens on Oct 5
    items = _synced_items(billed)
    assert items == {
        # 14 of October's 31 days (the subscription ends on the 15th): 31.00 x 14/31
        "Platform fee (2026-10-01 – 2026-10-15) (1 unit; prorated 14/31 days)": 1400,
        # 1,134,567 x 0.000003 = 3.403701 (not 1,234,567 x 0.000003 = 3.70)
        "Input (100k included) (1234567 units, 100000 included: 1134567 × 0.000003 USD)": 340,
        # 3.70 of usage, under the minimum 10.00 x 14/31 = 4.516...
        "Input (minimum) (1234567 units; prorated 14/31 days; minimum spend applied)": 452,
        "Input (10% off) (1234567 units; discount 10%)": 333,
        # 1/7 per token, shown with the fewest decimals that give 176,366.71
        "Input (per 7) (1234567 × 0.14285714 USD)": 17636671,
    }
    for text, amount in items.items():
        if m := re.search(r"\(.*?(\d+) × ([\d.]+) USD\)", text):
            billed_units, price = Decimal(m[1]), Decimal(m[2])
            implied = (billed_units * price).quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
            assert int(implied * 100) == amount, text


def test_a_long_rate_card_name_is_shortened_to_stripes_500_characters(tmp_path: Path) -> None:
    """A 440-character rate card name made a 465-character item description, which
    Stripe refuses (the fake now does too): the name is shortened, the figures kept."""
    long_name = "Input with a very long name " * 20  # 560 characters
    catalog = CATALOG.replace("name: Input (10% off)", f"name: {long_name.strip()!r}")
    items = _synced_items(make_billed(tmp_path, catalog))
    [text] = [t for t in items if t.startswith("Input w")]
    assert len(text) == 500 and text.endswith("… (1234567 units; discount 10%)")


LATE_CATALOG = """\
version: 1
consumers:
  - name: c-kw
features:
  - key: f
    name: Output tokens
    meter: {token_types: [output]}
plans:
  - key: kwd
    name: KWD plan
    currency: KWD
    rate_cards:
      - key: out
        name: Output
        feature: f
        price: {type: unit, amount: "0.0123", per: 1000}
customers:
  - key: kw
    name: Kuwait Co
    currency: KWD
    consumers: [c-kw]
    subscriptions: [{plan: kwd, start: "2026-10-01T00:00:00Z"}]
"""


def test_a_late_lines_description_never_shows_a_price_other_than_the_rate_cards(
    tmp_path: Path,
) -> None:
    """777 late tokens at the card's 0.0000123 KWD charge 0.009 KWD (0.161 for all 13122
    less the 0.152 billed before), not 777 x 0.0000123 rounded (0.010): the description
    names the units, never a rounded ``0.000012`` that is not the card's price."""
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(LATE_CATALOG, encoding="utf-8")
    db = tmp_path / "meterline.duckdb"
    catalog = load_catalog(catalog_path)
    add_events(db, Event(utc("2026-10-05T12:00:00"), consumer="c-kw", output=12345))
    with billing_store(db) as con:
        generate_invoices(con, catalog, "2026-10", now=utc("2026-11-02T00:00:00"))
    add_events(
        db,
        Event(utc("2026-10-07T12:00:00"), consumer="c-kw", output=777,
              ingested_at=utc("2026-11-03T00:00:00")),
        Event(utc("2026-11-03T12:00:00"), consumer="c-kw", output=1001),
    )  # fmt: skip
    with billing_store(db) as con:
        generate_invoices(con, catalog, "2026-11", now=utc("2026-12-02T00:00:00"))
    with FakeStripe() as fake:
        result = CliRunner().invoke(
            billing_cli,
            ["--db", str(db), "--catalog", str(catalog_path), "stripe", "sync",
             "--period", "2026-11", "--api-base", fake.url, "--max-network-retries", "0"],
            env={"STRIPE_API_KEY": DEFAULT_API_KEY},
            catch_exceptions=False,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        [inv] = client_for(fake).v1.invoices.list().data
        items = {ln.description: ln.amount for ln in inv.lines.data}
    late = {d: a for d, a in items.items() if "late usage" in d}
    assert late == {next(iter(late)): 9}
    [description] = late
    assert description.endswith("(777 units)"), description
    assert "0.000012 " not in description
