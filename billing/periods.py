"""Billing periods: the period arithmetic of :mod:`meterline.periods`, plus proration and
calendar months.

The anchor-based periods themselves live in ``meterline.periods`` so the proxy's
entitlement counters cut usage periods exactly as invoices cut billing periods.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from dateutil.relativedelta import relativedelta

from billing.money import money_context
from meterline.periods import Period, _utc, parse_cadence, period_containing, periods_between

__all__ = [
    "Period",
    "calendar_month",
    "parse_cadence",
    "period_containing",
    "periods_between",
    "proration",
]

_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


def proration(full: Period, part_start: datetime, part_end: datetime) -> Decimal:
    """Share of ``full`` covered by ``[part_start, part_end)``: an exact ratio of microseconds.

    Raises ValueError unless ``full.start <= part_start <= part_end <= full.end``.
    """
    lo, hi = _utc(part_start, "part_start"), _utc(part_end, "part_end")
    if not full.start <= lo <= hi <= full.end:
        raise ValueError(
            f"part {lo.isoformat()} .. {hi.isoformat()} is not inside the period "
            f"{full.start.isoformat()} .. {full.end.isoformat()}"
        )
    tick = timedelta(microseconds=1)
    with money_context():
        return Decimal((hi - lo) // tick) / Decimal(full.duration // tick)


def calendar_month(yyyy_mm: str) -> Period:
    """``"2026-03"`` -> ``[2026-03-01T00:00Z, 2026-04-01T00:00Z)``."""
    m = _MONTH_RE.match(yyyy_mm) if isinstance(yyyy_mm, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1:
        raise ValueError(f"period {yyyy_mm!r}: expected a month as YYYY-MM, e.g. 2026-03")
    start = datetime(int(m.group(1)), int(m.group(2)), 1, tzinfo=UTC)
    try:
        return Period(start, start + relativedelta(months=1))
    except (OverflowError, ValueError):
        raise ValueError(f"period {yyyy_mm!r}: out of range") from None
