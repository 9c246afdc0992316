"""Aware UTC datetimes: the one conversion every part of Meterline uses.

A time without a zone is ambiguous, so it is refused rather than guessed; any other
zone is converted to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST_YEAR, LATEST_YEAR = 1970, 9998
"""Metering began after 1970, and periods and offsets around a time must stay inside
Python's datetime range (years 1 to 9999)."""

OUT_OF_RANGE = f"is out of range (years {EARLIEST_YEAR} to {LATEST_YEAR}, in UTC)"


def as_utc(value: datetime, what: str = "time") -> datetime:
    """``value`` in UTC; TypeError if it is no datetime, ValueError if it has no zone."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{what} {value.isoformat()} has no timezone; give one, e.g. Z")
    return value.astimezone(UTC)


def as_utc_in_range(value: datetime, what: str = "time") -> datetime:
    """:func:`as_utc`, and ValueError when the UTC year is outside ``EARLIEST_YEAR`` ..
    ``LATEST_YEAR``: a catalog's ``0001-01-01`` (a typo for 2026) would otherwise anchor
    periods two thousand years back, and ``0001-01-01T00:00+01:00`` overflows."""
    try:
        utc = as_utc(value, what)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST_YEAR <= utc.year <= LATEST_YEAR:
        raise ValueError(f"{what} {value.isoformat()} {OUT_OF_RANGE}")
    return utc
