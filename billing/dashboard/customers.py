"""Customers for the dashboard: the list, and one customer's page data.

A customer's page is made of what the CLI already answers: the current period so far
(``billing invoice preview --customer C --at T``) and its usage by day (``billing
timeline --customer C --from START --to END``), the last invoices (``billing invoice
list --customer C``) and the registered extra panels (:mod:`billing.dashboard.panels`).
The margin against list price is a page of its own (``billing margin --period M
--customer C``), linked for the latest invoiced month.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import duckdb

from billing import render
from billing.dashboard.panels import load_panels
from billing.dashboard.queries import Scope, TimeRange, timeline
from billing.invoices import BillingError, find_customer, list_invoices, preview_invoice
from billing.model import Invoice
from billing.schedule import subscription_at
from meterline.catalog import Catalog

Data = dict[str, Any]
LAST_INVOICES = 12


def customers_list(catalog: Catalog, at: datetime) -> Data:
    rows = []
    for c in catalog.customers:
        sub = subscription_at(c, at)
        rows.append(
            {
                "customer": c.key,
                "name": c.name,
                "currency": c.currency,
                "plan": sub.plan if sub else None,
                "consumers": list(c.consumers),
            }
        )
    return {"at": at, "customers": rows}


def invoice_month(period_end: datetime) -> str:
    """The month ``billing invoice generate --period`` / ``billing margin`` file it under."""
    return f"{period_end - timedelta(microseconds=1):%Y-%m}"


def last_invoiced_month(invoices: Sequence[Invoice]) -> str | None:
    """The month of the invoice whose period ends last: not the last invoice issued, since a
    month generated late (a backfill) is issued after the months that follow it."""
    if not invoices:
        return None
    return invoice_month(max(i.period_end for i in invoices))


def margin_page(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, key: str, month: str | None
) -> Data:
    """The customer's margin for ``month`` (default: its latest invoiced month): the rows of
    ``billing margin --period M --customer C``. A page of its own: it prices every event
    the month's invoices billed at list price, which takes longer than the customer page."""
    from billing.margin import margin_report  # genai-prices: load on use

    customer = find_customer(catalog, key)
    if month is None:
        month = last_invoiced_month(list_invoices(con, catalog, customer=key))
        if month is None:
            raise BillingError(f"{key!r} has no invoices yet")
    rows = margin_report(con, month, key)
    return {"customer": key, "name": customer.name, "period": month, "rows": rows}


def chart_end(start: datetime, end: datetime, at: datetime) -> datetime:
    """The period's usage chart stops where the preview does: at ``at`` (its last day is
    partial), never past the period's end; at the period's first instant it is empty."""
    return max(start, min(end, at))


def customer_page(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, key: str, at: datetime, now: datetime
) -> Data:
    """Everything on a customer's page; ``at`` picks the period previewed."""
    customer = find_customer(catalog, key)
    sub = subscription_at(customer, at)
    preview: Data | None = None
    usage: Data | None = None
    note = None
    try:
        inv = preview_invoice(con, catalog, key, at=at, now=now)
    except BillingError as e:
        note = str(e)
    else:
        preview = render.invoice_json(inv)
        period = TimeRange(inv.period_start, chart_end(inv.period_start, inv.period_end, at), "day")
        usage = timeline(con, catalog, Scope(customer=key), period)
    invoices = list_invoices(con, catalog, customer=key)
    recent = [render.invoice_summary(i) for i in reversed(invoices[-LAST_INVOICES:])]
    month = last_invoiced_month(invoices)
    panels = {}
    for panel in load_panels().values():
        data = panel.data(con, catalog, key, at)
        if data is not None:
            panels[panel.name] = data
    return {
        "customer": {
            "customer": customer.key,
            "name": customer.name,
            "currency": customer.currency,
            "plan": sub.plan if sub else None,
            "consumers": list(customer.consumers),
        },
        "at": at,
        "period_so_far": preview,
        "period_note": note,
        "usage": usage,
        "invoices": recent,
        "last_invoiced_month": month,
        "panels": panels,
    }
