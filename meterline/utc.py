"""Aware UTC datetimes: the one conversion every part of Meterline uses.

A time without a zone is ambiguous, so it is refused rather than guessed; any other
zone is converted to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime, what: str = "time") -> datetime:
    """``value`` in UTC; TypeError if it is no datetime, ValueError if it has no zone."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{what} {value.isoformat()} has no timezone; give one, e.g. Z")
    return value.astimezone(UTC)
