"""What an invoice item's description says: our line's text, its quantity and, when it is
the whole story, the arithmetic that gives the item's amount (never an amount the item
does not charge), in Stripe's 500 characters."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from billing.money import minor_unit_exponent, round_exact
from billing.stripe.syncstate import Line

MAX_ITEM_DESCRIPTION = 500
"""Stripe's limit on an invoice item's ``description`` (its changelog, 2018-10-31)."""


def _plain(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# How many significant digits of an exact unit price the description shows as they are
# (``0.000123456789012``); a longer one (``1/7`` as 50 digits) is rounded.
_PRICE_DIGITS = 12
# Pricing notes that change a line's amount without changing its unit price.
_AMOUNT_NOTES = ("discount", "minimum spend applied", "maximum spend applied")


def _price(value: Decimal, currency: str) -> str:
    """A unit price with at least the currency's minor digits: ``49.00``, ``0.0000025``."""
    text = _plain(value)
    decimals = len(text.partition(".")[2])
    exponent = minor_unit_exponent(currency)
    return f"{value:.{exponent}f}" if decimals < exponent else text


def shown_price(
    quantity: Decimal, price: Decimal, amount: Decimal, currency: str
) -> Decimal | None:
    """The unit price to print beside ``quantity`` so that ``quantity x price``, rounded as
    the line was, is ``amount``: the exact price when it is short (never a rounded one, which
    would not be the rate card's), else the fewest decimals (at least the currency's) that
    still give the amount; None when no price does (a discount, a minimum or maximum, or a
    late line's increment over what was billed before made the amount)."""
    exponent = minor_unit_exponent(currency)
    if len(price.normalize().as_tuple().digits) <= _PRICE_DIGITS:
        candidates = [price]
    else:
        places = max(exponent, -price.normalize().as_tuple().exponent)  # type: ignore[operator]
        candidates = [
            price.quantize(Decimal(1).scaleb(-d), rounding=ROUND_HALF_UP)
            for d in range(exponent, min(places, 40) + 1)
        ]
    for shown in candidates:
        if round_exact(Fraction(quantity) * Fraction(shown), currency) == amount:
            return shown
    return None


def describe_line(line: Line, currency: str) -> str:
    """The item description: our line's text, its quantity and, when it is the whole
    story, the arithmetic that gives the item's amount.

    ``Q × P`` is printed only when Q (the units billed after any included allowance) times
    P, rounded like the line, is the line's amount; otherwise the quantity and what made
    the amount (``prorated 14/31 days``, ``discount 10%``, ``minimum spend applied``): a
    description never implies an amount the item does not charge."""
    return _fit(line.description, _detail(line, currency))


def _detail(line: Line, currency: str) -> str:
    quantity = _plain(line.quantity)
    billed = line.quantity if line.billable is None else line.billable
    if line.unit_price is not None and not _amount_notes(line):
        shown = shown_price(billed, line.unit_price, line.amount, currency)
        if shown is not None:
            arithmetic = f"{_plain(billed)} × {_price(shown, currency)} {currency}"
            if billed == line.quantity:
                return arithmetic
            included = _plain(line.quantity - billed)
            return f"{quantity} units, {included} included: {arithmetic}"
    why = [n for n in line.notes if n.startswith(_AMOUNT_NOTES)]
    if any(n.startswith(("flat fee", "minimum", "maximum")) for n in line.notes):
        # the share scales a fee and the clamps; usage itself is never prorated
        why[:0] = [n for n in line.notes if n.startswith("prorated")]
    units = "1 unit" if line.quantity == 1 else f"{quantity} units"
    return "; ".join([units, *why])


def _fit(name: str, detail: str) -> str:
    """``name (detail)`` in Stripe's 500 characters: a long name is shortened (``…``),
    the figures kept (Stripe refuses a longer item description)."""
    text = f"{name} ({detail})"
    if len(text) <= MAX_ITEM_DESCRIPTION:
        return text
    room = MAX_ITEM_DESCRIPTION - len(detail) - 4  # " (", ")" and "…"
    if room < 1:
        return text[: MAX_ITEM_DESCRIPTION - 1] + "…"
    return f"{name[:room]}… ({detail})"


def _amount_notes(line: Line) -> bool:
    return any(n.startswith(_AMOUNT_NOTES) for n in line.notes)
