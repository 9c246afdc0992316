"""Alerts: thresholds evaluated from the store, a durable outbox, signed webhooks.

- :mod:`billing.alerts.evaluate` turns the entitlement report and running invoice
  totals into alert events, each with a stable id (customer, rule, threshold, period;
  with the period's end when a feature has several limits): a threshold crossed fires
  once per period however often it is evaluated.
- :mod:`billing.alerts.outbox` keeps them in ``alert_outbox`` (one row per event and
  webhook) until a webhook acknowledges them (2xx); failures are retried with backoff.
- :mod:`billing.alerts.webhook` signs (HMAC-SHA256 over ``<timestamp>.<body>``) and posts.

Importing the package registers the outbox table with the billing store
(``billing.extensions``); the billing core does not know alerts.
"""

from billing import extensions
from billing.alerts.schema import ALERT_MIGRATIONS

extensions.register_migrations(ALERT_MIGRATIONS)
