"""The dashboard in a real Chromium (the system's, driven by Playwright).

Each page loads with no console error or warning, its charts draw the series of the
page's JSON twin (read back from the live Vega views and the SVG legend), the numbers
shown are the JSON's, and the filter form changes what is shown. Every page leaves a
full-page screenshot under the test's tmp dir.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from billing.store import billing_store
from tests.billing.cli.runner import error, run
from tests.billing.events import Setup, write_catalog
from tests.dashboard.conftest import Server, load, start_dashboard, stop, variant
from tests.dashboard.seed import CATALOG

JAN = "from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z"
DAY1 = "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"

# page -> (path, {chart id: (series field, the JSON twin's rows for it)})
PAGES: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "usage": (
        f"/usage?{JAN}",
        {"chart-by-model": ("model", "by_model"), "chart-by-type": ("token_type", "by_type")},
    ),
    "usage-hourly-alpha": (
        f"/usage?{DAY1}&bucket=hour&customer=alpha",
        {"chart-by-model": ("model", "by_model"), "chart-by-type": ("token_type", "by_type")},
    ),
    "customers": ("/customers?at=2026-01-20", {}),
    "customer": ("/customers/alpha?at=2026-02-10", {"chart-customer-usage": ("model", "usage")}),
    "margin": ("/customers/alpha/margin?period=2026-01", {}),
    "unbilled": (f"/unbilled?{JAN}", {}),
    "health": (
        f"/health?{DAY1}",
        {"chart-calls": ("provider", "series"), "chart-errors": ("provider", "series")},
    ),
    "invoice": ("/invoices/INV-000003", {}),
    "statement": ("/statements/alpha/2026-01", {}),
}


def twin_rows(dashboard: Server, path: str, key: str) -> list[dict[str, Any]]:
    base, _, query = path.partition("?")
    data = dashboard.json(f"{base}.json?{query}")
    rows = data[key]
    return rows["by_model"] if key == "usage" else rows


@pytest.mark.parametrize("name", list(PAGES))
def test_page_loads_and_draws_its_series(
    page: Any, dashboard: Server, shots: Path, name: str
) -> None:
    path, charts = PAGES[name]
    load(page, dashboard, path, shots, name)
    assert page.problems == []
    drawn = page.evaluate("() => Object.keys(window.meterlineCharts || {}).sort()")
    assert drawn == sorted(charts)
    for chart_id, (field, key) in charts.items():
        rows = twin_rows(dashboard, path, key)
        if chart_id == "chart-errors":
            rows = [r for r in rows if r["errors"]]
        data = page.evaluate("id => window.meterlineCharts[id].data('table')", chart_id)
        assert {r[field] for r in data} == {r[field] for r in rows}
        measure = "errors" if chart_id == "chart-errors" else (
            "calls" if chart_id == "chart-calls" else "tokens"
        )  # fmt: skip
        assert sum(r[measure] for r in data) == sum(r[measure] for r in rows)
        legend = page.locator(f"#{chart_id} g.role-legend-label text").all_text_contents()
        assert sorted(legend) == sorted({str(r[field]) for r in rows})
        assert page.locator(f"#{chart_id} g.mark-rect path").count() == len(rows)


def test_numbers_on_the_page_are_the_json(page: Any, dashboard: Server, shots: Path) -> None:
    load(page, dashboard, f"/health?{DAY1}", shots, "health-numbers")
    data = dashboard.json(f"/health.json?{DAY1}")
    rows = page.locator("#providers tbody tr")
    assert rows.count() == len(data["providers"])
    for i, p in enumerate(data["providers"]):
        cells = rows.nth(i)
        for field in ("calls", "errors", "error_pct", "ttft_p50_ms", "ttft_p99_ms"):
            text = cells.locator(f'td[data-field="{field}"]').inner_text()
            value = p[field]
            assert text == (f"{value:,}" if isinstance(value, int) else value)

    load(page, dashboard, "/customers/alpha?at=2026-02-10", shots, "customer-numbers")
    customer = dashboard.json("/customers/alpha.json?at=2026-02-10")
    assert page.locator("#period-total").inner_text() == f"{customer['period_so_far']['total']} USD"
    links = page.locator("#invoices a").all_text_contents()
    assert links == [i["number"] for i in customer["invoices"]]


def test_filters_change_what_is_shown(page: Any, dashboard: Server, shots: Path) -> None:
    load(page, dashboard, f"/usage?{JAN}", shots, "filter-before")
    everyone = dashboard.json(f"/usage.json?{JAN}")
    assert page.locator("#total-tokens").inner_text() == f"{everyone['totals']['total']:,}"

    page.select_option("select[name=customer]", "alpha")
    page.select_option("select[name=bucket]", "hour")
    page.fill("input[name=to]", "2026-01-03")
    with page.expect_navigation():
        page.click("form.filters button")
    page.evaluate("() => window.meterlineReady")
    page.screenshot(path=str(shots / "filter-after.png"), full_page=True)
    assert "customer=alpha" in page.url and "bucket=hour" in page.url
    alpha = dashboard.json(
        "/usage.json?from=2026-01-01T00:00:00Z&to=2026-01-03&bucket=hour&customer=alpha"
    )
    shown = page.locator("#total-tokens").inner_text()
    assert shown == f"{alpha['totals']['total']:,}" != f"{everyone['totals']['total']:,}"
    data = page.evaluate("() => window.meterlineCharts['chart-by-model'].data('table')")
    assert len(data) == len(alpha["by_model"])
    assert len({r["bucket"] for r in data}) == 48  # two days by the hour
    assert page.problems == []


def test_invoice_page_reads_like_an_invoice(page: Any, dashboard: Server, shots: Path) -> None:
    load(page, dashboard, "/invoices/INV-000001", shots, "invoice-1")
    text = page.locator("body").inner_text()
    for expected in (
        "Invoice INV-000001",
        "Meterline Demo GmbH",
        "Tax ID DE123456789",
        "Alpha Ltd",
        "1 – 31 January 2026",
        "2.50 USD / 1M tokens",
        "first 100,000 tokens included",
        "Tier 1: 0 – 1,000,000 tokens",
        "Minimum spend top-up",
        "Bank transfer to IBAN",
        "126.87 USD",
    ):
        assert expected in text, expected
    assert "0.0000025" not in text
    assert page.problems == []


# --------------------------------------------------------------------------- hostile names

COMMENT_MODEL = "<!--<script>"
LONG_MODEL = "m" * 400  # no space, hyphen or slash to break at
LONG_NAME = "Alpha" + "Ltd" * 160


@pytest.fixture(scope="module")
def hostile(store: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The seed store with models named ``<!--<script>`` and 400 unbroken letters, and
    alpha renamed to 485 unbroken letters."""
    tmp = tmp_path_factory.mktemp("hostile")
    db = tmp / "meterline.duckdb"
    shutil.copy(store.db, db)
    with billing_store(db) as con:
        con.execute(
            "UPDATE usage_events SET model = ? WHERE model = 'gpt-4o-mini'", [COMMENT_MODEL]
        )
        con.execute("UPDATE usage_events SET model = ? WHERE model = 'o3-mini'", [LONG_MODEL])
    catalog = write_catalog(tmp, CATALOG.replace("Alpha Ltd", LONG_NAME))
    server = start_dashboard(Setup(db, catalog))
    yield server
    stop(server)


