"""Which customer's invoice window a consumer's usage belongs to, once invoiced.

A consumer moved to another customer in the catalog keeps its past: the events of a
(consumer, time) that a stored invoice window of one customer covers belong to that
customer, and a window of another customer leaves them out, whatever their ingestion
time (late events there are swept by the owner's own late sweeps, which use the
consumers stored with its window). When windows of several customers cover the same
(consumer, time), the one first swept earliest owns it: the one the lowest invoice
number swept first (numbers follow the order invoices were built and stored in); a
window being built now is newer than every stored one.

So a window is *carved*: for each consumer, its ``[start, end)`` less the ranges older
windows of other customers cover. The usual store has no consumer in two customers'
windows; :func:`ownership` then finds nothing and every window stays whole (one row per
consumer, and the shared-bounds aggregation stays possible).

A stored window's carving never changes: only windows stored before it (lower numbers)
cut it, and no window stored later can be older. Invoice building, ``invoice explain``,
statements, margin and ``usage --unbilled`` all recompute it with this module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import duckdb
import pyarrow as pa

from billing.storevalues import from_db, to_db
from billing.usage.windows import UsageWindow


@dataclass(frozen=True)
class Claim:
    """A stored window of ``customer`` covering ``consumer`` over ``[start, end)``."""

    customer: str
    consumer: str
    start: datetime
    end: datetime
    first: int
    """The seq of the first invoice that swept the window: lower is older."""


class Ownership:
    """Other customers' claims on some (customer, consumer) pairs, to carve windows with."""

    def __init__(self, claims: Iterable[Claim] = ()) -> None:
        self._by_consumer: dict[str, list[Claim]] = defaultdict(list)
        for k in claims:
            self._by_consumer[k.consumer].append(k)

    def __bool__(self) -> bool:
        return bool(self._by_consumer)

    def carve(self, window: UsageWindow, customer: str, first: int | None = None) -> UsageWindow:
        """``window`` of ``customer`` without what older windows of other customers own.

        ``first``: the seq of the first invoice that swept the window (a stored window);
        None for a window being built now, newer than every stored one. The window comes
        back unchanged when nothing is cut, else with ``parts``: the (consumer, start,
        end) ranges left, none for a consumer cut entirely.
        """
        parts: list[tuple[str, datetime, datetime]] = []
        cut = False
        for consumer in window.consumers:
            taken = sorted(
                (max(k.start, window.start), min(k.end, window.end))
                for k in self._by_consumer.get(consumer, ())
                if k.customer != customer
                and (first is None or k.first < first)
                and k.start < window.end
                and window.start < k.end
            )
            if not taken:
                parts.append((consumer, window.start, window.end))
                continue
            cut = True
            at = window.start
            for start, end in taken:
                if start > at:
                    parts.append((consumer, at, start))
                at = max(at, end)
            if at < window.end:
                parts.append((consumer, at, window.end))
        return replace(window, parts=tuple(parts)) if cut else window


def _pairs_table(pairs: Iterable[tuple[str, str]]) -> pa.Table:
    rows = sorted(set(pairs))
    return pa.table(
        {
            "customer_key": pa.array([p[0] for p in rows], pa.string()),
            "consumer": pa.array([p[1] for p in rows], pa.string()),
        }
    )


_CLAIMS_SQL = """
    SELECT w.customer_key, w.consumer, w.usage_start, w.usage_end, min(i.seq)
    FROM (SELECT invoice_number, customer_key, usage_start, usage_end,
                 unnest(consumers) AS consumer
          FROM invoice_windows) AS w
    JOIN bill_owner_pairs AS p ON p.consumer = w.consumer AND p.customer_key <> w.customer_key
    JOIN invoices AS i ON i.number = w.invoice_number
    GROUP BY ALL
"""
"""Stored windows of a customer other than the pair's that cover the pair's consumer:
nothing at all unless a consumer was moved between customers."""


def ownership(con: duckdb.DuckDBPyConnection, pairs: Iterable[tuple[str, str]]) -> Ownership:
    """The claims other customers' stored windows have on these (customer, consumer)
    pairs, in one query (which finds nothing when no consumer was ever moved)."""
    table = _pairs_table(pairs)
    if not table.num_rows:
        return Ownership()
    con.register("bill_owner_pairs", table)
    try:
        rows = con.execute(_CLAIMS_SQL).fetchall()
    finally:
        con.unregister("bill_owner_pairs")
    return Ownership(Claim(ck, c, from_db(s), from_db(e), int(n)) for ck, c, s, e, n in rows)


def first_sweeps(
    con: duckdb.DuckDBPyConnection, keys: Iterable[tuple[str, datetime, datetime]]
) -> dict[tuple[str, datetime, datetime], int]:
    """(customer, start, end) -> seq of the first invoice that swept that stored window."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    table = pa.table(
        {
            "customer_key": pa.array([k[0] for k in wanted], pa.string()),
            "usage_start": pa.array([to_db(k[1]) for k in wanted], pa.timestamp("us")),
            "usage_end": pa.array([to_db(k[2]) for k in wanted], pa.timestamp("us")),
        }
    )
    con.register("bill_first_keys", table)
    try:
        rows = con.execute(
            """
            SELECT w.customer_key, w.usage_start, w.usage_end, min(i.seq)
            FROM invoice_windows AS w
            JOIN bill_first_keys AS k USING (customer_key, usage_start, usage_end)
            JOIN invoices AS i ON i.number = w.invoice_number
            GROUP BY ALL
            """
        ).fetchall()
    finally:
        con.unregister("bill_first_keys")
    return {(ck, from_db(s), from_db(e)): int(n) for ck, s, e, n in rows}


def carve_stored(
    con: duckdb.DuckDBPyConnection, stored: Sequence[tuple[str, UsageWindow]]
) -> list[UsageWindow]:
    """Stored windows ``(customer, window)`` as they billed: each without the ranges
    older windows of other customers own (two queries, the second only when some
    consumer of them is in another customer's window)."""
    owned = ownership(con, ((ck, c) for ck, w in stored for c in w.consumers))
    if not owned:
        return [w for _, w in stored]
    firsts = first_sweeps(con, ((ck, w.start, w.end) for ck, w in stored))
    return [owned.carve(w, ck, firsts.get((ck, w.start, w.end))) for ck, w in stored]
