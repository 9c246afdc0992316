"""Server-side web searches are their own metered type, priced per call.

Anthropic bills ``usage.server_tool_use.web_search_requests`` at $10 per 1,000 searches on
top of the call's tokens; the proxy stores the count in ``web_search_calls`` and a plan
prices it with a rate card on a feature listing ``web_search`` (``per: 1000``). A plan
that does not price it sees it under "unpriced"; it is never added to a token total.
"""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from billing.dashboard.pages import unbilled_page
from billing.dashboard.queries import resolve_range, unbilled
from billing.documents.invoice_page import invoice_html
from billing.documents.statement import build_statement, feature_chart, statement_json
from billing.invoices import generate_invoices
from billing.store import billing_store
from billing.usage import UsageQuery, usage_report
from meterline.catalog import CatalogError, FeatureMeter, parse_catalog
from meterline.migrations import EVENT_MIGRATIONS, migrate
from tests.billing.events import Event, add_events, setup, utc

CATALOG = """
version: 1
consumers:
  - name: agent-a
features:
  - key: claude-in
    name: Claude input
    meter: {provider: anthropic, model: "claude-*", token_types: [input]}
  - key: claude-search
    name: Claude web searches
    meter: {provider: anthropic, model: "claude-*", token_types: [web_search]}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: input
        name: Input
        feature: claude-in
        price: {type: unit, amount: "3.00", per: 1000000}
      - key: search
        name: Web searches
        feature: claude-search
        price: {type: unit, amount: "10.00", per: 1000}
customers:
  - key: alpha
    name: Alpha
    currency: USD
    consumers: [agent-a]
    subscriptions:
      - {plan: p, start: "2026-01-01T00:00:00Z"}
"""


def _call(when: str, tokens: int, searches: int) -> Event:
    return Event(utc(when), provider="anthropic", model="claude-sonnet-4-20250514",
                 input=tokens, output=644, web_search=searches)  # fmt: skip


