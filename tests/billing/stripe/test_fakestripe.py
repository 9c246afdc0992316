"""The fake Stripe keeps to the API the installed SDK describes, and to Stripe's semantics.

If the fake accepted what Stripe refuses, the sync tests would prove nothing; these
tests pin down the parts the sync relies on.
"""

from __future__ import annotations

import typing

import pytest
import stripe
from stripe import params as sp

from tests.billing.stripe.conftest import client_for
from tests.fakestripe import FakeStripe
from tests.fakestripe.params import REQUEST_OPTION_KEYS, shape_of


def test_allowed_keys_are_the_sdk_typeddict_keys() -> None:
    for td in (sp.InvoiceCreateParams, sp.InvoiceItemCreateParams, sp.CustomerCreateParams):
        declared = set(td.__annotations__) - REQUEST_OPTION_KEYS
        assert set(shape_of(td).fields) == declared
    nested = shape_of(sp.InvoiceItemCreateParams).fields["period"]
    assert set(shape_of(nested).fields) == set(typing.get_type_hints(nested))
    assert shape_of(nested).required == {"start", "end"}
    assert shape_of(sp.CustomerSearchParams).required == {"query"}


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda c: c.v1.customers.create({"nmae": "typo"}), "nmae"),
        (
            lambda c: c.v1.invoice_items.create(
                {"customer": "cus_x", "amount": 1, "currency": "usd", "period": {"begin": 1}}
            ),
            "period[begin]",
        ),
        (
            lambda c: c.v1.invoices.create({"customer": "cus_x", "pending_items": "include"}),
            "pending_items",
        ),
        (lambda c: c.v1.invoices.finalize_invoice("in_x", {"send": True}), "send"),
        (lambda c: c.v1.customers.search({"query": "email:'a'", "sort": "x"}), "sort"),
        (lambda c: c.v1.invoices.list({"customer": "cus_x", "meta": "x"}), "meta"),
    ],
)
def test_unknown_parameters_are_refused_like_stripe(fake: FakeStripe, call, param: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        call(client_for(fake))
    err = caught.value
    assert (err.http_status, err.code, err.param) == (400, "parameter_unknown", param)
    assert err.error.message == f"Received unknown parameter: {param}"
    assert err.request_id == fake.log[-1].request_id


def test_values_are_checked_against_their_declared_types(fake: FakeStripe) -> None:
    client = client_for(fake)
    cus = client.v1.customers.create({"name": "x"})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoice_items.create(
            {"customer": cus.id, "amount": "12.5", "currency": "usd"}  # type: ignore[typeddict-item]
        )
    assert (caught.value.code, caught.value.param) == ("parameter_invalid_integer", "amount")
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.search({})  # type: ignore[typeddict-item]
    assert (missing.value.code, missing.value.param) == ("parameter_missing", "query")


def test_idempotency_replays_and_refuses_other_params(fake: FakeStripe) -> None:
    client = client_for(fake)
    first = client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-1"})
    again = client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-1"})
    assert again.id == first.id
    assert fake.log[-1].replayed
    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.customers.create({"name": "B"}, {"idempotency_key": "k-1"})
    assert caught.value.http_status == 400
    assert caught.value.error.type == "idempotency_error"
    assert len(list(client.v1.customers.list().auto_paging_iter())) == 1
    fake.expire_idempotency_keys()
    assert client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-1"}).id != first.id


def test_invoice_items_attach_and_totals_follow(fake: FakeStripe) -> None:
    client = client_for(fake)
    cus = client.v1.customers.create({"name": "A", "metadata": {"meterline_customer": "a"}})
    pending = client.v1.invoice_items.create({"customer": cus.id, "amount": 700, "currency": "usd"})
    assert pending.invoice is None
    excluded = client.v1.invoices.create(
        {"customer": cus.id, "pending_invoice_items_behavior": "exclude"}
    )
    assert excluded.total == 0
    included = client.v1.invoices.create(
        {"customer": cus.id, "pending_invoice_items_behavior": "include"}
    )
    assert included.total == 700
    client.v1.invoice_items.create(
        {"customer": cus.id, "invoice": included.id, "amount": 300, "currency": "usd"}
    )
    assert client.v1.invoice_items.retrieve(pending.id).invoice == included.id
    final = client.v1.invoices.finalize_invoice(included.id)
    assert (final.status, final.total, final.amount_due) == ("open", 1000, 1000)
    assert final.number is not None
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.create(
            {"customer": cus.id, "invoice": included.id, "amount": 1, "currency": "usd"}
        )
    assert client.v1.invoices.pay(included.id).status == "paid"
    assert client.v1.invoices.finalize_invoice(excluded.id).status == "paid"  # nothing due
    found = client.v1.customers.search({"query": "metadata['meterline_customer']:'a'"})
    assert [c.id for c in found.data] == [cus.id]


def test_a_customer_is_invoiced_in_several_currencies(fake: FakeStripe) -> None:
    """Stripe's multi-currency customers: the first currency is the customer's default,
    others are still invoiced; an invoice takes only pending items in its currency, and
    an item put on an invoice must share its currency."""
    client = client_for(fake)
    cus = client.v1.customers.create({"name": "A"})
    client.v1.invoice_items.create({"customer": cus.id, "amount": 1, "currency": "eur"})
    assert client.v1.customers.retrieve(cus.id).currency == "eur"
    usd_item = client.v1.invoice_items.create({"customer": cus.id, "amount": 7, "currency": "usd"})
    usd = client.v1.invoices.create(
        {"customer": cus.id, "currency": "usd", "pending_invoice_items_behavior": "include"}
    )
    assert (usd.currency, usd.total) == ("usd", 7)
    assert client.v1.invoice_items.retrieve(usd_item.id).invoice == usd.id
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoice_items.create(
            {"customer": cus.id, "invoice": usd.id, "amount": 1, "currency": "eur"}
        )
    assert caught.value.error.param == "currency"


def test_errors_have_stripes_shape(fake: FakeStripe) -> None:
    client = client_for(fake)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.invoices.retrieve("in_missing")
    err = caught.value
    assert (err.http_status, err.code, err.error.message) == (
        404,
        "resource_missing",
        "No such invoice: 'in_missing'",
    )
    assert err.json_body == {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            "message": "No such invoice: 'in_missing'",
        }
    }


