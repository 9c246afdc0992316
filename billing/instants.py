"""The instants a command or a page takes: one rule for the CLI and the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST_YEAR, LATEST_YEAR = 1970, 9998
"""Metering began after 1970, and periods and offsets around a time must stay inside
Python's datetime range (years 1 to 9999)."""

OUT_OF_RANGE = f"is out of range (years {EARLIEST_YEAR} to {LATEST_YEAR}, in UTC)"


def in_utc(parsed: datetime) -> datetime | None:
    """``parsed`` in UTC (no zone means UTC); ``None`` when its UTC year is out of range
    (``0001-01-01T00:00+01:00`` overflows, ``1970-01-01T00:00+14:00`` is in 1969)."""
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        return None
    return utc if EARLIEST_YEAR <= utc.year <= LATEST_YEAR else None
