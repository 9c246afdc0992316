"""Margin: exact revenue split per model, list-price costs, unknown models."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from billing.invoices import generate_invoices
from billing.listprice import list_cost
from billing.margin import margin_report, split_amount
from billing.money import round_money
from billing.store import billing_store
from tests.billing.events import CATALOG, Event, add_events, setup, utc


@given(
    cents=st.integers(min_value=-(10**9), max_value=10**9),  # negative: a credit
    weights=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=8),
)
def test_split_adds_up_exactly_and_is_proportional(cents: int, weights: list[int]) -> None:
    amount = Decimal(cents) / 100
    parts = split_amount(amount, weights, "USD")
    if sum(weights) == 0:
        assert parts == [Decimal(0)] * len(weights)
        return
    assert sum(parts) == amount
    for part, w in zip(parts, weights, strict=True):
        assert abs(part - amount * w / sum(weights)) < Decimal("0.01")
        assert part == part.quantize(Decimal("0.01"))


def test_margin_per_customer_and_model(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(
        s.db,
        Event(utc("2026-01-05"), input=1000, output=2000),  # gpt-in 2.00, gpt-out 20.00
        Event(utc("2026-01-06"), model="gpt-4o-mini", input=1000, output=2000),  # same
        Event(utc("2026-01-07"), model="gpt-4o-unknown-xyz", input=500),  # gpt-in 1.00
    )
    with billing_store(s.db) as con:
        gen = generate_invoices(con, s.catalog, "2026-01", now=utc("2026-02-01T00:00:05Z"))
        rows = {r["model"]: r for r in margin_report(con, "2026-01")}
    assert set(rows) == {"(fees)", "gpt-4o", "gpt-4o-mini", "gpt-4o-unknown-xyz"}
    # gpt-in 5.00 over 1000/1000/500 tokens; gpt-out 40.00 over 2000/2000 tokens
    assert [rows[m]["revenue"] for m in ("gpt-4o", "gpt-4o-mini", "gpt-4o-unknown-xyz")] == [
        Decimal("22.00"),
        Decimal("22.00"),
        Decimal("1.00"),
    ]
    assert rows["(fees)"]["revenue"] == Decimal("60.00")
    for model in ("gpt-4o", "gpt-4o-mini"):
        day = utc("2026-01-05") if model == "gpt-4o" else utc("2026-01-06")
        cost = list_cost(
            "openai", model, input=1000, cached_input=0, cache_write=0, output=2000, at=day
        )
        assert cost is not None
        assert rows[model]["cost"] == round_money(cost, "USD")
        assert rows[model]["margin"] == round_money(Decimal("22.00") - cost, "USD")
        assert rows[model]["margin"].as_tuple().exponent == -2
    assert rows["gpt-4o-unknown-xyz"]["cost"] is None
    assert rows["gpt-4o-unknown-xyz"]["margin"] is None
    assert gen.invoices[0].total == Decimal("105.00")  # 60.00 fees + 5.00 + 40.00
    assert sum(r["revenue"] for r in rows.values()) == gen.invoices[0].total


def test_no_margin_percentage_on_zero_or_negative_revenue(tmp_path: Path) -> None:
    """A late credit (volume tiers) makes a month's revenue negative: margin / revenue would
    read as a +100 % margin on a row that loses money, so the percentage is left blank."""
    s = setup(tmp_path, CATALOG.replace("mode: graduated", "mode: volume"))
    add_events(s.db, Event(utc("2026-01-10"), output=9000))
    with billing_store(s.db) as con:
        generate_invoices(
            con, s.catalog, "2026-01", customer="alpha", now=utc("2026-02-01T00:00:05Z")
        )
    add_events(s.db, Event(utc("2026-01-11"), output=2000, ingested_at=utc("2026-02-03")))
    with billing_store(s.db) as con:
        generate_invoices(
            con, s.catalog, "2026-02", customer="alpha", now=utc("2026-03-01T00:00:05Z")
        )
        rows = {r["model"]: r for r in margin_report(con, "2026-02", "alpha")}
    row = rows["gpt-4o"]
    assert row["revenue"] == Decimal("-35.00")  # 11000 at 5/1000 = 55.00, 90.00 billed
    assert row["margin"] is not None and row["margin"] < row["revenue"]
    assert row["margin_pct"] is None


def test_a_call_s_list_cost_follows_the_tier_that_served_it(tmp_path: Path) -> None:
    """Two equal GPT-4o calls, one served at ``priority``: billed alike (no tier filter in
    the plan), but the provider charges the priority one more, and the margin says so.
    Before, both were costed at the standard list price (genai-prices lists GPT-4o's
    priority prices from 12 October 2026)."""
    s = setup(tmp_path)
    add_events(
        s.db,
        Event(utc("2026-11-05"), input=1000, output=2000),
        Event(utc("2026-11-05"), input=1000, output=2000, service_tier="priority"),
    )
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-11", now=utc("2026-12-01T00:00:05Z"))
        rows = {r["model"]: r for r in margin_report(con, "2026-11")}
    day = utc("2026-11-05")
    tokens = {"input": 1000, "cached_input": 0, "cache_write": 0, "output": 2000}
    standard = list_cost("openai", "gpt-4o", **tokens, at=day)
    priority = list_cost("openai", "gpt-4o", **tokens, at=day, service_tier="priority")
    assert standard is not None and priority is not None and priority > standard
    assert rows["gpt-4o"]["cost"] == round_money(standard + priority, "USD")
