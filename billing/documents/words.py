"""Numbers and dates as people read them on documents (JSON keeps the exact ISO values)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.money import format_money, minor_unit_exponent

PER_SCALES = {1_000: "1K", 1_000_000: "1M", 1_000_000_000: "1B"}


def human_date(value: datetime, *, time: bool = False) -> str:
    """``1 March 2026`` (UTC); with ``time``: ``1 March 2026, 14:05 UTC``."""
    v = value.astimezone(UTC)
    text = f"{v.day} {v:%B %Y}"
    return f"{text}, {v:%H:%M} UTC" if time else text


def human_span(start: datetime, end: datetime) -> str:
    """A ``[start, end)`` range by its first and last day: ``1 – 31 March 2026``.

    Ends at midnight are exclusive, so the last day shown is the one before; a range
    that does not start or end at midnight shows its times.
    """
    s, t = start.astimezone(UTC), end.astimezone(UTC)
    midnight = all(v.time() == datetime.min.time() for v in (s, t))
    if not midnight:
        return f"{human_date(s, time=True)} – {human_date(t, time=True)}"
    last = t - timedelta(days=1) if t > s else t
    if (s.year, s.month) == (last.year, last.month):
        return f"{s.day} – {human_date(last)}" if s.day != last.day else human_date(s)
    if s.year == last.year:
        return f"{s.day} {s:%B} – {human_date(last)}"
    return f"{human_date(s)} – {human_date(last)}"


def plural(unit: str) -> str:
    """``tokens``, ``web searches``."""
    return f"{unit}es" if unit.endswith(("s", "h")) else f"{unit}s"


def per_label(per: int, unit: str = "token") -> str:
    """``1M tokens``; ``unit``: what the line counts (``web search`` for searches)."""
    if per == 1:
        return unit
    return f"{PER_SCALES.get(per, f'{per:,}')} {plural(unit)}"


def money(amount: Decimal, currency: str, *, exact: bool = False) -> str:
    """``1,234.50 USD``; ``exact`` keeps digits below the minor unit (``0.000275 USD``)."""
    if not exact or amount == amount.quantize(Decimal(1).scaleb(-minor_unit_exponent(currency))):
        return format_money(amount, currency)
    text = f"{amount.normalize():,f}"
    return f"{text} {currency}"


def tokens_text(quantity: Decimal | int) -> str:
    return f"{int(quantity):,}"


def unit_price_text(price: dict[str, Any], currency: str, unit: str = "token") -> str:
    """The rate card's price as written: ``3.00 USD / 1M tokens``, ``tiered``, a package."""
    kind = price.get("type")
    per = int(price.get("per", 1))
    if kind == "unit":
        return f"{money(Decimal(price['amount']), currency, exact=True)} / {per_label(per, unit)}"
    if kind == "package":
        size = int(price["package_size"])
        return f"{money(Decimal(price['amount']), currency)} / {size:,} {plural(unit)}"
    if kind == "tiered":
        return f"tiered ({price.get('mode', 'graduated')}), below"
    return ""
