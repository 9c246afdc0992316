"""The alert outbox, beside the other tables of the store, as a named migration."""

from meterline.migrations import Migration

ALERT_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0301_alert_outbox",
        """
        CREATE TABLE IF NOT EXISTS alert_outbox (
            event_id        VARCHAR NOT NULL,  -- 'evt_<hex>': stable per (customer, rule, period)
            webhook_url     VARCHAR NOT NULL,
            customer_key    VARCHAR NOT NULL,
            kind            VARCHAR NOT NULL,  -- entitlement.threshold | credit.balance_below |
                                               -- spend.above
            period_start    TIMESTAMP NOT NULL, -- UTC: the period the threshold was crossed in
            payload         VARCHAR NOT NULL,  -- the JSON body, byte for byte as signed and sent
            created_at      TIMESTAMP NOT NULL,
            attempts        INTEGER NOT NULL,
            next_attempt_at TIMESTAMP NOT NULL,
            delivered_at    TIMESTAMP,          -- NULL until a 2xx answer
            last_error      VARCHAR
        );
        """,
    ),
)
