from __future__ import annotations

from addons.metering.recentids import WINDOW_US, RecentIds

T = 1_800_000_000_000_000  # µs since the epoch


def test_an_id_twice_in_one_batch_is_a_repeat() -> None:
    assert RecentIds().repeats([("a", T), ("b", T), ("a", T + 1)])
    assert not RecentIds().repeats([("a", T), ("b", T)])
    assert not RecentIds().repeats([])


def test_a_remembered_id_repeats_within_the_window_of_the_batchs_earliest_event() -> None:
    recent = RecentIds()
    recent.add([("a", T)], now=0.0)
    assert recent.repeats([("x", T + WINDOW_US), ("a", T + WINDOW_US + 10)])  # bound: inclusive
    assert not recent.repeats([("a", T + WINDOW_US + 1)])
    assert not recent.repeats([("b", T)])


def test_ids_are_forgotten_after_remember_s_or_past_max_ids() -> None:
    recent = RecentIds(remember_s=600, max_ids=3)
    recent.add([("a", T), ("b", T)], now=0.0)
    recent.add([("c", T)], now=100.0)
    assert len(recent) == 3
    recent.add([("d", T)], now=200.0)  # four ids: the oldest batch goes
    assert not recent.repeats([("a", T)]) and recent.repeats([("c", T)])
    recent.add([("c", T)], now=850.0)  # "c" brought again: kept past its first batch's expiry
    assert recent.repeats([("c", T)]) and not recent.repeats([("d", T)])
    assert len(recent) == 1
