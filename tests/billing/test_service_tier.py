"""Service tiers priced apart: a feature's ``meter.service_tier`` filter.

OpenAI bills a flex call at about half the default rate and a priority call at up to
twice; the proxy stores the tier the provider reported in ``service_tier`` (NULL when it
reported none, read as the standard tier). Before, every call of a model was priced at its
feature's rate whatever tier served it: a flex feature and a default feature of one model
each billed all of its calls.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from billing.dashboard.queries import resolve_range, unbilled
from billing.invoices import explain_line, generate_invoices
from billing.model import Invoice
from billing.store import billing_store
from billing.usage import UsageQuery, usage_report
from meterline.catalog import Catalog, CatalogError, parse_catalog
from meterline.servicetiers import tier_matches
from tests.billing.events import Event, add_events, setup, utc

CATALOG = """
version: 1
consumers:
  - name: agent-a
features:
  - key: gpt-5-in
    name: GPT-5 input
    meter: {provider: openai, model: "gpt-5*", service_tier: default, token_types: [input]}
  - key: gpt-5-flex-in
    name: GPT-5 flex input
    meter: {provider: openai, model: "gpt-5*", service_tier: flex, token_types: [input]}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: in
        name: Input
        feature: gpt-5-in
        price: {type: unit, amount: "1.25", per: 1000000}
      - key: flex-in
        name: Flex input
        feature: gpt-5-flex-in
        price: {type: unit, amount: "0.625", per: 1000000}
customers:
  - key: alpha
    name: Alpha
    currency: USD
    consumers: [agent-a]
    subscriptions:
      - {plan: p, start: "2026-01-01T00:00:00Z"}
"""


def _call(day: int, tokens: int, tier: str | None) -> Event:
    return Event(utc(f"2026-01-{day:02d}T10:00:00"), model="gpt-5-2025-08-07", input=tokens,
                 output=10, service_tier=tier)  # fmt: skip


CALLS = (
    _call(5, 1_000_000, "default"),
    _call(6, 1_000_000, None),  # no tier reported: the standard one served it
    _call(7, 2_000_000, "flex"),
    _call(8, 3_000_000, "FLEX"),  # matched case-insensitively, like model globs
    _call(9, 500_000, "priority"),  # no feature of the plan prices it
)


def _january(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> Invoice:
    """January's one invoice, generated just after the month ended."""
    [inv] = generate_invoices(con, catalog, "2026-01", now=utc("2026-02-01T00:00:05Z")).invoices
    return inv


def test_flex_and_default_calls_of_one_model_bill_at_their_own_rates(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        inv = _january(con, s.catalog)
        lines = {ln.rate_card_key: ln for ln in inv.lines}
        # default: 2,000,000 * 1.25 / 1M = 2.50; flex: 5,000,000 * 0.625 / 1M = 3.125 -> 3.13
        assert {k: (ln.quantity, ln.amount) for k, ln in lines.items()} == {
            "in": (Decimal(2_000_000), Decimal("2.50")),
            "flex-in": (Decimal(5_000_000), Decimal("3.13")),
        }
        assert lines["flex-in"].detail["meter"]["service_tier"] == ["flex"]
        assert lines["flex-in"].detail["events"] == 2
        # invoice explain recomputes each line from its stored filter: the same events
        flex = explain_line(con, inv.number or "", lines["flex-in"].line_no)
        assert sorted(int(str(e["quantity"])) for e in flex.events) == [2_000_000, 3_000_000]
        default = explain_line(con, inv.number or "", lines["in"].line_no)
        assert default.quantity == 2_000_000 and len(default.events) == 2


def test_a_tier_no_feature_prices_is_unpriced(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        rows = usage_report(con, s.catalog, UsageQuery(unbilled=True, group_by=("model",)))
        page = unbilled(
            con,
            s.catalog,
            resolve_range(utc("2026-01-01"), utc("2026-02-01"), "day", utc("2026-02-01")),
        )
    # the priority call's input, and every call's output (no feature prices output)
    assert [(r["model"], r["input"], r["output"], r["events"]) for r in rows] == [
        ("gpt-5-2025-08-07", 500_000, 50, 5)
    ]
    assert [(u["token_type"], u["tokens"]) for u in page["unpriced"]] == [
        ("input", 500_000),
        ("output", 50),
    ]


def test_a_meter_without_a_tier_counts_every_tier(tmp_path: Path) -> None:
    catalog = CATALOG.replace("service_tier: default, ", "").replace(
        "service_tier: flex, ", "service_tier: nonesuch, "
    )
    s = setup(tmp_path, catalog)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        inv = _january(con, s.catalog)
    lines = {ln.rate_card_key: ln for ln in inv.lines}
    assert lines["in"].quantity == Decimal(7_500_000)
    assert "service_tier" not in lines["in"].detail["meter"]  # as lines stored before
    assert lines["flex-in"].quantity == 0


def test_usage_groups_by_the_tier_that_served_the_calls(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        rows = usage_report(con, s.catalog, UsageQuery(group_by=("model", "tier")))
    assert [(r["service_tier"], r["input"], r["events"]) for r in rows] == [
        (None, 1_000_000, 1),  # not reported: sorted first, as an empty text
        ("FLEX", 3_000_000, 1),  # as the provider spelt it
        ("default", 1_000_000, 1),
        ("flex", 2_000_000, 1),
        ("priority", 500_000, 1),
    ]


@pytest.mark.parametrize(
    ("names", "tier", "counted"),
    [
        (None, None, True),
        (None, "flex", True),
        (("default",), None, True),
        (("standard",), None, True),
        (("default",), "default", True),
        (("default",), "DEFAULT", True),
        (("flex",), "flex", True),
        (("flex",), None, False),
        (("flex",), "default", False),
        (("default",), "flex", False),
        (("default",), "standard", False),
        (("priority", "scale"), "priority", True),
        (("priority", "scale"), None, False),  # a glob "[ps]*" counted it: billed twice
    ],
)
def test_the_tier_rule(names: tuple[str, ...] | None, tier: str | None, counted: bool) -> None:
    assert tier_matches(names, tier) is counted


def test_untiered_events_are_billed_once_beside_a_feature_of_other_tiers(
    tmp_path: Path,
) -> None:
    """A feature for ``default`` and one for ``[priority, scale]`` on one model: an event
    with no tier is the default feature's only (a glob ``"[ps]*"`` matched ``standard`` and
    billed it twice: 3M billed for 2M stored)."""
    s = setup(tmp_path, CATALOG.replace("service_tier: flex", "service_tier: [priority, scale]"))
    add_events(s.db, _call(5, 1_000_000, None), _call(6, 1_000_000, "priority"))
    with billing_store(s.db) as con:
        inv = _january(con, s.catalog)
    lines = {ln.rate_card_key: ln for ln in inv.lines}
    assert (lines["in"].quantity, lines["flex-in"].quantity) == (1_000_000, 1_000_000)


def test_a_tier_filter_names_tiers_and_is_not_a_glob() -> None:
    with pytest.raises(CatalogError, match="service_tier"):
        parse_catalog(CATALOG.replace("service_tier: flex", 'service_tier: "[ps]*"'))
    catalog = parse_catalog(CATALOG.replace("service_tier: flex", "service_tier: [Priority]"))
    assert catalog.feature("gpt-5-flex-in").meter.service_tier == ("priority",)


def test_an_empty_tier_filter_is_refused() -> None:
    with pytest.raises(CatalogError, match="service_tier"):
        parse_catalog(CATALOG.replace("service_tier: flex", 'service_tier: ""'))
