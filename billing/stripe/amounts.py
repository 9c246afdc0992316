"""Our exact Decimal amounts as the integers Stripe's API expects, and back for messages.

Stripe counts in the currency's minor unit (cents for USD, yen for JPY). That is the ISO
4217 exponent (``billing.money.minor_unit_exponent``) except for Stripe's documented
zero-decimal currencies (:data:`STRIPE_ZERO_DECIMAL`, amounts in whole units) and its
special cases (:data:`STRIPE_WHOLE_UNITS_AS_TWO_DECIMALS`). See docs/stripe.md.
"""

from __future__ import annotations

from decimal import Decimal

from billing.errors import UserError
from billing.money import minor_unit_exponent


class AmountError(UserError, ValueError):
    """An amount that has no exact integer form in Stripe's unit."""


STRIPE_ZERO_DECIMAL: frozenset[str] = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
"""Stripe's zero-decimal currencies (https://docs.stripe.com/currencies#zero-decimal):
the amount is in whole units (``500`` is 500 JPY). Only whole units can be charged. MGA
is one although ISO 4217 gives it two decimals (billing rounds MGA invoices to whole
ariary for that reason: ``billing.money.INVOICE_EXPONENT_OVERRIDES``)."""

STRIPE_WHOLE_UNITS_AS_TWO_DECIMALS: frozenset[str] = frozenset({"ISK", "UGX"})
"""Stripe's special cases (https://docs.stripe.com/currencies#special-cases) that are
zero-decimal in effect but, for backwards compatibility, still sent with two decimals:
``500`` is 5 ISK, and the amount must be a multiple of 100 (whole krónur, whole
shillings). ISO 4217 gives both no minor unit, so our amounts are whole already. (HUF
and TWD, the other special cases, are zero-decimal only for payouts: charges and
invoices keep two decimals, ISO's exponent, so nothing changes for them here.)"""


STRIPE_THREE_DECIMAL: frozenset[str] = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
"""Stripe's three-decimal currencies (https://docs.stripe.com/currencies#three-decimal):
the API takes their amounts in thousandths, but for payments Stripe wants the last digit
to be 0 (rounded to the nearest ten: 5.124 KWD as 5120 or 5130). Billing keeps its exact
thousandths; the sync says when an invoice's amounts do not end in 0."""


def stripe_exponent(currency: str) -> int:
    """Decimals of the integer amounts Stripe's API takes: USD 2, JPY 0, MGA 0, ISK 2."""
    code = currency.upper()
    if code in STRIPE_WHOLE_UNITS_AS_TWO_DECIMALS:
        return 2
    if code in STRIPE_ZERO_DECIMAL:
        return 0
    return minor_unit_exponent(code)


def charge_exponent(currency: str) -> int:
    """Decimals Stripe can actually charge: 0 for the zero-decimal currencies and the
    special cases above (ISK, UGX), else the API's exponent."""
    code = currency.upper()
    if code in STRIPE_ZERO_DECIMAL or code in STRIPE_WHOLE_UNITS_AS_TWO_DECIMALS:
        return 0
    return stripe_exponent(code)


def to_minor(amount: Decimal, currency: str) -> int:
    """``Decimal("12.34")`` USD -> ``1234``: the integer amount Stripe's API expects.

    Refuses an amount finer than what Stripe can charge in the currency (our amounts are
    already rounded to it, so that would be a bug upstream, not something to round away
    here): a fraction of a cent, of a yen, of an ariary (MGA), of a króna (ISK).
    """
    unit = amount.scaleb(charge_exponent(currency))
    if unit != unit.to_integral_value():
        raise AmountError(f"{amount} {currency} is not a whole number of minor units")
    return int(amount.scaleb(stripe_exponent(currency)))


def show_minor(amount_minor: int, currency: str) -> str:
    """``1234`` USD -> ``12.34 USD`` (the inverse of :func:`to_minor`, for messages)."""
    value = Decimal(amount_minor).scaleb(-stripe_exponent(currency))
    return f"{value:.{minor_unit_exponent(currency)}f} {currency}"
