"""Zero-length periods are a catalog error, not a proxy that stops governing and metering."""

from __future__ import annotations

import pytest

from meterline.catalog import CatalogError, parse_catalog

PLAN = """
features:
  - key: out
    name: Out
    meter: {provider: openai, model: "gpt-4o*", token_types: [output]}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: CADENCE
    entitlements: [{feature: out, limit: 40, period: PERIOD}]
"""


@pytest.mark.parametrize("period", ["P0D", "P0M", "P0W", "P0Y", "P0Y0M0W0D"])
def test_a_zero_long_entitlement_period_is_refused(period: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(PLAN.replace("CADENCE", "P1M").replace("PERIOD", period), "cat.yaml")
    assert str(err.value) == (
        f"cat.yaml: plans[0].entitlements[0].period: {period!r} is zero long: "
        "a period needs at least one day, e.g. P1D"
    )


def test_a_zero_long_billing_cadence_is_refused() -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(PLAN.replace("CADENCE", "P0M").replace("PERIOD", "P1D"), "cat.yaml")
    assert str(err.value) == (
        "cat.yaml: plans[0].billing_cadence: 'P0M' is zero long: "
        "a period needs at least one day, e.g. P1D"
    )


@pytest.mark.parametrize("period", ["P1D", "P0Y1D", "P10D", "P1Y0M"])
def test_a_period_with_one_nonzero_part_is_valid(period: str) -> None:
    parse_catalog(PLAN.replace("CADENCE", "P1M").replace("PERIOD", period), "cat.yaml")
