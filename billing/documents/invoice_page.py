"""The printable invoice: one self-contained HTML page (inline CSS, no script, no asset).

Written for the person paying it: unit prices as the rate card states them (``3.00 USD /
1M tokens``, not ``0.000003``), the tiers a tiered line went through, a minimum-spend
top-up as its own labelled row, dates as words (``1 March 2026``; the ISO stamps stay in
the JSON), the seller and the due date from the catalog. The same HTML is what
``billing invoice show N --format pdf`` prints to PDF (:mod:`billing.documents.pdf`).
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing.documents.words import (
    human_date,
    human_span,
    money,
    per_label,
    plural,
    tokens_text,
    unit_price_text,
)
from billing.model import Invoice, InvoiceLine
from billing.money import exact_to_decimal
from billing.shown import name, visible
from meterline.catalog import CALL_TYPES, Catalog, Customer, Seller

e = html.escape

CSS = """
@page { size: A4; margin: 16mm 14mm; }
body { font: 13px/1.45 'DejaVu Sans', Helvetica, Arial, sans-serif; color: #1d2430;
       max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
td, .parties, h3 { overflow-wrap: anywhere; }  /* a long unbroken name wraps: amounts stay */
h1 { font-size: 1.7rem; margin: 0 0 .35rem; letter-spacing: -.01em; }
h2 { font-size: 1.05rem; margin: 1.6rem 0 .5rem; }
.muted { color: #5f6b7a; } .small { font-size: .8rem; }
.head { display: flex; justify-content: space-between; gap: 2rem;
        border-bottom: 3px solid #1d2430; padding-bottom: 1rem; margin-bottom: 1.2rem; }
.parties { display: flex; justify-content: space-between; gap: 2rem; margin-bottom: 1.4rem; }
.parties > * { flex: 1 1 0; min-width: 0; }  /* a long name does not squeeze the other */
.parties .label, dl.meta dt { font-size: .7rem; text-transform: uppercase;
  letter-spacing: .06em; color: #5f6b7a; }
dl.meta { display: grid; grid-template-columns: auto auto; gap: .15rem 1rem; margin: 0;
          text-align: right; }
dl.meta dd { margin: 0; font-weight: 600; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: .45rem .5rem; border-bottom: 1px solid #dde2e8;
         vertical-align: top; }
th { font-size: .72rem; text-transform: uppercase; letter-spacing: .05em; color: #5f6b7a; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.sub td { border-bottom: none; color: #5f6b7a; font-size: .82rem; padding-top: 0; }
tr.sub td.desc { padding-left: 1.4rem; }
tr.topup td { color: #8a4b00; }
tr.total td { border-top: 2px solid #1d2430; border-bottom: none; font-weight: 700;
              font-size: 1.15rem; }
.kind { font-size: .75rem; color: #5f6b7a; }
.terms { margin-top: 1.2rem; padding: .7rem .9rem; background: #f4f6f8; border-radius: 4px; }
.badge { display: inline-block; padding: .05rem .45rem; border-radius: 3px; font-size: .75rem;
         background: #e8f0fe; color: #1a4fa0; text-transform: uppercase; letter-spacing: .04em; }
footer { margin-top: 2rem; }
@media print { body { margin: 0; max-width: none; padding: 0; } }
"""

KIND_LABELS = {"flat": "fee", "usage": "usage", "late_usage": "late usage"}


def due_date(inv: Invoice, customer: Customer | None) -> datetime | None:
    if inv.issued_at is None or customer is None:
        return None
    return inv.issued_at + timedelta(days=customer.invoicing.days_until_due)


def seller_html(seller: Seller | None) -> str:
    if seller is None:
        return ""
    lines = [f"<strong>{name(seller.name)}</strong>", *(e(a) for a in seller.address)]
    lines += [e(v) for v in (seller.email, seller.website) if v]
    if seller.tax_id:
        lines.append(f"Tax ID {e(seller.tax_id)}")
    return "<br>".join(lines)


def _price(line: InvoiceLine) -> dict[str, Any]:
    return dict((line.detail.get("rate_card") or {}).get("price") or {})


def _pricing(line: InvoiceLine) -> dict[str, Any]:
    return dict(line.detail.get("pricing") or {})


def _tier_rows(line: InvoiceLine, currency: str) -> list[str]:
    """The tiers the line's pricing used (a unit-grant credit's: those of the units still
    billed); none without the rate card they were priced with (a credit line stored before
    it kept one), whose bounds and ``per`` they would misstate."""
    price = _price(line)
    if not price:
        return []
    tiers = price.get("tiers") or []
    per = int(price.get("per", 1))
    out = []
    lower = 0
    bounds = []
    for t in tiers:
        up = t.get("up_to")
        bounds.append((lower, up))
        lower = up or lower
    for used in _pricing(line).get("tiers") or []:
        i = int(used["tier"])
        lo, up = bounds[i] if i < len(bounds) else (0, None)
        units = plural(line_unit(line))
        span = f"{lo:,} – {up:,} {units}" if up is not None else f"above {lo:,} {units}"
        if price.get("mode") == "volume":
            span += " (volume: all units at this tier's price)"
        flat = Decimal(used["flat_amount"])
        per_unit = per_label(per, line_unit(line))
        unit = f"{money(Decimal(used['unit_amount']), currency)} / {per_unit}"
        if flat:
            unit += f" + {money(flat, currency)} flat"
        out.append(
            f'<tr class="sub tier"><td></td><td class="desc">Tier {i + 1}: {e(span)}</td>'
            f'<td class="num">{e(tokens_text(Decimal(used["quantity"])))}</td>'
            f'<td class="num">{e(unit)}</td>'
            f'<td class="num">{e(money(Decimal(used["amount"]), currency, exact=True))}</td></tr>'
        )
    return out


def line_unit(line: InvoiceLine) -> str:
    """What a usage line counts: ``web search`` when its meter counts searches."""
    types = (line.detail.get("meter") or {}).get("token_types") or []
    return "web search" if types and set(types) <= CALL_TYPES else "token"


def _late_rows(line: InvoiceLine, currency: str) -> list[str]:
    """What a late line bills: the period's total with the late usage less what its
    invoices billed before (``detail.late``); the period's pricing notes (a minimum or
    maximum spend) belong to the total."""
    late = line.detail.get("late") or {}
    if not late:
        return []
    why = [n for n in _pricing(line).get("notes") or [] if n.endswith("spend applied")]
    total_label = "Period total with the late usage" + (f" ({', '.join(why)})" if why else "")
    rows = [
        (total_label, late["total_quantity"], Decimal(late["total_amount"])),
        (
            "Billed before for the period",
            late["billed_quantity"],
            0 - Decimal(late["billed_amount"]),
        ),
    ]
    return [
        f'<tr class="sub late"><td></td><td class="desc">{e(label)}</td>'
        f'<td class="num">{e(tokens_text(Decimal(quantity)))}</td><td></td>'
        f'<td class="num">{e(money(amount, currency))}</td></tr>'
        for label, quantity, amount in rows
    ]


def minimum_topup(line: InvoiceLine) -> tuple[Decimal, Decimal, Decimal] | None:
    """(minimum, usage charge, top-up) when the line's minimum spend raised it; else None."""
    pricing = _pricing(line)
    if "minimum spend applied" not in (pricing.get("notes") or []):
        return None
    card = line.detail.get("rate_card") or {}
    # the exact share (proration_ratio, "1/3"): a 50-digit "0.333..." would show 9.999...
    share = Fraction(pricing.get("proration_ratio") or Decimal(pricing.get("proration", "1")))
    minimum = exact_to_decimal(Fraction(Decimal(card["min_amount"])) * share)
    usage = Decimal(pricing["subtotal"]) - Decimal(pricing["discount"])
    return minimum, usage, minimum - usage


def _notes(line: InvoiceLine, currency: str) -> list[str]:
    card = line.detail.get("rate_card") or {}
    notes = []
    if line.kind != "flat" and card.get("included"):
        notes.append(f"first {int(card['included']):,} {plural(line_unit(line))} included")
    if Decimal(card.get("discount_percent") or 0):
        notes.append(f"{Decimal(card['discount_percent']).normalize():f}% discount")
    if line.kind == "flat":
        term = _pricing(line).get("payment_term") or line.detail.get("payment_term")
        if term:
            notes.append("billed in advance" if term == "in_advance" else "billed in arrears")
        if Decimal(_pricing(line).get("proration", "1")) != 1:
            # the pricing's own note names the share ("prorated 14/31 days")
            worded = [n for n in _pricing(line).get("notes") or [] if n.startswith("prorated")]
            notes.append(worded[0] if worded else "prorated")
    if line.detail.get("unit_grant"):
        unit = plural(line_unit(line))
        billed = tokens_text(Decimal(line.detail["billed_quantity"]))
        metered = tokens_text(Decimal(line.detail["metered_quantity"]))
        notes.append(f"{billed} of {metered} {unit} billed")
    # a late line's pricing is the period's: its late rows say the cap (see _late_rows)
    if line.kind != "late_usage" and "maximum spend applied" in (_pricing(line).get("notes") or []):
        notes.append(f"capped at {money(Decimal(card['max_amount']), currency)}")
    return notes


def line_rows(line: InvoiceLine, currency: str) -> list[str]:
    """The line's row, then its tier rows and its minimum-spend top-up row."""
    kind = KIND_LABELS.get(line.kind, line.kind)
    small = " · ".join(
        [kind, human_span(line.usage_start, line.usage_end), *_notes(line, currency)]
    )
    if line.kind == "flat":
        quantity = decimal_quantity(line.quantity)
        unit = "" if line.unit_price is None else money(line.unit_price, currency)
        if line.unit_price is None and _price(line).get("amount"):  # prorated: the full fee
            unit = money(Decimal(_price(line)["amount"]), currency)
    else:
        quantity = tokens_text(line.quantity)
        unit = unit_price_text(_price(line), currency, line_unit(line))
    rows = [
        f'<tr class="line" data-line="{line.line_no}"><td>{line.line_no}</td>'
        f'<td>{name(line.description)}<div class="kind">{e(small)}</div></td>'
        f'<td class="num">{e(quantity)}</td><td class="num">{e(unit)}</td>'
        f'<td class="num amount">{e(money(line.amount, currency))}</td></tr>'
    ]
    if line.kind == "late_usage":
        # its pricing prices the whole period: its tiers and top-up are not this line's
        return rows + _late_rows(line, currency)
    rows += _tier_rows(line, currency)
    # a credit's pricing is of the units still billed: its usage line shows the top-up
    topup = None if line.kind == "credit" else minimum_topup(line)
    if topup is not None:
        minimum, usage, extra = topup
        rows.append(
            '<tr class="sub topup"><td></td><td class="desc">Minimum spend top-up: usage came '
            f"to {e(money(usage, currency, exact=True))}, the minimum is "
            f'{e(money(minimum, currency))}</td><td></td><td></td><td class="num">'
            f"+{e(money(extra, currency, exact=True))}</td></tr>"
        )
    return rows


def decimal_quantity(value: Decimal) -> str:
    return f"{value.normalize():f}" if value != value.to_integral_value() else f"{int(value):,}"


def invoice_table(inv: Invoice) -> str:
    rows = [r for ln in inv.lines for r in line_rows(ln, inv.currency)]
    return f"""<table class="lines">
<thead><tr><th>#</th><th>Description</th><th class="num">Quantity</th>
<th class="num">Unit price</th><th class="num">Amount</th></tr></thead>
<tbody>
{chr(10).join(rows)}
<tr class="total"><td></td><td>Total due</td><td></td><td></td>
<td class="num" id="total">{e(money(inv.total, inv.currency))}</td></tr>
</tbody>
</table>"""


def invoice_body(inv: Invoice, catalog: Catalog | None) -> str:
    """The page's content (no ``<html>``): also embedded in statements."""
    customer = None
    if catalog is not None:
        try:
            customer = catalog.customer(inv.customer_key)
        except KeyError:
            customer = None
    title = inv.number or "Preview"
    meta = []
    if inv.issued_at:
        meta.append(("Issued", human_date(inv.issued_at)))
    due = due_date(inv, customer)
    if due:
        meta.append(("Due", human_date(due)))
    meta.append(("Period", human_span(inv.period_start, inv.period_end)))
    meta_html = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in meta)
    status = "not finalized" if inv.number is None else inv.status
    bill_to = [f"<strong>{name(inv.customer_name)}</strong>", name(inv.customer_key)]
    if customer is not None and customer.email:
        bill_to.append(e(customer.email))
    seller = seller_html(catalog.seller if catalog else None)
    terms = catalog.payment_terms if catalog else None
    terms_html = f'<div class="terms">{e(terms)}</div>' if terms and inv.number else ""
    return f"""<div class="head">
  <div><h1>Invoice {e(title)}</h1><span class="badge">{e(status)}</span></div>
  <dl class="meta">{meta_html}</dl>
</div>
<div class="parties">
  <div class="seller"><div class="label">From</div>{seller or '<span class="muted">—</span>'}</div>
  <div class="bill-to" style="text-align:right"><div class="label">Bill to</div>
    {"<br>".join(bill_to)}</div>
</div>
{invoice_table(inv)}
{terms_html}
<footer class="muted small">Usage ingested up to {e(human_date(inv.watermark, time=True))}.
Prices from catalog {e(inv.catalog_digest[:19])}….</footer>"""


def page(title: str, body: str, css: str = CSS) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(visible(title))}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""


def invoice_html(inv: Invoice, catalog: Catalog | None = None) -> str:
    return page(f"Invoice {inv.number or 'Preview'}", invoice_body(inv, catalog))
