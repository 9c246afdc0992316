"""A customer's statement for a month: usage per feature as charts, then the invoice lines.

The month's invoices are the ones ``billing invoice generate --period M`` finalized for
the customer (periods ending in the month). Each feature's chart counts, per day and
model, exactly the events its usage lines billed: the lines' stored windows and meter
(the same rule ``billing invoice explain`` uses), aggregated in one SQL pass; so the
bars of a feature add up to its lines' quantities.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import duckdb

from billing import render
from billing.charts import stacked_bars, to_svg
from billing.documents.invoice_page import (
    CSS,
    due_date,
    invoice_table,
    line_unit,
    page,
    seller_html,
)
from billing.documents.words import human_date, human_span, money, plural
from billing.invoices import BillingError, find_customer, line_meter, line_windows, parse_month
from billing.ledger import load_invoices
from billing.model import USAGE_KINDS, Invoice, InvoiceLine
from billing.schedule import periods_ending_in
from billing.shown import legible, name, visible
from billing.usage import TOKEN_COLUMNS, WINDOWED_EVENTS, UsageWindow, load_windows
from billing.usage.owned import carve_stored
from meterline.catalog import Catalog, Customer
from meterline.served import SERVED_SQL, Served

e = html.escape


class NoStatement(BillingError):
    """The customer has no invoice filed under the month; the message says why and what
    would make one."""


@dataclass
class FeatureUsage:
    feature: str
    name: str
    total: int
    days: list[dict[str, Any]]
    """``{day, model, tokens}`` rows, by day then model."""
    unit: str = "token"
    """What the feature counts: ``web search`` for a meter of searches."""


@dataclass
class Statement:
    customer: Customer
    month: str
    invoices: list[Invoice]
    features: list[FeatureUsage]

    @property
    def currency(self) -> str:
        return self.customer.currency

    @property
    def total(self) -> Decimal:
        return sum((i.total for i in self.invoices), Decimal(0))


def month_invoices(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, key: str, month: str
) -> list[Invoice]:
    customer = find_customer(catalog, key)
    period = parse_month(month)
    numbers = [
        i.number
        for i in load_invoices(con, customer=key, with_lines=False)
        if i.number and period.start < i.period_end <= period.end
    ]
    if not numbers:
        raise NoStatement(
            f"no invoice for {key!r} in {month}: {_why_none(catalog, customer, month)}"
        )
    return load_invoices(con, numbers=numbers, names={customer.key: customer.name})


def _why_none(catalog: Catalog, customer: Customer, month: str) -> str:
    """What to do about a month without an invoice: generate it only when one of the
    customer's periods ends in the month and has closed (else generating creates nothing)."""
    ending = periods_ending_in(catalog, parse_month(month), [customer])
    if not ending:
        return (
            f"no billing period of {customer.key!r} ends in {month}, and an invoice is filed "
            f"under the month its period ends in (see `billing invoice list --customer "
            f"{customer.key}`)"
        )
    last = max(ending, key=lambda bp: bp.end)
    if last.end > datetime.now(UTC):
        return f"its period {human_span(last.start, last.end)} has not closed yet"
    return f"run `billing invoice generate --period {month}`"


_DAILY_SQL = f"""
    SELECT w.window_id, CAST(e.ts AS DATE) AS day, e.provider, coalesce(e.model, '') AS model,
           {SERVED_SQL},
           {", ".join(f"SUM(e.{c})::BIGINT AS {t}" for t, c in TOKEN_COLUMNS.items())}
    {WINDOWED_EVENTS}
    GROUP BY ALL
"""


def feature_usage(con: duckdb.DuckDBPyConnection, invoices: list[Invoice]) -> list[FeatureUsage]:
    """Per feature of the invoices' usage lines: tokens per day and model, in one query."""
    lines: list[InvoiceLine] = []
    stored: list[tuple[str, UsageWindow]] = []
    owner: dict[int, int] = {}
    for inv in invoices:
        for line in inv.lines:
            # Only usage lines have windows: a fee has none, and a unit-grant credit line
            # names the feature but bills no events of its own.
            if line.kind not in USAGE_KINDS or not line.feature_key:
                continue
            for w in line_windows(line):
                wid = len(stored)
                stored.append((inv.customer_key, replace(w, window_id=wid)))
                owner[wid] = len(lines)
            lines.append(line)
    if not stored:
        return []
    load_windows(con, carve_stored(con, stored))  # as the lines billed them
    per_day: dict[str, dict[tuple[date, str], int]] = defaultdict(lambda: defaultdict(int))
    for wid, day, provider, model, tier, speed, geo, *counts in con.execute(_DAILY_SQL).fetchall():
        line = lines[owner[wid]]
        meter = line_meter(line)
        if not meter.matches(provider, model, Served(tier, speed, geo)):
            continue
        tokens = dict(zip(TOKEN_COLUMNS, counts, strict=True))
        n = sum(int(tokens[t]) for t in meter.token_types)
        if n:
            per_day[str(line.feature_key)][(day, model)] += n
    names: dict[str, str] = {}
    units: dict[str, str] = {}
    for line in lines:
        names.setdefault(str(line.feature_key), line.description.split(" — ")[0])
        units.setdefault(str(line.feature_key), line_unit(line))
    out = []
    for feature, title in names.items():
        counts = sorted(per_day[feature].items())
        days: list[dict[str, Any]] = [{"day": d, "model": m, "tokens": n} for (d, m), n in counts]
        out.append(FeatureUsage(feature, title, sum(n for _, n in counts), days, units[feature]))
    return out


