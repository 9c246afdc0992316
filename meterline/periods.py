"""Periods: half-open UTC intervals anchored at a subscription start.

The one source of period maths: billing (invoice periods) and governance (usage periods
of entitlements) both cut time here, so they cut it the same way.

Period ``k`` of a subscription starts at ``anchor + k * cadence``, computed from the
anchor every time rather than by stepping from the previous period, so month ends never
drift: a subscription starting Jan 31 renews Feb 28 (Feb 29 in a leap year), Mar 31,
Apr 30, May 31... A yearly one starting Feb 29 renews Feb 28 in common years and Feb 29
again in leap years. Consecutive periods tile time: each ends where the next starts.

Durations are ISO 8601 as the catalog allows them (``P1M``, ``P1W``, ``P1Y``, ``P3M``,
``P14D``, combinations such as ``P1M2D``) and are applied with dateutil's relativedelta
(years and months first, clamped to the month's end, then days).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from dateutil.relativedelta import relativedelta

from meterline.catalog import ISO_DURATION_RE
from meterline.utc import EARLIEST_YEAR, LATEST_YEAR, OUT_OF_RANGE, as_utc

# Gregorian averages in whole seconds, only to guess the period index before checking it.
_AVG_YEAR_S = 31_556_952
_AVG_MONTH_S = _AVG_YEAR_S // 12
_DAY_S = 86_400
_MONTH_RE = re.compile(r"([0-9]{4})-([0-9]{2})")
"""Matched whole (``fullmatch``), ASCII digits only: ``\\d`` and ``$`` took ``２０２６-１１``
and a trailing newline."""


@dataclass(frozen=True, order=True)
class Period:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a period needs timezone-aware datetimes")
        if self.end <= self.start:
            raise ValueError(f"period end {self.end} is not after its start {self.start}")

    def __contains__(self, at: datetime) -> bool:
        return self.start <= at < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def clip(self, start: datetime, end: datetime) -> Period | None:
        """The part of this period inside ``[start, end)``, or None if they do not overlap."""
        lo, hi = max(self.start, as_utc(start, "start")), min(self.end, as_utc(end, "end"))
        return Period(lo, hi) if lo < hi else None


def parse_cadence(cadence: str) -> relativedelta:
    """``"P1M"`` -> ``relativedelta(months=+1)``; weeks become 7 days.

    Raises ValueError for anything the catalog would not accept and for zero durations.
    """
    m = ISO_DURATION_RE.match(cadence) if isinstance(cadence, str) else None
    if m is None or cadence == "P":
        raise ValueError(f"cadence {cadence!r}: expected an ISO 8601 duration such as P1M or P14D")
    parts = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    step = relativedelta(
        years=parts.get("years", 0),
        months=parts.get("months", 0),
        days=7 * parts.get("weeks", 0) + parts.get("days", 0),
    )
    if not (step.years or step.months or step.days):
        raise ValueError(f"cadence {cadence!r}: a billing period cannot be zero long")
    return step


class PeriodRangeError(ValueError):
    """A period boundary outside the datetimes Python has (years 1 to 9999).

    A mistake the user can fix (a subscription start or cadence): the CLI shows its one line.
    """


def _boundary(anchor: datetime, step: relativedelta, k: int) -> datetime:
    try:
        return anchor + step * k
    except (OverflowError, ValueError):
        raise PeriodRangeError(
            f"a billing period of the subscription starting {anchor:%Y-%m-%dT%H:%M:%SZ} "
            "would end after the year 9999 (or start before the year 1)"
        ) from None


def _index_containing(anchor: datetime, step: relativedelta, at: datetime) -> int:
    """The ``k`` with ``boundary(k) <= at < boundary(k + 1)``."""
    approx = step.years * _AVG_YEAR_S + step.months * _AVG_MONTH_S + step.days * _DAY_S
    elapsed = (at - anchor) // timedelta(seconds=1)
    k = elapsed // approx
    while _boundary(anchor, step, k) > at:
        k -= 1
    while _boundary(anchor, step, k + 1) <= at:
        k += 1
    return k


def period_containing(anchor: datetime, cadence: str, at: datetime) -> Period:
    """The period of a subscription anchored at ``anchor`` that contains the instant ``at``.

    An instant on a boundary belongs to the period that starts there. Instants before the
    anchor fall in periods counted backwards from it.
    """
    anchor, at = as_utc(anchor, "anchor"), as_utc(at, "at")
    step = parse_cadence(cadence)
    k = _index_containing(anchor, step, at)
    return Period(_boundary(anchor, step, k), _boundary(anchor, step, k + 1))


def periods_between(anchor: datetime, cadence: str, start: datetime, end: datetime) -> list[Period]:
    """Whole periods (not clipped) that overlap ``[start, end)``, in order; empty if end <= start.

    Use :meth:`Period.clip` for the billed part and :func:`proration` for its share.
    """
    anchor, start, end = as_utc(anchor, "anchor"), as_utc(start, "start"), as_utc(end, "end")
    step = parse_cadence(cadence)
    if end <= start:
        return []
    k = _index_containing(anchor, step, start)
    periods: list[Period] = []
    while (lo := _boundary(anchor, step, k)) < end:
        periods.append(Period(lo, _boundary(anchor, step, k + 1)))
        k += 1
    return periods


def proration(full: Period, part_start: datetime, part_end: datetime) -> Fraction:
    """Share of ``full`` covered by ``[part_start, part_end)``: the exact ratio of microseconds.

    A :class:`~fractions.Fraction`, never a decimal: 7 days of 30 is ``7/30`` exactly, so
    ``19.05 * 7/30 = 4.445`` is a true half cent and rounds up (a 50-digit ``0.2333...``
    would land just below it).

    Raises ValueError unless ``full.start <= part_start <= part_end <= full.end``.
    """
    lo, hi = as_utc(part_start, "part_start"), as_utc(part_end, "part_end")
    if not full.start <= lo <= hi <= full.end:
        raise ValueError(
            f"part {lo.isoformat()} .. {hi.isoformat()} is not inside the period "
            f"{full.start.isoformat()} .. {full.end.isoformat()}"
        )
    tick = timedelta(microseconds=1)
    return Fraction((hi - lo) // tick, full.duration // tick)


def calendar_month(yyyy_mm: str) -> Period:
    """``"2026-03"`` -> ``[2026-03-01T00:00Z, 2026-04-01T00:00Z)``."""
    m = _MONTH_RE.fullmatch(yyyy_mm) if isinstance(yyyy_mm, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"period {yyyy_mm!r}: expected a month as YYYY-MM, e.g. 2026-03")
    if not EARLIEST_YEAR <= int(m.group(1)) <= LATEST_YEAR:  # 0001-01 was invoiced as 1-01
        raise ValueError(f"period {yyyy_mm!r} {OUT_OF_RANGE}")
    start = datetime(int(m.group(1)), int(m.group(2)), 1, tzinfo=UTC)
    return Period(start, start + relativedelta(months=1))
