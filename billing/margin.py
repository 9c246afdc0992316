"""Revenue vs list-price cost per customer and model, for one month's stored invoices.

Revenue: the amounts of the invoices whose period ends in the month (the ones
``billing invoice generate --period`` finalizes). A usage line's amount is split over the
(provider, model) rows of its stored breakdown in proportion to tokens, in whole minor
units by largest remainder, so the split adds up to the line exactly. Flat fees are
shown as model ``(fees)``; a minimum charged on zero usage as ``(minimums)``. A unit-grant
credit is split like the usage line it lowers; prepaid credit is a payment, not revenue.

Cost: every event those invoices billed (their windows, including late usage), priced
at the provider's list price on the event's day (``billing.listprice``, USD). Models whose
list price depends on the request (context-size tiers, per-request fees) are priced event
by event; others in one call per day. Unknown models have no cost (``null``). Costs and
margins are summed exactly and shown rounded once (half-up) to the currency's minor unit,
like every amount of money; the margin % comes from the exact figures. Margin is only
computed for invoices in USD (the list prices' currency).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

import duckdb

from billing.errors import BillingError, NotGenerated, UnknownCustomer
from billing.invoices import parse_month
from billing.ledger import load_invoices
from billing.listprice import LIST_PRICE_CURRENCY, find_model, has_context_tiers, list_cost
from billing.model import Invoice, InvoiceLine
from billing.money import minor_unit, money_context, round_money
from billing.usage import invoiced_events, invoiced_usage
from meterline.catalog import CALL_TYPES, TOKEN_TYPES, Catalog

FEES = "(fees)"
MINIMUMS = "(minimums)"
MARGIN_COLUMNS = (
    "customer",
    "provider",
    "model",
    "currency",
    "tokens",
    "revenue",
    "cost",
    "margin",
    "margin_pct",
)

Key = tuple[str, str, str]


def split_amount(amount: Decimal, weights: list[int], currency: str) -> list[Decimal]:
    """``amount`` split in proportion to ``weights`` in whole minor units (largest
    remainder); the parts add up to ``amount`` exactly. A negative amount (a credit) is
    split as its magnitude, then negated: rounding toward zero made the remainder
    negative, and -1.00 over three equal weights came to -0.97."""
    if amount < 0:
        return [-part for part in split_amount(-amount, weights, currency)]
    unit = minor_unit(currency)
    total = sum(weights)
    if total == 0:
        return [Decimal(0)] * len(weights)
    with money_context():
        units = int(amount / unit)
        exact = [Decimal(units) * w / total for w in weights]
        floors = [int(x.to_integral_value(rounding=ROUND_DOWN)) for x in exact]
    left = units - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return [unit * f for f in floors]


def month_invoices(
    con: duckdb.DuckDBPyConnection,
    month: str,
    customer: str | None = None,
    catalog: Catalog | None = None,
) -> list[Invoice]:
    """The invoices of periods ending in ``month``. With ``catalog``, a customer with none
    that the catalog does not know is a typo: said as every command says it."""
    period = parse_month(month)
    numbers = [
        i.number
        for i in load_invoices(con, customer=customer, with_lines=False)
        if period.start < i.period_end <= period.end and i.number
    ]
    if not numbers:
        if customer:
            if catalog is not None and all(c.key != customer for c in catalog.customers):
                raise UnknownCustomer(catalog, customer)
            raise BillingError(f"no invoices of {customer!r} for {month}")
        raise NotGenerated(month)
    return load_invoices(con, numbers=numbers)


def _granted_usage(inv: Invoice, credit: InvoiceLine) -> InvoiceLine | None:
    """The usage line a unit-grant credit line reduces: the one of its rate card and
    window on the same invoice (late usage takes no units)."""
    for line in inv.lines:
        if (
            line.kind == "usage"
            and line.rate_card_key == credit.rate_card_key
            and line.usage_start == credit.usage_start
        ):
            return line
    return None


def _breakdown(line: InvoiceLine) -> dict[tuple[str, str], int]:
    parts: dict[tuple[str, str], int] = defaultdict(int)
    for b in line.detail.get("breakdown", []):
        parts[(b["provider"], b["model"])] += int(b["tokens"])
    return parts


def revenue_by_model(invoices: list[Invoice]) -> dict[Key, Decimal]:
    """Each line's amount per (customer, provider, model).

    A unit-grant credit lowers the price of one feature's usage, so it is split over the
    models of the usage line it reduces, like that line. Prepaid credit (money the customer
    paid for in advance) pays the invoice: it is a means of payment, not a lower price of
    any model, so it is not revenue here (docs/billing.md, ``billing margin``).
    """
    out: dict[Key, Decimal] = defaultdict(Decimal)
    for inv in invoices:
        for line in inv.lines:
            if line.kind == "flat":
                out[(inv.customer_key, "", FEES)] += line.amount
                continue
            source: InvoiceLine | None = line
            if line.kind == "credit":
                if not line.detail.get("unit_grant"):
                    continue  # prepaid credit: a payment
                source = _granted_usage(inv, line)
            parts = _breakdown(source) if source is not None else {}
            if not parts:
                if line.amount:
                    out[(inv.customer_key, "", MINIMUMS)] += line.amount
                continue
            keys = sorted(parts)
            shares = split_amount(line.amount, [parts[k] for k in keys], inv.currency)
            for (provider, model), share in zip(keys, shares, strict=True):
                out[(inv.customer_key, provider, model)] += share
    return out


def _priced_per_request(provider: str, model: str, at: datetime) -> bool:
    found = find_model(provider, model)
    if found is None:
        return False
    prices = found[1].get_prices(at)
    return has_context_tiers(provider, model, at=at) or bool(
        getattr(prices, "requests_kcount", None)
    )


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def cost_by_model(
    con: duckdb.DuckDBPyConnection, numbers: list[str]
) -> tuple[dict[Key, Decimal | None], dict[Key, int]]:
    """List-price cost (None if unknown) and tokens per (customer, provider, model)."""
    cost: dict[Key, Decimal | None] = {}
    tokens: dict[Key, int] = defaultdict(int)
    per_event: set[Key] = set()
    for r in invoiced_usage(con, numbers):
        key: Key = (str(r["customer_key"]), str(r["provider"]), str(r["model"]))
        counts: dict[str, int] = {t: int(r[t] or 0) for t in TOKEN_TYPES}  # type: ignore[call-overload]
        tokens[key] += sum(n for t, n in counts.items() if t not in CALL_TYPES)
        at = _day_start(r["day"])  # type: ignore[arg-type]
        if key in per_event or _priced_per_request(key[1], key[2], at):
            per_event.add(key)
            continue
        tier, speed = _served(r)
        price = list_cost(key[1], key[2], at=at, service_tier=tier, speed=speed, **counts)
        _add(cost, key, price)
    for key in per_event:
        for e in invoiced_events(con, numbers, *key):
            ts = e.pop("ts").replace(tzinfo=UTC)  # type: ignore[attr-defined]
            tier, speed = _served(e)
            e.pop("service_tier"), e.pop("speed")
            counts = {str(k): int(v or 0) for k, v in e.items()}  # type: ignore[call-overload]
            price = list_cost(key[1], key[2], at=ts, service_tier=tier, speed=speed, **counts)
            _add(cost, key, price)
    return cost, tokens


def _served(row: dict[str, object]) -> tuple[str | None, str | None]:
    """A row's service tier and speed (how its calls were served: list prices differ)."""
    tier, speed = row.get("service_tier"), row.get("speed")
    return (tier if isinstance(tier, str) else None, speed if isinstance(speed, str) else None)


