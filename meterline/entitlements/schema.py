"""Governance tables beside ``usage_events``: credit grants and what invoices consumed.

Grants are in the customer's currency or, with ``feature_key`` set, in a feature's units.

Billing writes both (``billing credits grant``, invoice finalization); the proxy only
reads them to know each prepaid customer's balance. Money is ``DECIMAL(38, 12)`` in the
currency's major unit.
"""

from meterline.migrations import Migration

GOVERNANCE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0201_credit_grants",
        """
        CREATE TABLE IF NOT EXISTS credit_grants (
            grant_id    VARCHAR NOT NULL,          -- 'grant-000001', sequential
            seq         BIGINT NOT NULL,
            customer_key VARCHAR NOT NULL,
            currency    VARCHAR NOT NULL,
            amount      DECIMAL(38, 12) NOT NULL,  -- > 0, major unit
            priority    INTEGER NOT NULL,          -- lower is consumed first
            expires_at  TIMESTAMP,                 -- UTC, exclusive; NULL: never
            granted_at  TIMESTAMP NOT NULL,        -- UTC
            granted_by  VARCHAR NOT NULL,          -- who ran the command
            reason      VARCHAR NOT NULL
        );
        CREATE TABLE IF NOT EXISTS credit_consumptions (
            invoice_number VARCHAR NOT NULL,
            grant_id       VARCHAR NOT NULL,
            customer_key   VARCHAR NOT NULL,
            amount         DECIMAL(38, 12) NOT NULL,  -- > 0, taken from the grant
            consumed_at    TIMESTAMP NOT NULL         -- the invoice's issue time, UTC
        );
        """,
    ),
    Migration(
        "0202_credit_grants_feature_units",
        # A unit grant: ``feature_key`` names the feature and ``amount`` counts its units
        # (``currency`` keeps the customer's currency, unused). NULL: a currency grant.
        # ``credit_consumptions.amount`` of a unit grant counts units too.
        "ALTER TABLE credit_grants ADD COLUMN IF NOT EXISTS feature_key VARCHAR;",
    ),
)
