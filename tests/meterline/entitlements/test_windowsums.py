"""Governance's window sums kept between reads: a read sums only recently ingested events,
and gives what a whole read gives."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from meterline.catalog import Catalog
from meterline.entitlements import build_policy
from meterline.entitlements.reading import read_snapshot
from meterline.entitlements.windowsums import (
    RESYNC_EVERY,
    SETTLE_MARGIN,
    KeptSums,
    resync_interval,
)
from meterline.store import store
from tests.billing.events import Event, add_events
from tests.meterline.entitlements.test_counters import NOW, catalog

LIMITS = [
    {"feature": "out", "limit": 10_000},
    {"feature": "all", "limit": 10_000},
    {"feature": "mini", "limit": 10_000},
]


def _event(
    ingested: datetime, output: int, model: str = "gpt-4o", inp: int = 0, consumer: str = "bot"
) -> Event:
    """A call of this period ending a second before it was ingested."""
    return Event(
        ts=ingested - timedelta(seconds=1),
        consumer=consumer,
        model=model,
        input=inp,
        output=output,
        ingested_at=ingested,
    )


def _counters(db: Path, cat: Catalog, at: datetime, kept: KeptSums | None) -> dict[str, int]:
    """Each limit's units read at ``at``, by feature."""
    policy = build_policy(cat, at)
    with store(db) as con:
        snap = read_snapshot(con, policy, at, list, kept=kept)
    return {key[1]: units for key, units in snap.stored.items()}


def test_a_kept_read_sums_only_recent_events_and_equals_a_whole_read(tmp_path: Path) -> None:
    """Events ingested over several reads, some settling between them: every kept read
    equals a whole read of the same store, and only the first summed whole windows."""
    db = tmp_path / "events.duckdb"
    cat = catalog(entitlements=LIMITS)
    kept = KeptSums()
    add_events(db, _event(NOW - timedelta(days=3), 100), _event(NOW - timedelta(hours=1), 7))
    at = NOW
    for step in range(6):
        add_events(
            db,
            _event(at - timedelta(seconds=30), 10 + step, inp=3),
            _event(at - SETTLE_MARGIN - timedelta(seconds=1), 1, model="gpt-4o-mini"),
        )
        assert _counters(db, cat, at, kept) == _counters(db, cat, at, None)
        at += timedelta(minutes=1)
    assert kept.full_reads == 1
    assert _counters(db, cat, at, kept) == {"out": 188, "all": 206, "mini": 6}


def test_a_batch_stored_behind_the_settled_boundary_is_found_by_the_resync(
    tmp_path: Path,
) -> None:
    """The kept sums assume a batch is stored within the margin of its ``ingested_at``; one
    that is not (an import keeping old values) is missed by the reads in between and
    counted by the next whole read, at most ``RESYNC_EVERY`` later. A read that misses
    it proves the kept read does not scan the settled events again."""
    db = tmp_path / "events.duckdb"
    cat = catalog(entitlements=LIMITS)
    kept = KeptSums()
    add_events(db, _event(NOW - timedelta(hours=2), 50))
    assert _counters(db, cat, NOW, kept)["out"] == 50
    add_events(db, _event(NOW - timedelta(hours=1), 20))  # stored late, ingested_at old
    assert _counters(db, cat, NOW + timedelta(seconds=2), kept)["out"] == 50
    assert _counters(db, cat, NOW + RESYNC_EVERY, kept)["out"] == 70
    assert kept.full_reads == 2


def test_a_reload_keeps_the_sums_and_a_clock_gone_back_reads_whole_windows(
    tmp_path: Path,
) -> None:
    """A reload of the same catalog (new meter objects) keeps every counter's sums: a
    batch stored behind the boundary meanwhile is not found by it (so it rescanned
    nothing), but by the next whole read, here a clock gone back."""
    db = tmp_path / "events.duckdb"
    kept = KeptSums()
    add_events(db, _event(NOW - timedelta(hours=2), 50))
    assert _counters(db, catalog(entitlements=LIMITS), NOW, kept)["out"] == 50
    add_events(db, _event(NOW - timedelta(hours=1), 20))  # behind the boundary, as above
    later = NOW + timedelta(seconds=2)
    assert _counters(db, catalog(entitlements=LIMITS), later, kept)["out"] == 50
    assert (kept.full_reads, kept.changed_reads) == (1, 1)
    add_events(db, _event(NOW - timedelta(minutes=30), 5))
    assert _counters(db, catalog(entitlements=LIMITS[:1]), NOW - timedelta(hours=1), kept) == {
        "out": 75
    }  # the clock went back (and the windows changed): whole windows
    assert kept.full_reads == 2


