"""Billing's tables, beside ``usage_events`` in the same store, as named migrations.

Money columns are ``DECIMAL(38, 12)`` in the currency's major unit; rounded amounts
(line amounts, totals) carry the currency's minor unit and no more.
"""

from meterline.migrations import Migration

BILLING_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0101_invoices",
        """
        CREATE TABLE IF NOT EXISTS invoices (
            number         VARCHAR NOT NULL,   -- 'INV-000001', sequential, never reused
            seq            BIGINT NOT NULL,
            customer_key   VARCHAR NOT NULL,
            currency       VARCHAR NOT NULL,
            period_start   TIMESTAMP NOT NULL, -- UTC, inclusive
            period_end     TIMESTAMP NOT NULL, -- UTC, exclusive
            watermark      TIMESTAMP NOT NULL, -- events ingested at or before it are billed here
            issued_at      TIMESTAMP NOT NULL, -- UTC, when it was finalized
            status         VARCHAR NOT NULL,   -- 'finalized'
            total          DECIMAL(38, 12) NOT NULL, -- sum of the rounded line amounts
            catalog_digest VARCHAR NOT NULL    -- sha256 of the catalog the prices came from
        );
        CREATE TABLE IF NOT EXISTS invoice_lines (
            invoice_number VARCHAR NOT NULL,
            line_no        INTEGER NOT NULL,   -- 1-based, stable
            kind           VARCHAR NOT NULL,   -- 'flat' | 'usage' | 'late_usage'
            rate_card_key  VARCHAR NOT NULL,
            feature_key    VARCHAR,
            plan_key       VARCHAR NOT NULL,
            description    VARCHAR NOT NULL,
            usage_start    TIMESTAMP NOT NULL, -- the usage window this line bills, UTC
            usage_end      TIMESTAMP NOT NULL,
            quantity       DECIMAL(38, 12) NOT NULL, -- units (tokens) or 1 for a flat fee
            unit_price     DECIMAL(38, 12),    -- per unit; NULL where tiers apply
            amount         DECIMAL(38, 12) NOT NULL, -- rounded to the currency's minor unit
            detail         JSON NOT NULL       -- price snapshot, tiers used, windows, filter
        );
        """,
    ),
    Migration(
        "0102_invoice_windows",
        """
        -- What each invoice swept: one row per (usage window, ingested range). The next
        -- invoice of the customer bills events of an already-swept window that were
        -- ingested after max(ingested_until) as late usage, so no event is billed twice.
        CREATE TABLE IF NOT EXISTS invoice_windows (
            invoice_number VARCHAR NOT NULL,
            customer_key   VARCHAR NOT NULL,
            plan_key       VARCHAR NOT NULL,
            consumers      VARCHAR[] NOT NULL, -- the customer's consumers when it was built
            kind           VARCHAR NOT NULL,   -- 'period' (its own) | 'late' (an earlier one)
            usage_start    TIMESTAMP NOT NULL, -- UTC, inclusive
            usage_end      TIMESTAMP NOT NULL, -- UTC, exclusive
            ingested_after TIMESTAMP,          -- exclusive; NULL: from the beginning
            ingested_until TIMESTAMP NOT NULL  -- inclusive: the invoice's watermark
        );
        """,
    ),
    Migration(
        "0103_invoice_sequence",
        """
        -- The last invoice number given: one row, updated in the transaction that stores
        -- invoices. On a DuckLake two runs at once would both take max(seq) + 1 (no
        -- constraint stops a second INSERT); both updating this row, one commit fails.
        CREATE TABLE IF NOT EXISTS invoice_sequence (
            name     VARCHAR NOT NULL, -- 'invoices'
            last_seq BIGINT NOT NULL
        );
        INSERT INTO invoice_sequence SELECT 'invoices', coalesce(max(seq), 0) FROM invoices;
        """,
    ),
)
