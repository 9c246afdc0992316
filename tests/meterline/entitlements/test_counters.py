"""Admission, reservation, settlement and snapshots on in-memory counters (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterline.catalog import Catalog
from meterline.entitlements import Counters, Refusal, Reservation, Snapshot, build_policy
from meterline.entitlements.policy import CustomerPolicy

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


def catalog(extra_features: tuple[dict[str, object], ...] = (), **plan: object) -> Catalog:
    return Catalog.model_validate(
        {
            "consumers": [{"name": "bot"}],
            "features": [
                {
                    "key": "out",
                    "name": "out",
                    "meter": {"provider": "openai", "model": "gpt-4o*", "token_types": ["output"]},
                },
                {"key": "all", "name": "all", "meter": {"provider": "openai", "model": "gpt-4o*"}},
                {"key": "mini", "name": "mini", "meter": {"model": "gpt-4o-mini"}},
                *extra_features,
            ],  # fmt: skip
            "plans": [{"key": "p", "name": "P", "currency": "USD", **plan}],
            "customers": [
                {
                    "key": "acme",
                    "name": "ACME",
                    "currency": "USD",
                    "consumers": ["bot"],
                    "subscriptions": [{"plan": "p", "start": "2026-01-31T00:00:00Z"}],
                },
            ],  # fmt: skip
        }
    )


def policy_of(cat: Catalog, at: datetime = NOW) -> CustomerPolicy:
    return build_policy(cat, at).by_consumer["bot"]


def test_the_call_that_reaches_the_limit_is_the_last_one_allowed() -> None:
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 100}]))
    c = Counters()
    for n in range(3):
        r = c.admit(pol, "openai", "gpt-4o", 10, 40, NOW)
        assert isinstance(r, Reservation)
        c.release(r)
        c.record(pol, f"e{n}", "openai", "gpt-4o", {"input": 10, "output": 40}, NOW)
    refused = c.admit(pol, "openai", "gpt-4o", 10, 40, NOW)
    assert isinstance(refused, Refusal) and refused.reason == "limit:out"
    assert "resets at 2026-03-31T00:00:00Z" in refused.message  # Jan 31 + 2 months
    assert refused.retry_after == int((datetime(2026, 3, 31, tzinfo=UTC) - NOW).total_seconds()) + 1
    # Another model, another provider: not this limit.
    assert isinstance(c.admit(pol, "anthropic", "gpt-4o", 10, 40, NOW), Reservation)
    # Next period: counters start again.
    assert isinstance(
        c.admit(pol, "openai", "gpt-4o", 10, 40, NOW + timedelta(days=21)), Reservation
    )


def test_reservations_make_concurrent_calls_see_each_other() -> None:
    pol = policy_of(catalog(entitlements=[{"feature": "all", "limit": 1000}]))
    c = Counters()
    held = [c.admit(pol, "openai", "gpt-4o", 100, 150, NOW) for _ in range(5)]
    assert [type(h) for h in held] == [Reservation] * 4 + [Refusal]  # 4 x 250 = 1000
    for h in held[:4]:
        assert isinstance(h, Reservation)
        c.release(h)
    assert c.reserved == {}
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 100, 150, NOW), Reservation)


def test_snapshot_takes_over_pending_events_without_counting_twice() -> None:
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 100}]))
    c = Counters()
    c.record(pol, "e1", "openai", "gpt-4o", {"output": 60}, NOW)
    key = pol.limits[0].account.current(NOW)[1]
    assert c.used(key) == 60
    c.apply(Snapshot({key: 60}, {"e1"}, {}, NOW))  # e1 is in the store now
    assert c.used(key) == 60 and c.pending == {}
    c.record(pol, "e2", "openai", "gpt-4o", {"output": 30}, NOW)
    c.apply(Snapshot({key: 75}, set(), {}, NOW))  # another proxy's 15; e2 not stored yet
    assert c.used(key) == 105


def test_unit_grants_raise_the_hard_limit_of_their_feature_only() -> None:
    pol = policy_of(
        catalog(entitlements=[{"feature": "out", "limit": 100}, {"feature": "all", "limit": 500}])
    )
    key, other = (lim.account.current(NOW)[1] for lim in pol.limits)
    c = Counters()
    c.apply(Snapshot({key: 100, other: 0}, set(), {}, NOW))
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 40, NOW), Refusal)
    units = {("acme", "out"): 30, ("acme", "mini"): 999}
    c.apply(Snapshot({key: 100, other: 0}, set(), {}, NOW, units))
    r = c.admit(pol, "openai", "gpt-4o", 0, 40, NOW)  # 100 < 130: the last one allowed
    assert isinstance(r, Reservation)
    refused = c.admit(pol, "openai", "gpt-4o", 0, 40, NOW)
    assert isinstance(refused, Refusal)
    assert "limit of 100 out units per period (+30 granted): 100 used, the rest" in refused.message


def test_boolean_entitlements_are_an_allow_list() -> None:
    pol = policy_of(
        catalog(
            entitlements=[{"feature": "mini", "type": "boolean"}, {"feature": "out", "limit": 5}]
        )
    )
    c = Counters()
    assert isinstance(c.admit(pol, "openai", "gpt-4o-mini", 1, 1, NOW), Reservation)
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 1, 1, NOW), Reservation)  # metered grants
    refused = c.admit(pol, "openai", "o3", 1, 1, NOW)
    assert isinstance(refused, Refusal) and refused.kind == "not_granted"


@pytest.mark.parametrize(
    ("balance", "used", "admitted"),
    [("0", 0, False), ("1.00", 0, True), ("1.00", 99, True), ("1.00", 100, False)],
)
def test_prepaid_plan_stops_at_zero_balance(balance: str, used: int, admitted: bool) -> None:
    pol = policy_of(
        catalog(
            prepaid=True,
            rate_cards=[
                {
                    "key": "o",
                    "name": "o",
                    "feature": "out",
                    "price": {"type": "unit", "amount": "1.00", "per": 100},
                }
            ],
        )  # fmt: skip
    )
    c = Counters()
    key = pol.cost_cards[0].account.current(NOW)[1]
    c.apply(Snapshot({key: used}, set(), {"acme": Decimal(balance)}, NOW))
    result = c.admit(pol, "openai", "gpt-4o", 10, 10, NOW)
    assert isinstance(result, Reservation) is admitted
    if not admitted:
        assert isinstance(result, Refusal) and result.reason == "credits"


def test_prepaid_credit_held_by_calls_in_flight_is_told_apart_from_credit_used() -> None:
    """1.00 USD of credit at 1.00 per 100 tokens. 40 used and 80 reserved: a retry (the
    cost used is below the credit), used and held apart; 100 used and 30 reserved: used
    up, and the 0.30 held is not counted as used (before: "used up", cost so far 1.20 and
    1.30, ``x-should-retry: false`` both times)."""
    pol = policy_of(
        catalog(
            prepaid=True,
            rate_cards=[
                {"key": "o", "name": "o", "feature": "out",
                 "price": {"type": "unit", "amount": "1.00", "per": 100}}
            ],
        )
    )  # fmt: skip
    key = pol.cost_cards[0].account.current(NOW)[1]
    for used, held, retry, figures in (
        (40, 80, True, "period cost so far 0.40 USD, the rest held by calls in flight (0.80 USD)"),
        (100, 30, False, "period cost so far 1.00 USD, 0.30 USD held by calls in flight"),
    ):
        c = Counters()
        c.apply(Snapshot({key: used}, set(), {"acme": Decimal("1.00")}, NOW))
        c.reserved[key] = held
        refused = c.admit(pol, "openai", "gpt-4o", 0, 10, NOW)
        assert isinstance(refused, Refusal) and refused.reason == "credits"
        assert f"balance 1.00 USD, {figures}" in refused.message
        assert (refused.retry, refused.retry_after) == ((True, 2) if retry else (False, None))


def test_soft_and_unlimited_limits_never_refuse() -> None:
    pol = policy_of(
        catalog(
            entitlements=[
                {"feature": "out", "limit": 0, "enforcement": "soft"},
                {"feature": "all", "limit": "unlimited"},
            ]
        )  # fmt: skip
    )
    assert isinstance(Counters().admit(pol, "openai", "gpt-4o", 10, 10, NOW), Reservation)


def test_calls_in_flight_across_a_period_boundary_count_against_the_new_period() -> None:
    """A daily limit of 2,000; ten calls of 200 admitted just before midnight end after
    it, so their events land in the new period: the new period admits nothing more until
    they settle (before: it admitted ten more, 4,000 used against 2,000)."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 2000, "period": "P1D"}]))
    c = Counters()
    midnight = datetime(2026, 3, 11, tzinfo=UTC)
    before, after = midnight - timedelta(seconds=3), midnight + timedelta(seconds=1)
    old = [c.admit(pol, "openai", "gpt-4o", 0, 200, before) for _ in range(10)]
    assert all(isinstance(r, Reservation) for r in old)
    refused = c.admit(pol, "openai", "gpt-4o", 0, 200, after)
    assert isinstance(refused, Refusal) and refused.reason == "limit:out"
    assert "0 used, the rest held by calls in flight" in refused.message and refused.retry
    # They settle into the new period: still full, by what they used.
    for n, r in enumerate(old):
        assert isinstance(r, Reservation)
        c.release(r)
        c.record(pol, f"e{n}", "openai", "gpt-4o", {"output": 200}, after)
    assert c.in_flight == {} and c.reserved == {}
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 200, after), Refusal)


