"""Which windows a counter and a prepaid balance cover: earlier periods not invoiced yet,
counters the store was never read for, customers whose subscription ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from meterline.catalog import Catalog
from meterline.entitlements import Counters, Refusal, Reservation, Snapshot, build_policy
from meterline.entitlements.reading import read_snapshot
from meterline.store import store
from tests.billing.events import Event, add_events
from tests.meterline.entitlements.test_counters import NOW, catalog, policy_of

PREPAID = {
    "prepaid": True,
    "rate_cards": [
        {
            "key": "o",
            "name": "o",
            "feature": "out",
            "price": {"type": "unit", "amount": "1.00", "per": 100},
        }
    ],
}
FEB = datetime(2026, 2, 10, tzinfo=UTC)  # in [Jan 31, Feb 28): the period before NOW's


def _grant(db: Path, amount: str) -> None:
    with store(db) as con:
        con.execute(
            "INSERT INTO credit_grants (grant_id, seq, customer_key, currency, amount, priority, "
            "granted_at, granted_by, reason) VALUES ('g1', 1, 'acme', 'USD', ?, 10, "
            "TIMESTAMP '2026-01-31 00:00:00', 'test', 'test')",
            [Decimal(amount)],
        )


def test_a_prepaid_balance_counts_earlier_periods_no_invoice_billed(tmp_path: Path) -> None:
    """1.00 USD granted, 1.00 USD per 100 output tokens: 100 tokens used in February, not
    invoiced yet. In March the balance is not available again (before: admitted up to
    1.00 USD more, the same credit spent twice); once February's invoice exists (and
    consumed the grant), its usage leaves the bound."""
    db = tmp_path / "events.duckdb"
    policy = build_policy(catalog(**PREPAID), NOW)
    pol = policy.by_consumer["bot"]
    add_events(db, Event(ts=FEB, consumer="bot", output=100, event_id="feb"))
    _grant(db, "1.00")
    counters = Counters()
    with store(db) as con:
        counters.apply(read_snapshot(con, policy, NOW, counters.pending_ids))
    refused = counters.admit(pol, "openai", "gpt-4o", 0, 10, NOW)
    assert isinstance(refused, Refusal) and refused.reason == "credits"
    assert refused.message == (
        "Meterline: prepaid credit of customer 'acme' is used up (balance 1.00 USD, period "
        "cost so far 0.00 USD, earlier periods not invoiced 1.00 USD); add credits to continue."
    )
    with store(db) as con:  # February invoiced: the invoice took 0.40 of the grant
        con.execute(
            "INSERT INTO invoices VALUES ('INV-000001', 1, 'acme', 'USD', "
            "TIMESTAMP '2026-01-31 00:00:00', TIMESTAMP '2026-02-28 00:00:00', "
            "TIMESTAMP '2026-03-01 00:00:00', TIMESTAMP '2026-03-01 00:00:00', 'finalized', "
            "0, 'x')"
        )
        con.execute(
            "INSERT INTO credit_consumptions VALUES ('INV-000001', 'g1', 'acme', 0.40, "
            "TIMESTAMP '2026-03-01 00:00:00')"
        )
        counters.apply(read_snapshot(con, policy, NOW, counters.pending_ids))
    assert isinstance(counters.admit(pol, "openai", "gpt-4o", 0, 10, NOW), Reservation)


def test_the_period_just_ended_still_counts_before_the_next_read() -> None:
    """At a period boundary the last snapshot's counter becomes an earlier period: its
    cost stays held against the balance until a read (then an invoice) takes over."""
    pol = policy_of(catalog(**PREPAID))
    key = pol.cost_cards[0].account.current(NOW)[1]
    c = Counters()
    c.apply(Snapshot({key: 100}, set(), {"acme": Decimal("1.00")}, NOW))
    next_period = NOW + timedelta(days=21)  # Mar 31 on
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 10, next_period), Refusal)


def test_a_counter_never_read_refuses_until_a_snapshot_covers_it() -> None:
    """An override of a feature the plan leaves open starts mid-period: its counter's
    window began before any read of it (before: counted from zero, 200 used earlier
    ignored). Refused, retryably, until the store is read; then the stored 200 count."""
    cat = catalog(entitlements=[{"feature": "all", "limit": 1000}])
    pol = policy_of(cat)
    c = Counters()
    c.apply(Snapshot({pol.accounts[0].current(NOW)[1]: 0}, set(), {}, NOW))
    with_override = Catalog.model_validate(
        {
            **cat.model_dump(mode="json", exclude_none=True),
            "customers": [
                {
                    **cat.customers[0].model_dump(mode="json", exclude_none=True),
                    "entitlements": [
                        {"feature": "out", "limit": 100, "start": "2026-03-10T12:00:00Z"}
                    ],
                }
            ],
        }
    )
    later = NOW + timedelta(seconds=5)
    pol = policy_of(with_override, later)
    held = c.admit(pol, "openai", "gpt-4o", 0, 10, later)
    assert isinstance(held, Refusal) and (held.kind, held.retry) == ("unavailable", True)
    keys = {a.current(later)[1]: 0 for a in pol.accounts}
    out = next(k for k in keys if k[1] == "out")
    c.apply(Snapshot({**keys, out: 200}, set(), {}, later))
    refused = c.admit(pol, "openai", "gpt-4o", 0, 10, later)
    assert isinstance(refused, Refusal) and "(200 used)" in refused.message


def test_a_period_that_begins_after_a_read_is_known_to_be_empty() -> None:
    """Period rollover is not a hold: the store held nothing of a period not begun."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 100}]))
    c = Counters()
    c.apply(Snapshot({pol.accounts[0].current(NOW)[1]: 100}, set(), {}, NOW))
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 10, NOW), Refusal)
    assert isinstance(
        c.admit(pol, "openai", "gpt-4o", 0, 10, NOW + timedelta(days=21)), Reservation
    )