def test_lists_page_newest_first(fake: FakeStripe) -> None:
    client = client_for(fake)
    made = [client.v1.customers.create({"name": f"c{n}"}).id for n in range(5)]
    first = client.v1.customers.list({"limit": 2})
    assert [c.id for c in first.data] == made[::-1][:2]
    assert first.has_more
    every = [c.id for c in client.v1.customers.list({"limit": 2}).auto_paging_iter()]
    assert every == made[::-1]


def test_objects_carry_only_fields_the_sdk_declares(fake: FakeStripe) -> None:
    client = client_for(fake)
    cus = client.v1.customers.create({"name": "A"})
    inv = client.v1.invoices.create({"customer": cus.id, "collection_method": "send_invoice",
                                     "days_until_due": 7})  # fmt: skip
    client.v1.invoice_items.create(
        {"customer": cus.id, "invoice": inv.id, "amount": 5, "currency": "usd"}
    )
    for obj, resource in (
        (client.v1.customers.retrieve(cus.id), stripe.Customer),
        (client.v1.invoices.retrieve(inv.id), stripe.Invoice),
        (client.v1.invoice_items.list().data[0], stripe.InvoiceItem),
    ):
        declared = set().union(*(getattr(k, "__annotations__", {}) for k in resource.__mro__))
        assert set(obj.to_dict()) <= declared
    assert "days_until_due" not in client.v1.invoices.retrieve(inv.id).to_dict()
