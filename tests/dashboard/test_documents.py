"""Invoice pages, statements and their PDFs through the real CLI; the words on them."""

from __future__ import annotations

import html
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pypdf import PdfReader

from billing.documents.invoice_page import invoice_html
from billing.documents.pdf import html_to_pdf
from billing.documents.words import human_date, human_span, money, per_label, unit_price_text
from billing.invoices import generate_invoices, get_invoice
from billing.store import billing_store
from tests.billing.cli.runner import error, run
from tests.billing.events import Event, Setup, add_events, setup
from tests.billing.events import utc as at
from tests.billing.test_unit_grant_documents import granted_store
from tests.dashboard.conftest import start_dashboard, stop
from tests.dashboard.seed import seeded


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return seeded(tmp_path_factory.mktemp("documents"))


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def text_off_the_page(path: Path) -> list[str]:
    """Text the PDF places outside its pages' width (a viewer or printer cuts it off; text
    extraction alone still finds it)."""
    off: list[str] = []
    for page in PdfReader(path).pages:

        def visit(
            text: str,
            cm: list[float],
            tm: list[float],
            *_: object,
            width: float = float(page.mediabox.width),
        ) -> None:
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            if text.strip() and not 0 <= x < width:
                off.append(text.strip())

        page.extract_text(visitor_text=visit)
    return off


def test_invoice_pdf_has_the_invoice_text(store: Setup, tmp_path: Path) -> None:
    out = tmp_path / "INV-000001.pdf"
    result = run(store, "invoice", "show", "INV-000001", "--format", "pdf", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"%PDF-")
    text = " ".join(pdf_text(out).split())
    issued = json.loads(run(store, "invoice", "show", "INV-000001", "--format", "json").stdout)
    due = datetime.fromisoformat(issued["issued_at"].replace("Z", "+00:00")) + timedelta(days=14)
    for expected in (
        "Invoice INV-000001",
        "Meterline Demo GmbH",
        "BILL TO",  # CSS uppercases the labels
        "Alpha Ltd",
        "1 – 31 January 2026",
        "DUE",
        human_date(due),
        "2.50 USD / 1M tokens",
        "Tier 1: 0 – 1,000,000 tokens",
        "Minimum spend top-up",
        "Total due",
        f"{issued['total']} USD",
        "Bank transfer to IBAN",
    ):
        assert expected in text, expected


def test_pdf_is_not_written_to_a_terminal_and_html_goes_to_stdout(store: Setup) -> None:
    page = run(store, "invoice", "show", "INV-000003", "--format", "html").stdout
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "1 – 28 February 2026" in page and "3.00 USD / 1M tokens" in page
    preview = run(store, "invoice", "preview", "--customer", "beta", "--at", "2026-02-20",
                  "--format", "html").stdout  # fmt: skip
    assert "Invoice Preview" in preview and "not finalized" in preview


def test_statement_charts_add_up_to_the_invoice_lines(store: Setup, tmp_path: Path) -> None:
    result = run(store, "statement", "--customer", "alpha", "--period", "2026-02", "--format",
                 "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    st = json.loads(result.stdout)
    assert [i["number"] for i in st["invoices"]] == ["INV-000003"]
    lines = [ln for ln in st["invoices"][0]["lines"] if ln["kind"] != "flat"]
    assert [f["feature"] for f in st["features"]] == [ln["feature"] for ln in lines]
    for f, ln in zip(st["features"], lines, strict=True):
        assert f["tokens"] == sum(d["tokens"] for d in f["days"]) == int(Decimal(ln["quantity"]))
        assert {d["day"] for d in f["days"]} <= {f"2026-02-{n:02d}" for n in range(1, 29)}
    assert st["total"] == st["invoices"][0]["total"]

    html = tmp_path / "statement.html"
    run(store, "statement", "--customer", "alpha", "--period", "2026-02", "-o", str(html))
    page = html.read_text()
    assert page.count('<img class="chart"') == len(st["features"])
    assert "data:image/svg+xml;base64," in page and "Statement · February 2026" in page

    pdf = tmp_path / "statement.pdf"
    result = run(store, "statement", "--customer", "alpha", "--period", "2026-02", "--format",
                 "pdf", "-o", str(pdf))  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(pdf_text(pdf).split())
    expected_texts = [
        "Statement · February 2026",
        "GPT-4o input",
        "Claude tokens",
        "Invoice INV-000003",
        f"{st['total']} USD",
        "Meterline Demo GmbH",
    ]
    for expected in expected_texts:
        assert expected in text, expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customer", "alpha", "--period", "2026-05"],
         "Error: no invoice for 'alpha' in 2026-05: "
         "run `billing invoice generate --period 2026-05`"),
        # beta's first period (15 January - 14 February) is on its February invoice:
        # generating January creates nothing, so the hint must not say to
        (["--customer", "beta", "--period", "2026-01"],
         "Error: no invoice for 'beta' in 2026-01: no billing period of 'beta' ends in "
         "2026-01, and an invoice is filed under the month its period ends in (see "
         "`billing invoice list --customer beta`)"),
        (["--customer", "alpha", "--period", "2099-01"],
         "Error: no invoice for 'alpha' in 2099-01: its period 1 – 31 January 2099 has not "
         "closed yet"),
        (["--customer", "zeta", "--period", "2026-01"],
         "Error: unknown customer 'zeta' (known customers: alpha, beta)"),
    ],
)  # fmt: skip
def test_statement_errors_are_one_line(store: Setup, args: list[str], message: str) -> None:
    result = run(store, "statement", *args)
    assert result.exit_code == 1
    assert error(result) == message


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [
        (utc(2026, 3, 1), utc(2026, 4, 1), "1 – 31 March 2026"),
        (utc(2026, 1, 15), utc(2026, 2, 15), "15 January – 14 February 2026"),
        (utc(2025, 12, 15), utc(2026, 1, 15), "15 December 2025 – 14 January 2026"),
        (utc(2026, 3, 5), utc(2026, 3, 6), "5 March 2026"),
        (utc(2026, 3, 5, 12), utc(2026, 3, 6), "5 March 2026, 12:00 UTC – 6 March 2026, 00:00 UTC"),
    ],
)
def test_human_spans(start: datetime, end: datetime, text: str) -> None:
    assert human_span(start, end) == text