def test_a_model_named_like_a_comment_keeps_the_page(
    page: Any, hostile: Server, shots: Path
) -> None:
    for name, path, chart_ids in (
        ("comment-usage", f"/usage?{JAN}", ["chart-by-model", "chart-by-type"]),
        ("comment-customer", "/customers/alpha?at=2026-01-20", ["chart-customer-usage"]),
    ):
        load(page, hostile, path, shots, name)
        assert page.problems == [], name
        drawn = page.evaluate("() => Object.keys(window.meterlineCharts).sort()")
        assert drawn == chart_ids, name
        legend = page.locator("#chart-by-model g.role-legend-label text, "
                              "#chart-customer-usage g.role-legend-label text")  # fmt: skip
        assert COMMENT_MODEL in legend.all_text_contents(), name
    load(page, hostile, f"/usage?{JAN}", shots, "comment-usage-table")
    models = page.locator('#models td[data-field="model"]').all_text_contents()
    assert COMMENT_MODEL in models


@pytest.mark.parametrize(
    "path",
    [f"/usage?{JAN}", f"/unbilled?{JAN}", "/customers", "/customers/alpha?at=2026-02-10",
     "/invoices/INV-000001", "/statements/alpha/2026-01"],
)  # fmt: skip
def test_long_names_do_not_widen_the_page(
    page: Any, hostile: Server, shots: Path, path: str
) -> None:
    load(page, hostile, path, shots, "long-" + path.strip("/").split("?")[0].replace("/", "-"))
    assert page.problems == []
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280, (path, width)
    if path.startswith(("/invoices", "/statements")):
        total = page.locator("#total").first.bounding_box()
        assert total is not None and total["x"] + total["width"] <= 1280


