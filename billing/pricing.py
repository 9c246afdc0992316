"""Price one rate card for one period: the pure money core of an invoice line.

:func:`price_rate_card` takes a catalog :class:`~meterline.catalog.RateCard`, the units
metered in the period and the share of the period being billed, and returns a
:class:`PricedLine`: every intermediate amount exact, the final amount rounded once.

Order of operations (docs/billing.md, "Pricing", walks through each with numbers):

1. ``billable = max(0, quantity - included)``; the allowance is per period, not prorated.
2. ``subtotal`` from the charge model on the billable units:
   unit ``billable * amount / per``; graduated tiers, each tier's units at its own price
   plus the flat amount of every tier reached; volume tiers, all units at the price of the
   tier the total falls in plus that tier's flat amount; package
   ``ceil(billable / package_size) * amount``; flat ``amount * quantity * proration``.
3. ``discount = subtotal * discount_percent / 100`` is taken off.
4. The result is clamped to ``[min_amount, max_amount]``, both scaled by ``proration``.
5. Rounded half-up to the currency's minor unit, once, at the end of the line.

Nothing here reads the clock, the store or the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from billing.money import (
    check_decimal,
    decimal_text,
    exact_to_decimal,
    money_context,
    round_exact,
)
from meterline.catalog import FlatPrice, PackagePrice, RateCard, TieredPrice, UnitPrice


@dataclass(frozen=True)
class TierUse:
    """One tier's share of a tiered charge."""

    tier: int
    """0-based index into the price's ``tiers``."""
    quantity: Decimal
    """Units billed in this tier."""
    unit_amount: Decimal
    """Price per ``per`` units, as in the catalog."""
    flat_amount: Decimal
    amount: Decimal
    """``quantity * unit_amount / per + flat_amount``, exact, unrounded."""

    def to_detail(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "quantity": decimal_text(self.quantity),
            "unit_amount": decimal_text(self.unit_amount),
            "flat_amount": decimal_text(self.flat_amount),
            "amount": decimal_text(self.amount),
        }


@dataclass(frozen=True)
class PricedLine:
    """A rate card priced for one period; only ``amount`` is rounded."""

    quantity: Decimal
    """Units metered (or the number of flat fees, normally 1)."""
    billable_quantity: Decimal
    """After the included allowance."""
    unit_price: Decimal | None
    """Per single unit (``amount / per``) for unit prices; None for tiered, package and flat."""
    subtotal: Decimal
    """Exact, before discount and min/max."""
    discount: Decimal
    """Exact amount taken off."""
    amount: Decimal
    """Final, rounded half-up to the currency's minor unit."""
    tiers: tuple[TierUse, ...]
    notes: tuple[str, ...]
    # Extensions beyond the agreed fields; defaults keep the original constructor valid.
    price_type: str = ""
    """``unit``, ``tiered``, ``package`` or ``flat``."""
    proration: Fraction = Fraction(1)
    """Factor applied to a flat amount and to the min/max clamps, exact."""
    payment_term: str | None = None
    """Flat fees only: ``in_advance`` or ``in_arrears`` (timing is the caller's concern)."""
    net: Fraction | None = None
    """The exact amount ``amount`` was rounded from (after discount and min/max)."""

    def to_detail(self) -> dict[str, object]:
        """JSON-able: decimals as plain strings, never floats, never exponent notation."""
        detail: dict[str, object] = {
            "price_type": self.price_type,
            "quantity": decimal_text(self.quantity),
            "billable_quantity": decimal_text(self.billable_quantity),
            "unit_price": None if self.unit_price is None else decimal_text(self.unit_price),
            "subtotal": decimal_text(self.subtotal),
            "discount": decimal_text(self.discount),
            "proration": decimal_text(exact_to_decimal(self.proration)),
            "proration_ratio": str(self.proration),
            "amount": decimal_text(self.amount),
            "tiers": [t.to_detail() for t in self.tiers],
            "notes": list(self.notes),
        }
        if self.payment_term is not None:
            detail["payment_term"] = self.payment_term
        return detail