def _catalog(
    limits: list[dict[str, Any]],
    acme: tuple[str, ...] = ("bot",),
    beta: tuple[str, ...] = (),
    mini: str = "gpt-4o-mini",
) -> Catalog:
    """Customers ``acme`` and (with consumers) ``beta`` on one plan of ``limits``; the
    ``mini`` feature counts model ``mini``."""
    customers = [("acme", acme), ("beta", beta)]
    return Catalog.model_validate(
        {
            "consumers": [{"name": name} for name in ("bot", "bot2")],
            "features": [
                {
                    "key": "out",
                    "name": "out",
                    "meter": {"provider": "openai", "model": "gpt-4o*", "token_types": ["output"]},
                },
                {"key": "all", "name": "all", "meter": {"provider": "openai", "model": "gpt-4o*"}},
                {"key": "mini", "name": "mini", "meter": {"model": mini}},
            ],  # fmt: skip
            "plans": [{"key": "p", "name": "P", "currency": "USD", "entitlements": limits}],
            "customers": [
                {
                    "key": key,
                    "name": key,
                    "currency": "USD",
                    "consumers": list(consumers),
                    "subscriptions": [{"plan": "p", "start": "2026-01-31T00:00:00Z"}],
                }
                for key, consumers in customers
                if consumers
            ],  # fmt: skip
        }
    )


def _by_counter(db: Path, cat: Catalog, at: datetime, kept: KeptSums | None) -> dict[Any, int]:
    policy = build_policy(cat, at)
    with store(db) as con:
        snap = read_snapshot(con, policy, at, list, kept=kept)
    return {(key[0], key[1]): units for key, units in snap.stored.items()}


def test_after_a_catalog_change_only_the_counters_that_changed_are_read_whole(
    tmp_path: Path,
) -> None:
    """Each change, with events settling and arriving between reads, gives what a whole
    read gives, and sums whole only the counters it changed: a customer added (its
    consumer's earlier events count), a consumer moved into another customer, a feature's
    meter edited, a limit removed. Before, every reload (even of an unchanged catalog)
    summed every counter over the whole period: 1 s per 10M events, on a DuckDB file on
    the writer's connection, holding its flushes."""
    db = tmp_path / "events.duckdb"
    add_events(
        db,
        _event(NOW - timedelta(days=3), 100),
        _event(NOW - timedelta(days=3), 40, consumer="bot2"),
        _event(NOW - timedelta(days=2), 7, model="gpt-4o-mini", inp=2, consumer="bot2"),
    )
    kept = KeptSums()
    steps = [
        _catalog(LIMITS),
        _catalog(LIMITS),  # reloaded unchanged
        _catalog(LIMITS, beta=("bot2",)),  # a customer added
        _catalog(LIMITS, acme=("bot", "bot2")),  # its consumer moved into acme
        _catalog(LIMITS, acme=("bot", "bot2"), mini="gpt-4o"),  # a meter edited
        _catalog(LIMITS[:2], acme=("bot", "bot2"), mini="gpt-4o"),  # a limit removed
        _catalog(LIMITS[:2], acme=("bot", "bot2"), mini="gpt-4o"),  # no change
    ]
    at = NOW
    for n, cat in enumerate(steps):
        add_events(
            db,
            _event(at - timedelta(seconds=30), 10 + n, inp=3),
            _event(at - timedelta(seconds=20), 5, model="gpt-4o-mini", consumer="bot2"),
            _event(at - SETTLE_MARGIN - timedelta(seconds=1), 1, model="gpt-4o-mini"),
        )
        assert _by_counter(db, cat, at, kept) == _by_counter(db, cat, at, None), n
        at += timedelta(minutes=1)
    # Whole: the first read, and the move (every counter left changed its windows).
    assert (kept.full_reads, kept.changed_reads) == (2, 5)
    assert _by_counter(db, steps[-1], at, None) == {
        ("acme", "out"): 100 + 40 + 7 + sum(10 + n for n in range(7)) + 7 * (5 + 1),
        ("acme", "all"): 100 + 40 + 9 + sum(13 + n for n in range(7)) + 7 * (5 + 1),
    }


