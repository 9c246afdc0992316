"""Governance counts an event only on the accounts whose feature's ``service_tier``
filter matches the tier that served it: the proxy's own pending events and the store's."""

from __future__ import annotations

from pathlib import Path

from meterline.entitlements import Counters, Refusal, Reservation, build_policy
from meterline.entitlements.reading import policy_usage, read_snapshot
from meterline.store import store
from tests.billing.events import Event, add_events
from tests.meterline.entitlements.test_counters import NOW, catalog


def _feature(key: str, tier: str) -> dict[str, object]:
    meter = {"provider": "openai", "model": "gpt-4o*", "service_tier": tier}
    return {"key": key, "name": key, "meter": meter}


FLEX = _feature("flex", "flex")
DEFAULT = _feature("std", "default")
LIMITS = [{"feature": "flex", "limit": 1000}, {"feature": "std", "limit": 100},
          {"feature": "all", "limit": 10_000}]  # fmt: skip


def test_pending_events_count_on_the_features_of_their_tier() -> None:
    pol = build_policy(catalog((FLEX, DEFAULT), entitlements=LIMITS), NOW).by_consumer["bot"]
    keys = {lim.account.feature: lim.account.current(NOW)[1] for lim in pol.limits}
    c = Counters()
    c.record(pol, "a", "openai", "gpt-4o", {"input": 60, "output": 40}, NOW, "flex")
    c.record(pol, "b", "openai", "gpt-4o", {"output": 30}, NOW, "default")
    c.record(pol, "c", "openai", "gpt-4o", {"output": 5}, NOW)  # no tier reported: standard
    c.record(pol, "d", "openai", "gpt-4o", {"output": 7}, NOW, "priority")
    assert {f: c.used(k) for f, k in keys.items()} == {"flex": 100, "std": 35, "all": 142}
    # The flex traffic leaves the default tier's limit room: admitted (35 < 100) ...
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 1, 1, NOW), Reservation)
    c.record(pol, "e", "openai", "gpt-4o", {"output": 65}, NOW, "DEFAULT")
    # ... until default calls reach it (100): then refused, whatever tier a call asks for
    refused = c.admit(pol, "openai", "gpt-4o", 1, 1, NOW)
    assert isinstance(refused, Refusal) and refused.reason == "limit:std"


def test_stored_events_count_on_the_features_of_their_tier(tmp_path: Path) -> None:
    db = tmp_path / "events.duckdb"
    policy = build_policy(catalog((FLEX, DEFAULT), entitlements=LIMITS), NOW)
    pol = policy.by_consumer["bot"]
    keys = {lim.account.feature: lim.account.current(NOW)[1] for lim in pol.limits}
    add_events(
        db,
        Event(ts=NOW, consumer="bot", input=60, output=40, service_tier="flex"),
        Event(ts=NOW, consumer="bot", output=30, service_tier="default"),
        Event(ts=NOW, consumer="bot", output=5),
        Event(ts=NOW, consumer="bot", output=7, service_tier="priority"),
    )
    with store(db) as con:
        used = policy_usage(con, policy, NOW)
        snap = read_snapshot(con, policy, NOW, list)
    assert {f: used[k] for f, k in keys.items()} == {"flex": 100, "std": 35, "all": 142}
    assert {f: snap.stored[k] for f, k in keys.items()} == {"flex": 100, "std": 35, "all": 142}