def test_prices_as_the_rate_card_writes_them() -> None:
    assert per_label(1_000_000) == "1M tokens" and per_label(1000) == "1K tokens"
    assert per_label(500) == "500 tokens"
    assert unit_price_text({"type": "unit", "amount": "1.25", "per": 1_000_000}, "USD") == (
        "1.25 USD / 1M tokens"
    )
    assert unit_price_text({"type": "unit", "amount": "0.0004", "per": 1}, "USD") == (
        "0.0004 USD / token"
    )
    assert unit_price_text({"type": "package", "amount": "5", "package_size": 10000}, "EUR") == (
        "5.00 EUR / 10,000 tokens"
    )
    assert money(Decimal("1234.5"), "USD") == "1,234.50 USD"
    assert money(Decimal("0.000275"), "USD", exact=True) == "0.000275 USD"
    assert money(Decimal("504"), "JPY", exact=True) == "504 JPY"


def test_a_long_unbroken_word_keeps_the_amounts_on_the_pdf(store: Setup, tmp_path: Path) -> None:
    """A line description, customer or seller name without a place to break wraps inside
    its cell: the AMOUNT column and the total stay on the A4 page."""
    catalog = store.catalog
    with billing_store(store.db) as con:
        inv = get_invoice(con, "INV-000001", catalog)
    word = "Gpt4oInputTokensForTheAcmeCorporationResearchDivisionAgents" * 2
    inv = replace(
        inv,
        customer_name="Alpha" + "Ltd" * 40,
        lines=[replace(ln, description=f"{word} {ln.description}") for ln in inv.lines],
    )
    seller = catalog.seller.model_copy(update={"name": "Meterline" + "Demo" * 30})
    page = invoice_html(inv, catalog.model_copy(update={"seller": seller}))
    out = tmp_path / "long.pdf"
    out.write_bytes(html_to_pdf(page))
    assert text_off_the_page(out) == []
    text = " ".join(pdf_text(out).split())
    assert "AMOUNT" in text
    assert f"Total due {money(inv.total, inv.currency)}" in text
    for line in inv.lines:
        assert money(line.amount, inv.currency) in text, line.description


def test_statement_page_of_a_customer_with_a_unit_grant_credit(tmp_path: Path) -> None:
    """The credit line a unit grant adds has a feature but no windows: the page is served
    (it was a 500), with the credit among the invoice's lines."""
    server = start_dashboard(granted_store(tmp_path))
    try:
        status, body = server.get("/statements/vol/2026-10")
    finally:
        stop(server)
    assert status == 200, body[:500]
    assert "Granted units applied: 999 out" in body.decode()


PRORATED_CATALOG = """
version: 1
consumers:
  - name: agent-a
features: []
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: fee
        name: Platform fee
        price: {type: flat, amount: "31.00", payment_term: in_arrears}
customers:
  - key: acme
    name: Acme
    currency: USD
    consumers: [agent-a]
    subscriptions:
      - {plan: p, start: "2026-10-01T00:00:00Z", end: "2026-10-15T00:00:00Z"}
"""


