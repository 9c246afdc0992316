"""The one base of the errors a user can fix, and the domain errors built on it.

Every error billing raises for a mistake in the request, the catalog or the data
(an unknown customer, a month not yet started, an invoice Stripe refused) derives from
:class:`UserError`. The CLI maps that base once to one ``Error: ...`` line and exit
code 1 (``billing/cli/common.py``); anything else is a bug and keeps its traceback.
Messages speak of the domain (customers, periods, invoices), never of command-line
flags: the CLI adds those where a flag is the fix.
"""

from __future__ import annotations

from meterline.catalog import Catalog


class UserError(Exception):
    """A problem the user can fix; ``str()`` is the whole message, one line."""


class BillingError(UserError, ValueError):
    """A request billing cannot fulfil (unknown customer or invoice, bad period)."""


class NoUsage(BillingError):
    """Invoices would be finalized from a store that holds no usage events at all."""


class NotGenerated(BillingError):
    """A month whose invoices were never generated."""

    def __init__(self, month: str) -> None:
        super().__init__(f"no invoices for {month}: that month was never generated")
        self.month = month


class UnknownCustomer(BillingError):
    """A customer key that is not in the catalog; the message lists the known ones."""

    def __init__(self, catalog: Catalog, key: str) -> None:
        super().__init__(unknown_customer_message(catalog, key))
        self.key = key


def unknown_customer_message(catalog: Catalog, key: str) -> str:
    """``unknown customer 'x' (known: a, b)``, and what ``x`` is when it is a consumer."""
    known = ", ".join(sorted(c.key for c in catalog.customers)) or "none in the catalog"
    message = f"unknown customer {key!r}"
    if any(c.name == key for c in catalog.consumers):
        billed_to = [c.key for c in catalog.customers if key in c.consumers]
        if billed_to:
            message += f": {key!r} is a consumer, billed to customer {billed_to[0]!r}"
        else:
            message += f": {key!r} is a consumer, billed to no customer"
    return f"{message} (known customers: {known})"