def price_rate_card(
    card: RateCard,
    quantity: int | Decimal,
    *,
    currency: str,
    proration: Fraction | Decimal | int = 1,
    proration_label: str | None = None,
) -> PricedLine:
    """Price ``quantity`` units of ``card`` for one period in ``currency``.

    ``proration`` (0..1) is the billed share of the period, best given as an exact
    :class:`~fractions.Fraction` (``meterline.periods.proration`` returns one): it scales a
    flat fee (unless the fee has ``prorate: false``) and the min/max clamps; usage itself
    is never prorated. ``proration_label`` (e.g. ``"15/30 days"``) only words the note.
    Raises ValueError for a negative quantity or a proration outside 0..1, TypeError for floats.
    """
    qty = check_decimal(quantity, "quantity")
    if qty < 0:
        raise ValueError(f"rate card {card.key!r}: quantity must not be negative, got {qty}")
    factor = _share(proration)
    if not 0 <= factor <= 1:
        raise ValueError(f"rate card {card.key!r}: proration must be within 0..1, got {factor}")
    price = card.price
    notes: list[str] = []
    payment_term: str | None = None
    tiers: tuple[TierUse, ...] = ()
    unit_price: Decimal | None = None

    # Exact rationals from here to the one rounding (billing.money.round_exact): no
    # intermediate is ever cut to a number of digits.
    billable = max(Fraction(0), Fraction(qty) - card.included)
    if card.included:
        notes.append(f"{card.included} units included")
    if isinstance(price, FlatPrice):
        payment_term = price.payment_term
        notes.append(f"flat fee billed {price.payment_term.replace('_', ' ')}")
        if not price.prorate:
            factor = Fraction(1)
        subtotal = Fraction(price.amount) * billable * factor
    elif isinstance(price, UnitPrice):
        with money_context():
            unit_price = price.amount / price.per  # display only
        subtotal = billable * Fraction(price.amount) / price.per
    elif isinstance(price, PackagePrice):
        packages = -(-billable // price.package_size)  # ceil, on exact integers
        subtotal = packages * Fraction(price.amount)
        if packages:
            notes.append(f"{packages} package(s) of {price.package_size} units")
    else:
        tiers = _tiered(price, billable)
        subtotal = sum(
            (Fraction(t.quantity) * Fraction(t.unit_amount) for t in tiers), Fraction(0)
        ) / price.per + sum((Fraction(t.flat_amount) for t in tiers), Fraction(0))

    if factor != 1:
        notes.append(f"prorated {proration_label or f'factor {factor}'}")
    discount = subtotal * Fraction(card.discount_percent) / 100
    if discount:
        notes.append(f"discount {decimal_text(card.discount_percent)}%")
    net = subtotal - discount
    if card.min_amount is not None and net < Fraction(card.min_amount) * factor:
        net = Fraction(card.min_amount) * factor
        notes.append("minimum spend applied")
    if card.max_amount is not None and net > Fraction(card.max_amount) * factor:
        net = Fraction(card.max_amount) * factor
        notes.append("maximum spend applied")

    return PricedLine(
        quantity=qty,
        billable_quantity=exact_to_decimal(billable),
        unit_price=unit_price,
        subtotal=exact_to_decimal(subtotal),
        discount=exact_to_decimal(discount),
        amount=round_exact(net, currency),
        tiers=tiers,
        notes=tuple(notes),
        price_type=price.type,
        proration=factor,
        payment_term=payment_term,
        net=net,
    )


def _share(value: object) -> Fraction:
    """A proration as an exact Fraction; floats and bools are refused (they are not exact)."""
    if isinstance(value, Fraction):
        return value
    return Fraction(check_decimal(value, "proration"))


def _tiered(price: TieredPrice, billable: Fraction) -> tuple[TierUse, ...]:
    """The tiers a tiered price uses for ``billable`` units; empty for zero units.

    Bounds are inclusive unit counts: with ``up_to: 1000`` unit 1000 is in the first tier
    and unit 1001 in the second.
    """
    if billable == 0:
        return ()
    if price.mode == "volume":
        for index, tier in enumerate(price.tiers):
            if tier.up_to is None or billable <= tier.up_to:
                return (_tier_use(price, index, billable),)
        raise AssertionError("the catalog guarantees an open last tier")
    uses: list[TierUse] = []
    lower = Fraction(0)
    for index, tier in enumerate(price.tiers):
        if billable <= lower:
            break
        upper = billable if tier.up_to is None else min(billable, Fraction(tier.up_to))
        uses.append(_tier_use(price, index, upper - lower))
        lower = upper
    return tuple(uses)


def _tier_use(price: TieredPrice, index: int, units: Fraction) -> TierUse:
    """One tier's use; its ``amount`` is for display (``100.00``, the catalog's scale): the
    line's subtotal is computed exactly from the quantities and prices, not from it."""
    tier = price.tiers[index]
    quantity = exact_to_decimal(units)
    with money_context():
        amount = quantity * tier.unit_amount / price.per + tier.flat_amount
    return TierUse(index, quantity, tier.unit_amount, tier.flat_amount, amount)


def fewest_units_for_lowest_price(
    card: RateCard, quantity: int, most: int, currency: str, share: Fraction
) -> tuple[int, PricedLine] | None:
    """``(units, line priced at quantity - units)``: the fewest of at most ``most`` units
    that bring the line's exact (unrounded) price to the lowest it can reach; None when no
    number of them lowers it (under a minimum, above a maximum, across a volume bound).

    Taking units never raises the price except where a volume tier bound is crossed
    downwards (fewer units, dearer tier): between such bounds the price never rises as
    units are taken, so the lowest price is at the lowest quantity of one of those ranges,
    and within that range a bisection finds the highest quantity with that price.
    """
    cache: dict[int, PricedLine] = {}

    def priced(n: int) -> PricedLine:
        if n not in cache:
            cache[n] = price_rate_card(card, n, currency=currency, proration=share)
        return cache[n]

    def net(n: int) -> Fraction:
        value = priced(n).net
        assert value is not None
        return value

    low = quantity - most
    starts = {low}
    price = card.price
    if isinstance(price, TieredPrice) and price.mode == "volume":
        # the first unit of each tier above the first, as a metered quantity
        starts |= {
            card.included + t.up_to + 1
            for t in price.tiers
            if t.up_to is not None and low < card.included + t.up_to + 1 <= quantity
        }
    bounds = sorted(starts)
    ranges = [
        (lo, (bounds[i + 1] - 1) if i + 1 < len(bounds) else quantity)
        for i, lo in enumerate(bounds)
    ]
    lowest = min(net(lo) for lo, _ in ranges)
    if lowest >= net(quantity):
        return None
    best = low
    for lo, hi in ranges:
        if net(lo) != lowest:
            continue
        while lo < hi:  # the highest quantity in [lo, hi] priced at ``lowest``
            mid = (lo + hi + 1) // 2
            if net(mid) <= lowest:
                lo = mid
            else:
                hi = mid - 1
        best = max(best, lo)
    return quantity - best, priced(best)
