"""Usage the stored invoices billed (margin reports): per day, and per event."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from billing.storevalues import value_set
from billing.usage.windows import windowed_events
from meterline.eventschema import TOKEN_COLUMNS

_SUMS = ", ".join(f"SUM(e.{col})::BIGINT AS {tt}" for tt, col in TOKEN_COLUMNS.items())


_INVOICED_WINDOWS = """
    SELECT customer_key, unnest(consumers) AS consumer, usage_start AS w_start,
           usage_end AS w_end, ingested_after AS ing_after, ingested_until AS ing_until
    FROM invoice_windows WHERE invoice_number IN (SELECT value FROM bill_numbers)
"""
"""The stored windows of the invoices in ``bill_numbers``, shaped for :func:`windowed_events`."""

INVOICED_USAGE_SQL = f"""
    WITH win AS ({_INVOICED_WINDOWS})
    SELECT w.customer_key, e.provider, coalesce(e.model, '') AS model,
           CAST(e.ts AS DATE) AS day, {_SUMS}, COUNT(*) AS events
    {windowed_events("win")}
    GROUP BY ALL
"""


def invoiced_usage(
    con: duckdb.DuckDBPyConnection, invoice_numbers: Sequence[str]
) -> list[dict[str, object]]:
    """Tokens per (customer, provider, model, day) of every event those invoices billed."""
    with value_set(con, "bill_numbers", invoice_numbers):
        cur = con.execute(INVOICED_USAGE_SQL)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def invoiced_events(
    con: duckdb.DuckDBPyConnection,
    invoice_numbers: Sequence[str],
    customer: str,
    provider: str,
    model: str,
) -> list[dict[str, object]]:
    """Per-event tokens of one (customer, provider, model) those invoices billed."""
    sql = f"""
        WITH win AS ({_INVOICED_WINDOWS} AND customer_key = ?)
        SELECT e.ts, {", ".join(f"e.{c} AS {t}" for t, c in TOKEN_COLUMNS.items())}
        {windowed_events("win")}
        WHERE e.provider = ? AND coalesce(e.model, '') = ?
    """
    with value_set(con, "bill_numbers", invoice_numbers):
        cur = con.execute(sql, [customer, provider, model])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