@pytest.mark.parametrize(
    ("path", "empty"),
    [
        ("/usage", ["chart-by-model", "chart-by-type"]),  # the landing page: last 30 days
        ("/usage?from=2025-01-01&to=2025-01-03", ["chart-by-model", "chart-by-type"]),
        ("/health?from=2025-01-01&to=2025-01-02", ["chart-calls", "chart-errors"]),
        ("/customers/alpha?at=2026-03-10", ["chart-customer-usage"]),
    ],
)
def test_no_data_shows_a_note_not_an_empty_chart(
    page: Any, dashboard: Server, shots: Path, path: str, empty: list[str]
) -> None:
    response = page.goto(dashboard.url + path)
    assert response.status == 200
    page.evaluate("() => window.meterlineReady")
    page.screenshot(path=str(shots / "no-data.png"), full_page=True)
    assert page.problems == []  # Vega warns "Infinite extent" for an empty chart
    assert page.evaluate("() => Object.keys(window.meterlineCharts)") == []
    for chart_id in empty:
        assert page.locator(f"#{chart_id}").inner_text().endswith("Nothing to chart in this range.")


def test_a_token_with_separators_logs_the_browser_in(
    store: Setup, browser: Any, shots: Path
) -> None:
    """``?token=`` sets a cookie the browser sends back whole: ``;``, ``=`` and spaces in
    the token are percent-encoded, not taken as the cookie's end."""
    token = 'pa ss;word=1,"x"'
    server = start_dashboard(store, env={"METERLINE_DASHBOARD_TOKEN": token})
    context = browser.new_context()
    try:
        pg = context.new_page()
        response = pg.goto(
            f"{server.url}/customers?{urlencode({'token': token, 'at': '2026-01-20'})}"
        )
        pg.screenshot(path=str(shots / "token-login.png"), full_page=True)
        assert pg.url == f"{server.url}/customers?at=2026-01-20"
        assert response.status == 200
        assert pg.goto(f"{server.url}/usage.json").status == 200  # the cookie, again
        context.clear_cookies()
        assert pg.goto(f"{server.url}/usage.json").status == 401
    finally:
        context.close()
        stop(server)


# --------------------------------------------------------------------------- big ranges