SWITCH = datetime(2026, 3, 10, 12, tzinfo=UTC)


def plan_switch_catalog() -> Catalog:
    """Acme on plan p until :data:`SWITCH`, then on plan q (a new subscription: another
    account, anchored at its start); both cap ``out`` at 5,000."""
    ent = [{"feature": "out", "limit": 5000}]
    return Catalog.model_validate(
        {
            **catalog().model_dump(mode="json", exclude_none=True),
            "plans": [
                {"key": "p", "name": "P", "currency": "USD", "entitlements": ent},
                {"key": "q", "name": "Q", "currency": "USD", "entitlements": ent},
            ],
            "customers": [
                {
                    "key": "acme",
                    "name": "ACME",
                    "currency": "USD",
                    "consumers": ["bot"],
                    "subscriptions": [
                        {"plan": "p", "start": "2026-01-31T00:00:00Z", "end": SWITCH.isoformat()},
                        {"plan": "q", "start": SWITCH.isoformat()},
                    ],
                },
            ],  # fmt: skip
        }
    )


def test_calls_in_flight_at_a_plan_switch_count_against_the_new_subscription() -> None:
    """A hard limit of 5,000; 45 calls of 100 are in flight when the customer switches
    plans (a new subscription: a new account, anchored at its start). They settle into the
    new subscription's period, so it admits only what they leave (before, they were held
    under the old account only: 50 more were admitted, 9,500 used against 5,000)."""
    switch = SWITCH
    cat = plan_switch_catalog()
    before, after = switch - timedelta(seconds=2), switch + timedelta(seconds=1)
    old_pol, new_pol = policy_of(cat, before), policy_of(cat, after)
    assert old_pol.plan == "p" and new_pol.plan == "q"
    old_key = old_pol.limits[0].account.current(before)[1]
    new_key = new_pol.limits[0].account.current(after)[1]
    assert old_key[:4] != new_key[:4]  # another anchor: another account
    c = Counters()
    c.apply(Snapshot({old_key: 0, new_key: 0}, set(), {}, before))
    old = [c.admit(old_pol, "openai", "gpt-4o", 0, 100, before) for _ in range(45)]
    assert all(isinstance(r, Reservation) for r in old)
    admitted = [c.admit(new_pol, "openai", "gpt-4o", 0, 100, after) for _ in range(50)]
    assert sum(isinstance(r, Reservation) for r in admitted) == 5  # 4,500 held, 500 left
    refused = admitted[-1]
    assert isinstance(refused, Refusal) and refused.retry
    assert "the rest held by calls in flight" in refused.message
    # Everything settles into the new subscription's period: 5,000 used, not 9,500.
    for n, r in enumerate(old + admitted):
        if isinstance(r, Reservation):
            c.release(r)
            c.record(new_pol, f"e{n}", "openai", "gpt-4o", {"output": 100}, after)
    assert c.in_flight == {} and c.reserved == {}
    assert c.used(new_key) == 5000
    assert isinstance(c.admit(new_pol, "openai", "gpt-4o", 0, 100, after), Refusal)


