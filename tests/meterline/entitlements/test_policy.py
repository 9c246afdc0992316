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
