"""Prepaid credits: grants (audited), balances, and the credit line invoices carry.

A grant is an amount in the customer's currency, stored in ``credit_grants`` with who
granted it, when and why; it is never edited. Invoices consume grants in order of
``priority`` (lower first), then expiry (soonest first, never-expiring last), then age:
:func:`apply_credits` adds one ``credit`` line per invoice whose amount is minus what was
taken (at most the invoice's total: a total never goes below zero), and the line's
detail names each grant and amount; :mod:`billing.ledger` stores the consumptions in
the invoice's own transaction. An invoice whose lines add up to less than zero (a late
usage credit) carries that amount to the customer's credit balance, which later invoices
take from (:func:`apply_credit_balance`). Stripe gets the credit lines as items, like
any other line. The balance the proxy enforces for ``prepaid`` plans is read by
``meterline.entitlements.credit_balances`` from the same tables.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb

from billing.errors import UnknownCustomer, UserError
from billing.model import Invoice, InvoiceLine
from billing.money import minor_unit_exponent, round_money
from billing.storevalues import STORABLE, db_decimal, to_db
from meterline.catalog import Catalog, Customer


class CreditError(UserError, ValueError):
    """A grant that cannot be made (unknown customer, bad amount); shown as ``Error: ...``."""


@dataclass
class Grant:
    grant_id: str
    customer_key: str
    currency: str
    amount: Decimal
    priority: int
    expires_at: datetime | None
    granted_at: datetime
    granted_by: str
    reason: str
    remaining: Decimal

    def usable_at(self, at: datetime) -> bool:
        return self.remaining > 0 and (self.expires_at is None or at < self.expires_at)

    def covers_period_from(self, start: datetime) -> bool:
        """Whether an invoice for a period starting at ``start`` may take from it: the
        period began before the grant expired (the proxy admitted that usage against it;
        the invoice comes only after the period ends, often after the expiry)."""
        return self.remaining > 0 and (self.expires_at is None or start < self.expires_at)

    def order(self) -> tuple[int, int, datetime, str]:
        expires = self.expires_at or datetime.max.replace(tzinfo=UTC)
        return (self.priority, self.expires_at is None, expires, self.grant_id)


def grant_credits(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    customer_key: str,
    amount: Decimal,
    *,
    granted_by: str,
    reason: str,
    priority: int = 10,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> Grant:
    now = now or datetime.now(UTC)
    customer = grant_customer(catalog, customer_key)
    if not amount.is_finite():
        raise CreditError(f"a grant must be a finite amount, got {amount}")
    if amount <= 0:
        raise CreditError(f"a grant must be positive, got {amount}")
    if amount >= STORABLE:
        decimals = minor_unit_exponent(customer.currency)
        raise CreditError(
            f"{amount:.{decimals}f} {customer.currency} is too large for a grant "
            "(at most 26 digits before the point)"
        )
    money = round_money(amount, customer.currency)  # 1E+3 -> 1000.00: the currency's form
    if money != amount:
        raise CreditError(f"{amount} {customer.currency} has more decimals than the currency")
    return store_grant(
        con, customer, customer.currency, money, None,
        priority=priority, expires_at=expires_at, now=now, granted_by=granted_by, reason=reason,
    )  # fmt: skip


def grant_customer(catalog: Catalog, customer_key: str) -> Customer:
    """The customer a grant is for (a one-line error for an unknown one)."""
    try:
        return catalog.customer(customer_key)
    except KeyError:
        raise UnknownCustomer(catalog, customer_key) from None


def store_grant(
    con: duckdb.DuckDBPyConnection,
    customer: Customer,
    unit: str,
    amount: Decimal,
    feature_key: str | None,
    *,
    priority: int,
    expires_at: datetime | None,
    now: datetime,
    granted_by: str,
    reason: str,
) -> Grant:
    """Store a checked grant of ``amount`` ``unit`` (the currency, or a feature's units)."""
    if expires_at is not None and expires_at <= now:
        raise CreditError("the grant would already be expired")
    grant_id = insert_grant(
        con, customer.key, customer.currency, amount, feature_key,
        priority=priority, expires_at=expires_at, now=now, granted_by=granted_by, reason=reason,
    )  # fmt: skip
    return Grant(
        grant_id, customer.key, unit, amount, priority, expires_at, now, granted_by, reason, amount
    )


def insert_grant(
    con: duckdb.DuckDBPyConnection,
    customer_key: str,
    currency: str,
    amount: Decimal,
    feature_key: str | None,
    *,
    priority: int,
    expires_at: datetime | None,
    now: datetime,
    granted_by: str,
    reason: str,
) -> str:
    """Store one grant (currency, or units of ``feature_key``); returns its id."""
    con.execute("BEGIN TRANSACTION")
    try:
        row = con.execute("SELECT coalesce(max(seq), 0) FROM credit_grants").fetchone()
        seq = int(row[0] if row else 0) + 1
        grant_id = f"grant-{seq:06d}"
        con.execute(
            "INSERT INTO credit_grants (grant_id, seq, customer_key, currency, amount, priority, "
            "expires_at, granted_at, granted_by, reason, feature_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                grant_id,
                seq,
                customer_key,
                currency,
                db_decimal(amount),  # fixed point: DuckDB misreads 1E+3 as 1
                priority,
                to_db(expires_at) if expires_at else None,
                to_db(now),
                granted_by,
                reason,
                feature_key,
            ],  # fmt: skip
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return grant_id


def list_grants(con: duckdb.DuckDBPyConnection, customer: str | None = None) -> list[Grant]:
    """Currency grants (unit grants: :mod:`billing.unitgrants`)."""
    consumed: dict[str, Decimal] = defaultdict(Decimal)
    for grant_id, total in con.execute(
        "SELECT grant_id, SUM(amount) FROM credit_consumptions GROUP BY grant_id"
    ).fetchall():
        consumed[grant_id] = Decimal(total)
    where, params = ("AND customer_key = ?", [customer]) if customer else ("", [])
    out = []
    for r in con.execute(
        "SELECT grant_id, customer_key, currency, amount, priority, expires_at, granted_at, "
        f"granted_by, reason FROM credit_grants WHERE feature_key IS NULL {where} ORDER BY seq",
        params,
    ).fetchall():
        amount = round_money(Decimal(r[3]), r[2])
        left = max(Decimal(0), amount - consumed[r[0]])
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
                in_currency(left, r[2]),
            )  # fmt: skip
        )
    return out


