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

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from meterline.catalog import PackagePrice, RateCard, TieredPrice, UnitPrice


def to_decimal(value: Fraction, places: int = 12) -> Decimal:
    """For display: rounded up (a bound stays a bound) to ``places`` decimals."""
    scaled = -(-value.numerator * 10**places // value.denominator)
    return Decimal(scaled).scaleb(-places)


@dataclass(frozen=True, slots=True)
class CostBound:
    """The bound of one rate card, its figures converted once (the proxy asks per call).

    ``cost(q) = clamp(floor_cost + rate * billable(q))`` where a package price is
    ``amount * ceil(billable / size)``.
    """

    included: int
    rate: Fraction
    """Per unit; for a package price, per package."""
    package: int
    """Package size, or 0."""
    flats: Fraction
    minimum: Fraction | None
    maximum: Fraction | None

    @classmethod
    def of(cls, card: RateCard) -> CostBound:
        price = card.price
        rate, package, flats = Fraction(0), 0, Fraction(0)
        if isinstance(price, UnitPrice):
            rate = Fraction(price.amount) / price.per
        elif isinstance(price, TieredPrice):
            rate = max(Fraction(t.unit_amount) for t in price.tiers) / price.per
            flats = sum((Fraction(t.flat_amount) for t in price.tiers), Fraction(0))
        elif isinstance(price, PackagePrice):
            rate, package = Fraction(price.amount), price.package_size
        else:
            return cls(0, Fraction(0), 0, Fraction(0), None, None)
        return cls(
            card.included,
            rate,
            package,
            flats,
            None if card.min_amount is None else Fraction(card.min_amount),
            None if card.max_amount is None else Fraction(card.max_amount),
        )

    def cost(self, quantity: int) -> Fraction:
        billable = quantity - self.included
        if billable <= 0:
            cost = Fraction(0)
        elif self.package:
            cost = self.rate * (-(-billable // self.package))
        else:
            cost = self.rate * billable + self.flats
        if self.minimum is not None and cost < self.minimum:
            cost = self.minimum
        if self.maximum is not None and cost > self.maximum:
            cost = self.maximum
        return cost