def test_a_plan_prices_web_searches_per_thousand(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    # The probe's call (31,772 input tokens, 3 searches), then 1,234 more searches.
    add_events(s.db, _call("2026-01-05", 31_772, 3), _call("2026-01-06", 100, 1_234),
               _call("2026-01-07", 100, 0))  # fmt: skip
    with billing_store(s.db) as con:
        [inv] = generate_invoices(
            con, s.catalog, "2026-01", now=utc("2026-02-01T00:00:05Z")
        ).invoices
    lines = {ln.rate_card_key: (ln.quantity, ln.amount) for ln in inv.lines}
    # searches: 1,237 * 10.00 / 1,000 = 12.37; input: 31,972 * 3.00 / 1M = 0.095916 -> 0.10
    assert lines == {"search": (1_237, Decimal("12.37")), "input": (31_972, Decimal("0.10"))}
    assert inv.total == Decimal("12.47")
    page = invoice_html(inv, s.catalog)  # the price reads per search, not per token
    assert "10.00 USD / 1K web searches" in page and "1K tokens" not in page
    assert "3.00 USD / 1M tokens" in page


def test_unpriced_searches_are_listed_apart_and_not_added_to_the_tokens(
    tmp_path: Path,
) -> None:
    """A plan without a search card lists them under "unpriced"; a token total leaves
    them out (a search is not a token)."""
    card = """      - key: search
        name: Web searches
        feature: claude-search
        price: {type: unit, amount: "10.00", per: 1000}
"""
    assert card in CATALOG
    s = setup(tmp_path, CATALOG.replace(card, ""))
    add_events(s.db, _call("2026-01-05", 100, 3))
    with billing_store(s.db) as con:
        q = UsageQuery(start=utc("2026-01-01"), end=utc("2026-02-01"))
        [row] = usage_report(con, s.catalog, q)
        unbilled = usage_report(
            con,
            s.catalog,
            UsageQuery(start=utc("2026-01-01"), end=utc("2026-02-01"), unbilled=True),
        )
    assert (row["web_search"], row["total"]) == (3, 100 + 644)
    assert [(r["web_search"], r["input"]) for r in unbilled] == [(3, 0)]


def test_a_feature_does_not_sum_searches_with_tokens() -> None:
    assert "web_search" not in FeatureMeter().token_types  # the default: tokens only
    text = CATALOG.replace("token_types: [web_search]", "token_types: [input, web_search]")
    with pytest.raises(CatalogError, match="web_search counts calls, not tokens"):
        parse_catalog(text)


def test_events_stored_before_searches_were_counted_read_0(tmp_path: Path) -> None:
    """A store migrated up to 0030: migration 0040 adds ``web_search_calls``, its events
    read 0 and bill as before."""
    s = setup(tmp_path / "new", CATALOG)
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    before = [m for m in EVENT_MIGRATIONS if m.name < "0040"]
    assert migrate(con, before) == [m.name for m in before]
    con.execute(
        "INSERT INTO usage_events (event_id, ts, ingested_at, consumer, provider, flavor, "
        "model, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, "
        "reasoning_tokens, estimated, method, host, path, streamed) VALUES ('old', "
        "'2026-01-05 10:00:00', '2026-01-05 10:00:01', 'agent-a', 'anthropic', 'anthropic', "
        "'claude-sonnet-4-20250514', 64, 0, 0, 9, 0, false, 'POST', 'api.anthropic.com', "
        "'/v1/messages', false)"
    )
    assert migrate(con, EVENT_MIGRATIONS) == [
        "0040_web_search_calls",
        "0050_cached_audio_input",
        "0060_service_tier",
        "0070_speed_inference_geo",
    ]
    con.close()
    with billing_store(db) as con:
        assert con.execute("SELECT web_search_calls FROM usage_events").fetchall() == [(0,)]
        [inv] = generate_invoices(
            con, s.catalog, "2026-01", now=utc("2026-02-01T00:00:05Z")
        ).invoices
    assert {ln.rate_card_key: ln.quantity for ln in inv.lines} == {"input": 64, "search": 0}


def test_a_statement_counts_web_searches_in_their_own_unit(tmp_path: Path) -> None:
    """Before: the feature's heading said "web searches" but its chart's axis said
    "tokens", and the JSON gave no unit."""
    s = setup(tmp_path, CATALOG)
    add_events(s.db, _call("2026-01-05", 1_000, 3), _call("2026-01-06", 100, 4))
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-01", now=utc("2026-02-01T00:00:05Z"))
        st = build_statement(con, s.catalog, "alpha", "2026-01")
    by_feature = {f["feature"]: f for f in statement_json(st)["features"]}
    assert (by_feature["claude-search"]["tokens"], by_feature["claude-search"]["unit"]) == (
        7,
        "web search",
    )
    assert by_feature["claude-in"]["unit"] == "token"
    [search] = [f for f in st.features if f.feature == "claude-search"]
    uri = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', feature_chart(search))
    assert uri is not None
    svg = base64.b64decode(uri.group(1)).decode()
    assert "web searches" in svg and ">tokens<" not in svg


def test_the_unbilled_page_shows_web_searches_apart_from_tokens(tmp_path: Path) -> None:
    """Before: a consumer no customer lists showed only its tokens; its web searches,
    billable per call, appeared nowhere on the page nor in the reasons' totals."""
    s = setup(tmp_path, CATALOG)
    add_events(
        s.db,
        Event(utc("2026-01-05"), consumer="stray", provider="anthropic",
              model="claude-sonnet-4-5", input=400, output=40, web_search=16),
    )  # fmt: skip
    rng = resolve_range(utc("2026-01-01"), utc("2026-02-01"), "day", utc("2026-02-01"))
    with billing_store(s.db) as con:
        data = unbilled(con, s.catalog, rng)
    [reason] = [r for r in data["reasons"] if r.get("web_search")]
    assert (reason["total"], reason["web_search"]) == (440, 16)
    page = unbilled_page(data, s.catalog, "/unbilled.json")
    assert "440 tokens · 16 web searches" in page
    assert '<td data-field="web_search" class="num">16</td>' in page
