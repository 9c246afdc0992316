"""Governance counts an event only on the accounts whose feature's ``speed`` and
``inference_geo`` filters match how it ran (the proxy's own pending events and the
store's), but admits a call before it knows: a limit on a US feature holds every call of
its model, one on a fast feature every call that may run fast (docs/catalog.md)."""

from __future__ import annotations

from pathlib import Path

from meterline.entitlements import Counters, Refusal, Reservation, build_policy
from meterline.entitlements.policy import CustomerPolicy, Key
from meterline.entitlements.reading import policy_usage, read_snapshot
from meterline.store import store
from tests.billing.events import Event, add_events
from tests.meterline.entitlements.test_counters import NOW, catalog


def _feature(key: str, **served: str) -> dict[str, object]:
    meter = {"provider": "openai", "model": "gpt-4o*", **served}
    return {"key": key, "name": key, "meter": meter}


FAST = _feature("fast", speed="fast")
STANDARD = _feature("std", speed="standard")
US = _feature("us", inference_geo="us")
LIMITS = [{"feature": "fast", "limit": 100}, {"feature": "std", "limit": 1000},
          {"feature": "us", "limit": 1000}, {"feature": "all", "limit": 10_000}]  # fmt: skip
#: What the calls below add to each limit's counter.
EXPECTED = {"fast": 100, "std": 47, "us": 90, "all": 147}


def _keys(pol: CustomerPolicy) -> dict[str, Key]:
    return {lim.account.feature: lim.account.current(NOW)[1] for lim in pol.limits}


def test_pending_events_count_on_the_features_of_their_speed_and_place() -> None:
    pol = build_policy(catalog((FAST, STANDARD, US), entitlements=LIMITS), NOW).by_consumer["bot"]
    keys = _keys(pol)
    c = Counters()
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 1, 1, NOW), Reservation)
    c.record(pol, "a", "openai", "gpt-4o", {"input": 60, "output": 30}, NOW,
             speed="fast", inference_geo="us")  # fmt: skip
    c.record(pol, "b", "openai", "gpt-4o", {"output": 10}, NOW, speed="FAST")
    c.record(pol, "c", "openai", "gpt-4o", {"output": 5}, NOW)  # none said: standard, global
    c.record(pol, "d", "openai", "gpt-4o", {"output": 42}, NOW, inference_geo="not_available")
    assert {f: c.used(k) for f, k in keys.items()} == EXPECTED
    # The fast feature's limit is reached (100): a call is admitted before the provider
    # says its speed, so every call of the model is refused, standard ones too.
    refused = c.admit(pol, "openai", "gpt-4o", 1, 1, NOW)
    assert isinstance(refused, Refusal) and refused.reason == "limit:fast"


def test_stored_events_count_on_the_features_of_their_speed_and_place(tmp_path: Path) -> None:
    db = tmp_path / "events.duckdb"
    policy = build_policy(catalog((FAST, STANDARD, US), entitlements=LIMITS), NOW)
    keys = _keys(policy.by_consumer["bot"])
    add_events(
        db,
        Event(ts=NOW, consumer="bot", input=60, output=30, speed="fast", inference_geo="us"),
        Event(ts=NOW, consumer="bot", output=10, speed="FAST"),
        Event(ts=NOW, consumer="bot", output=5),
        Event(ts=NOW, consumer="bot", output=42, inference_geo="not_available"),
    )
    with store(db) as con:
        used = policy_usage(con, policy, NOW)
        snap = read_snapshot(con, policy, NOW, list)
    assert {f: used[k] for f, k in keys.items()} == EXPECTED
    assert {f: snap.stored[k] for f, k in keys.items()} == EXPECTED


def test_a_call_that_cannot_run_fast_is_not_held_by_the_fast_limit() -> None:
    """A request that does not ask for fast mode is checked with ``standard_speed``: the
    full fast feature's limit neither refuses nor holds it; the other limits do."""
    pol = build_policy(catalog((FAST, STANDARD, US), entitlements=LIMITS), NOW).by_consumer["bot"]
    keys = _keys(pol)
    c = Counters()
    c.record(pol, "a", "openai", "gpt-4o", {"output": 100}, NOW, speed="fast")
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 1, 1, NOW), Refusal)
    held = c.admit(pol, "openai", "gpt-4o", 5, 5, NOW, standard_speed=True)
    assert isinstance(held, Reservation)
    held_by = {feature for feature, key in keys.items() for k, _ in held.parts if k == key}
    assert held_by == {"std", "us", "all"}
    assert keys["fast"] not in c.reserved and c.reserved[keys["std"]] == 10
