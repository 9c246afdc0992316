"""Where optional packages plug into the billing core, which knows none of them by name.

The Stripe sync (``billing.stripe``) is one. On import it registers

- its tables: named migrations that :func:`billing.store.billing_store` applies after
  the core's, in the same store;
- a column it adds to invoice listings (``stripe_status``): a query of its own that
  maps invoice numbers to values, run by :func:`billing.ledger.load_invoices` and shown
  by ``invoice list``, ``invoice show`` and the JSON forms.

The core never imports such a package; whoever composes the application (the CLI)
imports it, and its registration takes effect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import duckdb

from billing.model import Invoice
from meterline.migrations import Migration

ColumnValues = Callable[[duckdb.DuckDBPyConnection, Sequence[str]], Mapping[str, object]]
"""Invoice numbers -> the column's value for each (missing numbers: no value)."""


@dataclass(frozen=True)
class InvoiceColumn:
    name: str
    """Column name in listings and JSON, e.g. ``stripe_status``."""
    label: str
    """Word shown before the value on ``invoice show``'s status line, e.g. ``stripe``."""
    values: ColumnValues


_MIGRATIONS: dict[str, Migration] = {}
_COLUMNS: dict[str, InvoiceColumn] = {}


def register_migrations(migrations: Sequence[Migration]) -> None:
    """Add a package's tables to every billing store (idempotent by migration name)."""
    for m in migrations:
        _MIGRATIONS.setdefault(m.name, m)


def registered_migrations() -> tuple[Migration, ...]:
    return tuple(_MIGRATIONS.values())


def register_invoice_column(name: str, label: str, values: ColumnValues) -> None:
    """Add a column to invoice listings, filled by ``values`` (idempotent by name)."""
    _COLUMNS.setdefault(name, InvoiceColumn(name, label, values))


def invoice_columns() -> tuple[InvoiceColumn, ...]:
    return tuple(_COLUMNS.values())


def annotate(con: duckdb.DuckDBPyConnection, invoices: Sequence[Invoice]) -> None:
    """Fill ``Invoice.extra`` with every registered column, for stored invoices."""
    numbers = [i.number for i in invoices if i.number]
    for column in _COLUMNS.values():
        found = column.values(con, numbers) if numbers else {}
        for inv in invoices:
            inv.extra[column.name] = found.get(inv.number) if inv.number else None
