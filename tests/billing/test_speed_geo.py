"""Fast mode and US-only inference priced apart: a feature's ``meter.speed`` and
``meter.inference_geo`` filters.

Anthropic bills a fast-mode call at a multiple of every rate (Claude Opus 4.6: 6x) and a
US-only one at 1.1x, the two stacking; the proxy stores the ``usage.speed`` and
``usage.inference_geo`` the response names (NULL when it names none, read as ``standard``
and ``global``; ``not_available`` is ``global`` too). Before, every call of a model was
priced at its feature's one rate: a fast call was billed a sixth of its price.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import yaml

from billing.dashboard.queries import TimeRange, resolve_range, unbilled
from billing.documents.statement import feature_usage
from billing.invoices import explain_line, generate_invoices
from billing.model import Invoice
from billing.store import billing_store
from billing.usage import UsageQuery, usage_report
from meterline.catalog import Catalog, CatalogError, parse_catalog
from tests.billing.events import Event, add_events, setup, utc

OPUS = "claude-opus-4-6"
BACKDATED = "stored after its invoice swept it (ingested_at before that invoice's watermark)"


def plan_from_the_docs() -> str:
    """docs/catalog.md's Opus 4.6 plan (the YAML block after "Speed and inference
    geography"), given a customer with agent-a on it since 1 January 2026."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()
    section = doc.split("### Speed and inference geography", 1)[1]
    catalog = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    catalog["version"] = 1
    catalog["consumers"] = [{"name": "agent-a"}]
    subscription = {"plan": "opus", "start": "2026-01-01T00:00:00Z"}
    customer = {"key": "alpha", "name": "Alpha", "currency": "USD", "consumers": ["agent-a"]}
    catalog["customers"] = [{**customer, "subscriptions": [subscription]}]
    return yaml.safe_dump(catalog, sort_keys=False)


CATALOG = plan_from_the_docs()


def _call(day: int, output: int, speed: str | None, geo: str | None) -> Event:
    return Event(utc(f"2026-01-{day:02d}T10:00:00"), provider="anthropic", model=OPUS,
                 output=output, speed=speed, inference_geo=geo)  # fmt: skip


CALLS = (
    _call(5, 1_000_000, "standard", "global"),
    _call(6, 1_000_000, None, None),  # an older proxy's event, or none said: standard, global
    _call(7, 1_000_000, None, "not_available"),  # a model with no choice: global
    _call(8, 1_000_000, "fast", "global"),
    _call(9, 1_000_000, "standard", "us"),
    _call(10, 1_000_000, "FAST", "US"),  # matched case-insensitively
)


