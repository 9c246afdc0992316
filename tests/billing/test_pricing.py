"""price_rate_card against the brute-force reference, identities between charge models,
the order of operations, and the worked examples of docs/billing.md, "Pricing"."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing import PricedLine, price_rate_card
from meterline.catalog import RateCard
from meterline.periods import Period, proration
from tests.billing.reference import price_reference, round_half_up, subtotal_reference

D = Decimal
MAX_QTY = 5_000
START = datetime(2026, 1, 31, 12, tzinfo=UTC)

# --------------------------------------------------------------------------- strategies


def money(max_places: int = 6, max_value: int = 50) -> st.SearchStrategy[Decimal]:
    """Non-negative catalog amounts with up to ``max_places`` decimals."""
    return st.builds(
        lambda units, places: D(units).scaleb(-places),
        st.integers(0, max_value * 10**max_places),
        st.integers(0, max_places),
    )


pers = st.sampled_from([1, 1, 2, 3, 7, 10, 100, 1000])
quantities = st.integers(0, MAX_QTY)
currencies = st.sampled_from(["USD", "USD", "JPY", "KWD", "EUR"])


@st.composite
def tier_lists(draw: st.DrawFn, flat: bool = True) -> list[dict[str, Any]]:
    bounds = sorted(draw(st.sets(st.integers(1, 4_000), min_size=0, max_size=4)))
    tiers: list[dict[str, Any]] = []
    for bound in [*bounds, None]:
        tier: dict[str, Any] = {"unit_amount": str(draw(money()))}
        if bound is not None:
            tier["up_to"] = bound
        if flat and draw(st.booleans()):
            tier["flat_amount"] = str(draw(money(2, 20)))
        tiers.append(tier)
    return tiers


def card(price: dict[str, Any], **extra: Any) -> RateCard:
    body: dict[str, Any] = {"key": "c", "name": "C", "price": price, **extra}
    if price["type"] != "flat":
        body.setdefault("feature", "f")
    return RateCard.model_validate(body)


@st.composite
def card_extras(draw: st.DrawFn, allowance: bool = True) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if allowance and draw(st.booleans()):
        extra["included"] = draw(st.integers(0, 2_000))
    if draw(st.booleans()):
        extra["discount_percent"] = str(draw(st.sampled_from([D(0), D(10), D("12.5"), D(100)])))
    lo, hi = draw(st.one_of(st.none(), money(2, 100))), draw(st.one_of(st.none(), money(2, 100)))
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    if lo is not None:
        extra["min_amount"] = str(lo)
    if hi is not None:
        extra["max_amount"] = str(hi)
    return extra


unit_prices = st.builds(lambda a, p: {"type": "unit", "amount": str(a), "per": p}, money(), pers)
package_prices = st.builds(
    lambda a, s: {"type": "package", "amount": str(a), "package_size": s},
    money(),
    st.integers(1, 1_500),
)


def tiered_prices(mode: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda t, p: {"type": "tiered", "mode": mode, "per": p, "tiers": t}, tier_lists(), pers
    )


# --------------------------------------------------------------------------- helpers


def terminating(value: Fraction) -> bool:
    d = value.denominator
    for prime in (2, 5):
        while d % prime == 0:
            d //= prime
    return d == 1


def assert_matches_reference(
    c: RateCard, qty: int, currency: str, proration: Fraction = Fraction(1)
) -> None:
    line = price_rate_card(c, qty, currency=currency, proration=proration)
    ref = price_reference(c, qty, currency, proration)
    assert Fraction(line.amount) == ref.amount
    assert line.proration == (1 if getattr(c.price, "prorate", True) is False else proration)
    for got, want in ((line.subtotal, ref.subtotal), (line.discount, ref.discount)):
        if terminating(want):
            assert Fraction(got) == want  # exact when the true value has a finite expansion
        else:
            assert abs(Fraction(got) - want) <= Fraction(1, 10**40) * max(Fraction(1), abs(want))
    assert line.billable_quantity == max(0, qty - c.included)


def priced(
    price: dict[str, Any], qty: int | Decimal, currency: str = "USD", **extra: Any
) -> PricedLine:
    return price_rate_card(card(price, **extra), qty, currency=currency)


# --------------------------------------------------------------------------- reference


@settings(max_examples=150, deadline=None)
@given(unit_prices, quantities, currencies, card_extras())
def test_unit_price_equals_reference(price: dict, qty: int, cur: str, extra: dict) -> None:
    assert_matches_reference(card(price, **extra), qty, cur)


def near_a_bound(data: st.DataObject, price: dict, extra: dict) -> int:
    """Half the time a quantity whose billable part sits on a tier bound or right next to it."""
    bounds = [t["up_to"] for t in price["tiers"] if "up_to" in t]
    if not bounds or data.draw(st.booleans()):
        return data.draw(quantities)
    billable = data.draw(st.sampled_from(bounds)) + data.draw(st.sampled_from([-1, 0, 1]))
    return billable + extra.get("included", 0)


@settings(max_examples=150, deadline=None)
@given(tiered_prices("graduated"), currencies, card_extras(), st.data())
def test_graduated_equals_reference(price: dict, cur: str, extra: dict, data: Any) -> None:
    assert_matches_reference(card(price, **extra), near_a_bound(data, price, extra), cur)


@settings(max_examples=150, deadline=None)
@given(tiered_prices("volume"), currencies, card_extras(), st.data())
def test_volume_equals_reference(price: dict, cur: str, extra: dict, data: Any) -> None:
    assert_matches_reference(card(price, **extra), near_a_bound(data, price, extra), cur)


@settings(max_examples=150, deadline=None)
@given(package_prices, currencies, card_extras(), st.data())
def test_package_equals_reference(price: dict, cur: str, extra: dict, data: Any) -> None:
    size = price["package_size"]
    near_edge = size * data.draw(st.integers(0, MAX_QTY // size)) + data.draw(
        st.sampled_from([-1, 0, 1])
    )
    qty = data.draw(
        st.sampled_from([max(0, near_edge) + extra.get("included", 0), data.draw(quantities)])
    )
    assert_matches_reference(card(price, **extra), qty, cur)


@settings(max_examples=100, deadline=None)
@given(
    money(2, 500),
    st.booleans(),
    st.integers(1, 3),
    st.fractions(0, 1, max_denominator=31 * 86_400),
    currencies,
    card_extras(allowance=False),
)
def test_flat_equals_reference(
    amount: Decimal, prorate: bool, qty: int, share: Fraction, cur: str, extra: dict
) -> None:
    price = {"type": "flat", "amount": str(amount), "prorate": prorate}
    assert_matches_reference(card(price, **extra), qty, cur, share)


# --------------------------------------------------------------------------- identities


@settings(max_examples=100, deadline=None)
@given(money(), pers, quantities, st.integers(0, 2_000))
def test_single_tier_graduated_equals_volume_equals_unit(
    amount: Decimal, per: int, qty: int, included: int
) -> None:
    tiers = [{"unit_amount": str(amount)}]
    lines = [
        priced({"type": "tiered", "mode": mode, "per": per, "tiers": tiers}, qty, included=included)
        for mode in ("graduated", "volume")
    ]
    lines.append(
        priced({"type": "unit", "amount": str(amount), "per": per}, qty, included=included)
    )
    assert len({line.subtotal for line in lines}) == 1
    assert len({line.amount for line in lines}) == 1


@st.composite
def monotone_tiers(draw: st.DrawFn, decreasing: bool) -> list[dict[str, Any]]:
    tiers = draw(tier_lists(flat=decreasing))
    amounts = sorted((D(t["unit_amount"]) for t in tiers), reverse=decreasing)
    for tier, amount in zip(tiers, amounts, strict=True):
        tier["unit_amount"] = str(amount)
    return tiers


@settings(max_examples=100, deadline=None)
@given(monotone_tiers(decreasing=True), pers, quantities)
def test_volume_at_most_graduated_when_tier_prices_decrease(
    tiers: list, per: int, qty: int
) -> None:
    """Volume bills every unit at the last (cheapest) tier reached and only its flat amount."""
    graduated = priced({"type": "tiered", "mode": "graduated", "per": per, "tiers": tiers}, qty)
    volume = priced({"type": "tiered", "mode": "volume", "per": per, "tiers": tiers}, qty)
    assert volume.subtotal <= graduated.subtotal


@settings(max_examples=100, deadline=None)
@given(monotone_tiers(decreasing=False), pers, quantities)
def test_volume_at_least_graduated_when_tier_prices_increase(
    tiers: list, per: int, qty: int
) -> None:
    """Without flat amounts, volume bills every unit at the dearest tier reached."""
    graduated = priced({"type": "tiered", "mode": "graduated", "per": per, "tiers": tiers}, qty)
    volume = priced({"type": "tiered", "mode": "volume", "per": per, "tiers": tiers}, qty)
    assert volume.subtotal >= graduated.subtotal


@settings(max_examples=100, deadline=None)
@given(money(), st.integers(1, 500), st.integers(0, 10), currencies)
def test_package_equals_unit_for_whole_packages(
    amount: Decimal, size: int, n: int, cur: str
) -> None:
    qty = size * n
    package = priced({"type": "package", "amount": str(amount), "package_size": size}, qty, cur)
    unit = priced({"type": "unit", "amount": str(amount), "per": size}, qty, cur)
    assert package.subtotal == unit.subtotal
    assert package.amount == unit.amount


@settings(max_examples=100, deadline=None)
@given(tiered_prices("graduated"), quantities, st.integers(0, 3_000))
def test_included_allowance_shifts_the_graduated_curve(
    price: dict, qty: int, included: int
) -> None:
    with_allowance = priced(price, qty, included=included)
    shifted = priced(price, max(0, qty - included))
    assert with_allowance.subtotal == shifted.subtotal
    assert with_allowance.tiers == shifted.tiers


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(unit_prices, tiered_prices("graduated"), package_prices), quantities, card_extras()
)
def test_discount_then_clamp_then_round(price: dict, qty: int, extra: dict) -> None:
    """The documented order: discount on the subtotal, then min/max, then one rounding."""
    c = card(price, **extra)
    line = price_rate_card(c, qty, currency="USD")
    subtotal = subtotal_reference(c, qty)  # exact: line.subtotal is a 50-digit Decimal
    discount = subtotal * Fraction(c.discount_percent) / 100
    assert abs(Fraction(line.discount) - discount) <= Fraction(1, 10**40) * max(
        Fraction(1), subtotal
    )
    net = subtotal - discount
    if c.min_amount is not None:
        net = max(net, Fraction(c.min_amount))
    if c.max_amount is not None:
        net = min(net, Fraction(c.max_amount))
    assert Fraction(line.amount) == round_half_up(net, "USD")
    assert ("minimum spend applied" in line.notes) == (
        c.min_amount is not None and subtotal - discount < c.min_amount
    )


@settings(max_examples=100, deadline=None)
@given(
    money(2, 1_000),
    st.integers(1, 31),
    st.sampled_from([28, 29, 30, 31]),
    money(2, 100),
    money(2, 100),
)
def test_clamps_are_prorated_with_the_line(
    amount: Decimal, days: int, month: int, lo: Decimal, hi: Decimal
) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    share = Fraction(min(days, month), month)
    c = card(
        {"type": "unit", "amount": str(amount), "per": 1000},
        min_amount=str(lo),
        max_amount=str(hi),
    )
    line = price_rate_card(c, 1_000, currency="USD", proration=share)
    assert line.subtotal == amount  # usage itself is not prorated
    expected = min(max(Fraction(amount), Fraction(lo) * share), Fraction(hi) * share)
    assert Fraction(line.amount) == round_half_up(expected, "USD")


@settings(max_examples=150, deadline=None)
@given(money(2, 500), st.sampled_from([28, 29, 30, 31, 7, 365]), st.data(), currencies)
def test_flat_fee_split_prorates_to_the_whole(
    amount: Decimal, days: int, data: Any, cur: str
) -> None:
    """Two parts of a period add up to the whole fee: exactly before rounding, and to the
    minor unit after rounding whenever the parts need no rounding themselves."""
    split = data.draw(st.integers(0, days))
    price = {"type": "flat", "amount": str(amount)}
    whole = priced(price, 1, cur)
    full = Period(START, START + timedelta(days=days))
    cut = START + timedelta(days=split)
    parts = [
        price_rate_card(card(price), 1, currency=cur, proration=proration(full, lo, hi))
        for lo, hi in ((full.start, cut), (cut, full.end))
    ]
    exact = sum(Fraction(p.subtotal) for p in parts)
    assert abs(exact - Fraction(amount)) <= Fraction(1, 10**45)
    assert abs(sum(p.amount for p in parts) - whole.amount) <= D(1).scaleb(
        -{"JPY": 0, "KWD": 3}.get(cur, 2)
    )
    if all(p.subtotal == p.amount for p in parts):
        assert sum(p.amount for p in parts) == whole.amount


# --------------------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    ("unit_amount", "currency", "expected"),
    [
        ("0.005", "USD", "0.01"),
        ("0.0049", "USD", "0.00"),
        ("0.015", "USD", "0.02"),
        ("0.025", "USD", "0.03"),  # banker's rounding (half-even) would give 0.02
        ("0.5", "JPY", "1"),
        ("1.49", "JPY", "1"),
        ("2.5", "JPY", "3"),
        ("0.0005", "KWD", "0.001"),
        ("0.00049", "KWD", "0.000"),
    ],
)
def test_rounds_half_up_to_the_minor_unit(unit_amount: str, currency: str, expected: str) -> None:
    line = priced({"type": "unit", "amount": unit_amount}, 1, currency)
    assert line.subtotal == D(unit_amount)
    assert str(line.amount) == expected


def test_rounds_once_at_the_end_of_the_line() -> None:
    """Two graduated tiers of 0.004 each: 0.008 -> 0.01, not 0.00 + 0.00."""
    tiers = [{"up_to": 1, "unit_amount": "0.004"}, {"unit_amount": "0.004"}]
    line = priced({"type": "tiered", "mode": "graduated", "tiers": tiers}, 2)
    assert [t.amount for t in line.tiers] == [D("0.004"), D("0.004")]
    assert line.amount == D("0.01")


# --------------------------------------------------------------------------- tiers in detail

TIERS = [
    {"up_to": 1000, "unit_amount": "2.00", "flat_amount": "1.00"},
    {"up_to": 5000, "unit_amount": "1.00", "flat_amount": "5.00"},
    {"unit_amount": "0.50"},
]


@pytest.mark.parametrize("mode", ["graduated", "volume"])
def test_zero_usage_reaches_no_tier(mode: str) -> None:
    line = priced({"type": "tiered", "mode": mode, "per": 1000, "tiers": TIERS}, 0)
    assert line.tiers == ()
    assert line.amount == 0


def test_tier_bounds_are_inclusive() -> None:
    price = {"type": "tiered", "mode": "graduated", "per": 1000, "tiers": TIERS}
    at_bound = priced(price, 1000)
    assert [(t.tier, t.quantity) for t in at_bound.tiers] == [(0, 1000)]
    past = priced(price, 1001)
    assert [(t.tier, t.quantity) for t in past.tiers] == [(0, 1000), (1, 1)]
    volume = priced({**price, "mode": "volume"}, 1000)
    assert [(t.tier, t.quantity) for t in volume.tiers] == [(0, 1000)]


def test_graduated_worked_example() -> None:
    """README, Pricing: 7,500 units per 1,000: 1000*2/1000+1 + 4000*1/1000+5 + 2500*0.5/1000."""
    line = priced({"type": "tiered", "mode": "graduated", "per": 1000, "tiers": TIERS}, 7_500)
    assert [(t.tier, t.quantity, t.amount) for t in line.tiers] == [
        (0, 1000, D("3.00")),
        (1, 4000, D("9.00")),
        (2, 2500, D("1.25")),
    ]
    assert line.amount == D("13.25")
    assert line.unit_price is None


def test_volume_worked_example() -> None:
    """README, Pricing: 4,200 units fall in tier 1: 4200 * 1.00 / 1000 + 5.00."""
    line = priced({"type": "tiered", "mode": "volume", "per": 1000, "tiers": TIERS}, 4_200)
    assert [(t.tier, t.quantity, t.amount) for t in line.tiers] == [(1, 4200, D("9.20"))]
    assert line.amount == D("9.20")


def test_unit_worked_example() -> None:
    """README, Pricing: 1,234,567 tokens, 100,000 included, 3.00 per million, 10% off."""
    line = priced(
        {"type": "unit", "amount": "3.00", "per": 1_000_000},
        1_234_567,
        included=100_000,
        discount_percent="10",
    )
    assert line.billable_quantity == 1_134_567
    assert line.unit_price == D("0.000003")
    assert line.subtotal == D("3.403701")
    assert line.discount == D("0.3403701")
    assert line.amount == D("3.06")  # 3.0633309


def test_package_worked_example() -> None:
    """README, Pricing: 2,500,001 tokens in packages of 1,000,000 at 2.00: 3 packages."""
    line = priced({"type": "package", "amount": "2.00", "package_size": 1_000_000}, 2_500_001)
    assert line.subtotal == D("6.00")
    assert line.amount == D("6.00")


def test_flat_worked_example() -> None:
    """README, Pricing: 19.00 a month, subscription starts on day 16 of 30: 15/30 of it."""
    line = price_rate_card(
        card({"type": "flat", "amount": "19.00", "payment_term": "in_arrears"}),
        1,
        currency="USD",
        proration=D(15) / D(30),
        proration_label="15/30 days",
    )
    assert line.amount == D("9.50")
    assert "prorated 15/30 days" in line.notes
    assert line.payment_term == "in_arrears"
    unprorated = price_rate_card(
        card({"type": "flat", "amount": "19.00", "prorate": False}),
        1,
        currency="USD",
        proration=D(15) / D(30),
    )
    assert unprorated.amount == D("19.00")


def test_minimum_applies_without_usage_and_maximum_caps() -> None:
    price = {"type": "unit", "amount": "1", "per": 1}
    floor = priced(price, 0, min_amount="50")
    assert floor.amount == D("50.00")
    assert "minimum spend applied" in floor.notes
    cap = priced(price, 5_000, max_amount="100")
    assert cap.amount == D("100.00")
    assert "maximum spend applied" in cap.notes


# --------------------------------------------------------------------------- inputs and detail


def test_negative_quantity_is_rejected() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        priced({"type": "unit", "amount": "1"}, -1)


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        priced({"type": "unit", "amount": "1"}, 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [D("-0.1"), D("1.01")])
def test_proration_outside_the_period_is_rejected(share: Decimal) -> None:
    with pytest.raises(ValueError, match="proration"):
        price_rate_card(card({"type": "flat", "amount": "1"}), 1, currency="USD", proration=share)


def test_decimal_quantities_are_accepted() -> None:
    line = priced({"type": "package", "amount": "1", "package_size": 10}, D("10.5"))
    assert line.subtotal == D(2)


def test_detail_is_json_with_decimal_strings() -> None:
    line = priced(
        {"type": "tiered", "mode": "graduated", "per": 1_000_000, "tiers": TIERS},
        7_500,
        included=500,
    )
    detail = line.to_detail()
    text = json.dumps(detail)
    assert "e-" not in text.lower()  # no exponent notation
    back = json.loads(text)
    assert D(back["subtotal"]) == line.subtotal
    assert D(back["amount"]) == line.amount
    assert back["price_type"] == "tiered"
    assert [D(t["amount"]) for t in back["tiers"]] == [t.amount for t in line.tiers]
    assert all(isinstance(v, str) for v in (back["quantity"], back["discount"], back["proration"]))
    assert back["notes"] == ["500 units included"]


@pytest.mark.parametrize(
    ("amount", "days", "split", "parts"),
    [("19.00", 30, 10, ["6.33", "12.67"]), ("0.01", 30, 15, ["0.01", "0.01"])],
)
def test_split_fee_examples_from_the_docs(amount: str, days: int, split: int, parts: list) -> None:
    """README, Pricing: thirds add up to the fee; halves of one cent each round up."""
    full = Period(START, START + timedelta(days=days))
    cut = START + timedelta(days=split)
    got = [
        price_rate_card(
            card({"type": "flat", "amount": amount}),
            1,
            currency="USD",
            proration=proration(full, a, b),
        ).amount
        for a, b in ((full.start, cut), (cut, full.end))
    ]
    assert got == [D(p) for p in parts]


def test_a_true_half_rounds_up_even_through_a_repeating_division() -> None:
    """1 unit at 1 per 7, 12.5% off: exactly 0.125, so 0.13. A 50-digit Decimal subtotal
    (0.142857...) times 0.875 would land just below the half and round to 0.12."""
    c = card({"type": "unit", "amount": "1", "per": 7}, discount_percent="12.5")
    assert price_rate_card(c, 1, currency="USD").amount == Decimal("0.13")


def test_a_prorated_half_cent_rounds_up() -> None:
    """19.05 x 7/30 = 4.445 exactly: 4.45. The share is the exact Fraction 7/30, so no
    50-digit ``0.2333...`` ever lands the product just below the half (4.44)."""
    full = Period(START, START + timedelta(days=30))
    share = proration(full, START, START + timedelta(days=7))
    assert share == Fraction(7, 30)
    line = price_rate_card(
        card({"type": "flat", "amount": "19.05"}), 1, currency="USD", proration=share
    )
    assert line.amount == D("4.45")
    assert line.to_detail()["proration_ratio"] == "7/30"


def test_floats_are_refused_as_proration() -> None:
    with pytest.raises(TypeError, match="proration"):
        price_rate_card(card({"type": "flat", "amount": "1"}), 1, currency="USD", proration=0.5)  # type: ignore[arg-type]


def test_a_prorated_maximum_is_exact_and_a_half_rounds_up() -> None:
    """README, Rounding: max 0.09 over 5/30 of a period is 0.015 exactly -> 0.02; a 10/30
    period with max 30.00 caps at 10.00."""
    c = card({"type": "unit", "amount": "1.00"}, max_amount="0.09")
    assert price_rate_card(c, 1_000, currency="USD", proration=Fraction(5, 30)).amount == D("0.02")
    c = card({"type": "unit", "amount": "1.00"}, max_amount="30.00")
    line = price_rate_card(c, 1_000, currency="USD", proration=Fraction(10, 30))
    assert line.amount == D("10.00")
    assert "maximum spend applied" in line.notes
