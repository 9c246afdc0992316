"""The running cost a prepaid customer's balance is held against: an upper bound.

The proxy cannot run billing's pricing (billing owns invoices), and it must never let a
prepaid customer spend past the balance. So it prices usage with a bound that is never
below what the invoice will charge for the same usage: per rate card, the units beyond
``included`` at the card's highest unit rate, plus every tier's flat amount, whole
packages rounded up, at least ``min_amount``, at most ``max_amount``; discounts are
ignored. ``billing entitlements`` shows this same figure. Flat fees are not usage and
are not counted.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from meterline.catalog import PackagePrice, RateCard, TieredPrice, UnitPrice


def card_cost_bound(card: RateCard, quantity: int) -> Fraction:
    """Upper bound of what ``card`` charges for ``quantity`` units, exact (a Fraction)."""
    billable = max(0, quantity - card.included)
    price = card.price
    cost: Fraction
    if isinstance(price, UnitPrice):
        cost = Fraction(price.amount) * billable / price.per
    elif isinstance(price, TieredPrice):
        top = max(Fraction(t.unit_amount) for t in price.tiers)
        flats = sum((Fraction(t.flat_amount) for t in price.tiers), Fraction(0))
        cost = top * billable / price.per + (flats if billable else Fraction(0))
    elif isinstance(price, PackagePrice):
        packages = -(-billable // price.package_size)
        cost = Fraction(price.amount) * packages
    else:  # flat fees are not usage
        return Fraction(0)
    if card.min_amount is not None:
        cost = max(cost, Fraction(card.min_amount))
    if card.max_amount is not None:
        cost = min(cost, Fraction(card.max_amount))
    return cost


def to_decimal(value: Fraction, places: int = 12) -> Decimal:
    """For display: rounded up (a bound stays a bound) to ``places`` decimals."""
    scaled = -(-value.numerator * 10**places // value.denominator)
    return Decimal(scaled).scaleb(-places)
