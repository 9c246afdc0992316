"""Output: rows as an aligned table, JSON or CSV; an invoice as text, JSON, CSV or HTML.

JSON is for machines: amounts and prices are decimal *strings* (``"19.00"``, never a
float), timestamps ISO 8601 UTC with ``Z``, missing values ``null``. Tables are for
people: the same values, aligned, numbers to the right.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from billing import extensions
from billing.model import Invoice, InvoiceLine
from billing.money import decimal_text, format_money
from meterline.catalog import Catalog

FORMATS = ("table", "json", "csv")
SHOW_FORMATS = (*FORMATS, "html")

Row = dict[str, Any]


def scalar(value: Any) -> Any:
    """A JSON-safe value: Decimal -> plain string, datetime -> ISO Z, date -> ISO."""
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [scalar(v) for v in value]
    if isinstance(value, dict):
        return {k: scalar(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):  # tables and CSV: to the second
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    v = scalar(value)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return str(v)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """Aligned plain-text table; numbers right-aligned. ``(none)`` for no rows."""
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    right = [any(_numeric(r.get(c)) for r in rows) for c in cols]

    def fmt(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [fmt([c.upper() for c in cols]), fmt(["-" * w for w in widths])]
    out += [fmt(row) for row in cells]
    return "\n".join(out)


def to_json(data: Any) -> str:
    return json.dumps(scalar(data), indent=2, ensure_ascii=False)


def to_csv(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    buf = io.StringIO()
    cols = list(columns or (rows[0].keys() if rows else []))
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        writer.writerow([_csv_cell(r.get(c)) for c in cols])
    return buf.getvalue().rstrip("\n")


#: A CSV cell a spreadsheet would run as a formula: text that starts with ``=``, ``+``,
#: ``-``, ``@``, a tab or a carriage return (OWASP's "CSV injection"). Model names come
#: from the clients' requests, so any metered consumer could plant one in an export.
_FORMULA_START = re.compile(r"[=+\-@\t\r]")
#: A number as text (``-29.99``, ``+1``): a spreadsheet reads it as a number, no formula.
_NUMBER = re.compile(r"[-+]?[0-9][0-9.,]*(?:[eE][-+]?[0-9]+)?")


def _csv_cell(value: Any) -> str:
    """``_cell``, with text that a spreadsheet would evaluate prefixed by ``'`` so it
    is shown as the text it is."""
    text = _cell(value)
    if _FORMULA_START.match(text) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def rows(data: Sequence[Row], fmt: str, columns: Sequence[str] | None = None) -> str:
    """Any listing in ``table``, ``json`` (an array of objects) or ``csv``."""
    if fmt == "json":
        return to_json([{c: r.get(c) for c in (columns or r.keys())} for r in data])
    if fmt == "csv":
        return to_csv(data, columns)
    return table(data, columns)


# --------------------------------------------------------------------------- invoices

SUMMARY_COLUMNS = (
    "number",
    "customer",
    "period_start",
    "period_end",
    "currency",
    "total",
    "status",
    "issued_at",
)
"""The core's listing columns; :func:`summary_columns` adds the registered packages'."""
LINE_COLUMNS = (
    "line_no",
    "kind",
    "description",
    "usage_start",
    "usage_end",
    "quantity",
    "unit_price",
    "amount",
)


def invoice_summary(inv: Invoice) -> Row:
    return {
        "number": inv.number,
        "customer": inv.customer_key,
        "customer_name": inv.customer_name,
        "period_start": inv.period_start,
        "period_end": inv.period_end,
        "currency": inv.currency,
        "total": inv.total,
        "status": inv.status,
        "issued_at": inv.issued_at,
        "watermark": inv.watermark,
        "catalog_digest": inv.catalog_digest,
        **{c.name: inv.extra.get(c.name) for c in extensions.invoice_columns()},
    }


def summary_columns() -> tuple[str, ...]:
    """``invoice list``'s table columns: the core's, then each registered package's."""
    return (*SUMMARY_COLUMNS, *(c.name for c in extensions.invoice_columns()))


