"""Stripe sync state, beside ``invoices`` in the billing store, as named migrations.

No primary keys: the store may be a DuckLake, which has none; ``SyncState`` keeps rows
unique itself (update, else insert, in one transaction).

Every Stripe id is written the moment Stripe returns it, so a sync that dies at any
point leaves a record of exactly what exists in Stripe; the next run resumes from it.

``stripe_invoices.state`` is the last step completed for one of our invoices:

=================  =================================================================
``new``            nothing known in Stripe yet (a first attempt failed: ``last_error``)
``customer``       the Stripe customer is known (``stripe_customer_id``)
``invoice``        the draft Stripe invoice exists (``stripe_invoice_id``)
``items``          every non-zero line has its invoice item (rows in ``stripe_items``)
``flagged``        Stripe's total differs from ours: not finalized (``flagged_reason``)
``finalized``      finalized in Stripe; ``synced_at`` set
=================  =================================================================

``stripe_attempts`` numbers the tries of each create and finalize: Stripe replays a
saved error (a 500 too) for the same idempotency key, so after an answered failure the
next try uses a new key (:mod:`billing.stripe.idempotency`).
"""

from meterline.migrations import Migration

STRIPE_STATES: tuple[str, ...] = ("new", "customer", "invoice", "items", "flagged", "finalized")

STRIPE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0201_stripe_sync",
        """
        CREATE TABLE IF NOT EXISTS stripe_customers (
            customer_key       VARCHAR NOT NULL,  -- one row per customer
            stripe_customer_id VARCHAR NOT NULL,  -- cus_...
            linked_at          TIMESTAMP NOT NULL -- UTC, when we created or found it
        );
        CREATE TABLE IF NOT EXISTS stripe_invoices (
            invoice_number     VARCHAR NOT NULL,  -- invoices.number; one row each
            customer_key       VARCHAR NOT NULL,
            stripe_customer_id VARCHAR,           -- cus_...
            stripe_invoice_id  VARCHAR,           -- in_...
            state              VARCHAR NOT NULL,  -- last step done, see billing/stripe/schema.py
            stripe_status      VARCHAR,           -- draft | open | paid | void | uncollectible
            our_total_minor    BIGINT,            -- our total in the currency's minor unit
            stripe_total_minor BIGINT,            -- Stripe's invoice total, same unit
            flagged_reason     VARCHAR,           -- why it was not finalized
            last_error         VARCHAR,           -- last failure of a sync of this invoice
            started_at         TIMESTAMP NOT NULL,
            updated_at         TIMESTAMP NOT NULL,
            synced_at          TIMESTAMP,         -- UTC, when finalized in Stripe
            status_checked_at  TIMESTAMP          -- UTC, last `billing stripe status`
        );
        CREATE TABLE IF NOT EXISTS stripe_items (
            invoice_number VARCHAR NOT NULL,
            line_no        INTEGER NOT NULL,      -- invoice_lines.line_no
            stripe_item_id VARCHAR NOT NULL,      -- ii_...
            amount_minor   BIGINT NOT NULL,
            created_at     TIMESTAMP NOT NULL     -- one row per (invoice_number, line_no)
        );
        """,
    ),
    Migration(
        "0202_stripe_attempts",
        """
        CREATE TABLE IF NOT EXISTS stripe_attempts (
            scope      VARCHAR NOT NULL,   -- 'customer:acme', 'invoice:INV-000001',
                                           -- 'item:INV-000001:3', 'finalize:INV-000001'
            attempt    INTEGER NOT NULL,   -- the next idempotency key is '<base>~<attempt>'
            updated_at TIMESTAMP NOT NULL  -- one row per scope
        );
        """,
    ),
)
