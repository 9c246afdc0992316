"""Printed documents show names from the catalog and the traffic as the dashboard does:
control and format characters written out, names isolated. A customer named
``Alpha \\u202eevil`` printed as "Alpha live" in invoice and statement PDFs and pages, and
a model from traffic reversed itself in the statement's chart legend."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from billing.charts import stacked_bars
from billing.documents.invoice_page import invoice_html
from billing.documents.statement import build_statement, statement_html
from billing.invoices import generate_invoices
from billing.store import billing_store
from tests.billing.events import CATALOG, Event, add_events, setup, utc

RLO = "\u202e"


def test_invoice_and_statement_pages_show_control_characters(tmp_path: Path) -> None:
    catalog = CATALOG.replace("name: Alpha Ltd", 'name: "Alpha \\u202eevil"')
    s = setup(tmp_path, catalog)
    add_events(s.db, Event(utc("2026-01-05"), input=1000, model=f"gpt-4o-{RLO}lnk.exe"))
    with billing_store(s.db) as con:
        [inv] = generate_invoices(
            con, s.catalog, "2026-01", customer="alpha", now=utc("2026-02-01T00:00:05")
        ).invoices
        st = build_statement(con, s.catalog, "alpha", "2026-01")
    page = invoice_html(inv, s.catalog)
    statement = statement_html(st, s.catalog)
    for html in (page, statement):
        assert RLO not in html
        assert "<bdi>Alpha \\u202eevil</bdi>" in html
    svg = "".join(
        base64.b64decode(m).decode()
        for m in re.findall(r"data:image/svg\+xml;base64,([^\"]+)", statement)
    )
    assert RLO not in svg and "gpt-4o-\\u202elnk.exe" in svg  # the legend


def test_a_short_span_ticks_once_per_day() -> None:
    """A 10-day statement's axis read "02 Oct, 02 Oct, 03 Oct, ...": ticks every 12 h."""
    rows = [{"bucket": "2026-10-02", "model": "m", "tokens": 1}]
    span = (utc("2026-10-01"), utc("2026-10-11"))
    spec = stacked_bars(rows, x="bucket", y="tokens", color="model", bucket="day",
                        title=None, span=span)  # fmt: skip
    assert spec["encoding"]["x"]["axis"]["tickCount"] == {"interval": "day", "step": 1}
    long = stacked_bars(rows, x="bucket", y="tokens", color="model", bucket="day",
                        title=None, span=(utc("2026-01-01"), utc("2026-12-01")))  # fmt: skip
    assert "tickCount" not in long["encoding"]["x"]["axis"]