def test_a_customer_whose_subscription_ended_is_refused() -> None:
    """Before: dropped from the policy, so its calls went through ungoverned (and no
    invoice bills them: 'outside subscriptions')."""
    cat = catalog(entitlements=[{"feature": "out", "limit": 100}])
    doc = cat.model_dump(mode="json", exclude_none=True)
    doc["customers"][0]["subscriptions"][0]["end"] = "2026-03-01T00:00:00Z"
    ended = Catalog.model_validate(doc)
    policy = build_policy(ended, NOW)
    refused = Counters().admit(policy.by_consumer["bot"], "openai", "gpt-4o", 0, 10, NOW)
    assert isinstance(refused, Refusal) and refused.kind == "not_granted"
    assert refused.message == (
        "Meterline: customer 'acme' has no active subscription (its subscription to plan 'p' "
        "ended at 2026-03-01T00:00:00Z); calls are refused."
    )
    # A plan that refuses nothing (soft limits only) stays ungoverned after its end.
    doc["plans"][0]["entitlements"] = [{"feature": "out", "limit": 100, "enforcement": "soft"}]
    assert build_policy(Catalog.model_validate(doc), NOW).by_consumer == {}


def test_an_expired_grant_still_pays_for_the_earlier_period_it_covers(tmp_path: Path) -> None:
    """February's 10.00 grant expired when March began; February's 9.00 of usage is not
    invoiced yet; a fresh 10.00 was granted in March. February's invoice will take its
    9.00 from the expired grant (a grant covers a period that began before it expired),
    so March has the whole fresh 10.00 (before: the proxy charged February to the fresh
    grant and admitted only 1.00 until someone invoiced February)."""
    db = tmp_path / "events.duckdb"
    policy = build_policy(catalog(**PREPAID), NOW)
    pol = policy.by_consumer["bot"]
    add_events(db, Event(ts=FEB, consumer="bot", output=900, event_id="feb"))
    with store(db) as con:
        for n, (expires, granted) in enumerate(
            (("TIMESTAMP '2026-02-28 00:00:00'", "2026-01-31"), ("NULL", "2026-03-01")), start=1
        ):
            con.execute(
                "INSERT INTO credit_grants (grant_id, seq, customer_key, currency, amount, "
                f"priority, expires_at, granted_at, granted_by, reason) VALUES ('g{n}', {n}, "
                f"'acme', 'USD', 10.00, 10, {expires}, TIMESTAMP '{granted} 00:00:00', 't', 't')"
            )
    counters = Counters()
    with store(db) as con:
        counters.apply(read_snapshot(con, policy, NOW, counters.pending_ids))
    # Admitted while the credit left is not used up (the last call may overshoot it):
    # 5.00, then 5.00 more are in flight against March's 10.00; February is the old grant's.
    for _ in range(2):
        assert isinstance(counters.admit(pol, "openai", "gpt-4o", 0, 500, NOW), Reservation)
    refused = counters.admit(pol, "openai", "gpt-4o", 0, 10, NOW)
    assert isinstance(refused, Refusal) and refused.reason == "credits"
