"""Reads our finalized invoices and records, step by step, what exists in Stripe.

Each write opens the store, writes one fact and closes it (the proxy appends to the
same DuckDB file and must not wait for a whole sync). A fact is written right after
Stripe returns the id it records, so a crash loses at most the id of the one call
in flight, and that call is replayed by its idempotency key on the next run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from billing.store import billing_store
from billing.storevalues import db_decimal, to_db
from meterline.periods import calendar_month


@dataclass(frozen=True)
class Line:
    line_no: int
    description: str
    quantity: Decimal
    unit_price: Decimal | None
    amount: Decimal
    usage_start: datetime
    usage_end: datetime
    billable: Decimal | None = None
    """The units priced after the included allowance (``detail.pricing``), if known."""
    notes: tuple[str, ...] = ()
    """The pricing notes (``prorated 14/31 days``, ``minimum spend applied``, ...)."""


@dataclass(frozen=True)
class OurInvoice:
    number: str
    customer_key: str
    currency: str
    period_start: datetime
    period_end: datetime
    total: Decimal
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class SyncRow:
    invoice_number: str
    customer_key: str
    stripe_customer_id: str | None
    stripe_invoice_id: str | None
    state: str
    stripe_status: str | None
    our_total_minor: int | None
    stripe_total_minor: int | None
    flagged_reason: str | None
    last_error: str | None
    synced_at: datetime | None


_ROW_COLUMNS = (
    "invoice_number, customer_key, stripe_customer_id, stripe_invoice_id, state, stripe_status,"
    " our_total_minor, stripe_total_minor, flagged_reason, last_error, synced_at"
)
_NOW = "now()::TIMESTAMP"


def _filter_clause(
    period: str | None, customer: str | None, alias: str
) -> tuple[str, list[object]]:
    """``--period`` means what it means for ``billing invoice generate``: the invoices of
    billing periods that *end* in that month (``month start < period_end <= month end``)."""
    where: list[str] = []
    args: list[object] = []
    if period is not None:
        month = calendar_month(period)
        where.append(f"{alias}.period_end > ? AND {alias}.period_end <= ?")
        args += [to_db(month.start), to_db(month.end)]
    if customer is not None:
        where.append(f"{alias}.customer_key = ?")
        args.append(customer)
    return "".join(f" AND {w}" for w in where), args


class SyncState:
    """Sync state of one store (``stripe_customers``, ``stripe_invoices``, ``stripe_items``)."""

    def __init__(self, db: str | Path, on_wait: Callable[[str], None] | None = None) -> None:
        self.db = str(db)
        self.on_wait = on_wait
        """Told when an open waits for another process's lock (``meterline.store``: after
        about 2 s); the open then goes on waiting."""

    def _store(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """The store for one read or one write: open, do it, close (see the module)."""
        return billing_store(self.db, on_wait=self.on_wait)

    # -------------------------------------------------------------- our invoices

    def has_invoices(self, period: str | None = None, customer: str | None = None) -> bool:
        """Whether any invoice (synced or not) matches the filters: with none, a month's
        usage was never invoiced, which ``stripe sync`` tells apart from "all synced"."""
        clause, args = _filter_clause(period, customer, "i")
        with self._store() as con:
            found = con.execute(f"SELECT 1 FROM invoices i WHERE true{clause} LIMIT 1", args)
            return found.fetchone() is not None

    def unsynced(self, period: str | None = None, customer: str | None = None) -> list[OurInvoice]:
        """Finalized invoices not yet finalized in Stripe, in number order."""
        clause, args = _filter_clause(period, customer, "i")
        with self._store() as con:
            heads = con.execute(
                "SELECT i.number, i.customer_key, i.currency, i.period_start, i.period_end,"
                " i.total FROM invoices i LEFT JOIN stripe_invoices s"
                " ON s.invoice_number = i.number"
                " WHERE i.status = 'finalized' AND (s.state IS NULL OR s.state <> 'finalized')"
                f"{clause} ORDER BY i.seq",
                args,
            ).fetchall()
            lines = con.execute(
                "SELECT l.invoice_number, l.line_no, l.description, l.quantity, l.unit_price,"
                " l.amount, l.usage_start, l.usage_end,"
                " json_extract_string(l.detail, '$.pricing.unit_price'), l.kind,"
                " json_extract_string(l.detail, '$.pricing.billable_quantity'),"
                " CAST(json_extract(l.detail, '$.pricing.notes') AS VARCHAR)"
                " FROM invoice_lines l"
                " JOIN invoices i ON i.number = l.invoice_number"
                " LEFT JOIN stripe_invoices s ON s.invoice_number = i.number"
                " WHERE i.status = 'finalized' AND (s.state IS NULL OR s.state <> 'finalized')"
                f"{clause} ORDER BY l.invoice_number, l.line_no",
                args,
            ).fetchall()
        by_invoice: dict[str, list[Line]] = {}
        for number, no, desc, qty, unit, amount, start, end, exact, kind, *pricing in lines:
            by_invoice.setdefault(number, []).append(
                Line(
                    no,
                    desc,
                    qty,
                    _unit_price(unit, exact, kind),
                    amount,
                    start,
                    end,
                    *_own_pricing(kind, *pricing),
                )  # fmt: skip
            )
        return [
            OurInvoice(n, c, cur, ps, pe, total, tuple(by_invoice.get(n, [])))
            for n, c, cur, ps, pe, total in heads
        ]

    def rows(self, period: str | None = None, customer: str | None = None) -> list[SyncRow]:
        """Every invoice the sync has touched (a Stripe invoice id or not), by number."""
        clause, args = _filter_clause(period, customer, "i")
        with self._store() as con:
            found = con.execute(
                f"SELECT {', '.join('s.' + c.strip() for c in _ROW_COLUMNS.split(','))}"
                " FROM stripe_invoices s JOIN invoices i ON i.number = s.invoice_number"
                f" WHERE TRUE{clause} ORDER BY i.seq",
                args,
            ).fetchall()
        return [SyncRow(*r) for r in found]

    # -------------------------------------------------------------- reading state

    def row(self, number: str) -> SyncRow | None:
        with self._store() as con:
            found = con.execute(
                f"SELECT {_ROW_COLUMNS} FROM stripe_invoices WHERE invoice_number = ?", [number]
            ).fetchone()
        return SyncRow(*found) if found else None

    def customer_id(self, customer_key: str) -> str | None:
        with self._store() as con:
            found = con.execute(
                "SELECT stripe_customer_id FROM stripe_customers WHERE customer_key = ?",
                [customer_key],
            ).fetchone()
        return found[0] if found else None

    def items(self, number: str) -> dict[int, str]:
        with self._store() as con:
            found = con.execute(
                "SELECT line_no, stripe_item_id FROM stripe_items WHERE invoice_number = ?",
                [number],
            ).fetchall()
        return dict(found)

    def attempt(self, scope: str) -> int:
        """The attempt number of one create or finalize (0 until Stripe answered an error)."""
        with self._store() as con:
            found = con.execute(
                "SELECT attempt FROM stripe_attempts WHERE scope = ?", [scope]
            ).fetchone()
        return int(found[0]) if found else 0

    # -------------------------------------------------------------- recording steps

    def set_attempt(self, scope: str, attempt: int) -> None:
        with self._store() as con:
            _upsert(
                con,
                update=f"UPDATE stripe_attempts SET attempt = ?, updated_at = {_NOW}"
                " WHERE scope = ?",
                update_args=[attempt, scope],
                insert=f"INSERT INTO stripe_attempts SELECT ?, ?, {_NOW}",
                insert_args=[scope, attempt],
                exists="SELECT 1 FROM stripe_attempts WHERE scope = ?",
                key=[scope],
            )

    def link_customer(self, customer_key: str, stripe_customer_id: str) -> None:
        with self._store() as con:
            _upsert(
                con,
                update="UPDATE stripe_customers SET stripe_customer_id = ?,"
                f" linked_at = {_NOW} WHERE customer_key = ?",
                update_args=[stripe_customer_id, customer_key],
                insert=f"INSERT INTO stripe_customers SELECT ?, ?, {_NOW}",
                insert_args=[customer_key, stripe_customer_id],
                exists="SELECT 1 FROM stripe_customers WHERE customer_key = ?",
                key=[customer_key],
            )

    def start(
        self, number: str, customer_key: str, stripe_customer_id: str, our_total_minor: int
    ) -> None:
        """The invoice's row, at step ``customer`` unless it is already further on."""
        with self._store() as con:
            _upsert(
                con,
                update="UPDATE stripe_invoices SET"
                " state = CASE WHEN state = 'new' THEN 'customer' ELSE state END,"
                f" stripe_customer_id = ?, our_total_minor = ?, updated_at = {_NOW}"
                " WHERE invoice_number = ?",
                update_args=[stripe_customer_id, our_total_minor, number],
                insert="INSERT INTO stripe_invoices (invoice_number, customer_key,"
                " stripe_customer_id, state, our_total_minor, started_at, updated_at)"
                f" SELECT ?, ?, ?, 'customer', ?, {_NOW}, {_NOW}",
                insert_args=[number, customer_key, stripe_customer_id, our_total_minor],
                exists="SELECT 1 FROM stripe_invoices WHERE invoice_number = ?",
                key=[number],
            )

    def _update(self, number: str, assignments: str, args: list[object]) -> None:
        with self._store() as con:
            con.execute(
                f"UPDATE stripe_invoices SET {assignments}, updated_at = {_NOW}"
                " WHERE invoice_number = ?",
                [*args, number],
            )

    def set_invoice(self, number: str, stripe_invoice_id: str, stripe_status: str | None) -> None:
        self._update(
            number,
            "stripe_invoice_id = ?, stripe_status = ?,"
            " state = CASE WHEN state IN ('new', 'customer') THEN 'invoice' ELSE state END",
            [stripe_invoice_id, stripe_status],
        )

    def forget_draft(self, number: str) -> None:
        """The invoice's Stripe draft was deleted there (with its items): start it again."""
        with self._store() as con:
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "UPDATE stripe_invoices SET stripe_invoice_id = NULL, stripe_status = NULL,"
                " stripe_total_minor = NULL, flagged_reason = NULL,"
                f" state = 'customer', updated_at = {_NOW} WHERE invoice_number = ?",
                [number],
            )
            con.execute("DELETE FROM stripe_items WHERE invoice_number = ?", [number])
            con.execute("COMMIT")

    def add_item(self, number: str, line_no: int, stripe_item_id: str, amount_minor: int) -> None:
        """The line's Stripe item; replaces the one stored (it was deleted in Stripe)."""
        with self._store() as con:
            _upsert(
                con,
                update="UPDATE stripe_items SET stripe_item_id = ?, amount_minor = ?"
                " WHERE invoice_number = ? AND line_no = ?",
                update_args=[stripe_item_id, amount_minor, number, line_no],
                insert=f"INSERT INTO stripe_items SELECT ?, ?, ?, ?, {_NOW}",
                insert_args=[number, line_no, stripe_item_id, amount_minor],
                exists="SELECT 1 FROM stripe_items WHERE invoice_number = ? AND line_no = ?",
                key=[number, line_no],
            )

    def items_done(self, number: str) -> None:
        self._update(
            number,
            "state = CASE WHEN state IN ('new', 'customer', 'invoice') THEN 'items' ELSE state END",
            [],
        )

    def flag(self, number: str, stripe_total_minor: int, stripe_status: str, reason: str) -> None:
        self._update(
            number,
            "state = 'flagged', stripe_total_minor = ?, stripe_status = ?, flagged_reason = ?,"
            " last_error = NULL",
            [stripe_total_minor, stripe_status, reason],
        )

    def finalized(self, number: str, stripe_total_minor: int, stripe_status: str) -> None:
        self._update(
            number,
            "state = 'finalized', stripe_total_minor = ?, stripe_status = ?,"
            f" flagged_reason = NULL, last_error = NULL, synced_at = {_NOW}",
            [stripe_total_minor, stripe_status],
        )

    def record_error(self, number: str, customer_key: str, message: str) -> None:
        """Keep the failure beside the invoice (the row exists from the first step on)."""
        with self._store() as con:
            _upsert(
                con,
                update=f"UPDATE stripe_invoices SET last_error = ?, updated_at = {_NOW}"
                " WHERE invoice_number = ?",
                update_args=[message, number],
                insert="INSERT INTO stripe_invoices (invoice_number, customer_key, state,"
                f" last_error, started_at, updated_at) SELECT ?, ?, 'new', ?, {_NOW}, {_NOW}",
                insert_args=[number, customer_key, message],
                exists="SELECT 1 FROM stripe_invoices WHERE invoice_number = ?",
                key=[number],
            )

    def set_status(self, number: str, stripe_status: str | None) -> None:
        self._update(number, f"stripe_status = ?, status_checked_at = {_NOW}", [stripe_status])


