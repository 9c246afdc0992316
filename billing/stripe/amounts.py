"""Our exact Decimal amounts as the integers Stripe's API expects, and back for messages.

Stripe counts in the currency's minor unit (cents for USD, yen for JPY), which is the
ISO 4217 exponent (``billing.money.minor_unit_exponent``) except where Stripe's API
keeps an older convention (:data:`STRIPE_EXPONENT_OVERRIDES`).
"""

from __future__ import annotations

from decimal import Decimal

from billing.errors import UserError
from billing.money import minor_unit_exponent


class AmountError(UserError, ValueError):
    """An amount that has no exact integer form in Stripe's unit."""


STRIPE_EXPONENT_OVERRIDES: dict[str, int] = {"ISK": 2}
"""Where Stripe's API unit differs from ISO 4217: ISK has no minor unit in ISO, but the
API keeps it two-decimal (an amount of 100 is 1 króna, and must be a multiple of 100)."""


def stripe_exponent(currency: str) -> int:
    return STRIPE_EXPONENT_OVERRIDES.get(currency.upper(), minor_unit_exponent(currency))


def to_minor(amount: Decimal, currency: str) -> int:
    """``Decimal("12.34")`` USD -> ``1234``: the integer amount Stripe's API expects.

    Refuses an amount finer than the currency's unit (our amounts are already rounded
    to it, so that would be a bug upstream, not something to round away here).
    """
    scaled = amount.scaleb(stripe_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise AmountError(f"{amount} {currency} is not a whole number of minor units")
    return int(scaled)


def show_minor(amount_minor: int, currency: str) -> str:
    """``1234`` USD -> ``12.34 USD`` (the inverse of :func:`to_minor`, for messages)."""
    value = Decimal(amount_minor).scaleb(-stripe_exponent(currency))
    return f"{value:.{minor_unit_exponent(currency)}f} {currency}"