def in_currency(value: Decimal, currency: str) -> Decimal:
    """``value`` with the currency's decimals (``10.000000000000`` -> ``10.00``; JPY ``12``).

    Amounts read from the store carry its 12 decimals; what a grant has left, and so what
    an invoice takes from it, is money and must read as such. Every stored amount of a
    currency grant has the currency's decimals, so this is exact; a value that is not (a
    store edited by hand) is returned unchanged rather than rounded.
    """
    money = round_money(value, currency)
    return money if money == value else value


def grants_by_customer(grants: Sequence[Grant], at: datetime) -> dict[str, list[Grant]]:
    """Customer key -> the grants usable at ``at``, in the order invoices consume them."""
    return _in_order(g for g in grants if g.usable_at(at))


def _in_order(grants: Iterable[Grant]) -> dict[str, list[Grant]]:
    out: dict[str, list[Grant]] = defaultdict(list)
    for g in grants:
        out[g.customer_key].append(g)
    for mine in out.values():
        mine.sort(key=Grant.order)
    return out


def balance(grants: Sequence[Grant], at: datetime) -> Decimal:
    return sum((g.remaining for g in grants if g.usable_at(at)), Decimal(0))


def apply_credits(
    con: duckdb.DuckDBPyConnection, invoices: Sequence[Invoice], *, rebuilding: str | None = None
) -> None:
    """Apply the customer's prepaid grants, then its credit balance, to each invoice.

    Grants first, as Stripe applies credit grants before the customer's balance: a grant
    may expire, the balance (money owed back to the customer) never does. ``rebuilding``:
    the stored invoice these are built again for (a preview), whose balance is what the
    invoices before it carried.
    """
    apply_grants(con, invoices)
    apply_credit_balance(con, invoices, rebuilding=rebuilding)


