"""The instants a command or a page takes: one rule for the CLI and the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime

from meterline.utc import EARLIEST_YEAR, LATEST_YEAR, OUT_OF_RANGE

__all__ = ["OUT_OF_RANGE", "in_utc"]


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