def test_unbilled_shows_the_largest_rows_and_exact_totals(
    page: Any, dashboard: Server, shots: Path
) -> None:
    """``rows=3`` (200 by default): the largest rows, a Total row over all of them, and
    where to read the rest."""
    data = dashboard.json(f"/unbilled.json?{JAN}")
    assert len(data["rows"]) > 3 and len(data["unpriced"]) > 3
    load(page, dashboard, f"/unbilled?{JAN}&rows=3", shots, "unbilled-capped")
    assert page.problems == []
    shown = page.locator('#unbilled tbody td[data-field="total"]').all_text_contents()
    largest = sorted((r["total"] for r in data["rows"]), reverse=True)[:3]
    assert shown == [f"{n:,}" for n in largest]
    foot = page.locator("#unbilled tfoot")
    for field in ("total", "web_search", "events"):
        total = sum(r[field] for r in data["rows"])
        assert foot.locator(f'td[data-field="{field}"]').inner_text() == f"{total:,}"
    assert page.locator("#unpriced tbody tr").count() == 3
    note = page.locator("#unbilled-capped")
    assert note.inner_text().startswith(f"The 3 largest of {len(data['rows'])} rows")
    json_link = note.locator("a", has_text="JSON").get_attribute("href")
    assert json_link == f"/unbilled.json?{JAN.replace(':', '%3A')}"
    with page.expect_navigation():
        note.locator("a", has_text="show all rows").click()
    assert page.locator("#unbilled tbody tr").count() == len(data["rows"])
    assert page.locator("#unbilled-capped").count() == 0
    load(page, dashboard, f"/unbilled?{JAN}", shots, "unbilled-default")
    assert page.locator("#unbilled tbody tr").count() == len(data["rows"])  # fewer than 200


def test_unbilled_links_keep_the_range_and_every_one_answers(
    page: Any, store: Setup, tmp_path: Path, shots: Path
) -> None:
    """A consumer's or key's link shows its usage over the page's range, not the last 30
    days; a consumer the catalog no longer lists (here ``stray``, removed from it) is
    shown unlinked with a note: the Usage page answers 400 for it."""
    s = variant(store, tmp_path, CATALOG.replace("  - name: stray\n", "", 1))
    server = start_dashboard(s)
    try:
        load(page, server, f"/unbilled?{JAN}", shots, "unbilled-links")
        assert page.problems == []
        cells = page.locator('#unbilled tbody td[data-field="consumer"]')
        stray = [t for t in cells.all_inner_texts() if t.startswith("stray")]
        assert stray and all(t == "stray (not in the catalog)" for t in stray)
        assert page.locator('#unbilled a:text-is("stray")').count() == 0
        assert "name the catalog no longer lists" in page.locator("#unknown-consumers").inner_text()
        hrefs = set(page.locator("#unbilled tbody a").evaluate_all("as => as.map(a => a.href)"))
        assert any("consumer=agent-b" in h for h in hrefs)  # outside beta's subscription
        assert any("key=sha256" in h for h in hrefs)  # the key not in the catalog
        for href in hrefs:
            assert href.endswith("&from=2026-01-01T00%3A00%3A00Z&to=2026-02-01T00%3A00%3A00Z")
            response = page.goto(href)
            assert response.status == 200, href
            assert page.locator('input[name="from"]').input_value() == "2026-01-01T00:00:00Z"
    finally:
        stop(server)


def test_months_by_the_hour_are_drawn_by_day(page: Any, dashboard: Server, shots: Path) -> None:
    """Two months by the hour would be 1,416 bars per model: the page draws days, says so
    and links the hourly JSON, which stays hourly (the CLI's)."""
    two_months = "from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&bucket=hour"
    for path, chart_id in (("/usage", "chart-by-model"), ("/health", "chart-calls")):
        load(page, dashboard, f"{path}?{two_months}", shots, f"coarser{path.replace('/', '-')}")
        assert page.problems == []
        data = page.evaluate("id => window.meterlineCharts[id].data('table')", chart_id)
        assert len({r["bucket"] for r in data}) == 59  # days, not 1,416 hours
        assert page.locator("select[name=bucket]").input_value() == "day"
        note = page.locator("#coarser")
        assert note.inner_text().startswith("1,416 hours are too many bars to draw by the hour")
        hourly = note.locator("a").get_attribute("href")
        assert hourly == f"{path}.json?{two_months.replace(':', '%3A')}"
        series = dashboard.json(hourly)["range"]
        assert series["bucket"] == "hour"
    load(page, dashboard, f"/usage?{DAY1}&bucket=hour", shots, "hourly-day")
    assert page.locator("#coarser").count() == 0


# --------------------------------------------------------------------------- control characters

RLO_MODEL = "gpt-4o-\u202elnk.exe"  # shown raw: "gpt-4o-exe.knl"
RLO_SHOWN = "gpt-4o-\\u202elnk.exe"
NUL_NAME = "Beta\x00 GmbH"


