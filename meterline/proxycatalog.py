"""The catalog as the proxy reads it: only the parts it uses are validated.

The proxy uses ``providers``, ``consumers`` (keys, injection), ``routes``, and for
governance ``features``, ``plans`` (entitlements, billing cadence, currency, and the
rate cards of prepaid plans, whose running cost it bounds) and ``customers``
(consumers, subscriptions, entitlement overrides, currency). What only billing reads
(``seller``, ``payment_terms``, ``alerts``, a customer's ``invoicing`` and ``email``,
the rate cards of plans that are not prepaid) is left out before validation, so a
pricing typo there never keeps a running proxy from picking up a new consumer key.
``billing catalog check`` still validates the whole file.

Only sections and fields known to be billing's are dropped: anything else (an unknown
top-level key included) is validated as usual, so a typo in what the proxy uses is
still an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meterline.catalog import Catalog, load_catalog

BILLING_ONLY_SECTIONS: frozenset[str] = frozenset({"seller", "payment_terms", "alerts"})
BILLING_ONLY_CUSTOMER_FIELDS: frozenset[str] = frozenset({"invoicing", "email"})


def _plan(plan: object) -> object:
    if not isinstance(plan, dict) or plan.get("prepaid", False) is not False:
        return plan  # a prepaid plan's prices bound its credit: the proxy uses them
    return {k: v for k, v in plan.items() if k != "rate_cards"}


def _customer(customer: object) -> object:
    if not isinstance(customer, dict):
        return customer
    return {k: v for k, v in customer.items() if k not in BILLING_ONLY_CUSTOMER_FIELDS}


def proxy_view(data: dict[str, Any]) -> dict[str, Any]:
    """The parsed catalog without what only billing reads (list indices are kept)."""
    out = {k: v for k, v in data.items() if k not in BILLING_ONLY_SECTIONS}
    if isinstance(out.get("plans"), list):
        out["plans"] = [_plan(p) for p in out["plans"]]
    if isinstance(out.get("customers"), list):
        out["customers"] = [_customer(c) for c in out["customers"]]
    return out


def load_proxy_catalog(path: Path | str) -> Catalog:
    """:func:`meterline.catalog.load_catalog` of the proxy's view of the file."""
    return load_catalog(path, proxy_view)