def _add(cost: dict[Key, Decimal | None], key: Key, value: Decimal | None) -> None:
    """Accumulate; one unknown price makes the whole key unknown (None)."""
    if value is None:
        cost[key] = None
    elif key not in cost:
        cost[key] = value
    elif (so_far := cost[key]) is not None:
        cost[key] = so_far + value


def margin_report(
    con: duckdb.DuckDBPyConnection,
    month: str,
    customer: str | None = None,
    catalog: Catalog | None = None,
) -> list[dict[str, Any]]:
    """The month's rows, or one customer's (only that customer's events are priced)."""
    invoices = month_invoices(con, month, customer, catalog)
    currency = {i.customer_key: i.currency for i in invoices}
    revenue = revenue_by_model(invoices)
    cost, tokens = cost_by_model(con, [i.number for i in invoices if i.number])
    rows = []
    for key in sorted(set(revenue) | set(cost)):
        customer, provider, model = key
        # in the currency's minor units: a model priced by no rate card has no revenue at
        # all, shown "0.00" like every amount (a bare Decimal(0) printed "0")
        rev = round_money(revenue.get(key, Decimal(0)), currency[customer])
        raw = Decimal(0) if model in (FEES, MINIMUMS) else cost.get(key)
        c = None if raw is None else round_money(raw, LIST_PRICE_CURRENCY)
        exact = None
        if raw is not None and currency[customer] == LIST_PRICE_CURRENCY:
            with money_context():
                exact = rev - raw
        margin = None if exact is None else round_money(exact, LIST_PRICE_CURRENCY)
        pct = None
        if exact is not None and rev > 0:  # of a credit (revenue <= 0) it means nothing
            with money_context():
                pct = (exact * 100 / rev).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        rows.append(
            {
                "customer": customer,
                "provider": provider or None,
                "model": model,
                "currency": currency[customer],
                "tokens": tokens.get(key, 0),
                "revenue": rev,
                "cost": c,
                "margin": margin,
                "margin_pct": pct,
            }
        )
    return rows
