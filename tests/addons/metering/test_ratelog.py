from __future__ import annotations

import logging

import pytest

from addons.metering.ratelog import RateLimitedLog


def test_a_flood_of_warnings_is_a_few_lines_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(
        logging.getLogger("test-ratelog"), burst=3, window_s=60, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test-ratelog"):
        for n in range(1000):
            limited.warning("rejected %d", n)
        now[0] = 61.0
        limited.warning("rejected %d", 1000)
        limited.warning("rejected %d", 1001)
        limited.warning("rejected %d", 1002)
        limited.warning("rejected %d", 1003)  # held back: said at shutdown
        limited.flush("rejections")
    assert [r.getMessage() for r in caplog.records] == [
        "rejected 0",
        "rejected 1",
        "rejected 2",
        "rejected 1000 (997 more like it not logged)",
        "rejected 1001",
        "rejected 1002",
        "meterline: 1 more rejections not logged",
    ]
