"""Anthropic's one-hour cache writes are their own token type, priced by their own card.

Anthropic bills a cache write at 1.25x the base input price when the entry lives 5
minutes and at 2x when it lives an hour; the proxy counts them apart
(``cache_write_tokens``, ``cache_write_1h_tokens``), and so does billing.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from billing.invoices import generate_invoices
from billing.store import billing_store
from billing.usage import UsageQuery, usage_report
from tests.billing.events import Event, add_events, setup, utc

# Sonnet's list prices per million tokens: input 3.00, 5-minute writes 3.75, 1-hour 6.00.
CATALOG = """
version: 1
consumers:
  - name: agent-a
features:
  - key: sonnet-writes-5m
    name: Sonnet cache writes, 5 minutes
    meter: {provider: anthropic, model: "claude-sonnet-*", token_types: [cache_write]}
  - key: sonnet-writes-1h
    name: Sonnet cache writes, 1 hour
    meter: {provider: anthropic, model: "claude-sonnet-*", token_types: [cache_write_1h]}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: writes-5m
        name: Cache writes (5 minutes)
        feature: sonnet-writes-5m
        price: {type: unit, amount: "3.75", per: 1000000}
      - key: writes-1h
        name: Cache writes (1 hour)
        feature: sonnet-writes-1h
        price: {type: unit, amount: "6.00", per: 1000000}
customers:
  - key: alpha
    name: Alpha
    currency: USD
    consumers: [agent-a]
    subscriptions:
      - {plan: p, start: "2026-01-01T00:00:00Z"}
"""


def _sonnet(when: str, five: int, hour: int) -> Event:
    return Event(
        utc(when), provider="anthropic", model="claude-sonnet-4-5", cache_write=five,
        cache_write_1h=hour,
    )  # fmt: skip


def test_each_kind_of_cache_write_is_billed_at_its_own_rate(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    add_events(
        s.db,
        _sonnet("2026-01-05", 400_000, 700_000),
        _sonnet("2026-01-06", 0, 1_000_000),
        _sonnet("2026-01-07", 400_000, 600_000),
    )
    with billing_store(s.db) as con:
        [inv] = generate_invoices(
            con, s.catalog, "2026-01", now=utc("2026-02-01T00:00:05Z")
        ).invoices
    lines = {ln.rate_card_key: (ln.quantity, ln.amount) for ln in inv.lines}
    # 800,000 * 3.75 / 1M = 3.00; 2,300,000 * 6.00 / 1M = 13.80 (all at the 5-minute
    # rate, as before the split: 3,100,000 * 3.75 / 1M = 11.625)
    assert lines == {
        "writes-5m": (800_000, Decimal("3.00")),
        "writes-1h": (2_300_000, Decimal("13.80")),
    }
    assert inv.total == Decimal("16.80")


def test_unpriced_one_hour_writes_show_as_unbilled(tmp_path: Path) -> None:
    """A plan that prices only the 5-minute writes (an older catalog) does not lose the
    one-hour ones silently: ``usage --unbilled`` lists them."""
    s = setup(tmp_path, CATALOG.replace("token_types: [cache_write_1h]", "token_types: [input]"))
    add_events(s.db, _sonnet("2026-01-05", 300, 700))
    with billing_store(s.db) as con:
        rows = usage_report(
            con,
            s.catalog,
            UsageQuery(start=utc("2026-01-01"), end=utc("2026-02-01"), unbilled=True),
        )
    assert [(r["cache_write"], r["cache_write_1h"]) for r in rows] == [(0, 700)]