def _january(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> Invoice:
    """January's one invoice, generated just after the month ended."""
    [inv] = generate_invoices(con, catalog, "2026-01", now=utc("2026-02-01T00:00:05Z")).invoices
    return inv


def test_each_speed_and_place_bills_at_its_own_rate(tmp_path: Path) -> None:
    """The documented plan: $25 per million output tokens, fast 6x, US 1.1x, both 6.6x."""
    s = setup(tmp_path, CATALOG)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        inv = _january(con, s.catalog)
        lines = {ln.rate_card_key: ln for ln in inv.lines}
        assert {k: (ln.quantity, ln.amount) for k, ln in lines.items()} == {
            "out": (Decimal(3_000_000), Decimal("75.00")),
            "fast-out": (Decimal(1_000_000), Decimal("150.00")),
            "us-out": (Decimal(1_000_000), Decimal("27.50")),
            "fast-us-out": (Decimal(1_000_000), Decimal("165.00")),
        }
        assert inv.total == Decimal("417.50")  # 6M tokens; 150.00 before (all at $25)
        meter = lines["fast-us-out"].detail["meter"]
        assert (meter["speed"], meter["inference_geo"]) == (["fast"], ["us"])
        assert "service_tier" not in meter
        # invoice explain recomputes each line from its stored filters: the same events
        for key, n in (("out", 3), ("fast-out", 1), ("us-out", 1), ("fast-us-out", 1)):
            explained = explain_line(con, inv.number or "", lines[key].line_no)
            assert (explained.quantity, len(explained.events)) == (lines[key].quantity, n)


def test_a_fast_call_costs_exactly_six_times_a_standard_one(tmp_path: Path) -> None:
    """123,457 output tokens: $3.086425 standard, $18.51855 fast (exactly 6x before the
    line's rounding, half-up to the cent as every line: $3.09 and $18.52)."""
    s = setup(tmp_path, CATALOG)
    add_events(s.db, _call(5, 123_457, "standard", "global"), _call(6, 123_457, "fast", "global"))
    with billing_store(s.db) as con:
        inv = _january(con, s.catalog)
    lines = {ln.rate_card_key: ln for ln in inv.lines}
    standard, fast = lines["out"].detail["pricing"], lines["fast-out"].detail["pricing"]
    assert Decimal(fast["subtotal"]) == 6 * Decimal(standard["subtotal"]) == Decimal("18.51855")
    assert (lines["out"].amount, lines["fast-out"].amount) == (Decimal("3.09"), Decimal("18.52"))


def test_a_speed_no_feature_names_is_unpriced(tmp_path: Path) -> None:
    """A plan of the standard feature alone: the fast and US calls are unbilled, said so by
    ``billing usage --unbilled``, the dashboard, and ``--group-by speed,geo``."""
    doc = yaml.safe_load(CATALOG)
    doc["plans"][0]["rate_cards"] = doc["plans"][0]["rate_cards"][:1]
    s = setup(tmp_path, yaml.safe_dump(doc, sort_keys=False))
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        rows = usage_report(con, s.catalog, UsageQuery(unbilled=True, group_by=("speed", "geo")))
        page = unbilled(
            con,
            s.catalog,
            resolve_range(utc("2026-01-01"), utc("2026-02-01"), "day", utc("2026-02-01")),
        )
    assert [(r["speed"], r["inference_geo"], r["output"], r["events"]) for r in rows] == [
        ("FAST", "US", 1_000_000, 1),
        ("fast", "global", 1_000_000, 1),
        ("standard", "us", 1_000_000, 1),
    ]
    assert [(u["token_type"], u["tokens"]) for u in page["unpriced"]] == [("output", 3_000_000)]


def test_usage_groups_by_speed_and_place(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        rows = usage_report(con, s.catalog, UsageQuery(group_by=("speed",)))
    assert [(r["speed"], r["output"], r["events"]) for r in rows] == [
        (None, 2_000_000, 2),  # not reported: sorted first, as an empty text
        ("FAST", 1_000_000, 1),  # as the provider spelt it
        ("fast", 1_000_000, 1),
        ("standard", 2_000_000, 2),
    ]


def test_the_statement_charts_each_feature_its_own_calls(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        inv = _january(con, s.catalog)
        features = {f.feature: f.total for f in feature_usage(con, [inv])}
    assert features == {
        "opus-out": 3_000_000,
        "opus-fast-out": 1_000_000,
        "opus-us-out": 1_000_000,
        "opus-fast-us-out": 1_000_000,
    }


def test_late_fast_usage_is_found_behind_the_fast_line_only(tmp_path: Path) -> None:
    """A fast call stored after January's invoice swept its time: 500 tokens behind that
    sweep, not 500 plus every other feature's fast and US tokens (as a standard meter that
    ignored speed would find)."""
    s = setup(tmp_path, CATALOG)
    add_events(s.db, *CALLS)
    with billing_store(s.db) as con:
        _january(con, s.catalog)
    add_events(s.db, _call(20, 500, "fast", "global"))
    with billing_store(s.db) as con:
        page = unbilled(con, s.catalog, TimeRange(utc("2026-01-01"), utc("2026-03-01"), "day"))
    [late] = [r for r in page["reasons"] if r["reason"] == BACKDATED]
    assert late["total"] == 500


def test_filters_name_values_and_are_not_globs() -> None:
    catalog = parse_catalog(CATALOG.replace("speed: fast", "speed: [Fast]", 1))
    meter = catalog.feature("opus-fast-out").meter
    assert (meter.speed, meter.inference_geo) == (("fast",), ("global",))
    for bad in ('speed: "f*"', 'speed: ""', "speed: [fast, FAST]", "speed: []"):
        with pytest.raises(CatalogError, match="speed"):
            parse_catalog(CATALOG.replace("speed: fast", bad, 1))
    with pytest.raises(CatalogError, match="inference_geo"):
        parse_catalog(CATALOG.replace("inference_geo: us", 'inference_geo: "u?"', 1))
