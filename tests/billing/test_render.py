"""Output formats: aligned tables, CSV, JSON with decimal strings, HTML escaping."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

from billing import render
from billing.model import Invoice, InvoiceLine

ROWS = [
    {"name": "a", "amount": Decimal("1.50"), "n": 3, "at": datetime(2026, 1, 2, 3, 4, 5, 600, UTC)},
    {"name": "long name", "amount": Decimal("1234.00"), "n": 12345, "at": None},
]


def test_table_aligns_numbers_right_and_text_left() -> None:
    assert render.table(ROWS).splitlines() == [
        "NAME        AMOUNT      N  AT",
        "---------  -------  -----  --------------------",
        "a             1.50      3  2026-01-02T03:04:05Z",
        "long name  1234.00  12345",
    ]
    assert render.table([]) == "(none)"


def test_json_has_decimal_strings_and_exact_timestamps() -> None:
    data = json.loads(render.rows(ROWS, "json"))
    assert data[0] == {"name": "a", "amount": "1.50", "n": 3, "at": "2026-01-02T03:04:05.000600Z"}
    assert data[1]["at"] is None
    assert render.scalar(Decimal("3E-7")) == "0.0000003"


def test_csv_quotes_and_leaves_missing_values_empty() -> None:
    rows = [{"name": 'a, "b"', "amount": Decimal("2"), "at": None}]
    parsed = list(csv.reader(io.StringIO(render.rows(rows, "csv"))))
    assert parsed == [["name", "amount", "at"], ['a, "b"', "2", ""]]


def _invoice(name: str) -> Invoice:
    t0, t1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    inv = Invoice("c", name, "JPY", t0, t1, t1, "sha256:00", status="preview")
    inv.lines = [
        InvoiceLine(
            "flat",
            "fee",
            None,
            "p",
            "Fee <b>",
            t0,
            t1,
            Decimal(1),
            Decimal(500),
            Decimal(500),
            {},
            1,
        ),
        InvoiceLine(
            "usage",
            "tok",
            "f",
            "p",
            "Tokens",
            t0,
            t1,
            Decimal(7),
            Decimal("0.5"),
            Decimal(4),
            {},
            2,
        ),
    ]
    return inv


def test_html_escapes_and_totals() -> None:
    page = render.invoice_html(_invoice("<script>alert(1)</script>"))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Fee &lt;b&gt;" in page
    assert "504 JPY" in page  # yen has no minor unit
    assert page.startswith("<!DOCTYPE html>")


def test_invoice_text_and_csv() -> None:
    inv = _invoice("Cee")
    text = render.invoice(inv, "table")
    assert text.splitlines()[0] == "Invoice  PREVIEW (not finalized)"
    assert text.splitlines()[-1] == "Total    504 JPY"
    rows = list(csv.DictReader(io.StringIO(render.invoice(inv, "csv"))))
    assert [(r["line_no"], r["amount"], r["unit_price"]) for r in rows] == [
        ("1", "500", "500"),
        ("2", "4", "0.5"),
    ]


def test_csv_cells_a_spreadsheet_would_evaluate_are_shown_as_text() -> None:
    """A model name comes from the client's request: an export must not run it."""
    rows = [
        {"model": '=HYPERLINK("http://evil","x")', "amount": Decimal("-29.99")},
        {"model": "+cmd", "amount": "-1.00"},
        {"model": "@SUM(A1)", "amount": 0},
        {"model": "-2+3", "amount": "1e5"},
        {"model": "\tgpt", "amount": None},
        {"model": "gpt-4o", "amount": Decimal("12.50")},
    ]
    parsed = list(csv.reader(io.StringIO(render.to_csv(rows, ["model", "amount"]))))
    assert parsed[1:] == [
        ['\'=HYPERLINK("http://evil","x")', "-29.99"],
        ["'+cmd", "-1.00"],
        ["'@SUM(A1)", "0"],
        ["'-2+3", "1e5"],
        ["'\tgpt", ""],
        ["gpt-4o", "12.50"],
    ]
