"""A brute-force price reference, independent of billing/pricing.py and billing/money.py.

It walks the usage one unit at a time with exact rationals (fractions.Fraction): each unit
finds its tier by counting, a package is paid whenever a unit starts a new one. Slow and
obvious on purpose; the tests check the real implementation against it. It shares no code
with billing/ (only the catalog models it reads its input from).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from meterline.catalog import FlatPrice, PackagePrice, RateCard, TieredPrice, UnitPrice

# Written out here rather than imported: the reference must not trust billing.money.
MINOR_DIGITS = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3, "BHD": 3, "CLF": 4}


@dataclass(frozen=True)
class Reference:
    subtotal: Fraction
    discount: Fraction
    net: Fraction
    amount: Fraction


def _q(value: Decimal | int) -> Fraction:
    return Fraction(value)


def _tier_of(price: TieredPrice, n: int) -> int:
    """Index of the tier holding the n-th unit (1-based), by walking the bounds."""
    index = 0
    while price.tiers[index].up_to is not None and n > price.tiers[index].up_to:  # type: ignore[operator]
        index += 1
    return index


def subtotal_reference(
    card: RateCard, quantity: int, proration: Fraction = Fraction(1)
) -> Fraction:
    price = card.price
    if isinstance(price, FlatPrice):
        factor = proration if price.prorate else Fraction(1)
        total = Fraction(0)
        for _ in range(quantity):
            total += _q(price.amount) * factor
        return total
    billable_units = [u for u in range(1, quantity + 1) if u > card.included]
    count = len(billable_units)
    total = Fraction(0)
    if isinstance(price, UnitPrice):
        for _ in billable_units:
            total += _q(price.amount) / price.per
    elif isinstance(price, PackagePrice):
        for n in range(1, count + 1):
            if (n - 1) % price.package_size == 0:
                total += _q(price.amount)
    elif isinstance(price, TieredPrice) and price.mode == "graduated":
        current = -1
        for n in range(1, count + 1):
            tier = _tier_of(price, n)
            if tier != current:
                total += _q(price.tiers[tier].flat_amount)
                current = tier
            total += _q(price.tiers[tier].unit_amount) / price.per
    elif isinstance(price, TieredPrice):
        if count:
            reached = price.tiers[_tier_of(price, count)]
            total += _q(reached.flat_amount)
            for _ in range(count):
                total += _q(reached.unit_amount) / price.per
    else:  # pragma: no cover - the catalog has no other price types
        raise TypeError(price)
    return total


def round_half_up(value: Fraction, currency: str) -> Fraction:
    scale = 10 ** MINOR_DIGITS[currency]
    scaled = abs(value) * scale
    whole = scaled.numerator // scaled.denominator
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    return Fraction(whole if value >= 0 else -whole, scale)


def price_reference(
    card: RateCard, quantity: int, currency: str, proration: Fraction = Fraction(1)
) -> Reference:
    subtotal = subtotal_reference(card, quantity, proration)
    discount = subtotal * _q(card.discount_percent) / 100
    net = subtotal - discount
    factor = proration
    if isinstance(card.price, FlatPrice) and not card.price.prorate:
        factor = Fraction(1)
    if card.min_amount is not None:
        net = max(net, _q(card.min_amount) * factor)
    if card.max_amount is not None:
        net = min(net, _q(card.max_amount) * factor)
    return Reference(subtotal, discount, net, round_half_up(net, currency))