def _unit_price(stored: Decimal | None, exact: str | None, kind: str) -> Decimal | None:
    """The exact unit price a usage line was priced with (its detail), which can have more
    decimals than the column's 12; a fee's, or a line without one, as stored."""
    if stored is None or exact is None or kind == "flat":
        return stored
    priced = Decimal(exact)
    return priced if db_decimal(priced) == stored else stored


def _own_pricing(
    kind: str, billable: str | None, notes: str | None
) -> tuple[Decimal | None, tuple[str, ...]]:
    """(billable units, pricing notes) of a line whose ``detail.pricing`` prices the line
    itself: a late line's prices the period's total, a credit's the reduced usage."""
    if kind not in ("usage", "flat"):
        return None, ()
    return (
        None if billable is None else Decimal(billable),
        tuple(json.loads(notes)) if notes else (),
    )


def _upsert(
    con: duckdb.DuckDBPyConnection,
    *,
    update: str | None,
    update_args: list[object],
    insert: str,
    insert_args: list[object],
    exists: str,
    key: list[object],
) -> None:
    """Update the row if it exists, else insert it, in one transaction.

    Plain UPDATE + INSERT ... WHERE NOT EXISTS rather than ``ON CONFLICT``: DuckLake has no
    primary keys, and the billing store must run on a DuckLake as on a DuckDB file.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        if update is not None:
            con.execute(update, update_args)
        con.execute(f"{insert} WHERE NOT EXISTS ({exists})", [*insert_args, *key])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