def test_a_subscription_starting_after_the_last_read_is_known_at_once() -> None:
    """The store was read before the new subscription started: its first period began
    after that read, so the store held none of it. Before, it was unread (503 "being
    read") until the next read, only because the read had not listed its account."""
    switch = SWITCH
    cat = plan_switch_catalog()
    before, after = switch - timedelta(seconds=2), switch + timedelta(seconds=1)
    old_key = policy_of(cat, before).limits[0].account.current(before)[1]
    c = Counters()
    c.apply(Snapshot({old_key: 0}, set(), {}, before))
    assert isinstance(
        c.admit(policy_of(cat, after), "openai", "gpt-4o", 0, 100, after), Reservation
    )
    # A period that began before the read, of an account it did not list, is unread.
    c.apply(Snapshot({}, set(), {}, after))
    refused = c.admit(policy_of(cat, after), "openai", "gpt-4o", 0, 100, after)
    assert isinstance(refused, Refusal) and refused.reason == "unavailable"


def test_calls_in_flight_when_an_entitlement_period_is_edited_count_against_the_new_one() -> None:
    """The limit's period changes from a month to a day (a reload): the new daily account
    holds the calls still in flight under the monthly one."""
    monthly = policy_of(catalog(entitlements=[{"feature": "out", "limit": 1000}]))
    daily = policy_of(catalog(entitlements=[{"feature": "out", "limit": 1000, "period": "P1D"}]))
    c = Counters()
    old = [c.admit(monthly, "openai", "gpt-4o", 0, 250, NOW) for _ in range(4)]
    assert all(isinstance(r, Reservation) for r in old)
    assert isinstance(c.admit(daily, "openai", "gpt-4o", 0, 10, NOW), Refusal)
    for r in old:
        assert isinstance(r, Reservation)
        c.release(r)
    assert c.in_flight == {}
    assert isinstance(c.admit(daily, "openai", "gpt-4o", 0, 10, NOW), Reservation)


