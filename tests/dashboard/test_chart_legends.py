"""Every series a chart draws is named in its legend, inside the chart, in a colour of its
own; the proxy health page's charts agree on colours and on the time they span.

Drawn by the real Vega in the system's Chromium: statements' SVG images (what the PDF
embeds) and the dashboard's live charts.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.billing.cli.runner import run
from tests.billing.events import Event, Setup, add_events, write_catalog
from tests.dashboard.conftest import Server, load, start_dashboard, stop, variant
from tests.dashboard.seed import CATALOG

STATEMENT_CATALOG = """
version: 1
consumers: [{name: agent-a}]
features:
  - {key: openai-all, name: OpenAI tokens, meter: {provider: openai, model: "*"}}
plans:
  - key: pro
    name: Pro
    currency: USD
    rate_cards:
      - {key: openai-all, name: OpenAI tokens, feature: openai-all,
         price: {type: unit, amount: "2.50", per: 1000000}}
customers:
  - {key: acme, name: Acme, currency: USD, consumers: [agent-a],
     subscriptions: [{plan: pro, start: "2026-01-01T00:00:00Z"}]}
"""

TWELVE_MODELS = [
    "gpt-4o-2024-08-06", "gpt-4o-2024-11-20", "gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14", "gpt-4.1-nano-2025-04-14", "o3-2025-04-16",
    "o4-mini-2025-04-16", "o3-mini-2025-01-31", "gpt-5-2025-08-07", "gpt-5-mini-2025-08-07",
    "text-embedding-3-small",
]  # fmt: skip

LEGEND = """root => {
  const svg = root.tagName === 'svg' ? root : root.querySelector('svg');
  const box = svg.getBoundingClientRect();
  const inside = r => r.top >= box.top && r.bottom <= box.bottom
                      && r.left >= box.left && r.right <= box.right;
  const entries = [...svg.querySelectorAll('.role-legend-label text')].map((t, i) => ({
    label: t.textContent,
    inside: inside(t.getBoundingClientRect()),
    fill: svg.querySelectorAll('.role-legend-symbol path')[i].getAttribute('fill'),
  }));
  const bars = [...svg.querySelectorAll('.mark-rect path')].map(p => p.getAttribute('fill'));
  return {entries, bars};
}"""
"""A chart's legend (label, whether its text lies inside the SVG's box, its symbol's
fill) and its bars' fills, read from the drawn SVG."""


def check_legend(drawn: dict[str, Any], series: set[str]) -> dict[str, str]:
    """Every series in ``series`` named once, inside the chart, in its own colour; returns
    the colour of each."""
    entries = drawn["entries"]
    assert sorted(e["label"] for e in entries) == sorted(series)
    assert [e["label"] for e in entries if not e["inside"]] == []
    fills = {e["label"]: e["fill"] for e in entries}
    assert len(set(fills.values())) == len(series), fills
    assert set(drawn["bars"]) == set(fills.values())
    return fills


def test_a_statement_chart_names_every_model_in_its_own_colour(page: Any, tmp_path: Path) -> None:
    """A 150 px statement chart of 12 models showed 9 legend entries (the rest cut off
    below the image, in the PDF too) in Vega's 10 colours, so hidden models' bars wore
    shown models' colours."""
    s = Setup(tmp_path / "meterline.duckdb", write_catalog(tmp_path, STATEMENT_CATALOG))
    add_events(s.db, *[
        Event(ts=datetime(2026, 1, day, 12, tzinfo=UTC), model=m, input=1000 * (i + 1), output=100)
        for i, m in enumerate(TWELVE_MODELS) for day in (3, 10, 17)
    ])  # fmt: skip
    assert run(s, "invoice", "generate", "--period", "2026-01").exit_code == 0
    result = run(s, "statement", "--customer", "acme", "--period", "2026-01", "--format", "html")
    assert result.exit_code == 0, result.output
    found = re.search(r"data:image/svg\+xml;base64,([^\"']+)", result.stdout)
    assert found is not None
    svg = tmp_path / "chart.svg"
    svg.write_bytes(base64.b64decode(found.group(1)))
    page.goto(svg.as_uri())
    drawn = page.evaluate(LEGEND, page.locator("svg").element_handle())
    check_legend(drawn, set(TWELVE_MODELS))


def test_a_dashboard_chart_of_many_models_names_each_in_its_own_colour(
    page: Any, store: Setup, tmp_path: Path, shots: Path
) -> None:
    """23 models on /usage: the 240 px chart showed 14 legend entries, in 10 colours."""
    s = variant(store, tmp_path, CATALOG)
    extra = [f"model-{n:02d}" for n in range(18)]
    add_events(s.db, *[
        Event(ts=datetime(2026, 1, 1, n, tzinfo=UTC), model=m, input=100 * (n + 1))
        for n, m in enumerate(extra)
    ])  # fmt: skip
    server = start_dashboard(s)
    try:
        path = "/usage?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"
        load(page, server, path, shots, "many-models")
        assert page.problems == []
        models = {r["model"] for r in server.json(path.replace("?", ".json?"))["models"]}
        assert len(models) == 23
        drawn = page.evaluate(LEGEND, page.locator("#chart-by-model").element_handle())
        check_legend(drawn, models)
    finally:
        stop(server)


HEALTH = "/health?from=2026-02-27T00:00:00Z&to=2026-03-04T00:00:00Z&bucket=day"


@pytest.fixture(scope="module")
def azure(store: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The seeded store and one call to ``azure`` (no error) on 2 March: the seed's
    events end on 1 March."""
    s = variant(store, tmp_path_factory.mktemp("azure"), CATALOG)
    add_events(s.db, Event(ts=datetime(2026, 3, 2, 12, tzinfo=UTC), provider="azure"))
    server = start_dashboard(s)
    yield server
    stop(server)


def test_health_charts_give_a_provider_one_colour(page: Any, azure: Server, shots: Path) -> None:
    """A provider with calls and no errors (``azure``, between the two others) shifted the
    Errors chart's colours off the Calls chart's: ``openai`` was orange in one, red in the
    other."""
    load(page, azure, HEALTH, shots, "health-colours")
    assert page.problems == []
    calls, errors = (
        {e["label"]: e["fill"] for e in page.evaluate(LEGEND, chart)["entries"]}
        for chart in (
            page.locator(f"#{i}").element_handle() for i in ("chart-calls", "chart-errors")
        )
    )
    assert set(calls) == {"anthropic", "azure", "openai"}
    assert set(errors) == {"anthropic", "openai"}
    assert {p: calls[p] for p in errors} == errors


def test_health_charts_span_the_range_asked_for(page: Any, azure: Server, shots: Path) -> None:
    """Each chart's time axis ended at its own last bucket: Errors on 2 March, Calls on
    3 March, for a range to 4 March."""
    load(page, azure, HEALTH, shots, "health-range")
    assert page.problems == []
    domains = page.evaluate(
        "ids => ids.map(id => window.meterlineCharts[id].scale('x').domain().map(Number))",
        ["chart-calls", "chart-errors"],
    )
    start = datetime(2026, 2, 27, tzinfo=UTC).timestamp() * 1000
    end = datetime(2026, 3, 4, tzinfo=UTC).timestamp() * 1000
    assert domains == [[start, end], [start, end]]