def test_windows_shared_by_several_limits_are_summed_once_for_each(tmp_path: Path) -> None:
    """Three limits of one plan over one period share the consumer's window: each gets
    the units its own feature counts."""
    db = tmp_path / "events.duckdb"
    add_events(
        db,
        _event(NOW - timedelta(hours=1), 40, inp=5),
        _event(NOW - timedelta(hours=1), 9, model="gpt-4o-mini", inp=1),
    )
    cat = catalog(entitlements=LIMITS)
    assert _counters(db, cat, NOW, KeptSums()) == {"out": 49, "all": 55, "mini": 10}
    assert _counters(db, cat, NOW, None) == {"out": 49, "all": 55, "mini": 10}


def test_whole_reads_that_take_long_come_less_often() -> None:
    """Every 15 minutes at least; a whole read of 30 s (a big fleet's month on a lake)
    every 50 minutes: whole reads stay near 1% of the reading thread's time."""
    assert resync_interval(0.9) == RESYNC_EVERY == timedelta(minutes=15)
    assert resync_interval(30.0) == timedelta(minutes=50)
    assert resync_interval(0.3, timedelta(minutes=1)) == timedelta(minutes=1)


def test_a_restarted_reader_takes_up_the_sums_an_earlier_one_kept(tmp_path: Path) -> None:
    """The sums kept by one reader, saved as JSON, are taken up by a new one (a proxy
    restarted, its catalog loaded anew): its first read sums only what was ingested
    since, and equals a whole read."""
    db = tmp_path / "events.duckdb"
    add_events(db, _event(NOW - timedelta(days=2), 100), _event(NOW - timedelta(hours=3), 7))
    first = KeptSums()
    _counters(db, catalog(entitlements=LIMITS), NOW, first)
    state = json.loads(json.dumps(first.state()))
    add_events(db, _event(NOW + timedelta(seconds=20), 30, model="gpt-4o-mini"))
    later = NOW + timedelta(minutes=1)
    restarted = KeptSums()
    restarted.restore(state)
    assert _counters(db, catalog(entitlements=LIMITS), later, restarted) == _counters(
        db, catalog(entitlements=LIMITS), later, None
    )
    assert restarted.full_reads == 0


def _saved(db: Path) -> dict[str, Any]:
    """The sums a reader kept at NOW over one settled event of 50 output tokens."""
    add_events(db, _event(NOW - timedelta(hours=3), 50))
    first = KeptSums()
    _counters(db, catalog(entitlements=LIMITS), NOW, first)
    state = first.state()
    assert state is not None
    return state


def test_sums_that_no_longer_hold_are_not_taken_up(tmp_path: Path) -> None:
    """Read whole instead: the catalog changed (another limit), an event was stored
    behind the boundary since (the settled count differs), the file was cut, or the
    clock is behind the boundary."""
    db = tmp_path / "events.duckdb"
    state = _saved(db)
    later = NOW + timedelta(minutes=1)

    def taken_up(state: dict[str, Any], limits: list[dict[str, Any]], at: datetime) -> bool:
        kept = KeptSums()
        kept.restore(state)
        _counters(db, catalog(entitlements=limits), at, kept)
        return kept.full_reads == 0

    assert taken_up(state, LIMITS, later)
    assert not taken_up(state, LIMITS[:2], later)
    assert not taken_up({**state, "digest": 7}, LIMITS, later)
    assert not taken_up({k: v for k, v in state.items() if k != "settled"}, LIMITS, later)
    assert not taken_up(state, LIMITS, NOW - timedelta(minutes=5))
    add_events(db, _event(NOW - timedelta(hours=2), 20))  # behind the boundary
    assert not taken_up(state, LIMITS, later)
    kept = KeptSums()
    kept.restore(state)
    assert _counters(db, catalog(entitlements=LIMITS), later, kept)["out"] == 70