def test_prepaid_calls_in_flight_under_an_earlier_account_count_against_the_new_one() -> None:
    """1.00 USD of credit at 1.00 per 100 tokens; two calls of 45 (0.90) in flight when the
    plan's cadence is edited from a month to a day (a new account). They settle into the
    new one, so it admits one more call, not three (before: the credit check counted only
    its own account's holds: 2.25 admitted against 1.00, as a hard limit did not)."""
    cards = [
        {"key": "o", "name": "o", "feature": "out",
         "price": {"type": "unit", "amount": "1.00", "per": 100}}
    ]  # fmt: skip
    monthly = policy_of(catalog(prepaid=True, rate_cards=cards))
    daily = policy_of(catalog(prepaid=True, rate_cards=cards, billing_cadence="P1D"))
    old_key = monthly.cost_cards[0].account.current(NOW)[1]
    new_key = daily.cost_cards[0].account.current(NOW)[1]
    assert old_key[:4] != new_key[:4]
    c = Counters()
    c.apply(Snapshot({old_key: 0, new_key: 0}, set(), {"acme": Decimal("1.00")}, NOW))
    held = [c.admit(monthly, "openai", "gpt-4o", 0, 45, NOW) for _ in range(2)]
    assert all(isinstance(r, Reservation) for r in held)
    after = [c.admit(daily, "openai", "gpt-4o", 0, 45, NOW) for _ in range(5)]
    assert [isinstance(r, Reservation) for r in after] == [True] + [False] * 4


def test_a_call_with_two_accounts_of_a_feature_is_held_once() -> None:
    """A daily limit and a monthly one on the same feature: a call settles once, so it is
    held once (not once per account) against each."""
    pol = policy_of(
        catalog(
            entitlements=[
                {"feature": "out", "limit": 100, "period": "P1D"},
                {"feature": "out", "limit": 1000},
            ]
        )  # fmt: skip
    )
    c = Counters()
    r = c.admit(pol, "openai", "gpt-4o", 0, 60, NOW)
    assert isinstance(r, Reservation) and len(r.parts) == 2
    assert c.in_flight == {("acme", "out"): 60}
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 30, NOW), Reservation)
    c.release(r)
    assert c.in_flight == {("acme", "out"): 30}


