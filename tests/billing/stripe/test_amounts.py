"""Amounts in the unit Stripe's API expects, from our exact Decimal amounts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.stripe.amounts import AmountError, show_minor, to_minor


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("55.42", "USD", 5542),
        ("-3.10", "EUR", -310),
        ("0E-12", "USD", 0),
        ("6167", "JPY", 6167),
        ("6167.000000000000", "JPY", 6167),
        ("1.234", "KWD", 1234),
        ("500", "ISK", 50000),  # ISO has no minor unit; Stripe's API keeps two decimals
        ("5", "UGX", 500),  # the same special case: whole shillings sent with two decimals
        ("50000", "MGA", 50000),  # zero-decimal in Stripe although ISO 4217 gives 2 decimals
        ("49.00", "HUF", 4900),  # zero-decimal for payouts only: charges keep two decimals
        ("10.45", "TWD", 1045),
    ],
)
def test_to_minor(amount: str, currency: str, expected: int) -> None:
    assert to_minor(Decimal(amount), currency) == expected
    assert Decimal(show_minor(expected, currency).split()[0]) == Decimal(amount)


def test_finer_than_the_minor_unit_is_refused() -> None:
    with pytest.raises(AmountError, match=r"^0.001 USD is not a whole number of minor units$"):
        to_minor(Decimal("0.001"), "USD")
    with pytest.raises(AmountError):
        to_minor(Decimal("1.5"), "JPY")


@pytest.mark.parametrize(
    ("amount", "currency"), [("50000.50", "MGA"), ("5.5", "ISK"), ("5.01", "UGX")]
)
def test_stripe_charges_these_currencies_in_whole_units_only(amount: str, currency: str) -> None:
    """Stripe's zero-decimal currencies and its ISK/UGX special cases take whole units
    (for ISK and UGX: a two-decimal amount that is a multiple of 100), never a fraction."""
    with pytest.raises(AmountError, match="is not a whole number of minor units"):
        to_minor(Decimal(amount), currency)


def test_show_minor() -> None:
    assert show_minor(5543, "USD") == "55.43 USD"
    assert show_minor(6167, "JPY") == "6167 JPY"
    assert show_minor(50000, "ISK") == "500 ISK"
    assert show_minor(50000, "MGA") == "50000 MGA"
    assert show_minor(500, "UGX") == "5 UGX"