@pytest.fixture(scope="module")
def controls(store: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The seed with gpt-4o renamed ``gpt-4o-\\u202elnk.exe`` (still billed as gpt-4o*) and
    beta renamed with a NUL."""
    s = variant(store, tmp_path_factory.mktemp("controls"),
                CATALOG.replace("Beta GmbH", '"Beta\\0 GmbH"'))  # fmt: skip
    with billing_store(s.db) as con:
        con.execute("UPDATE usage_events SET model = ? WHERE model = 'gpt-4o'", [RLO_MODEL])
    server = start_dashboard(s)
    yield server
    stop(server)


@pytest.mark.parametrize(
    ("path", "where"),
    [
        (f"/usage?{JAN}", '#models td[data-field="model"]'),
        (f"/unbilled?{JAN}", '#unbilled td[data-field="model"]'),
        ("/customers/alpha/margin?period=2026-01", '#margin td[data-field="model"]'),
    ],
)
def test_control_characters_are_shown_not_obeyed(
    page: Any, controls: Server, shots: Path, path: str, where: str
) -> None:
    load(page, controls, path, shots, "controls-" + path.strip("/").split("?")[0].replace("/", "-"))
    assert page.problems == []
    cells = page.locator(where)
    assert RLO_SHOWN in cells.all_text_contents()
    assert page.locator(f"{where} bdi", has_text=RLO_SHOWN).count() >= 1  # isolated
    assert "\u202e" not in page.locator("body").inner_text()
    legends = page.locator("g.role-legend-label text").all_text_contents()
    if path.startswith("/usage"):
        assert RLO_SHOWN in legends
    assert all("\u202e" not in text for text in legends)


def test_a_nul_in_a_name_does_not_reach_the_html(page: Any, controls: Server, shots: Path) -> None:
    status, body = controls.get("/customers")
    assert status == 200 and b"\x00" not in body and b"Beta\\u0000 GmbH" in body
    load(page, controls, "/customers/beta?at=2026-02-20", shots, "controls-nul")
    assert page.title() == "Beta\\u0000 GmbH · Meterline"
    assert controls.json("/customers.json")["customers"][1]["name"] == NUL_NAME  # data as is


# --------------------------------------------------------------------------- axes and errors


@pytest.mark.parametrize(
    ("path", "chart_id", "days"),
    [
        ("/customers/alpha?at=2026-02-03T00:00:00Z", "chart-customer-usage",
         ["01 Feb", "02 Feb", "03 Feb"]),
        ("/usage?from=2026-01-01&to=2026-01-03", "chart-by-model", ["01 Jan", "02 Jan", "03 Jan"]),
        ("/health?from=2026-01-01&to=2026-01-04&bucket=day", "chart-calls",
         ["01 Jan", "02 Jan", "03 Jan", "04 Jan"]),
    ],
)  # fmt: skip
def test_short_ranges_label_each_day_once(
    page: Any, dashboard: Server, shots: Path, path: str, chart_id: str, days: list[str]
) -> None:
    """One tick per day, the range's end included (Vega ticked a two-day range every 12
    hours: ``01 Feb, 01 Feb, 02 Feb, 02 Feb``)."""
    load(page, dashboard, path, shots, f"axis-{chart_id}")
    assert page.problems == []
    labels = page.locator(f"#{chart_id} g.role-axis-label text").all_text_contents()
    assert [t for t in labels if re.fullmatch(r"\d\d [A-Z][a-z]{2}", t)] == days


def test_errors_speak_of_the_page_not_the_cli(page: Any, dashboard: Server, store: Setup) -> None:
    for path in ("/usage", "/unbilled", "/health"):
        response = page.goto(f"{dashboard.url}{path}?from=2026-02-01&to=2026-01-01")
        assert response.status == 400
        assert page.locator("p.error").inner_text() == "To must be after From", path
    result = run(store, "timeline", "--from", "2026-02-01", "--to", "2026-01-01")
    assert error(result) == "Error: --to must be after --from"  # the CLI keeps its words