def apply_grants(con: duckdb.DuckDBPyConnection, invoices: Sequence[Invoice]) -> None:
    """Add a credit line to each invoice with a positive total the customer's grants cover.

    A grant covers an invoice whose period began before the grant expired, whenever the
    invoice is made: a grant that expires at the end of December covers December's
    invoice, made in January (before, it was judged at generation time and never did).
    """
    if not any(inv.total > 0 for inv in invoices):
        return
    # One read of every grant (not two queries per customer: on a lake each costs ms).
    # Expiry is judged per invoice, against its period (Grant.covers_period_from).
    by_customer = _in_order(g for g in list_grants(con) if g.remaining > 0)
    for inv in invoices:
        if inv.total <= 0:
            continue
        left = inv.total
        taken: list[dict[str, Any]] = []
        for g in by_customer.get(inv.customer_key, []):
            if left <= 0:
                break
            if g.currency != inv.currency or not g.covers_period_from(inv.period_start):
                continue
            take = min(g.remaining, left)
            g.remaining -= take
            left -= take
            taken.append({"grant_id": g.grant_id, "amount": str(take)})
        if not taken:
            continue
        credited = inv.total - left
        inv.lines.append(
            _credit_line(
                inv, "prepaid-credit", "Prepaid credit applied", -credited, {"grants": taken}
            )
        )


#: The ``rate_card_key`` of the credit lines that move money through a customer's credit
#: balance: positive on an invoice whose total was negative (carried out, the total is then
#: zero), negative on a later invoice that takes it. The balance is the sum of them all.
CREDIT_BALANCE = "credit-balance"


def carried_balances(
    con: duckdb.DuckDBPyConnection, *, before: str | None = None
) -> dict[tuple[str, str], Decimal]:
    """(customer, currency) -> the credit balance its stored invoices carried forward
    (only those numbered before the invoice ``before``, when given: the balance that
    invoice was built with, not one it made or later invoices took from)."""
    rows = con.execute(
        "SELECT i.customer_key, i.currency, SUM(l.amount) "
        "FROM invoice_lines AS l JOIN invoices AS i ON i.number = l.invoice_number "
        "WHERE l.kind = 'credit' AND l.rate_card_key = ? AND (?::VARCHAR IS NULL OR "
        "i.seq < (SELECT seq FROM invoices WHERE number = ?)) GROUP BY ALL",
        [CREDIT_BALANCE, before, before],
    ).fetchall()
    return {(ck, cur): in_currency(Decimal(total), cur) for ck, cur, total in rows}


def apply_credit_balance(
    con: duckdb.DuckDBPyConnection, invoices: Sequence[Invoice], *, rebuilding: str | None = None
) -> None:
    """Carry a negative invoice total to the customer's credit balance; pay later totals
    from it.

    An invoice whose lines add up to less than zero (a late usage credit larger than what
    the invoice charges) gets a line of minus its total, so it is zero, and the amount
    goes to the customer's balance in its currency, as Stripe does with a negative
    invoice. Each later invoice with a positive total (after prepaid grants) takes
    ``min(balance, total)`` from it. Exact money, never rounded: the totals of all the
    invoices add up to their charges less their credits, whatever the order. ``invoices``
    are taken in order (the order they are numbered in), so one run carries a negative
    total to the next invoice of the same run.
    """
    if not invoices:
        return
    balances = carried_balances(con, before=rebuilding)
    for inv in invoices:
        key = (inv.customer_key, inv.currency)
        before = balances.get(key, Decimal(0))
        total = inv.total
        if total < 0:
            moved = -total
            description = "Negative total carried to the credit balance"
        elif total > 0 and before > 0:
            moved = -min(before, total)
            description = "Credit balance applied"
        else:
            continue
        after = balances[key] = before + moved
        shown = {
            "before": round_money(before, inv.currency),
            "after": round_money(after, inv.currency),
        }
        detail = {"credit_balance": {k: str(v) for k, v in shown.items()}}
        inv.lines.append(_credit_line(inv, CREDIT_BALANCE, description, moved, detail))


def _credit_line(
    inv: Invoice, key: str, description: str, amount: Decimal, detail: dict[str, Any]
) -> InvoiceLine:
    return InvoiceLine(
        kind="credit",
        rate_card_key=key,
        feature_key=None,
        plan_key=inv.lines[0].plan_key if inv.lines else "",
        description=description,
        usage_start=inv.period_start,
        usage_end=inv.period_end,
        quantity=Decimal(1),
        unit_price=None,
        amount=amount,
        detail=detail,
        line_no=len(inv.lines) + 1,
    )


def consumption_rows(inv: Invoice) -> list[tuple[str, str, str, Decimal]]:
    """(invoice number, grant id, customer, amount) for each grant a credit line took from."""
    return [
        (inv.number or "", t["grant_id"], inv.customer_key, Decimal(t["amount"]))
        for line in inv.lines
        if line.kind == "credit"
        for t in line.detail.get("grants", [])
    ]
