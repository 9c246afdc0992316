"""Usage the stored invoices billed (margin reports): per day, and per event.

The events of the invoices' stored windows, less the ranges older windows of other
customers own (:mod:`billing.usage.owned`): a moved consumer's usage counts once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import duckdb
import pyarrow as pa

from billing.storevalues import from_db, to_db, value_set
from billing.usage.owned import first_sweeps, ownership
from billing.usage.windows import UsageWindow, windowed_events
from meterline.eventschema import TOKEN_COLUMNS

_SUMS = ", ".join(f"SUM(e.{col})::BIGINT AS {tt}" for tt, col in TOKEN_COLUMNS.items())


_INVOICED_WINDOWS = """
    SELECT customer_key, unnest(consumers) AS consumer, usage_start AS w_start,
           usage_end AS w_end, ingested_after AS ing_after, ingested_until AS ing_until
    FROM invoice_windows WHERE invoice_number IN (SELECT value FROM bill_numbers)
"""
"""The stored windows of the invoices in ``bill_numbers``, shaped for :func:`windowed_events`."""

_CARVED_WINDOWS = """
    SELECT customer_key, consumer, w_start, w_end, ing_after, ing_until
    FROM bill_invoiced_windows WHERE TRUE
"""
"""The same, carved (:mod:`billing.usage.owned`): when a consumer of them was moved."""

_USAGE_SQL = """
    WITH win AS ({windows})
    SELECT w.customer_key, e.provider, coalesce(e.model, '') AS model,
           CAST(e.ts AS DATE) AS day, e.service_tier, e.speed, {sums}, COUNT(*) AS events
    {events}
    GROUP BY ALL
"""

INVOICED_USAGE_SQL = _USAGE_SQL.format(
    windows=_INVOICED_WINDOWS, sums=_SUMS, events=windowed_events("win")
)


@contextmanager
def _invoiced_windows(con: duckdb.DuckDBPyConnection) -> Iterator[str]:
    """The SQL of the windows of the invoices in ``bill_numbers`` as they billed: the
    stored rows themselves, or, when a consumer of them is in another customer's window,
    the rows carved in Python and registered as ``bill_invoiced_windows``."""
    pairs = con.execute(
        "SELECT DISTINCT customer_key, unnest(consumers) FROM invoice_windows"
        " WHERE invoice_number IN (SELECT value FROM bill_numbers)"
    ).fetchall()
    owned = ownership(con, pairs)
    if not owned:
        yield _INVOICED_WINDOWS
        return
    stored = con.execute(
        "SELECT customer_key, consumers, usage_start, usage_end, ingested_after, ingested_until"
        " FROM invoice_windows WHERE invoice_number IN (SELECT value FROM bill_numbers)"
    ).fetchall()
    windows = [
        (
            ck,
            UsageWindow(
                n, tuple(cs), from_db(s), from_db(e), from_db(until), after and from_db(after)
            ),
        )
        for n, (ck, cs, s, e, after, until) in enumerate(stored)
    ]
    firsts = first_sweeps(con, ((ck, w.start, w.end) for ck, w in windows))
    rows = [
        (ck, consumer, start, end, w.ingested_after, w.ingested_until)
        for ck, w in windows
        for consumer, start, end in owned.carve(w, ck, firsts.get((ck, w.start, w.end))).ranges()
    ]
    ts = pa.timestamp("us")
    table = pa.table(
        {
            "customer_key": pa.array([r[0] for r in rows], pa.string()),
            "consumer": pa.array([r[1] for r in rows], pa.string()),
            "w_start": pa.array([to_db(r[2]) for r in rows], ts),
            "w_end": pa.array([to_db(r[3]) for r in rows], ts),
            "ing_after": pa.array([to_db(r[4]) if r[4] else None for r in rows], ts),
            "ing_until": pa.array([to_db(r[5]) for r in rows], ts),
        }
    )
    con.register("bill_invoiced_windows", table)
    try:
        yield _CARVED_WINDOWS
    finally:
        con.unregister("bill_invoiced_windows")


def invoiced_usage(
    con: duckdb.DuckDBPyConnection, invoice_numbers: Sequence[str]
) -> list[dict[str, object]]:
    """Tokens per (customer, provider, model, day, service tier, speed) of every event those
    invoices billed (tier and speed select list prices: :mod:`billing.listprice`)."""
    with value_set(con, "bill_numbers", invoice_numbers), _invoiced_windows(con) as win:
        sql = _USAGE_SQL.format(windows=win, sums=_SUMS, events=windowed_events("win"))
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def invoiced_events(
    con: duckdb.DuckDBPyConnection,
    invoice_numbers: Sequence[str],
    customer: str,
    provider: str,
    model: str,
) -> list[dict[str, object]]:
    """Per-event tokens, tier and speed of one (customer, provider, model) those invoices
    billed."""
    with value_set(con, "bill_numbers", invoice_numbers), _invoiced_windows(con) as win:
        sql = f"""
            WITH win AS ({win} AND customer_key = ?)
            SELECT e.ts, e.service_tier, e.speed,
                   {", ".join(f"e.{c} AS {t}" for t, c in TOKEN_COLUMNS.items())}
            {windowed_events("win")}
            WHERE e.provider = ? AND coalesce(e.model, '') = ?
        """
        cur = con.execute(sql, [customer, provider, model])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