def test_a_call_that_settles_back_frees_what_the_new_period_held_for_it() -> None:
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 100, "period": "P1D"}]))
    c = Counters()
    midnight = datetime(2026, 3, 11, tzinfo=UTC)
    r = c.admit(pol, "openai", "gpt-4o", 0, 100, midnight - timedelta(seconds=1))
    assert isinstance(r, Reservation)
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 10, midnight), Refusal)
    c.release(r)  # it failed: nothing used anywhere
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 10, midnight), Reservation)


def test_limits_of_the_models_an_alias_is_billed_as_apply_to_it() -> None:
    """``prod-chat`` (an Azure deployment) matches no glob; it is billed as gpt-4o-…:
    with that learnt, the gpt-4o* limit holds it and its account reserves."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 100}]))
    c = Counters()
    c.record(pol, "e1", "openai", "gpt-4o-2024-08-06", {"output": 100}, NOW)
    first = c.admit(pol, "openai", "prod-chat", 0, 40, NOW)
    assert isinstance(first, Reservation) and first.parts == []  # not known yet
    billed = ("gpt-4o-2024-08-06",)
    refused = c.admit(pol, "openai", "prod-chat", 0, 40, NOW, billed)
    assert isinstance(refused, Refusal) and refused.reason == "limit:out"
    c2 = Counters()
    held = c2.admit(pol, "openai", "prod-chat", 0, 40, NOW, billed)
    assert isinstance(held, Reservation) and [u for _, u in held.parts] == [40]
    assert pol.matching_billed("openai", "prod-chat", billed) is pol.matching_billed(
        "openai", "prod-chat", billed
    )  # computed once


SEARCH_METER = {"provider": "anthropic", "model": "claude-*", "token_types": ["web_search"]}
SEARCH = {"key": "search", "name": "search", "meter": SEARCH_METER}


def test_a_hard_limit_on_web_searches_refuses_once_they_are_used() -> None:
    """Searches are counted at settle (the request bounds no search count read here): a
    call reserves nothing for them, each event adds its searches, and the call after
    the one that reached the limit is refused."""
    pol = policy_of(catalog((SEARCH,), entitlements=[{"feature": "search", "limit": 5}]))
    c = Counters()
    for n, searches in enumerate([3, 2]):
        r = c.admit(pol, "anthropic", "claude-sonnet-4-6", 30_000, 600, NOW)
        assert isinstance(r, Reservation) and r.parts == []  # no input bound held for it
        c.release(r)
        by_type = {"input": 30_000, "output": 600, "web_search": searches}
        c.record(pol, f"e{n}", "anthropic", "claude-sonnet-4-6", by_type, NOW)
    refused = c.admit(pol, "anthropic", "claude-sonnet-4-6", 10, 40, NOW)
    assert isinstance(refused, Refusal) and refused.reason == "limit:search"
    assert "limit of 5 search units" in refused.message
    # Another provider's calls: not this limit.
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 10, 40, NOW), Reservation)


def test_a_refusal_by_reservations_alone_asks_for_a_retry() -> None:
    """20 concurrent calls with no max_tokens at 490,000 of 500,000: the one admitted
    reserves 16,384, the others were refused until the period's end (retry-after of
    29 days, x-should-retry false) and the same call was admitted a moment later."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 500_000}]))
    c = Counters()
    key = pol.accounts[0].current(NOW)[1]
    c.apply(Snapshot({key: 490_000}, set(), {}, NOW))
    held = c.admit(pol, "openai", "gpt-4o", 0, 16_384, NOW)
    assert isinstance(held, Reservation)
    refused = c.admit(pol, "openai", "gpt-4o", 0, 16_384, NOW)
    assert isinstance(refused, Refusal) and refused.retry and refused.retry_after == 2
    assert "490000 used, the rest held by calls in flight; retry in a moment" in refused.message
    c.release(held)
    c.apply(Snapshot({key: 500_000}, set(), {}, NOW))
    full = c.admit(pol, "openai", "gpt-4o", 0, 10, NOW)
    assert isinstance(full, Refusal) and not full.retry and "(500000 used)" in full.message
    assert full.retry_after is not None and full.retry_after > 86_400