def build_statement(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, key: str, month: str
) -> Statement:
    invoices = month_invoices(con, catalog, key, month)
    return Statement(find_customer(catalog, key), month, invoices, feature_usage(con, invoices))


def statement_json(st: Statement) -> dict[str, Any]:
    return {
        "customer": st.customer.key,
        "name": st.customer.name,
        "period": st.month,
        "currency": st.currency,
        "total": st.total,
        "features": [
            {
                "feature": f.feature,
                "name": f.name,
                "tokens": f.total,
                "unit": f.unit,
                "days": f.days,
            }
            for f in st.features
        ],
        "invoices": [render.invoice_json(i) for i in st.invoices],
    }


def feature_chart(f: FeatureUsage, span: tuple[datetime, datetime] | None = None) -> str:
    """The feature's daily usage as an SVG image (a data URI: no ids leak between charts);
    ``span``: the statement's time, for one axis label per day."""
    spec = stacked_bars(
        legible([{"bucket": r["day"], "model": r["model"], "tokens": r["tokens"]}
                 for r in f.days], "model"),
        x="bucket", y="tokens", color="model", bucket="day", title=None, width=640, height=150,
        y_title=plural(f.unit), span=span,
    )  # fmt: skip
    svg = to_svg(spec)
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    alt = f"{visible(f.name)} per day"
    return f'<img class="chart" data-feature="{e(f.feature)}" alt="{e(alt)}" src="{uri}">'


STATEMENT_CSS = (
    CSS
    + """
.feature { break-inside: avoid; margin-bottom: 1rem; }
.feature h3 { margin: .2rem 0; font-size: .95rem; }
img.chart { width: 100%; max-width: 40rem; display: block; }
section.invoice { break-inside: avoid-page; margin-top: 1.4rem; }
"""
)


def statement_html(st: Statement, catalog: Catalog | None) -> str:
    first = min(i.period_start for i in st.invoices)
    last = max(i.period_end for i in st.invoices)
    c = st.customer
    bill_to = [f"<strong>{name(c.name)}</strong>", name(c.key), *([e(c.email)] if c.email else [])]
    charts = [
        f'<div class="feature"><h3>{name(f.name)} · {f.total:,} {plural(f.unit)}</h3>'
        f"{feature_chart(f, (first, last))}</div>"
        for f in st.features
    ]
    features = "".join(charts) or '<p class="muted">No metered usage.</p>'
    invoices = []
    for inv in st.invoices:
        due = due_date(inv, c)
        meta = " · ".join(
            x for x in (
                human_span(inv.period_start, inv.period_end),
                f"issued {human_date(inv.issued_at)}" if inv.issued_at else "",
                f"due {human_date(due)}" if due else "",
            ) if x
        )  # fmt: skip
        invoices.append(
            f'<section class="invoice"><h2>Invoice {e(inv.number or "")}</h2>'
            f'<p class="muted">{e(meta)}</p>{invoice_table(inv)}</section>'
        )
    terms = catalog.payment_terms if catalog else None
    seller = seller_html(catalog.seller if catalog else None)
    body = f"""<div class="head">
  <div><h1>Statement · {e(human_month(st.month))}</h1>
    <div class="muted">{e(human_span(first, last))}</div></div>
  <dl class="meta"><dt>Invoices</dt><dd>{len(st.invoices)}</dd>
    <dt>Total</dt><dd id="statement-total">{e(money(st.total, st.currency))}</dd></dl>
</div>
<div class="parties">
  <div class="seller"><div class="label">From</div>{seller or "—"}</div>
  <div style="text-align:right"><div class="label">For</div>{"<br>".join(bill_to)}</div>
</div>
<h2>Usage by feature</h2>
{features}
{"".join(invoices)}
{f'<div class="terms">{e(terms)}</div>' if terms else ""}
"""
    return page(f"Statement {visible(c.name)} {st.month}", body, STATEMENT_CSS)


def human_month(month: str) -> str:
    return f"{date.fromisoformat(month + '-01'):%B %Y}"
