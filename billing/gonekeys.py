"""Invoices of customer keys the catalog no longer has, and who took over what they billed.

A customer's key is its identity on invoices: which periods are invoiced, which in-advance
fees are billed, which months a run says were never generated are all looked up by key.
Renaming ``key: alpha`` to ``key: alpha2`` therefore made a new customer to billing, whose
every period looked uninvoiced: the next run billed April's in-advance fee again (alpha's
March invoice had), and the "never invoiced" note asked for January to March to be billed a
second time. Usage was never billed twice (events belong to the window that swept them
first: :mod:`billing.usage.owned`), only flat fees.

:func:`refuse_takeovers` stops ``invoice generate`` there: a customer of the run that bills
a consumer a key no longer in the catalog was invoiced for, with a subscription overlapping
the time those invoices cover, is refused in one line naming the old key, its invoices and
the two ways on (put the key back; or, for another customer, keep the old one in the
catalog, as moving a consumer needs anyway for the old customer's late sweeps).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import duckdb

from billing.errors import BillingError
from billing.storevalues import from_db
from meterline.catalog import Catalog, Customer

#: Invoice numbers named one by one in the refusal; more are given as a range.
_NUMBERS_SHOWN = 3


@dataclass(frozen=True)
class GoneKey:
    """What the invoices of one customer key no longer in the catalog covered."""

    key: str
    numbers: tuple[str, ...]
    """In number order."""
    consumers: frozenset[str]
    """Every consumer any window of those invoices counted."""
    start: datetime
    """The first invoiced period's start."""
    end: datetime
    """The last invoiced period's end (its in-advance fee billed the period after it)."""


def gone_keys(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> list[GoneKey]:
    """The customer keys of stored invoices that no customer of ``catalog`` has."""
    known = [c.key for c in catalog.customers]
    rows = con.execute(
        """
        SELECT i.customer_key, list(i.number ORDER BY i.seq), min(i.period_start),
               max(i.period_end),
               (SELECT list(DISTINCT c) FROM (SELECT unnest(w.consumers) AS c
                  FROM invoice_windows w WHERE w.customer_key = i.customer_key))
        FROM invoices i
        WHERE NOT list_contains(?::VARCHAR[], i.customer_key)
        GROUP BY i.customer_key
        ORDER BY i.customer_key
        """,
        [known],
    ).fetchall()
    return [
        GoneKey(key, tuple(numbers), frozenset(consumers or ()), from_db(start), from_db(end))
        for key, numbers, start, end, consumers in rows
    ]


def _takes_over(customer: Customer, gone: GoneKey) -> list[str]:
    """The consumers ``customer`` bills that ``gone`` was invoiced for, when one of its
    subscriptions overlaps the time those invoices cover; else none."""
    shared = sorted(gone.consumers.intersection(customer.consumers))
    overlaps = any(
        s.start < gone.end and (s.end is None or gone.start < s.end) for s in customer.subscriptions
    )
    return shared if overlaps else []


def _numbers(numbers: tuple[str, ...]) -> str:
    if len(numbers) <= _NUMBERS_SHOWN:
        return ", ".join(numbers)
    return f"{numbers[0]} .. {numbers[-1]}, {len(numbers)} invoices"


def refuse_takeovers(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, customers: Iterable[Customer]
) -> None:
    """:class:`BillingError` when one of ``customers`` takes over consumers and time that
    invoices of a key no longer in the catalog billed (a renamed key, most likely)."""
    gone = gone_keys(con, catalog)
    if not gone:
        return
    for customer in customers:
        for g in gone:
            shared = _takes_over(customer, g)
            if shared:
                raise BillingError(
                    f"customer {customer.key!r} bills consumer(s) {', '.join(shared)}, "
                    f"invoiced from {g.start:%Y-%m-%d} to {g.end:%Y-%m-%d} to customer "
                    f"{g.key!r}, which is no longer in the catalog ({_numbers(g.numbers)}): "
                    "invoicing it would bill those periods' flat fees again. Renamed? An "
                    f"invoiced customer's key cannot change: put back key: {g.key} (change "
                    f"its name instead). Another customer? Keep {g.key!r} in the catalog"
                )
