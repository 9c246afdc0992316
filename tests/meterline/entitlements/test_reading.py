"""Counters refreshed from a real DuckDB store while the proxy keeps counting."""

from __future__ import annotations

from pathlib import Path

from meterline.entitlements import Counters, build_policy
from meterline.entitlements.reading import read_snapshot
from meterline.store import store
from tests.billing.events import Event, add_events
from tests.meterline.entitlements.test_counters import NOW, catalog


def test_pending_ids_are_taken_after_the_read_fixed_its_snapshot(tmp_path: Path) -> None:
    """Every event of the snapshot must be among the pending ids the read checks: an
    event counted and flushed between taking the ids and reading would otherwise count
    twice (stored and pending). So the ids are asked for once the snapshot is fixed:
    event C, counted and flushed at that moment, is not in it, and is counted once."""
    db = tmp_path / "events.duckdb"
    cat = catalog(entitlements=[{"feature": "out", "limit": 1000}])
    policy = build_policy(cat, NOW)
    pol = policy.by_consumer["bot"]
    a, b, c = (Event(ts=NOW, consumer="bot", output=40, event_id=n) for n in "abc")
    add_events(db, a)
    counters = Counters()
    counters.record(pol, "b", "openai", "gpt-4o", {"output": 40}, NOW)  # not flushed yet
    calls: list[str] = []

    def pending_now() -> list[str]:
        # C is counted, then spooled and flushed, after the read began.
        counters.record(pol, "c", "openai", "gpt-4o", {"output": 40}, NOW)
        add_events(db, c)
        calls.append("asked")
        return counters.pending_ids()

    with store(db) as con:
        snap = read_snapshot(con, policy, NOW, pending_now)
    counters.apply(snap)
    key = pol.limits[0].account.current(NOW)[1]
    assert calls == ["asked"]
    assert snap.stored[key] == 40  # the snapshot predates C: read before the ids were taken
    assert counters.used(key) == 120  # a stored, b and c pending: each once
    with store(db) as con:  # the next read sees c stored and takes it out of pending
        counters.apply(read_snapshot(con, policy, NOW, counters.pending_ids))
    assert counters.used(key) == 120 and counters.pending_ids() == ["b"]
