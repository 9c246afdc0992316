"""Minor units, half-up rounding and display; the global decimal context stays untouched."""

from __future__ import annotations

import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import (
    decimal_text,
    format_money,
    minor_unit,
    minor_unit_exponent,
    money_context,
    round_exact,
    round_money,
)

D = Decimal


@pytest.mark.parametrize(
    ("currency", "digits"),
    [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_minor_unit_exponent_follows_iso_4217(currency: str, digits: int) -> None:
    assert minor_unit_exponent(currency) == digits
    assert minor_unit(currency) == D(1).scaleb(-digits)


def test_mga_is_invoiced_in_whole_ariary() -> None:
    """ISO 4217 gives MGA two decimals, but Stripe charges it in whole ariary: invoices
    round to what can be charged, so the invoice and the charge are the same amount."""
    assert minor_unit_exponent("MGA") == 0
    assert round_money(D("50000.50"), "MGA") == D("50001")
    assert round_exact(Fraction(100001, 2), "MGA") == D("50001")
    assert format_money(D("1234.4"), "MGA") == "1,234 MGA"


@pytest.mark.parametrize(
    ("currency", "message"),
    [
        ("usd", "expected an ISO 4217 code"),
        ("US", "expected an ISO 4217 code"),
        ("ZZZ", "unknown ISO 4217 code"),
        ("XAU", "no minor unit"),
    ],
)
def test_unusable_currencies_are_rejected(currency: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        minor_unit_exponent(currency)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.005", "USD", "0.01"),
        ("0.0049", "USD", "0.00"),
        ("0.025", "USD", "0.03"),  # half-even would give 0.02
        ("-0.005", "USD", "-0.01"),  # symmetric: half away from zero
        ("-0.004", "USD", "0.00"),  # no negative zero
        ("1.5", "USD", "1.50"),  # quantized to the minor unit
        ("2.5", "JPY", "3"),
        ("0.49", "JPY", "0"),
        ("0.0005", "KWD", "0.001"),
        ("0.00049", "KWD", "0.000"),
        ("1E+3", "USD", "1000.00"),
        ("123456789012345678901234567890.125", "USD", "123456789012345678901234567890.13"),
    ],
)
def test_round_money_half_up(amount: str, currency: str, expected: str) -> None:
    assert str(round_money(D(amount), currency)) == expected


def test_round_money_refuses_floats_and_non_finite() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        round_money(0.1, "USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        round_money(D("NaN"), "USD")


def test_global_context_is_neither_used_nor_changed() -> None:
    """A caller with a 5-digit global context still gets exact cents, and keeps its context."""
    with decimal.localcontext(prec=5, rounding=decimal.ROUND_DOWN) as outer:
        assert round_money(D("1234567.891"), "USD") == D("1234567.89")
        assert format_money(D("9999999.995"), "USD") == "10,000,000.00 USD"
        with money_context():
            pass
        assert decimal.getcontext() is outer
        assert (outer.prec, outer.rounding) == (5, decimal.ROUND_DOWN)


@given(
    st.decimals(min_value=-(10**12), max_value=10**12, places=8, allow_nan=False),
    st.sampled_from(["USD", "JPY", "KWD", "CLF"]),
)
def test_rounding_is_within_half_a_minor_unit_and_idempotent(amount: Decimal, cur: str) -> None:
    rounded = round_money(amount, cur)
    step = Fraction(1, 10 ** minor_unit_exponent(cur))
    assert abs(Fraction(rounded) - Fraction(amount)) <= step / 2
    assert rounded.as_tuple().exponent == -minor_unit_exponent(cur)
    assert round_money(rounded, cur) == rounded


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("1234.5", "USD", "1,234.50 USD"),
        ("-1234567.125", "USD", "-1,234,567.13 USD"),
        ("1234.5", "JPY", "1,235 JPY"),
        ("0.0005", "KWD", "0.001 KWD"),
        ("0", "EUR", "0.00 EUR"),
    ],
)
def test_format_money(amount: str, currency: str, expected: str) -> None:
    assert format_money(D(amount), currency) == expected


def test_decimal_text_has_no_exponent() -> None:
    assert decimal_text(D("3E-6")) == "0.000003"
    assert decimal_text(D("1E+3")) == "1000"
    assert decimal_text(D("2.50")) == "2.50"
