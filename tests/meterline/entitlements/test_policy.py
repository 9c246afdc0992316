"""Which limits apply: plan entitlements, customer overrides over time, usage periods."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meterline.catalog import Catalog, CatalogError, parse_catalog
from meterline.entitlements import build_policy

BASE = """
consumers: [{name: bot}]
features:
  - {key: out, name: out, meter: {token_types: [output]}}
plans:
  - key: p
    name: P
    currency: USD
    entitlements: [{feature: out, limit: 100, period: P1D}]
customers:
  - key: acme
    name: ACME
    currency: USD
    consumers: [bot]
    subscriptions: [{plan: p, start: "2026-03-01T06:00:00Z"}]
"""


def test_usage_period_is_anchored_at_the_subscription_start() -> None:
    pol = build_policy(parse_catalog(BASE), datetime(2026, 3, 5, 1, tzinfo=UTC))
    [limit] = pol.by_consumer["bot"].limits
    period, _ = limit.account.current(datetime(2026, 3, 5, 1, tzinfo=UTC))
    assert (period.start, period.end) == (
        datetime(2026, 3, 4, 6, tzinfo=UTC),
        datetime(2026, 3, 5, 6, tzinfo=UTC),
    )


def test_an_override_supersedes_from_its_start() -> None:
    text = (
        BASE
        + """    entitlements:
      - {feature: out, limit: 500, start: "2026-04-01T00:00:00Z"}
      - {feature: out, limit: unlimited, enforcement: soft, start: "2026-05-01T00:00:00Z"}
"""
    )
    cat = parse_catalog(text)
    before, april, may = (
        build_policy(cat, datetime(2026, m, 2, tzinfo=UTC)).by_consumer["bot"].limits[0]
        for m in (3, 4, 5)
    )
    assert (before.limit, before.hard, before.source) == (100, True, "plan p")
    assert (april.limit, april.hard, april.source) == (500, True, "customer acme")
    assert (may.limit, may.hard) == (None, False)
    policy = build_policy(cat, datetime(2026, 3, 2, tzinfo=UTC))
    assert policy.valid_until == datetime(2026, 4, 1, tzinfo=UTC)  # rebuilt when it starts


def test_customers_with_nothing_to_enforce_are_not_governed() -> None:
    cat = parse_catalog(BASE.replace("entitlements: [{feature: out, limit: 100, period: P1D}]", ""))
    assert build_policy(cat, datetime(2026, 3, 2, tzinfo=UTC)).by_consumer == {}
    assert build_policy(parse_catalog(BASE), datetime(2026, 2, 1, tzinfo=UTC)).by_consumer == {}


@pytest.mark.parametrize(
    ("entitlement", "message"),
    [
        ("{feature: out, type: metered}", "a metered entitlement needs a limit"),
        ("{feature: out, type: boolean, limit: 5}", "a boolean entitlement has no limit"),
        ("{feature: out, limit: -1}", 'Input should be an integer >= 0 or "unlimited"'),
        ("{feature: out, limit: 5, period: P0}", "is not an ISO-8601 duration"),
        ("{feature: out, limit: 5, enforcement: maybe}", "Input should be 'hard' or 'soft'"),
    ],
)
def test_bad_entitlements_are_one_clear_error(entitlement: str, message: str) -> None:
    text = BASE.replace("[{feature: out, limit: 100, period: P1D}]", f"[{entitlement}]")
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "catalog.yaml")
    assert "catalog.yaml: plans[0].entitlements[0]" in str(err.value)
    assert message in str(err.value)


def test_override_of_an_unknown_feature_is_an_error() -> None:
    text = BASE + "    entitlements: [{feature: nope, limit: 1}]\n"
    with pytest.raises(CatalogError, match=r"customers\[0\].entitlements\[0\].feature: unknown"):
        parse_catalog(text, "catalog.yaml")


def test_shipped_catalog_still_loads() -> None:
    from meterline.catalog import load_catalog

    cat: Catalog = load_catalog("catalog.yaml")
    assert cat.plans[1].entitlements[0].limit == 500000000


TWO_LIMITS = """
consumers: [{name: bot}]
features:
  - {key: out, name: out, meter: {token_types: [output]}}
