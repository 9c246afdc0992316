"""Stripe sync: push finalized Meterline invoices to Stripe exactly once.

``schema`` holds the state tables, ``client`` the thin SDK wrapper, ``sync`` the
step-by-step, resumable push, ``status`` the pull of Stripe's invoice status.

The billing core knows nothing of Stripe: importing this package registers its tables
and the ``stripe_status`` column of invoice listings (``billing.extensions``). It does
not import the Stripe SDK (``client`` does, when a sync runs).
"""

from billing import extensions
from billing.stripe.listing import stripe_statuses
from billing.stripe.schema import STRIPE_MIGRATIONS

extensions.register_migrations(STRIPE_MIGRATIONS)
extensions.register_invoice_column("stripe_status", "stripe", stripe_statuses)
