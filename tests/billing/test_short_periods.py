"""Short periods and half-cent ties, through real invoices on real DuckDB files.

Every expected amount is computed here by hand, with exact rationals and the reference's
own half-up rounding (tests/billing/reference.py), never with billing's code: the share of
a short period is ``part / full`` in seconds, it scales flat fees and min/max, and the
line is rounded once.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.documents.invoice_page import invoice_html, minimum_topup
from billing.invoices import generate_invoices
from billing.model import Invoice
from billing.store import billing_store
from tests.billing.events import Event, add_events, setup, utc
from tests.billing.reference import round_half_up

# April 2026 has 30 days: a subscription of 10 days is a 10/30 period.
APRIL = utc("2026-04-01")
MONTH_S = 30 * 86_400


def catalog(
    *,
    fee: str = "19.05",
    unit: str = "1.00",
    min_amount: str | None = None,
    max_amount: str | None = None,
    end: str = "2026-04-11T00:00:00Z",
    currency: str = "USD",
) -> str:
    clamps = "".join(
        f'\n        {name}: "{value}"'
        for name, value in (("min_amount", min_amount), ("max_amount", max_amount))
        if value is not None
    )
    return f"""
version: 1
consumers:
  - name: agent-a
features:
  - key: out
    name: Output
    meter: {{provider: openai, token_types: [output]}}
plans:
  - key: p
    name: P
    currency: {currency}
    rate_cards:
      - key: fee
        name: Fee
        price: {{type: flat, amount: "{fee}", payment_term: in_arrears}}
      - key: out
        name: Output
        feature: out
        price: {{type: unit, amount: "{unit}", per: 1000}}{clamps}
customers:
  - key: c
    name: C
    currency: {currency}
    consumers: [agent-a]
    subscriptions:
      - {{plan: p, start: "2026-04-01T00:00:00Z", end: "{end}"}}
"""


def invoice_of(tmp: Path, text: str, events: list[Event]) -> Invoice:
    s = setup(tmp, text)
    if events:
        add_events(s.db, *events)
    with billing_store(s.db) as con:
        result = generate_invoices(con, s.catalog, "2026-04", now=utc("2026-05-02"))
    (inv,) = result.invoices
    return inv


def amounts(inv: Invoice) -> dict[str, Decimal]:
    return {ln.rate_card_key: ln.amount for ln in inv.lines}


def test_a_10_of_30_period_caps_at_a_third_of_the_maximum(tmp_path: Path) -> None:
    """Issue 7 item 8: max 30.00 over 10 of 30 days caps at 10.00, not 30.00."""
    inv = invoice_of(
        tmp_path,
        catalog(max_amount="30.00", min_amount="3.00"),
        [Event(utc("2026-04-05"), output=50_000)],  # 50,000 * 1.00 / 1000 = 50.00
    )
    assert (inv.period_start, inv.period_end) == (APRIL, utc("2026-04-11"))
    assert amounts(inv) == {
        "fee": Decimal("6.35"),  # 19.05 * 10/30 = 6.35
        "out": Decimal("10.00"),  # min(50.00, 30.00 * 10/30)
    }
    usage = inv.lines[1]
    assert usage.detail["pricing"]["proration_ratio"] == "1/3"
    assert "maximum spend applied" in usage.detail["pricing"]["notes"]
    assert "prorated 10/30 days" in usage.detail["pricing"]["notes"]


def test_a_10_of_30_period_owes_a_third_of_the_minimum(tmp_path: Path) -> None:
    inv = invoice_of(tmp_path, catalog(min_amount="30.00"), [])
    assert amounts(inv)["out"] == Decimal("10.00")  # no usage: 30.00 * 10/30


def test_a_half_cent_share_of_a_fee_rounds_up(tmp_path: Path) -> None:
    """Issue 7 item 9: 19.05 * 7/30 = 4.445 exactly, so 4.45 (ROUND_HALF_UP), not 4.44."""
    inv = invoice_of(tmp_path, catalog(end="2026-04-08T00:00:00Z"), [])
    assert amounts(inv)["fee"] == Decimal("4.45")
    assert inv.lines[0].detail["pricing"]["proration_ratio"] == "7/30"


# --------------------------------------------------------------------------- properties

MINOR = {"USD": 2, "JPY": 0, "KWD": 3}


@dataclass(frozen=True)
class Short:
    """A subscription of ``seconds`` from April 1st, within April's 30 days."""

    seconds: int
    currency: str

    @property
    def share(self) -> Fraction:
        return Fraction(self.seconds, MONTH_S)

    @property
    def end(self) -> str:
        return (APRIL + timedelta(seconds=self.seconds)).isoformat().replace("+00:00", "Z")