plans:
  - key: p
    name: P
    currency: USD
    entitlements:
      - {feature: out, limit: 1000}
      - {feature: out, limit: 100, period: P1D}
customers:
  - key: acme
    name: ACME
    currency: USD
    consumers: [bot]
    subscriptions: [{plan: p, start: "2026-03-01T00:00:00Z"}]
    entitlements:
"""
AT = datetime(2026, 3, 5, tzinfo=UTC)


def limits_of(text: str) -> list[tuple[str, int | None, str]]:
    pol = build_policy(parse_catalog(text), AT).by_consumer["bot"]
    return [(lim.account.cadence, lim.limit, lim.source) for lim in pol.limits]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # No period: the billing period's limit; the daily one stays (before: both 2000,
        # and 2,000 tokens passed in one day under a daily cap of 100).
        ("{feature: out, limit: 2000}",
         [("P1M", 2000, "customer acme"), ("P1D", 100, "plan p")]),
        ("{feature: out, limit: 300, period: P1D}",
         [("P1M", 1000, "plan p"), ("P1D", 300, "customer acme")]),
        # A period the plan does not limit: a limit of its own beside the plan's two.
        ("{feature: out, limit: 500, period: P1W}",
         [("P1M", 1000, "plan p"), ("P1D", 100, "plan p"), ("P1W", 500, "customer acme")]),
        ("{feature: out, limit: 2000, period: P1M0D}",  # the same period, spelt apart
         [("P1M", 2000, "customer acme"), ("P1D", 100, "plan p")]),
    ],
)  # fmt: skip
def test_an_override_supersedes_the_limit_of_its_period(
    override: str, expected: list[tuple[str, int | None, str]]
) -> None:
    assert limits_of(TWO_LIMITS + f"      - {override}\n") == expected


def test_an_override_without_period_supersedes_a_feature_s_only_limit() -> None:
    """The plan's one limit of the feature is daily: an override naming no period is it."""
    text = BASE + "    entitlements: [{feature: out, limit: 500}]\n"
    pol = build_policy(parse_catalog(text), AT).by_consumer["bot"]
    assert [(lim.account.cadence, lim.limit) for lim in pol.limits] == [("P1D", 500)]


def test_a_customer_with_no_limits_now_holds_calls_for_the_plan_that_begins() -> None:
    """No subscription until 1 April, Starter (a hard limit) from then: the policy in
    force governs nothing, but names Starter's accounts for calls in flight at the switch."""
    text = BASE.replace('start: "2026-03-01T06:00:00Z"', 'start: "2026-04-01T00:00:00Z"')
    policy = build_policy(parse_catalog(text), datetime(2026, 3, 31, 23, 59, tzinfo=UTC))
    assert policy.by_consumer == {}
    upcoming = policy.upcoming["bot"]
    assert upcoming.limits == [] and not upcoming.can_refuse
    assert [a.feature for a in upcoming.accounts] == ["out"]
    assert policy.valid_until == datetime(2026, 4, 1, tzinfo=UTC)
    soft = text.replace("limit: 100, period: P1D", "limit: 100, enforcement: soft")
    assert build_policy(parse_catalog(soft), AT).upcoming == {}  # nothing it could refuse


def test_overrides_of_two_periods_from_one_start_are_both_kept() -> None:
    text = TWO_LIMITS + (
        "      - {feature: out, limit: 2000}\n      - {feature: out, limit: 300, period: P1D}\n"
    )
    assert limits_of(text) == [("P1M", 2000, "customer acme"), ("P1D", 300, "customer acme")]
    with pytest.raises(CatalogError, match="duplicate entitlement override"):
        parse_catalog(text + "      - {feature: out, limit: 400, period: P1D}\n")
