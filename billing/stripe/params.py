"""What the sync sends Stripe for an invoice, and the checks of what Stripe would refuse.

:func:`check_sendable` runs before any call for an invoice (a dry run too): an invoice
Stripe would refuse (more than 250 items, an item over eight digits, a too-long customer
name or metadata value, lines that do not add up to the total) is refused here in one
line, and the other invoices of the run still go.
"""

from __future__ import annotations

from typing import Any

from billing.stripe.amounts import STRIPE_THREE_DECIMAL, AmountError, show_minor, to_minor
from billing.stripe.client import META_CUSTOMER, META_INVOICE, META_LINE
from billing.stripe.describe import describe_line
from billing.stripe.errors import InvoiceRefused, SyncError
from billing.stripe.syncstate import Line, OurInvoice
from meterline.catalog import Catalog, Customer

MAX_INVOICE_ITEMS = 250
"""Stripe refuses a 251st invoice item on one invoice (API changelog 2016-02-22)."""
MAX_METADATA_VALUE = 500
"""Stripe's metadata values are up to 500 characters (https://docs.stripe.com/metadata)."""
MAX_CUSTOMER_NAME = 256
"""Stripe's limit on a customer's ``name`` (the API refuses longer ones)."""
MAX_ITEM_AMOUNT = 99_999_999
"""Stripe's largest ``amount``, in the currency's minor unit: eight digits
(https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts); an invoice item
above it is refused (``amount_too_large``), by absolute value for a credit too."""


def customer_params(customer: Customer) -> dict[str, Any]:
    params: dict[str, Any] = {"name": customer.name, "metadata": {META_CUSTOMER: customer.key}}
    if customer.email:
        params["email"] = customer.email
    return params


def invoice_params(invoice: OurInvoice, customer: Customer, stripe_customer_id: str) -> dict:
    params: dict[str, Any] = {
        "customer": stripe_customer_id,
        "currency": invoice.currency.lower(),
        "collection_method": customer.invoicing.collection_method,
        "auto_advance": False,
        "pending_invoice_items_behavior": "exclude",
        "description": (
            f"Meterline invoice {invoice.number}, usage "
            f"{invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d} (UTC)"
        ),
        "metadata": {META_INVOICE: invoice.number, META_CUSTOMER: invoice.customer_key},
    }
    if customer.invoicing.collection_method == "send_invoice":
        params["days_until_due"] = customer.invoicing.days_until_due
    return params


def item_params(
    invoice: OurInvoice, line: Line, stripe_customer_id: str, stripe_invoice_id: str
) -> dict[str, Any]:
    return {
        "customer": stripe_customer_id,
        "invoice": stripe_invoice_id,
        "amount": to_minor(line.amount, invoice.currency),
        "currency": invoice.currency.lower(),
        "description": describe_line(line, invoice.currency),
        "metadata": {META_INVOICE: invoice.number, META_LINE: str(line.line_no)},
    }


def billable_lines(invoice: OurInvoice) -> list[Line]:
    """Lines Stripe gets an item for: every line with a non-zero amount."""
    return [line for line in invoice.lines if to_minor(line.amount, invoice.currency) != 0]


def our_total_minor(invoice: OurInvoice) -> int:
    total = to_minor(invoice.total, invoice.currency)
    lines = sum(to_minor(line.amount, invoice.currency) for line in invoice.lines)
    if lines != total:
        raise SyncError(
            f"{invoice.number}: its lines add up to {show_minor(lines, invoice.currency)} but its "
            f"total is {show_minor(total, invoice.currency)}; not sent"
        )
    return total


def catalog_customer(catalog: Catalog, invoice: OurInvoice) -> Customer:
    try:
        return catalog.customer(invoice.customer_key)
    except KeyError:
        raise SyncError(
            f"{invoice.number}: customer {invoice.customer_key!r} is not in the catalog"
        ) from None


def check_sendable(invoice: OurInvoice, catalog: Catalog) -> Customer:
    """The invoice's catalog customer, or :class:`InvoiceRefused` for anything we or
    Stripe would refuse; checked before any Stripe call for the invoice (dry run too)."""
    try:
        customer = catalog_customer(catalog, invoice)
        our_total_minor(invoice)
        items = len(billable_lines(invoice))
    except (SyncError, AmountError) as err:
        message = str(err)
        if not message.startswith(invoice.number):
            message = f"{invoice.number}: {message}"
        raise InvoiceRefused(message) from err
    too_large = _first_too_large(invoice)
    if too_large is not None:
        raise InvoiceRefused(
            f"{invoice.number}: line {too_large.line_no} ({_short(too_large.description)}) is "
            f"{show_minor(to_minor(too_large.amount, invoice.currency), invoice.currency)}, but "
            f"Stripe allows at most {MAX_ITEM_AMOUNT} minor units "
            f"({show_minor(MAX_ITEM_AMOUNT, invoice.currency)}) per invoice item"
        )
    if items > MAX_INVOICE_ITEMS:
        raise InvoiceRefused(
            f"{invoice.number}: {items} non-zero lines, but Stripe allows at most "
            f"{MAX_INVOICE_ITEMS} invoice items per invoice"
        )
    if len(customer.name) > MAX_CUSTOMER_NAME:
        raise InvoiceRefused(
            f"{invoice.number}: customer {_short(customer.key)!r}: its name has "
            f"{len(customer.name)} characters, Stripe allows at most {MAX_CUSTOMER_NAME}; "
            "shorten it in the catalog"
        )
    if len(customer.key) > MAX_METADATA_VALUE:
        raise InvoiceRefused(
            f"{invoice.number}: customer key {_short(customer.key)!r} has {len(customer.key)} "
            f"characters, but it goes into Stripe metadata ({META_CUSTOMER}), whose values "
            f"are at most {MAX_METADATA_VALUE}"
        )
    return customer


def payment_rounding_note(invoice: OurInvoice) -> str | None:
    """The NOTE line for an invoice in a three-decimal currency whose total or items are
    not whole tens of minor units, which Stripe may refuse to charge (see
    :data:`STRIPE_THREE_DECIMAL`); None otherwise. The invoice is still sent as billed:
    a finalized invoice is never rounded after the fact."""
    currency = invoice.currency
    if currency.upper() not in STRIPE_THREE_DECIMAL:
        return None
    odd = [
        str(line.line_no)
        for line in billable_lines(invoice)
        if to_minor(line.amount, currency) % 10
    ]
    total = to_minor(invoice.total, currency)
    if not odd and total % 10 == 0:
        return None
    what = [f"total {show_minor(total, currency)}"] if total % 10 else []
    if odd:
        what.append(f"line(s) {', '.join(odd)}")
    return (
        f"{invoice.number}  {invoice.customer_key}  NOTE: {', '.join(what)} not a multiple of "
        f"10 minor units; Stripe wants {currency} amounts rounded to the nearest ten for "
        "payments and may refuse to charge this invoice; sent as billed"
    )


def _first_too_large(invoice: OurInvoice) -> Line | None:
    """The first line whose amount Stripe refuses as an invoice item (over 8 digits)."""
    for line in billable_lines(invoice):
        if abs(to_minor(line.amount, invoice.currency)) > MAX_ITEM_AMOUNT:
            return line
    return None


def _short(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else f"{text[:keep]}..."
