"""Finalized invoices in the store: numbering, saving (all or nothing), reading back.

Numbers are ``INV-`` + a six-digit sequence, given in one transaction as
``max(seq) + 1, + 2, ...`` so they are gapless and never reused. An invoice is
written once and never updated: corrections (late events) go on later invoices.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa

from billing import extensions
from billing.credits import consumption_rows
from billing.model import Invoice, InvoiceLine
from billing.money import money_context, round_money
from billing.storevalues import AmountTooLarge, db_decimal, from_db, to_db, value_set
from billing.usage import UsageWindow

NUMBER_PREFIX = "INV-"
_DEC = pa.decimal128(38, 12)
_TS = pa.timestamp("us")
_SCALE = Decimal("1e-12")


def invoice_number(seq: int) -> str:
    return f"{NUMBER_PREFIX}{seq:06d}"


@dataclass(frozen=True)
class SweptWindow:
    """A usage window some invoice billed; events ingested after ``billed_until`` are late."""

    start: datetime
    end: datetime
    plan_key: str
    consumers: tuple[str, ...]
    billed_until: datetime
    first: int = 0
    """The seq of the first invoice that swept it: the older of two windows has the lower
    (which customer owns a moved consumer's usage: ``billing.usage.owned``)."""


@dataclass(frozen=True)
class BilledCard:
    """What invoices billed so far for one rate card in one window."""

    quantity: Decimal
    amount: Decimal
    snapshot: dict[str, Any] | None = None
    """The rate card and meter as the period's own invoice priced them."""
    granted_units: Decimal = Decimal(0)
    """Units of unit grants its ``credit`` lines took (late usage lines take none)."""
    granted_credit: Decimal = Decimal(0)
    """What those credit lines took off (never positive)."""
    line_no: int = 0
    """Its line number on the period's own invoice: the order unit grants reach lines in."""


def swept_windows(
    con: duckdb.DuckDBPyConnection, customers: Sequence[str]
) -> dict[str, list[SweptWindow]]:
    with value_set(con, "bill_customers", customers):
        rows = con.execute(
            """
            SELECT w.customer_key, w.usage_start, w.usage_end,
                   arg_max(w.plan_key, w.ingested_until), arg_max(w.consumers, w.ingested_until),
                   max(w.ingested_until), min(i.seq)
            FROM invoice_windows AS w JOIN invoices AS i ON i.number = w.invoice_number
            WHERE w.customer_key IN (SELECT value FROM bill_customers)
            GROUP BY w.customer_key, w.usage_start, w.usage_end
            ORDER BY w.customer_key, w.usage_start
            """
        ).fetchall()
    out: dict[str, list[SweptWindow]] = defaultdict(list)
    for ck, start, end, plan, consumers, until, first in rows:
        out[ck].append(
            SweptWindow(
                from_db(start), from_db(end), plan, tuple(consumers), from_db(until), int(first)
            )
        )
    return out


def billed_cards(
    con: duckdb.DuckDBPyConnection, customers: Sequence[str]
) -> dict[tuple[str, datetime, datetime], dict[str, BilledCard]]:
    """Per (customer, window): quantity and amount billed per rate card, its snapshot, and
    the units of unit grants its credit lines took and what they took off."""
    with value_set(con, "bill_customers", customers):
        rows = con.execute(
            """
            WITH lines AS (
                SELECT i.customer_key, i.seq, l.*,
                       l.kind = 'credit'
                       AND json_extract_string(l.detail, '$.unit_grant') = 'true' AS granted
                FROM invoice_lines AS l JOIN invoices AS i ON i.number = l.invoice_number
                WHERE i.customer_key IN (SELECT value FROM bill_customers)
                  AND l.kind IN ('usage', 'late_usage', 'credit')
            )
            SELECT customer_key, usage_start, usage_end, rate_card_key,
                   coalesce(sum(quantity) FILTER (WHERE NOT granted), 0),
                   coalesce(sum(amount) FILTER (WHERE NOT granted), 0),
                   arg_min(detail, seq) FILTER (WHERE kind = 'usage'),
                   coalesce(sum(quantity) FILTER (WHERE granted), 0),
                   coalesce(sum(amount) FILTER (WHERE granted), 0),
                   arg_min(line_no, seq) FILTER (WHERE kind = 'usage')
            FROM lines
            WHERE kind <> 'credit' OR granted
            GROUP BY ALL
            """
        ).fetchall()
    out: dict[tuple[str, datetime, datetime], dict[str, BilledCard]] = defaultdict(dict)
    for ck, start, end, card, qty, amount, snap, units, credit, line_no in rows:
        out[(ck, from_db(start), from_db(end))][card] = BilledCard(
            _trim(qty),
            _trim(amount),
            None if snap is None else json.loads(snap),
            _trim(Decimal(units)),
            _trim(Decimal(credit)),
            int(line_no or 0),
        )
    return out


@dataclass(frozen=True)
class AdvanceFee:
    """An in-advance fee an invoice billed: for the period ``[start, end)`` of a plan."""

    plan_key: str
    rate_card_key: str
    start: datetime
    end: datetime
    number: str


def advance_fees(
    con: duckdb.DuckDBPyConnection, customers: Sequence[str]
) -> dict[str, list[AdvanceFee]]:
    """Customer -> every in-advance fee its stored invoices billed (the periods they cover)."""
    with value_set(con, "bill_customers", customers):
        rows = con.execute(
            """
            SELECT i.customer_key, l.plan_key, l.rate_card_key, l.usage_start, l.usage_end,
                   l.invoice_number
            FROM invoice_lines AS l JOIN invoices AS i ON i.number = l.invoice_number
            WHERE l.kind = 'flat' AND json_extract_string(l.detail, '$.payment_term') = 'in_advance'
              AND i.customer_key IN (SELECT value FROM bill_customers)
            ORDER BY i.seq, l.line_no
            """
        ).fetchall()
    out: dict[str, list[AdvanceFee]] = defaultdict(list)
    for ck, plan, card, start, end, number in rows:
        out[ck].append(AdvanceFee(plan, card, from_db(start), from_db(end), number))
    return out


def existing_invoices(
    con: duckdb.DuckDBPyConnection,
) -> dict[tuple[str, datetime, datetime], str]:
    """(customer, period start, period end) -> number, for every stored invoice."""
    rows = con.execute(
        "SELECT customer_key, period_start, period_end, number FROM invoices"
    ).fetchall()
    return {(ck, from_db(s), from_db(e)): n for ck, s, e, n in rows}


def _stored(value: Decimal) -> Decimal:
    """Storage scale is 12 decimals; exact values with more live in the line's detail JSON."""
    try:
        return db_decimal(value)
    except AmountTooLarge as e:
        raise AmountTooLarge(f"{e}; check the catalog's prices") from None


def _dec(value: Decimal | None) -> Decimal | None:
    return None if value is None else _stored(value)


class ConcurrentInvoicing(Exception):
    """Another run stored invoices while this one was storing its own: nothing of this
    run was stored (build again from the store, which now holds the other's)."""


def restore_invoice_sequence(con: duckdb.DuckDBPyConnection) -> bool:
    """Put back the one ``invoice_sequence`` row if it is gone (its file was lost and
    dropped from a lake: ``billing lake repair``); without it two runs at once would not
    conflict. True if it was missing."""
    (rows,) = con.execute("SELECT count(*) FROM invoice_sequence").fetchone() or (0,)
    if rows:
        return False
    con.execute(
        "INSERT INTO invoice_sequence SELECT 'invoices', coalesce(max(seq), 0) FROM invoices"
    )
    return True


def save_invoices(
    con: duckdb.DuckDBPyConnection,
    invoices: Sequence[Invoice],
    windows: Sequence[Sequence[tuple[UsageWindow, str]]],
    *,
    issued_at: datetime,
) -> None:
    """Number and store ``invoices`` with their lines and swept windows, in one transaction."""
    if not invoices:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        stored = existing_invoices(con)  # a run that committed since these were built
        if any((i.customer_key, i.period_start, i.period_end) in stored for i in invoices):
            raise ConcurrentInvoicing("a period of this run was invoiced meanwhile")
        (last,) = con.execute("SELECT coalesce(max(seq), 0) FROM invoices").fetchone() or (0,)
        for n, inv in enumerate(invoices, start=int(last) + 1):
            inv.seq, inv.number = n, invoice_number(n)
            inv.status, inv.issued_at = "finalized", issued_at
        # Another run storing invoices at the same time updates this row too: on a
        # DuckLake one of the two commits then fails (ConcurrentInvoicing), never both land.
        con.execute(
            f"UPDATE invoice_sequence SET last_seq = {int(last) + len(invoices)} "
            "WHERE name = 'invoices'"
        )
        _insert(con, "invoices", _invoice_rows(invoices))
        _insert(con, "invoice_lines", _line_rows(invoices))
        _insert(con, "invoice_windows", _window_rows(invoices, windows))
        consumed = [
            (number, grant, customer, db_decimal(amount), issued_at)
            for inv in invoices
            for number, grant, customer, amount in consumption_rows(inv)
        ]
        if consumed:  # what credit lines took from grants, with the invoice or not at all
            con.executemany("INSERT INTO credit_consumptions VALUES (?, ?, ?, ?, ?)", consumed)
        try:
            con.execute("COMMIT")
        except duckdb.TransactionException as e:  # another run committed first
            raise ConcurrentInvoicing(str(e)) from e
        for inv in invoices:  # the values as stored, so they read back identical
            for ln in inv.lines:
                ln.quantity = _trim(_stored(ln.quantity))
                if ln.unit_price is not None:
                    stored_price = _stored(ln.unit_price)
                    ln.unit_price = _unit_price(ln.kind, stored_price, ln.detail, inv.currency)
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT already ended it
            con.execute("ROLLBACK")
        for inv in invoices:
            inv.seq = inv.number = inv.issued_at = None
            inv.status = "preview"
        raise


def _insert(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    con.register("bill_insert_src", data)
    try:
        cols = ", ".join(data.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM bill_insert_src")
    finally:
        con.unregister("bill_insert_src")


def _invoice_rows(invoices: Sequence[Invoice]) -> pa.Table:
    def col(f, typ):  # type: ignore[no-untyped-def]
        return pa.array([f(i) for i in invoices], typ)

    return pa.table(
        {
            "number": col(lambda i: i.number, pa.string()),
            "seq": col(lambda i: i.seq, pa.int64()),
            "customer_key": col(lambda i: i.customer_key, pa.string()),
            "currency": col(lambda i: i.currency, pa.string()),
            "period_start": col(lambda i: to_db(i.period_start), _TS),
            "period_end": col(lambda i: to_db(i.period_end), _TS),
            "watermark": col(lambda i: to_db(i.watermark), _TS),
            "issued_at": col(lambda i: to_db(i.issued_at), _TS),
            "status": col(lambda i: i.status, pa.string()),
            "total": col(lambda i: _dec(i.total), _DEC),
            "catalog_digest": col(lambda i: i.catalog_digest, pa.string()),
        }
    )


def _line_rows(invoices: Sequence[Invoice]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in _LINE_TYPES}
    for inv in invoices:
        for ln in inv.lines:
            cols["invoice_number"].append(inv.number)
            cols["line_no"].append(ln.line_no)
            cols["kind"].append(ln.kind)
            cols["rate_card_key"].append(ln.rate_card_key)
            cols["feature_key"].append(ln.feature_key)
            cols["plan_key"].append(ln.plan_key)
            cols["description"].append(ln.description)
            cols["usage_start"].append(to_db(ln.usage_start))
            cols["usage_end"].append(to_db(ln.usage_end))
            cols["quantity"].append(_dec(ln.quantity))
            cols["unit_price"].append(_dec(ln.unit_price))
            cols["amount"].append(_dec(ln.amount))
            cols["detail"].append(json.dumps(ln.detail, sort_keys=True))
    return pa.table({name: pa.array(cols[name], typ) for name, typ in _LINE_TYPES.items()})


_LINE_TYPES: dict[str, pa.DataType] = {
    "invoice_number": pa.string(),
    "line_no": pa.int32(),
    "kind": pa.string(),
    "rate_card_key": pa.string(),
    "feature_key": pa.string(),
    "plan_key": pa.string(),
    "description": pa.string(),
    "usage_start": _TS,
    "usage_end": _TS,
    "quantity": _DEC,
    "unit_price": _DEC,
    "amount": _DEC,
    "detail": pa.string(),
}


def _window_rows(
    invoices: Sequence[Invoice], windows: Sequence[Sequence[tuple[UsageWindow, str]]]
) -> pa.Table:
    rows = []
    for inv, ws in zip(invoices, windows, strict=True):
        for w, plan in ws:
            own = (w.start, w.end) == (inv.period_start, inv.period_end)
            rows.append((inv, w, "period" if own else "late", plan))
    return pa.table(
        {
            "invoice_number": pa.array([i.number for i, _, _, _ in rows], pa.string()),
            "customer_key": pa.array([i.customer_key for i, _, _, _ in rows], pa.string()),
            "plan_key": pa.array([p for _, _, _, p in rows], pa.string()),
            "consumers": pa.array(
                [list(w.consumers) for _, w, _, _ in rows], pa.list_(pa.string())
            ),
            "kind": pa.array([k for _, _, k, _ in rows], pa.string()),
            "usage_start": pa.array([to_db(w.start) for _, w, _, _ in rows], _TS),
            "usage_end": pa.array([to_db(w.end) for _, w, _, _ in rows], _TS),
            "ingested_after": pa.array(
                [to_db(w.ingested_after) if w.ingested_after else None for _, w, _, _ in rows], _TS
            ),
            "ingested_until": pa.array([to_db(w.ingested_until) for _, w, _, _ in rows], _TS),
        }
    )


# --------------------------------------------------------------------------- reading


def _trim(value: Decimal) -> Decimal:
    """``12.000000000000`` -> ``12``; ``0.000003000000`` -> ``0.000003`` (no exponent)."""
    with money_context():
        if value == value.to_integral_value():
            return value.quantize(Decimal(1))
        return Decimal(format(value.normalize(), "f"))


def _unit_price(kind: str, value: Decimal, detail: dict[str, Any], currency: str) -> Decimal:
    """A fee's unit price is money (``30.00``); a token's is a tiny exact figure.

    The column holds 12 decimals; a price per token can have more (0.123456789012 per
    1000 is 0.000123456789012), so the exact one priced (``detail.pricing.unit_price``)
    is shown when the stored value is that price cut to the column's scale.
    """
    exact = (detail.get("pricing") or {}).get("unit_price")
    if exact is not None and kind != "flat":
        priced = Decimal(exact)
        if priced.is_finite() and db_decimal(priced) == value:
            return _trim(priced)
    money = round_money(value, currency)
    return money if kind == "flat" and money == value else _trim(value)


INVOICE_SQL = """
    SELECT i.number, i.seq, i.customer_key, i.currency, i.period_start, i.period_end,
           i.watermark, i.issued_at, i.status, i.total, i.catalog_digest
    FROM invoices AS i
"""


def load_invoices(
    con: duckdb.DuckDBPyConnection,
    *,
    numbers: Sequence[str] | None = None,
    customer: str | None = None,
    with_lines: bool = True,
    names: dict[str, str] | None = None,
) -> list[Invoice]:
    """Stored invoices in number order, optionally only ``numbers`` / one customer's."""
    where, params = [], []
    if numbers is not None:
        where.append("i.number IN (SELECT value FROM bill_numbers)")
    if customer is not None:
        where.append("i.customer_key = ?")
        params.append(customer)
    sql = INVOICE_SQL + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY i.seq"
    invoices: dict[str, Invoice] = {}
    with value_set(con, "bill_numbers", numbers or []):
        found = con.execute(sql, params).fetchall()
    for r in found:
        number, seq, ck, cur, ps, pe, wm, issued, status, total, digest = r
        inv = Invoice(
            customer_key=ck,
            customer_name=(names or {}).get(ck, ck),
            currency=cur,
            period_start=from_db(ps),
            period_end=from_db(pe),
            watermark=from_db(wm),
            catalog_digest=digest,
            status=status,
            number=number,
            seq=seq,
            issued_at=from_db(issued),
        )
        inv.stored_total = round_money(total, cur)
        invoices[number] = inv
    if with_lines and invoices:
        with value_set(con, "bill_numbers", invoices):
            rows = con.execute(
                "SELECT invoice_number, line_no, kind, rate_card_key, feature_key, plan_key,"
                " description, usage_start, usage_end, quantity, unit_price, amount, detail"
                " FROM invoice_lines WHERE invoice_number IN (SELECT value FROM bill_numbers)"
                " ORDER BY invoice_number, line_no"
            ).fetchall()
        for num, no, kind, card, feat, plan, desc, us, ue, qty, unit, amount, detail in rows:
            inv = invoices[num]
            details = json.loads(detail)
            inv.lines.append(
                InvoiceLine(
                    kind=kind,
                    rate_card_key=card,
                    feature_key=feat,
                    plan_key=plan,
                    description=desc,
                    usage_start=from_db(us),
                    usage_end=from_db(ue),
                    quantity=_trim(qty),
                    unit_price=(
                        None if unit is None else _unit_price(kind, unit, details, inv.currency)
                    ),
                    amount=round_money(amount, inv.currency),
                    detail=details,
                    line_no=no,
                )
            )
    found_invoices = list(invoices.values())
    extensions.annotate(con, found_invoices)
    return found_invoices
