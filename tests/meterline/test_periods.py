"""Billing periods: month-end anchors, cadences, boundaries, tiling, proration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction

import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.periods import (
    Period,
    calendar_month,
    parse_cadence,
    period_containing,
    periods_between,
    proration,
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[arg-type,misc]


def starts(anchor: datetime, cadence: str, n: int) -> list[datetime]:
    end = anchor + timedelta(days=400 * 5)
    return [p.start for p in periods_between(anchor, cadence, anchor, end)][:n]


@pytest.mark.parametrize(
    ("anchor", "cadence", "expected"),
    [
        # Jan 31 clamps to Feb's end and comes back to 31 in March: no drift to the 28th.
        (utc(2026, 1, 31), "P1M", [utc(2026, 1, 31), utc(2026, 2, 28), utc(2026, 3, 31),
                                   utc(2026, 4, 30), utc(2026, 5, 31)]),
        (utc(2028, 1, 31), "P1M", [utc(2028, 1, 31), utc(2028, 2, 29), utc(2028, 3, 31)]),
        (utc(2028, 2, 29), "P1M", [utc(2028, 2, 29), utc(2028, 3, 29), utc(2028, 4, 29)]),
        (utc(2026, 3, 31), "P1M", [utc(2026, 3, 31), utc(2026, 4, 30), utc(2026, 5, 31),
                                   utc(2026, 6, 30)]),
        (utc(2026, 8, 31, 9, 30), "P1M", [utc(2026, 8, 31, 9, 30), utc(2026, 9, 30, 9, 30),
                                          utc(2026, 10, 31, 9, 30), utc(2026, 11, 30, 9, 30)]),
        (utc(2028, 2, 29), "P1Y", [utc(2028, 2, 29), utc(2029, 2, 28), utc(2030, 2, 28),
                                   utc(2031, 2, 28), utc(2032, 2, 29)]),
        (utc(2026, 11, 30), "P3M", [utc(2026, 11, 30), utc(2027, 2, 28), utc(2027, 5, 30),
                                    utc(2027, 8, 30)]),
        (utc(2026, 3, 5), "P1W", [utc(2026, 3, 5), utc(2026, 3, 12), utc(2026, 3, 19)]),
        (utc(2026, 12, 25), "P14D", [utc(2026, 12, 25), utc(2027, 1, 8), utc(2027, 1, 22)]),
    ],
)  # fmt: skip
def test_period_starts(anchor: datetime, cadence: str, expected: list[datetime]) -> None:
    assert starts(anchor, cadence, len(expected)) == expected


@pytest.mark.parametrize(
    ("text", "step"),
    [
        ("P1M", relativedelta(months=1)),
        ("P1W", relativedelta(days=7)),
        ("P1Y", relativedelta(years=1)),
        ("P3M", relativedelta(months=3)),
        ("P14D", relativedelta(days=14)),
        ("P1M2D", relativedelta(months=1, days=2)),
    ],
)
def test_parse_cadence(text: str, step: relativedelta) -> None:
    assert parse_cadence(text) == step


@pytest.mark.parametrize("text", ["", "P", "1M", "P1H", "PT1H", "P-1M", "P0M", "P0Y0D", "monthly"])
def test_parse_cadence_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="cadence"):
        parse_cadence(text)


def test_instant_on_a_boundary_starts_the_next_period() -> None:
    anchor = utc(2026, 1, 31)
    period = period_containing(anchor, "P1M", utc(2026, 2, 28))
    assert period == Period(utc(2026, 2, 28), utc(2026, 3, 31))
    just_before = period_containing(anchor, "P1M", utc(2026, 2, 28) - timedelta(microseconds=1))
    assert just_before == Period(utc(2026, 1, 31), utc(2026, 2, 28))
    assert period_containing(anchor, "P1M", anchor).start == anchor


def test_instants_before_the_anchor_count_backwards() -> None:
    period = period_containing(utc(2026, 3, 31), "P1M", utc(2026, 2, 1))
    assert period == Period(utc(2026, 1, 31), utc(2026, 2, 28))


def test_other_timezones_are_converted_to_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    anchor = datetime(2026, 2, 1, 8, tzinfo=tokyo)  # 2026-01-31T23:00Z
    period = period_containing(anchor, "P1M", utc(2026, 2, 15))
    assert period == Period(utc(2026, 1, 31, 23), utc(2026, 2, 28, 23))
    assert period.start.tzinfo is UTC


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        period_containing(datetime(2026, 1, 1), "P1M", utc(2026, 1, 2))


def test_periods_between_returns_whole_overlapping_periods() -> None:
    anchor = utc(2026, 1, 15)
    got = periods_between(anchor, "P1M", utc(2026, 2, 1), utc(2026, 3, 15))
    assert got == [
        Period(utc(2026, 1, 15), utc(2026, 2, 15)),
        Period(utc(2026, 2, 15), utc(2026, 3, 15)),
    ]
    assert periods_between(anchor, "P1M", utc(2026, 3, 1), utc(2026, 3, 1)) == []
    assert got[0].clip(utc(2026, 2, 1), utc(2026, 3, 15)) == Period(
        utc(2026, 2, 1), utc(2026, 2, 15)
    )
    assert got[0].clip(utc(2026, 3, 1), utc(2026, 4, 1)) is None


def test_proration_is_the_exact_share_of_seconds() -> None:
    february = Period(utc(2026, 2, 1), utc(2026, 3, 1))
    assert proration(february, utc(2026, 2, 15), utc(2026, 3, 1)) == Fraction(1, 2)
    assert proration(february, february.start, february.end) == 1
    third = proration(Period(utc(2026, 4, 1), utc(2026, 5, 1)), utc(2026, 4, 1), utc(2026, 4, 11))
    assert third == Fraction(1, 3)  # exact: a Fraction, never a 50-digit decimal
    assert isinstance(third, Fraction)
    with pytest.raises(ValueError, match="not inside the period"):
        proration(february, utc(2026, 1, 31), utc(2026, 2, 2))


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("2026-03", Period(utc(2026, 3, 1), utc(2026, 4, 1))),
        ("2026-12", Period(utc(2026, 12, 1), utc(2027, 1, 1))),
        ("2028-02", Period(utc(2028, 2, 1), utc(2028, 3, 1))),
    ],
)
def test_calendar_month(text: str, period: Period) -> None:
    assert calendar_month(text) == period


@pytest.mark.parametrize(
    "text",
    [
        "2026-13",
        "2026-00",
        "2026-3",
        "26-03",
        "2026-03-01",
        "March",
        "0000-01",
        "9999-12",
        "0001-01",
        "1969-12",
    ],
)
def test_calendar_month_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM|out of range"):
        calendar_month(text)


# --------------------------------------------------------------------------- properties

anchors = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(UTC)
)
cadences = st.sampled_from(["P1M", "P1W", "P1Y", "P3M", "P14D", "P1D", "P2M3D", "P6M"])


@settings(max_examples=200, deadline=None)
@given(anchors, cadences, st.integers(-400, 4_000), st.integers(1, 30))
def test_consecutive_periods_tile_time(
    anchor: datetime, cadence: str, offset_days: int, n: int
) -> None:
    start = anchor + timedelta(days=offset_days)
    periods = periods_between(anchor, cadence, start, start + timedelta(days=n * 20))
    assert periods[0].start <= start < periods[0].end
    for earlier, later in zip(periods, periods[1:], strict=False):
        assert earlier.end == later.start  # no gap, no overlap
        assert earlier.start < earlier.end


@settings(max_examples=200, deadline=None)
@given(anchors, cadences, st.integers(-400 * 86_400, 4_000 * 86_400))
def test_period_containing_contains_and_is_anchored(
    anchor: datetime, cadence: str, secs: int
) -> None:
    at = anchor + timedelta(seconds=secs)
    period = period_containing(anchor, cadence, at)
    assert at in period
    # The boundary is the anchor moved by a whole number of cadences, computed from the anchor.
    step = parse_cadence(cadence)
    k = next(k for k in range(-500, 5_000) if anchor + step * k == period.start)
    assert anchor + step * (k + 1) == period.end
    # And the next instant on the boundary belongs to the next period.
    assert period_containing(anchor, cadence, period.end).start == period.end
