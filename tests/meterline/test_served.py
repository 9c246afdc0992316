"""The one rule for how a call was served (:mod:`meterline.served`): which events a
feature's ``service_tier``, ``speed`` and ``inference_geo`` filters count. Priced end to
end in tests/billing/test_speed_geo.py and tests/billing/test_service_tier.py."""

from __future__ import annotations

import pytest

from meterline.served import SERVED_SQL, Served, ServedFilter, names_match


@pytest.mark.parametrize(
    ("column", "names", "value", "counted"),
    [
        ("speed", None, "fast", True),
        ("speed", ("standard",), None, True),
        ("speed", ("standard",), "standard", True),
        ("speed", ("standard",), "fast", False),
        ("speed", ("fast",), None, False),
        ("speed", ("fast",), "Fast", True),
        ("speed", ("fast",), "not_available", False),
        ("inference_geo", ("global",), None, True),
        ("inference_geo", ("global",), "not_available", True),
        ("inference_geo", ("global",), "us", False),
        ("inference_geo", ("us",), "US", True),
        ("inference_geo", ("us",), None, False),
        ("inference_geo", ("us",), "not_available", False),
        ("inference_geo", ("us", "global"), None, True),
        ("service_tier", ("standard",), None, True),  # the tier rule is the same rule
        ("service_tier", ("flex",), None, False),
        # OpenAI's fast is its priority, renamed (both names are taken, asked or served)
        ("service_tier", ("priority",), "fast", True),
        ("service_tier", ("fast",), "priority", True),
        ("service_tier", ("fast",), "FAST", True),
        ("service_tier", ("fast",), "ultrafast", False),  # a tier of its own
        ("service_tier", ("default",), "fast", False),
        ("speed", ("priority",), "fast", False),  # Anthropic's fast speed is no tier
    ],
)
def test_the_rule(
    column: str, names: tuple[str, ...] | None, value: str | None, counted: bool
) -> None:
    assert names_match(column, names, value) is counted


def test_filters_stack() -> None:
    fast_us = ServedFilter(speed=("fast",), inference_geo=("us",))
    assert fast_us.counts(Served("standard", "fast", "us"))
    assert not fast_us.counts(Served(None, "fast", "global"))
    assert not fast_us.counts(Served(None, None, "us"))
    assert ServedFilter().counts(Served("flex", "fast", "us"))
    assert ServedFilter.from_snapshot({"speed": "fast"}) == ServedFilter(speed=("fast",))
    assert fast_us.snapshot() == {"speed": ["fast"], "inference_geo": ["us"]}


def test_the_sql_columns_are_the_event_columns_in_order() -> None:
    assert SERVED_SQL == "e.service_tier, e.speed, e.inference_geo"
