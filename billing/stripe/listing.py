"""The Stripe status of stored invoices, for the core's invoice listings."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from billing.storevalues import value_set


def stripe_statuses(con: duckdb.DuckDBPyConnection, numbers: Sequence[str]) -> dict[str, object]:
    """Invoice number -> ``stripe_invoices.stripe_status`` (only invoices the sync touched)."""
    with value_set(con, "bill_stripe_numbers", numbers):
        rows = con.execute(
            "SELECT invoice_number, stripe_status FROM stripe_invoices"
            " WHERE invoice_number IN (SELECT value FROM bill_stripe_numbers)"
        ).fetchall()
    return dict(rows)
