"""An event's time fields: the memoised formatting equals ``datetime``'s, to the microsecond."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from addons.metering.events import _ms, timestamp


def _reference(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat()


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_timestamp_is_datetime_isoformat(epoch: float) -> None:
    assert timestamp(epoch) == _reference(epoch)


def test_timestamp_rounds_like_datetime_across_a_second() -> None:
    for epoch in (1_764_600_000.9999996, 1_527_549_237.953228, 1_764_600_000.0, 1.5e-7):
        assert timestamp(epoch) == _reference(epoch)
    # the per-second memo must not leak one second's text into another
    assert timestamp(1_764_600_001.25) == "2025-12-01T14:40:01.250000"
    assert timestamp(1_764_600_000.25) == "2025-12-01T14:40:00.250000"


def test_ms_is_milliseconds_to_the_microsecond() -> None:
    assert _ms(10.0, 10.0012345) == 1.235
    assert _ms(10.0, 12.5) == 2500.0
    assert _ms(10.0, 9.0) == 0.0
    assert _ms(None, 1.0) is None and _ms(1.0, None) is None