shorts = st.builds(
    Short,
    st.one_of(
        st.integers(1, 29).map(lambda d: d * 86_400),  # whole days
        st.integers(1, MONTH_S - 1),  # any second
    ),
    st.sampled_from(sorted(MINOR)),
)


def tie_amount(draw: st.DrawFn, short: Short) -> Fraction:
    """A catalog amount whose share is exactly half a minor unit: ``odd / (2 * 10^e)``.

    ``amount = odd * full / (2 * 10^e * part)``; choosing ``odd`` as a multiple of the odd
    part of ``part`` (not divisible by 5 either, to stay odd after cancelling) keeps the
    amount a finite decimal the catalog accepts (at most 12 places).
    """
    e = MINOR[short.currency]
    share = short.share
    part, full = share.numerator, share.denominator
    core = part
    while core % 2 == 0:
        core //= 2
    while core % 5 == 0:
        core //= 5
    odd = (2 * draw(st.integers(0, 5_000)) + 1) * core
    amount = Fraction(odd * full, 2 * 10**e * part)
    assert amount * share == Fraction(odd, 2 * 10**e)
    return amount


def text(value: Fraction) -> str:
    """An exact decimal string of a terminating fraction."""
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    return str(Decimal(int(value * 10**places)).scaleb(-places))


def catalog_text(value: Fraction) -> str | None:
    """The amount as the catalog accepts it (at most 12 decimals), or None."""
    if value.denominator > 10**12 or (value * 10**12).denominator != 1:
        return None
    return text(value)