def test_a_whole_read_due_at_a_restart_comes_at_the_second_read(tmp_path: Path) -> None:
    """Sums saved 20 minutes before a restart: the whole read they are due is not the
    first read (the calls at start wait for that one), but the next."""
    db = tmp_path / "events.duckdb"
    state = _saved(db)
    restarted, cat = KeptSums(), catalog(entitlements=LIMITS)  # the catalog loaded anew
    restarted.restore(state)
    later = NOW + timedelta(minutes=20)
    assert _counters(db, cat, later, restarted)["out"] == 50
    assert restarted.full_reads == 0
    _counters(db, cat, later + timedelta(seconds=2), restarted)
    _counters(db, cat, later + timedelta(seconds=4), restarted)
    assert restarted.full_reads == 1


def test_a_reader_with_no_sums_of_its_own_takes_up_a_fleet_peers(tmp_path: Path) -> None:
    """A proxy joining a fleet has no saved sums: its first read asks the fleet for the
    latest of its windows' digest (``shared``) and takes them up, checked as its own
    would be; sums of its own that hold go first, and the fleet is asked only at the
    first read."""
    db = tmp_path / "events.duckdb"
    state = _saved(db)
    asked: list[str] = []

    def fleet(digest: str) -> dict[str, Any] | None:
        asked.append(digest)
        return state if digest == state["digest"] else None

    later = NOW + timedelta(minutes=1)
    joining = KeptSums(shared=fleet)
    assert _counters(db, catalog(entitlements=LIMITS), later, joining)["out"] == 50
    assert joining.full_reads == 0 and joining.taken_from_fleet and asked == [state["digest"]]
    _counters(db, catalog(entitlements=LIMITS), later + timedelta(seconds=2), joining)
    assert len(asked) == 1
    # Another catalog (another digest): nothing to take up, read whole.
    other = KeptSums(shared=fleet)
    _counters(db, catalog(entitlements=LIMITS[:2]), later, other)
    assert other.full_reads == 1 and not other.taken_from_fleet and len(asked) == 2
    # Its own sums hold: the fleet is not asked.
    restarted = KeptSums(shared=fleet)
    restarted.restore(state)
    _counters(db, catalog(entitlements=LIMITS), later, restarted)
    assert restarted.full_reads == 0 and not restarted.taken_from_fleet and len(asked) == 2
    # A peer's sums that no longer hold (an event stored behind their boundary): whole.
    add_events(db, _event(NOW - timedelta(hours=2), 20))
    late = KeptSums(shared=fleet)
    assert _counters(db, catalog(entitlements=LIMITS), later, late)["out"] == 70
    assert late.full_reads == 1 and not late.taken_from_fleet


def test_only_the_columns_some_meter_tells_apart_are_read(tmp_path: Path) -> None:
    """Limits on output and on input only: the other token columns are not read (summed
    as 0), nor how calls were served while no meter filters on it; each counter still
    equals the store's own sum. Once a meter counts only flex calls, the tiers are read."""
    db = tmp_path / "events.duckdb"
    events = [_event(NOW - timedelta(hours=h), 10 * h, inp=h) for h in range(1, 6)]
    events[0].service_tier, events[1].service_tier = "flex", "priority"
    add_events(db, *events)
    inp = {"key": "in", "name": "in", "meter": {"provider": "openai", "token_types": ["input"]}}
    cat = catalog((inp,), entitlements=[LIMITS[0], {"feature": "in", "limit": 10}])
    with store(db) as con:
        sums = "SELECT sum(output_tokens), sum(input_tokens) FROM usage_events"
        row = con.execute(sums).fetchone()
    assert row == (150, 15)
    assert _counters(db, cat, NOW, KeptSums()) == {"out": 150, "in": 15}
    assert _counters(db, cat, NOW, None) == {"out": 150, "in": 15}
    flex = {"key": "flex", "name": "flex",
            "meter": {"token_types": ["output"], "service_tier": ["flex"]}}  # fmt: skip
    cat = catalog((flex,), entitlements=[LIMITS[0], {"feature": "flex", "limit": 10}])
    assert _counters(db, cat, NOW, KeptSums()) == {"out": 150, "flex": 10}
