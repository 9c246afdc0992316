"""The SDK wrapper and the customer / invoice-item steps against a real ``localstripe``.

localstripe is an independent implementation of Stripe's API: it stores customers and
invoice items, but has no search API and refuses invoices for customers without a
subscription, so only the customer find-or-create and the item calls are tested here
(the whole flow runs against tests/fakestripe in test_sync.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.stripe.amounts import to_minor
from billing.stripe.client import StripeFailure, StripeGateway, metadata
from billing.stripe.params import item_params, our_total_minor
from billing.stripe.sync import Syncer
from billing.stripe.syncstate import SyncState
from meterline.catalog import load_catalog
from tests.billing.stripe.conftest import CATALOG, make_billed

LOCALSTRIPE_KEY = "sk_test_localstripe"
EURO_CATALOG = CATALOG.replace("USD", "EUR").replace("JPY", "EUR")
"""localstripe reports every customer's currency as EUR (its "arbitrary default")."""


def test_customer_found_or_created_once_on_localstripe(localstripe: str, tmp_path: Path) -> None:
    gateway = StripeGateway(LOCALSTRIPE_KEY, localstripe, max_network_retries=0)
    first = make_billed(tmp_path / "first", EURO_CATALOG)
    catalog = load_catalog(first.catalog)
    # Keyed per test run: localstripe's state lives as long as its process.
    key = "acme"
    before = {c.id for c in gateway.find_customers(key)}
    assert before == set()

    made = Syncer(catalog, SyncState(first.db), gateway).ensure_customer(catalog.customer(key))
    again = Syncer(catalog, SyncState(first.db), gateway).ensure_customer(catalog.customer(key))
    assert again == made  # the stored link
    # A second store that never saw it finds it by metadata (localstripe: by listing).
    second = make_billed(tmp_path / "second", EURO_CATALOG)
    found = Syncer(catalog, SyncState(second.db), gateway).ensure_customer(catalog.customer(key))
    assert found == made
    assert [c.id for c in gateway.find_customers(key)] == [made]
    stored = gateway.retrieve_customer(made)
    assert (stored.name, stored.email, metadata(stored)) == (
        "Acme Corp",
        "billing@acme.test",
        {"meterline_customer": "acme"},
    )


def test_invoice_items_on_localstripe_carry_our_amounts(localstripe: str, tmp_path: Path) -> None:
    gateway = StripeGateway(LOCALSTRIPE_KEY, localstripe, max_network_retries=0)
    billed = make_billed(tmp_path, EURO_CATALOG)
    catalog = load_catalog(billed.catalog)
    invoice = next(i for i in SyncState(billed.db).unsynced() if i.customer_key == "umbrella")
    cus_id = Syncer(catalog, SyncState(billed.db), gateway).ensure_customer(
        catalog.customer("umbrella")
    )
    for line in invoice.lines:
        params = item_params(invoice, line, cus_id, "unused")
        del params["invoice"]  # localstripe cannot make the invoice: items stay pending
        gateway.create_item(params, f"meterline-item-{invoice.number}-{line.line_no}", "line")
    items = gateway.pending_items_of(cus_id)
    amounts = {int(metadata(i)["meterline_line"]): (i.amount, i.currency) for i in items}
    assert amounts == {
        line.line_no: (to_minor(line.amount, "EUR"), "eur") for line in invoice.lines
    }
    assert sum(a for a, _ in amounts.values()) == our_total_minor(invoice)


def test_stripe_errors_become_one_line(localstripe: str) -> None:
    gateway = StripeGateway(LOCALSTRIPE_KEY, localstripe, max_network_retries=0)
    with pytest.raises(StripeFailure) as caught:
        gateway.retrieve_customer("cus_doesnotexist")
    message = str(caught.value)
    assert message.startswith("Stripe retrieve customer cus_doesnotexist failed: HTTP 404 ")
    assert "\n" not in message