@st.composite
def ties(draw: st.DrawFn) -> tuple[Short, Fraction]:
    short = draw(shorts)
    amount = tie_amount(draw, short)
    if catalog_text(amount) is None:  # some second counts need more than 12 decimals
        short = Short(86_400 * draw(st.integers(1, 29)), short.currency)
        amount = tie_amount(draw, short)
    return short, amount


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(ties(), st.sampled_from(["fee", "max", "min"]))
def test_half_unit_ties_of_a_short_period_round_up(tie: tuple[Short, Fraction], where: str) -> None:
    """Shares that land exactly on half a minor unit round up, through a fee, a prorated
    maximum (with usage far above it) and a prorated minimum (with no usage)."""
    short, amount = tie
    value = catalog_text(amount)
    assert value is not None
    exact = amount * short.share  # a true half: round half up gives exact + half a unit
    expected = exact + Fraction(1, 2 * 10 ** MINOR[short.currency])
    kw = {"fee": {"fee": value}, "max": {"max_amount": value}, "min": {"min_amount": value}}
    events = [Event(APRIL + timedelta(seconds=short.seconds // 2), output=10**12)]
    with tempfile.TemporaryDirectory() as tmp:
        inv = invoice_of(
            Path(tmp),
            catalog(end=short.end, currency=short.currency, **kw[where]),
            events if where == "max" else [],
        )
    line = inv.lines[0] if where == "fee" else inv.lines[1]
    assert Fraction(line.amount) == expected == round_half_up(exact, short.currency)


money = st.integers(0, 100_000).map(lambda cents: Fraction(cents, 100))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    shorts,
    money,
    st.integers(0, 200_000),
    st.one_of(st.none(), money),
    st.one_of(st.none(), money),
)
def test_short_period_invoice_equals_a_hand_computation(
    short: Short, fee: Fraction, tokens: int, lo: Fraction | None, hi: Fraction | None
) -> None:
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    unit = Fraction(7, 100)  # 0.07 per 1,000 tokens
    cat = catalog(
        fee=text(fee),
        unit="0.07",
        min_amount=None if lo is None else text(lo),
        max_amount=None if hi is None else text(hi),
        end=short.end,
        currency=short.currency,
    )
    events = [Event(APRIL + timedelta(seconds=short.seconds // 2), output=tokens)]
    with tempfile.TemporaryDirectory() as tmp:
        inv = invoice_of(Path(tmp), cat, events)

    usage = Fraction(tokens) * unit / 1000
    if lo is not None:
        usage = max(usage, lo * short.share)
    if hi is not None:
        usage = min(usage, hi * short.share)
    want = {
        "fee": round_half_up(fee * short.share, short.currency),
        "out": round_half_up(usage, short.currency),
    }
    assert {k: Fraction(v) for k, v in amounts(inv).items()} == want
    assert Fraction(inv.total) == sum(want.values())


def test_late_usage_of_a_short_period_keeps_its_prorated_maximum(tmp_path: Path) -> None:
    """Late usage is priced with the share its period's own invoice used: the 10/30 cap."""
    text = catalog(max_amount="30.00", end="2026-04-11T00:00:00Z") + (
        '      - {plan: p, start: "2026-04-11T00:00:00Z"}\n'
    )
    s = setup(tmp_path, text)
    add_events(
        s.db,
        Event(utc("2026-04-02"), output=6_000),  # 6.00
        Event(utc("2026-04-03"), output=7_000, ingested_at=utc("2026-04-20")),  # late
    )
    with billing_store(s.db) as con:
        (short,) = generate_invoices(
            con, s.catalog, "2026-04", now=utc("2026-04-11T00:00:05")
        ).invoices
        (may,) = generate_invoices(con, s.catalog, "2026-05", now=utc("2026-05-12")).invoices
    assert amounts(short)["out"] == Decimal("6.00")
    late = may.lines[-1]
    assert late.kind == "late_usage"
    # price(13,000 tokens) = 13.00, capped at 30.00 * 10/30 = 10.00; 6.00 already billed
    assert late.amount == Decimal("4.00")
    assert late.detail["late"] == {
        "period": {"start": "2026-04-01T00:00:00Z", "end": "2026-04-11T00:00:00Z"},
        "billed_quantity": "6000",
        "billed_amount": "6.00",
        "total_quantity": "13000",
        "total_amount": "10.00",
    }


PLAN_Q = """
  - key: q
    name: Q
    currency: USD
    rate_cards:
      - key: q-fee
        name: Q fee
        price: {type: flat, amount: "12.00", payment_term: in_advance}
customers:"""


def test_a_plan_changes_first_in_advance_fee_lands_on_the_old_plans_last_invoice(
    tmp_path: Path,
) -> None:
    """README, "Billing periods": the new plan's first in-advance fee is billed at its
    start, i.e. on the invoice of the old plan's last (short) period, not on its own."""
    text = catalog(end="2026-04-11T00:00:00Z").replace("customers:", PLAN_Q, 1) + (
        '      - {plan: q, start: "2026-04-11T00:00:00Z"}\n'
    )
    s = setup(tmp_path, text)
    with billing_store(s.db) as con:
        (last_p,) = generate_invoices(con, s.catalog, "2026-04", now=utc("2026-05-20")).invoices
        (first_q,) = generate_invoices(con, s.catalog, "2026-05", now=utc("2026-05-20")).invoices
    assert [(ln.plan_key, ln.rate_card_key, f"{ln.usage_start:%m-%d}") for ln in last_p.lines] == [
        ("p", "fee", "04-01"),  # in arrears, 10/30 of 19.05 = 6.35
        ("p", "out", "04-01"),
        ("q", "q-fee", "04-11"),  # Q's first period [04-11, 05-11), billed at its start
    ]
    assert last_p.lines[-1].amount == Decimal("12.00")
    assert (first_q.period_start, first_q.period_end) == (utc("2026-04-11"), utc("2026-05-11"))
    assert [(ln.rate_card_key, f"{ln.usage_start:%m-%d}") for ln in first_q.lines] == [
        ("q-fee", "05-11"),  # only the next period's fee, in advance
    ]


def test_the_invoice_page_shows_the_prorated_minimum_exactly(tmp_path: Path) -> None:
    """The top-up row of a 10/30 period with min 30.00 and 2.00 of usage: the minimum is
    10.00 exactly (from the stored ratio 1/3), the top-up 8.00."""
    inv = invoice_of(
        tmp_path, catalog(min_amount="30.00"), [Event(utc("2026-04-05"), output=2_000)]
    )
    assert minimum_topup(inv.lines[1]) == (Decimal("10"), Decimal("2"), Decimal("8"))
    assert "the minimum is 10.00 USD" in invoice_html(inv)
