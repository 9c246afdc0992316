"""A list entry repeated where each entry adds usage again is refused by ``catalog check``.

A consumer listed twice in one customer joined its events once per listing (billed twice);
a token type listed twice in a feature summed its tokens twice on the invoice.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.billing.cli.runner import error, run
from tests.billing.events import Event, Setup, add_events, setup, utc

CATALOG = """
version: 1
consumers: [{name: a1}, {name: a2}]
features:
  - key: f
    name: F
    meter: {provider: openai, model: "m*", token_types: [input, output]}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - {key: u, name: U, feature: f, price: {type: unit, amount: "1.00", per: 1000}}
    entitlements:
      - {feature: f, limit: 100000}
customers:
  - key: a
    name: A
    currency: USD
    consumers: [a1, a2]
    subscriptions: [{plan: p, start: "2026-01-01T00:00:00Z"}]
"""


def _with(tmp_path: Path, old: str, new: str) -> Setup:
    assert old in CATALOG
    s = setup(tmp_path, CATALOG.replace(old, new, 1))
    add_events(s.db, Event(utc("2026-01-05"), consumer="a1", model="m1", input=1000, output=500))
    return s


def test_the_base_catalog_bills_each_token_once(tmp_path: Path) -> None:
    s = _with(tmp_path, "", "")
    result = run(s, "invoice", "generate", "--period", "2026-01")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(run(s, "invoice", "show", "INV-000001", "--format", "json").stdout)
    assert [(line["quantity"], line["amount"]) for line in shown["lines"]] == [("1500", "1.50")]


def test_a_consumer_listed_twice_in_one_customer_is_refused(tmp_path: Path) -> None:
    s = _with(tmp_path, "consumers: [a1, a2]", "consumers: [a1, a2, a1]")
    result = run(s, "catalog", "check")
    assert result.exit_code == 1
    assert error(result) == (
        f"Error: {s.catalog_path}: customers[0].consumers[2]: consumer 'a1' listed twice"
    )
    billed = run(s, "invoice", "generate", "--period", "2026-01")
    assert billed.exit_code == 1
    assert "consumer 'a1' listed twice" in error(billed)


def test_a_token_type_listed_twice_in_a_feature_is_refused(tmp_path: Path) -> None:
    s = _with(tmp_path, "token_types: [input, output]", "token_types: [input, output, input]")
    result = run(s, "catalog", "check")
    assert result.exit_code == 1
    assert error(result) == (
        f"Error: {s.catalog_path}: features[0].meter.token_types: duplicate token type(s): input"
    )
    billed = run(s, "invoice", "generate", "--period", "2026-01")
    assert billed.exit_code == 1
    assert "duplicate token type(s): input" in error(billed)


def test_two_metered_entitlements_of_a_feature_over_one_period_are_refused(
    tmp_path: Path,
) -> None:
    s = _with(
        tmp_path,
        "      - {feature: f, limit: 100000}\n",
        "      - {feature: f, limit: 100000}\n"
        "      - {feature: f, limit: 5000, period: P1D}\n"
        "      - {feature: f, limit: 200000, period: P1M}\n",
    )
    result = run(s, "catalog", "check")
    assert result.exit_code == 1
    assert error(result) == (
        f"Error: {s.catalog_path}: plans[0]: duplicate metered entitlement(s): f per P1M"
    )


def test_two_overrides_of_a_feature_from_one_start_are_refused(tmp_path: Path) -> None:
    s = _with(
        tmp_path,
        "    consumers: [a1, a2]\n",
        "    consumers: [a1, a2]\n"
        "    entitlements:\n"
        "      - {feature: f, limit: 10}\n"
        "      - {feature: f, limit: 20, start: '2026-02-01T00:00:00Z'}\n"
        "      - {feature: f, limit: 30}\n",
    )
    result = run(s, "catalog", "check")
    assert result.exit_code == 1
    assert error(result) == (
        f"Error: {s.catalog_path}: customers[0].entitlements: "
        "duplicate entitlement override(s): f from the start"
    )
