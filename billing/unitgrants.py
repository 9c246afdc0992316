"""Prepaid units of one feature (unit grants): granted, listed, and taken by invoices.

A unit grant is a row of ``credit_grants`` with ``feature_key`` set and ``amount``
counting whole units of that feature (audited like currency grants: who, when, why).
An invoice's ``usage`` line of the feature may take units from the customer's unit
grants of that feature, in :meth:`billing.credits.Grant.order` (priority, then expiry,
then age), at most the line's *billable* quantity (after the rate card's included
allowance: included units cost nothing, so no grant is spent on them). It takes the
*fewest* units that bring the line's exact price to the lowest it can reach with the
units at hand, and none when that does not lower the rounded amount: a grant never
raises a bill (volume tiers make fewer units dearer across a tier bound) and never
spends units that lower nothing (under a minimum, above a maximum). The usage line keeps
the metered quantity and its price, so it still adds up to its events (``billing
invoice explain``); right after it a ``credit`` line shows the units taken
(``quantity``) and, as ``amount``, the line priced at ``metered - taken`` minus the line
priced at ``metered``: both amounts are rounded by the same pricing, so the difference
is exact and never positive, and the line's net is never below zero. The credit line's
detail names each grant and the units it gave; :mod:`billing.ledger` stores them in
``credit_consumptions`` (units, for a unit grant) in the invoice's transaction, and
Stripe gets the line as a negative item like the currency credit line. Late usage lines
take no units; they price their period with the units taken (``billing.build._regrant``).
docs/billing.md, "Unit grants on invoices", has the rule with examples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import duckdb

from billing.build import UsageCard
from billing.credits import CreditError, Grant, grant_customer, store_grant
from billing.model import Invoice, InvoiceLine
from billing.pricing import fewest_units_for_lowest_price
from meterline.catalog import Catalog


def grant_units(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    customer_key: str,
    feature_key: str,
    units: int,
    *,
    granted_by: str,
    reason: str,
    priority: int = 10,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> Grant:
    now = now or datetime.now(UTC)
    customer = grant_customer(catalog, customer_key)
    if feature_key not in {f.key for f in catalog.features}:
        known = ", ".join(sorted(f.key for f in catalog.features)) or "none"
        raise CreditError(f"unknown feature {feature_key!r} (features: {known})")
    if units <= 0:
        raise CreditError(f"a grant must be positive, got {units} units")
    return store_grant(
        con, customer, feature_key, Decimal(units), feature_key,
        priority=priority, expires_at=expires_at, now=now, granted_by=granted_by, reason=reason,
    )  # fmt: skip


def list_unit_grants(con: duckdb.DuckDBPyConnection, customer: str | None = None) -> list[Grant]:
    """Unit grants; ``Grant.currency`` holds the feature key, amounts count units."""
    consumed: dict[str, Decimal] = {}
    for grant_id, total in con.execute(
        "SELECT grant_id, SUM(amount) FROM credit_consumptions GROUP BY grant_id"
    ).fetchall():
        # credit_consumptions keeps 12 decimals (it holds money too): units are whole
        consumed[grant_id] = Decimal(int(total))
    where, params = ("AND customer_key = ?", [customer]) if customer else ("", [])
    out = []
    for r in con.execute(
        "SELECT grant_id, customer_key, feature_key, amount, priority, expires_at, granted_at, "
        f"granted_by, reason FROM credit_grants WHERE feature_key IS NOT NULL {where} "
        "ORDER BY seq",
        params,
    ).fetchall():
        amount = Decimal(int(r[3]))
        left = max(Decimal(0), amount - consumed.get(r[0], Decimal(0)))
        out.append(
            Grant(
                r[0],
                r[1],
                r[2],
                amount,
                int(r[4]),
                r[5].replace(tzinfo=UTC) if r[5] else None,
                r[6].replace(tzinfo=UTC),
                r[7],
                r[8],
                left,
            )  # fmt: skip
        )
    return out


def _take(grants: list[Grant], wanted: int, period_start: datetime) -> list[dict[str, Any]]:
    taken: list[dict[str, Any]] = []
    for g in grants:
        if wanted <= 0:
            break
        if not g.covers_period_from(period_start):
            continue
        n = min(int(g.remaining), wanted)
        g.remaining -= n
        wanted -= n
        taken.append({"grant_id": g.grant_id, "amount": str(n)})
    return taken


def _unit_credit(
    line: InvoiceLine, currency: str, grants: list[Grant], period_start: datetime
) -> InvoiceLine | None:
    pricing = line.detail.get("pricing") or {}
    billable = int(Decimal(pricing.get("billable_quantity", "0")))
    available = sum(int(g.remaining) for g in grants if g.covers_period_from(period_start))
    most = min(billable, available)
    if most <= 0:
        return None
    uc = UsageCard.from_snapshot(line.plan_key, line.detail)
    share = uc.proration if uc.proration is not None else Fraction(1)
    found = fewest_units_for_lowest_price(uc.card, int(line.quantity), most, currency, share)
    if found is None:
        return None
    units, reduced = found
    if reduced.amount >= line.amount:  # lower only below the minor unit: nothing to credit
        return None
    taken = _take(grants, units, period_start)
    return InvoiceLine(
        kind="credit",
        rate_card_key=line.rate_card_key,
        feature_key=line.feature_key,
        plan_key=line.plan_key,
        description=f"Granted units applied: {units} {line.feature_key}",
        usage_start=line.usage_start,
        usage_end=line.usage_end,
        quantity=Decimal(units),
        unit_price=None,
        amount=reduced.amount - line.amount,
        detail={
            "grants": taken,
            "unit_grant": True,
            "metered_quantity": str(line.quantity),
            "billed_quantity": str(line.quantity - units),
            "pricing": reduced.to_detail(),
            # the price its pricing used, for the tier rows of documents (per, bounds)
            "rate_card": line.detail.get("rate_card"),
            "meter": line.detail.get("meter"),
        },
    )


def apply_unit_grants(con: duckdb.DuckDBPyConnection, invoices: Sequence[Invoice]) -> None:
    """After each usage line the customer's unit grants cover, add its credit line.

    A grant covers the invoice of a period that began before it expired, as currency
    grants do (:meth:`billing.credits.Grant.covers_period_from`)."""
    if not invoices:
        return
    # One read of every unit grant (not two queries per customer: on a lake each costs ms).
    by_customer: dict[str, list[Grant]] = defaultdict(list)
    for g in list_unit_grants(con):
        by_customer[g.customer_key].append(g)
    for grants in by_customer.values():
        grants.sort(key=Grant.order)
    for inv in invoices:
        mine = by_customer.get(inv.customer_key)
        if not mine:
            continue
        lines: list[InvoiceLine] = []
        for line in inv.lines:
            lines.append(line)
            if line.kind != "usage" or not line.feature_key or line.quantity <= 0:
                continue
            grants = [g for g in mine if g.currency == line.feature_key]
            credit = _unit_credit(line, inv.currency, grants, inv.period_start) if grants else None
            if credit is not None:
                lines.append(credit)
        for n, line in enumerate(lines, start=1):
            line.line_no = n
        inv.lines = lines
