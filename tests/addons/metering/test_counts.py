"""Token counts are read strictly (addons/metering/counts.py)."""

from __future__ import annotations

import pytest

from addons.metering.counts import MAX_TOKENS, CountReader, check_consistency
from addons.metering.usage import Usage


@pytest.mark.parametrize(
    ("value", "count", "bad"),
    [
        (0, 0, False),
        (12, 12, False),
        (12.0, 12, False),
        (MAX_TOKENS, MAX_TOKENS, False),
        (MAX_TOKENS + 1, None, True),
        (2**63, None, True),
        (-1, None, True),
        (12.5, None, True),
        (float("nan"), None, True),
        (float("inf"), None, True),
        ("12", None, True),
        (True, None, True),
        ({}, None, True),
    ],
    ids=lambda v: repr(v),
)
def test_count_values(value: object, count: int | None, bad: bool) -> None:
    reader = CountReader()
    assert reader.get({"n": value}, "n") == count
    assert bool(reader.bad) is bad
    assert (reader.problem() is not None) is bad


def test_missing_and_null_details_are_not_reported() -> None:
    reader = CountReader()
    assert reader.get({}, "n") is None
    assert reader.get({"n": None}, "n") is None
    assert reader.problem() is None


def test_null_main_count_is_unusable() -> None:
    reader = CountReader()
    assert reader.get({"n": None}, "n", main=True) is None
    assert reader.problem() == "usage not a non-negative integer of sane size: n=None"


def test_consistency() -> None:
    assert check_consistency(Usage(output=3, reasoning=2)) is None
    assert check_consistency(Usage(output=2, reasoning=3)) == "reasoning 3 > output 2"
    assert check_consistency(Usage(input=MAX_TOKENS, output=1)) is not None
