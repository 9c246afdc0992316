"""Exact money: currency minor units (ISO 4217), half-up rounding, display.

Amounts are :class:`~decimal.Decimal` in the currency's major unit (``Decimal("2.50")`` is
2.50 USD). Floats are refused rather than converted: a float has already lost the cent.

Amounts are computed as exact rationals (:class:`~fractions.Fraction`) and rounded once,
by :func:`round_exact`; no intermediate is ever cut to a number of digits. Decimal
arithmetic that only *shows* a value (a unit price ``amount / per``, an unrounded subtotal
with a repeating expansion) runs inside :func:`money_context` (50 significant digits,
``ROUND_HALF_UP``, invalid operations trapped), a *local* context, so the process-wide
decimal context that other code may rely on is never changed.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from fractions import Fraction
from functools import cache

from iso4217 import Currency

MONEY_PRECISION = 50
"""Significant digits for intermediate results: far beyond any invoice, so only the
final rounding to the minor unit ever loses anything."""

_CONTEXT = Context(
    prec=MONEY_PRECISION,
    rounding=ROUND_HALF_UP,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
_CODE_RE = re.compile(r"^[A-Z]{3}$")

INVOICE_EXPONENT_OVERRIDES: dict[str, int] = {"MGA": 0}
"""Currencies invoiced in a coarser unit than ISO 4217's minor unit, because that unit
cannot be charged: ISO gives MGA two decimals, but Stripe treats it as zero-decimal (whole
ariary). Invoices round to the unit that is charged, so the charge is the invoice to the
last unit (docs/billing.md, Rounding; docs/stripe.md)."""


def money_context() -> AbstractContextManager[Context]:
    """``with money_context(): ...``: 50-digit arithmetic; the global context is not touched."""
    return localcontext(_CONTEXT)


@cache
def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point in ``currency`` per ISO 4217: USD 2, JPY 0, KWD 3
    (MGA 0: :data:`INVOICE_EXPONENT_OVERRIDES`).

    Raises ValueError for an unknown code and for codes without a minor unit (XAU, XDR...),
    which cannot be invoiced.
    """
    if not isinstance(currency, str) or not _CODE_RE.match(currency):
        raise ValueError(f"currency {currency!r}: expected an ISO 4217 code such as USD")
    try:
        exponent = Currency(currency).exponent
    except ValueError:
        raise ValueError(f"currency {currency!r}: unknown ISO 4217 code") from None
    if exponent is None:
        raise ValueError(f"currency {currency!r}: has no minor unit, cannot bill in it")
    return INVOICE_EXPONENT_OVERRIDES.get(currency, exponent)


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of ``currency``: ``Decimal("0.01")`` for USD, ``1`` for JPY."""
    return Decimal(1).scaleb(-minor_unit_exponent(currency))


def check_decimal(value: object, what: str) -> Decimal:
    """``value`` as a finite Decimal; ints are fine, floats and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise TypeError(f"{what} must be a Decimal or an int, not {type(value).__name__}")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{what} must be finite, got {result}")
    return result


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round ``amount`` half-up to the minor unit of ``currency``, quantized (``1.5`` -> ``1.50``).

    Half-up is symmetric (half away from zero): ``0.005 -> 0.01`` and ``-0.005 -> -0.01``.
    A negative zero comes back as plain zero.
    """
    value = check_decimal(amount, "amount")
    with money_context():
        rounded = value.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)
    return rounded.copy_abs() if rounded.is_zero() else rounded


def round_exact(value: Fraction, currency: str) -> Decimal:
    """Round an exact rational amount half-up (away from zero) to the minor unit of ``currency``.

    Pricing keeps every line exact as a :class:`~fractions.Fraction` until this one rounding,
    so a true half (``1 * 0.875 / 7 = 0.125``) rounds up even where a 50-digit decimal
    intermediate (``0.1428...`` times ``0.875``) would land just below it.
    """
    exponent = minor_unit_exponent(currency)
    scaled = abs(value) * 10**exponent
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest >= scaled.denominator:
        whole += 1
    return Decimal(f"{whole if value >= 0 else -whole}E-{exponent}")  # exact, from text


def exact_to_decimal(value: Fraction) -> Decimal:
    """An exact amount as a Decimal for display and storage.

    Exact whenever the value has a finite decimal expansion (its denominator has no prime
    factors but 2 and 5: ``4.445``, ``1/1024``); otherwise (``7/30``) the first 50
    significant digits. Only ever used to *show* a value: amounts are computed and rounded
    from the Fraction itself (:func:`round_exact`).
    """
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den == 1:
        digits = max(twos, fives)
        scaled = value.numerator * 10**digits // value.denominator
        return Decimal(f"{scaled}E-{digits}")  # from text: exact, whatever the context
    with money_context():
        return Decimal(value.numerator) / Decimal(value.denominator)


def format_money(amount: Decimal, currency: str) -> str:
    """``"1,234.50 USD"``: rounded half-up to the minor unit, thousands separated by commas."""
    rounded = round_money(amount, currency)
    return f"{rounded:,f} {currency}"


def decimal_text(value: Decimal) -> str:
    """Plain positional notation for JSON/detail output: ``3E-6`` becomes ``"0.000003"``."""
    return format(value, "f")