def line_row(line: InvoiceLine) -> Row:
    return {
        "line_no": line.line_no,
        "kind": line.kind,
        "rate_card": line.rate_card_key,
        "feature": line.feature_key,
        "plan": line.plan_key,
        "description": line.description,
        "usage_start": line.usage_start,
        "usage_end": line.usage_end,
        "quantity": line.quantity,
        "unit_price": line.unit_price,
        "amount": line.amount,
    }


def invoice_json(inv: Invoice) -> Row:
    lines = [{**line_row(ln), "detail": ln.detail} for ln in inv.lines]
    return {**invoice_summary(inv), "lines": lines}


def _tier_rows(line: InvoiceLine) -> list[str]:
    """The tiers a line's pricing used; a unit-grant credit's are those of the quantity
    still billed, so it says which. None without the rate card they were priced with
    (credit lines stored before it was kept): a tier without its ``per`` would misstate
    the price."""
    tiers = (line.detail.get("pricing") or {}).get("tiers") or []
    if not tiers or "rate_card" not in line.detail or line.detail["rate_card"] is None:
        return []
    per = (line.detail["rate_card"].get("price") or {}).get("per", 1)
    unit = "" if per == 1 else f" per {per}"
    head = []
    if line.detail.get("unit_grant"):
        head = [
            f"      priced as {line.detail['billed_quantity']} of "
            f"{line.detail['metered_quantity']} units billed:"
        ]
    return head + [
        f"      tier {t['tier'] + 1}: {t['quantity']} units at {t['unit_amount']}{unit}"
        + (f" + flat {t['flat_amount']}" if Decimal(t["flat_amount"]) else "")
        + f" = {t['amount']}"
        for t in tiers
    ]


def _late_rows(line: InvoiceLine) -> list[str]:
    """What a late line bills: the period's total with the late usage less what was billed
    for the period before (``detail.late``). Its pricing's tiers are the whole period's,
    not this line's."""
    late = line.detail.get("late")
    if not late:
        return []
    why = [n for n in (line.detail.get("pricing") or {}).get("notes") or [] if "spend" in n]
    return [
        f"      period total {late['total_quantity']} units = {late['total_amount']}"
        + "".join(f" ({n})" for n in why)
        + (f" (after {late['granted_units']} granted units)" if late.get("granted_units") else ""),
        f"      billed before {late['billed_quantity']} units = {late['billed_amount']}",
    ]


def invoice_text(inv: Invoice) -> str:
    """``billing invoice show``: header, lines (tiers under tiered lines), total."""
    title = inv.number or "PREVIEW (not finalized)"
    head = [
        f"Invoice  {title}",
        f"Customer {inv.customer_name} ({inv.customer_key})",
        f"Period   {_cell(inv.period_start)} .. {_cell(inv.period_end)}",
        f"Status   {inv.status}"
        + (f", issued {_cell(inv.issued_at)}" if inv.issued_at else "")
        + "".join(
            f", {c.label} {inv.extra[c.name]}"
            for c in extensions.invoice_columns()
            if inv.extra.get(c.name)
        ),
        f"Usage    ingested up to {_cell(inv.watermark)}",
        "",
    ]
    body = table([line_row(ln) for ln in inv.lines], LINE_COLUMNS).splitlines()
    out = head + body[:2]
    for ln, text in zip(inv.lines, body[2:], strict=True):
        out.append(text)
        out.extend(_late_rows(ln) if ln.kind == "late_usage" else _tier_rows(ln))
    out += ["", f"Total    {format_money(inv.total, inv.currency)}"]
    return "\n".join(out)


def invoice_csv(inv: Invoice) -> str:
    data = [{"number": inv.number, "currency": inv.currency, **line_row(ln)} for ln in inv.lines]
    return to_csv(data, ("number", "currency", *LINE_COLUMNS, "rate_card", "feature", "plan"))


def invoice(inv: Invoice, fmt: str, catalog: Catalog | None = None) -> str:
    """``catalog`` gives the HTML page its seller block and due date."""
    if fmt == "json":
        return to_json(invoice_json(inv))
    if fmt == "csv":
        return invoice_csv(inv)
    if fmt == "html":
        return invoice_html(inv, catalog)
    return invoice_text(inv)


def invoice_html(inv: Invoice, catalog: Catalog | None = None) -> str:
    """A printable invoice page (see :mod:`billing.documents.invoice_page`)."""
    from billing.documents.invoice_page import invoice_html as page

    return page(inv, catalog)