def test_a_prorated_fee_shows_its_share_and_the_full_fee(tmp_path: Path) -> None:
    """14 of October's 31 days: the page says ``prorated 14/31 days`` (not just
    ``prorated``) and the full fee as the unit price (not a blank), then 14.00."""
    s = setup(tmp_path, PRORATED_CATALOG)
    add_events(s.db, Event(at("2026-10-05"), output=1))
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-10", now=at("2026-11-02T00:00:00Z"))
    page = run(s, "invoice", "show", "INV-000001", "--format", "html").stdout
    row = page[page.index('data-line="1"') :]
    row = row[: row.index("</tr>")]
    cells = [c.split("<")[0] for c in row.split('class="num')[1:]]
    assert [c.split(">", 1)[1] for c in cells] == ["1", "31.00 USD", "14.00 USD"]
    assert "prorated 14/31 days" in row


LATE_CATALOG = """
version: 1
consumers:
  - name: agent-a
features:
  - {key: gin, name: In, meter: {provider: openai, model: "gpt-4o*", token_types: [input]}}
  - {key: gout, name: Out, meter: {provider: openai, model: "gpt-4o*", token_types: [output]}}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: gin
        name: In
        feature: gin
        min_amount: "9.00"
        price: {type: unit, amount: "1.00", per: 1000}
      - key: gout
        name: Out
        feature: gout
        price:
          type: tiered
          mode: graduated
          per: 1000
          tiers:
            - {up_to: 10000, unit_amount: "10.00"}
            - {unit_amount: "5.00"}
customers:
  - key: acme
    name: Acme
    currency: USD
    consumers: [agent-a]
    subscriptions: [{plan: p, start: "2026-01-01T00:00:00Z"}]
"""


def test_a_late_line_shows_what_it_bills_not_the_periods_tiers_and_top_up(
    tmp_path: Path,
) -> None:
    """January billed 2,000 input tokens at the 9.00 minimum and 12,000 output tokens
    (110.00); 3,000 late tokens of each are on February's invoice. The late lines show
    the period's total with them less what January's invoice billed (9.00 - 9.00 = 0.00,
    125.00 - 110.00 = 15.00), not the period's tier rows (100.00 + 25.00) nor a 4.00
    minimum top-up neither line nor the total charges (the page, its PDF, the terminal)."""
    s = setup(tmp_path, LATE_CATALOG)
    add_events(s.db, Event(at("2026-01-10"), input=2000, output=12000))
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-01", now=at("2026-02-01T00:00:05Z"))
    late = Event(at("2026-01-20"), input=3000, output=3000, ingested_at=at("2026-02-02"))
    add_events(s.db, late)
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-02", now=at("2026-03-01T00:00:05Z"))

    page = run(s, "invoice", "show", "INV-000002", "--format", "html").stdout
    late_rows = page[page.index('<tr class="line" data-line="3"') : page.index('<tr class="total"')]
    assert "Tier" not in late_rows and "top-up" not in late_rows
    text = " ".join(visible_text(late_rows).split())
    assert text == (
        "3 In — late usage for 2026-01-01 – 2026-02-01 late usage · 1 – 31 January 2026 "
        "3,000 1.00 USD / 1K tokens 0.00 USD "
        "Period total with the late usage (minimum spend applied) 5,000 9.00 USD "
        "Billed before for the period 2,000 -9.00 USD "
        "4 Out — late usage for 2026-01-01 – 2026-02-01 late usage · 1 – 31 January 2026 "
        "3,000 tiered (graduated), below 15.00 USD "
        "Period total with the late usage 15,000 125.00 USD "
        "Billed before for the period 12,000 -110.00 USD"
    )

    pdf = tmp_path / "INV-000002.pdf"
    result = run(s, "invoice", "show", "INV-000002", "--format", "pdf", "-o", str(pdf))
    assert result.exit_code == 0, result.output
    on_paper = " ".join(pdf_text(pdf).split())
    assert "top-up" not in on_paper.split("Period total")[1]  # February's own top-up is above
    assert "Tier" not in on_paper
    assert "Billed before for the period 12,000 -110.00 USD" in on_paper

    shown = run(s, "invoice", "show", "INV-000002").stdout
    assert "tier" not in shown
    below = [
        ln.strip()
        for ln in shown.splitlines()
        if ln.startswith("      ") and ln.strip()[:1].isalpha()
    ]
    assert below == [
        "period total 5000 units = 9.00 (minimum spend applied)",
        "billed before 2000 units = 9.00",
        "period total 15000 units = 125.00",
        "billed before 12000 units = 110.00",
    ]


def visible_text(page: str) -> str:
    """The words of an HTML fragment as a reader sees them (tags dropped, entities read)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))
