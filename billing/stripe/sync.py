"""Push finalized invoices to Stripe exactly once: resumable steps, idempotent creates.

For one of our invoices the sync walks these steps, each recorded in the sync state the
moment Stripe answers (see :mod:`billing.stripe.schema`):

1. customer — the stored Stripe id, else a customer whose metadata
   ``meterline_customer`` is ours (search), else create one
   (``Idempotency-Key: meterline-customer-<key>``);
2. invoice  — the stored id, else an invoice of that customer whose metadata
   ``meterline_invoice`` is our number (listing is consistent at once), else create a
   draft (``meterline-invoice-<number>``) with ``auto_advance=false`` (Stripe must not
   finalize it before every item is on it) and pending items excluded (items of other
   invoices stay off it);
3. items    — one invoice item per non-zero line, created with ``invoice=`` on the
   draft (``meterline-item-<number>-<line>``), unless stored or already on the draft;
4. check    — Stripe's total must equal ours in minor units, else the invoice is
   *flagged* with the reason and left a draft;
5. finalize — ``meterline-finalize-<number>``; the Stripe status is stored.

Looking before creating covers crashes older than Stripe's idempotency window
(24 hours); the idempotency keys cover the call whose answer was lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing.errors import UserError
from billing.money import minor_unit_exponent
from billing.stripe.amounts import AmountError, show_minor, to_minor
from billing.stripe.client import (
    META_CUSTOMER,
    META_INVOICE,
    META_LINE,
    StripeFailure,
    StripeGateway,
    field,
    metadata,
)
from billing.stripe.syncstate import Line, OurInvoice, SyncRow, SyncState
from meterline.catalog import Catalog, Customer


class SyncError(UserError):
    """A problem the user must resolve before this invoice can be synced; one line."""


def customer_key_idem(customer_key: str) -> str:
    return f"meterline-customer-{customer_key}"


def invoice_idem(number: str) -> str:
    return f"meterline-invoice-{number}"


def item_idem(number: str, line_no: int) -> str:
    return f"meterline-item-{number}-{line_no}"


def finalize_idem(number: str) -> str:
    return f"meterline-finalize-{number}"


# --------------------------------------------------------------------------- descriptions


def _plain(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _price(value: Decimal, currency: str) -> str:
    """A unit price with at least the currency's minor digits: ``49.00``, ``0.0000025``."""
    text = _plain(value)
    decimals = len(text.partition(".")[2])
    exponent = minor_unit_exponent(currency)
    return f"{value:.{exponent}f}" if decimals < exponent else text


def describe_line(line: Line, currency: str) -> str:
    """The item description: our line's text with its quantity and unit price."""
    quantity = _plain(line.quantity)
    if line.unit_price is None:
        return f"{line.description} ({quantity} units)"
    return f"{line.description} ({quantity} × {_price(line.unit_price, currency)} {currency})"


# --------------------------------------------------------------------------- params


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


# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class Outcome:
    number: str
    customer_key: str
    stripe_invoice_id: str
    stripe_status: str
    total: str
    flagged_reason: str | None = None

    def line(self) -> str:
        if self.flagged_reason:
            return (
                f"{self.number}  {self.customer_key}  FLAGGED, not finalized: {self.flagged_reason}"
            )
        return (
            f"{self.number}  {self.customer_key}  {self.total}  -> {self.stripe_invoice_id} "
            f"({self.stripe_status})"
        )


# --------------------------------------------------------------------------- the sync


class Syncer:
    """Runs the steps for one invoice at a time against one gateway and one sync_state."""

    def __init__(self, catalog: Catalog, sync_state: SyncState, gateway: StripeGateway) -> None:
        self.catalog = catalog
        self.sync_state = sync_state
        self.gw = gateway

    def sync(self, invoice: OurInvoice) -> Outcome:
        """Take ``invoice`` as far as it can go; failures are recorded, then raised."""
        try:
            return self._sync(invoice)
        except (StripeFailure, SyncError, AmountError) as err:
            message = str(err)
            if not message.startswith(invoice.number):
                message = f"{invoice.number}: {message}"
            self.sync_state.record_error(invoice.number, invoice.customer_key, message)
            raise SyncError(message) from err

    def _sync(self, invoice: OurInvoice) -> Outcome:
        customer = catalog_customer(self.catalog, invoice)
        total = our_total_minor(invoice)
        cus_id = self.ensure_customer(customer, invoice.currency)
        self.sync_state.start(invoice.number, invoice.customer_key, cus_id, total)
        row = self.sync_state.row(invoice.number)
        assert row is not None
        stripe_invoice = self.ensure_invoice(invoice, customer, cus_id, row)
        if stripe_invoice.status == "draft":
            self.ensure_items(invoice, cus_id, stripe_invoice.id)
            stripe_invoice = self.gw.retrieve_invoice(stripe_invoice.id)
        shown = show_minor(total, invoice.currency)
        if stripe_invoice.total != total:
            reason = (
                f"Stripe total {show_minor(stripe_invoice.total, invoice.currency)} "
                f"!= our total {shown} on {stripe_invoice.id}"
            )
            self.sync_state.flag(
                invoice.number, stripe_invoice.total, stripe_invoice.status, reason
            )
            return Outcome(
                invoice.number,
                invoice.customer_key,
                stripe_invoice.id,
                stripe_invoice.status,
                shown,
                reason,
            )
        if stripe_invoice.status == "draft":
            stripe_invoice = self.gw.finalize_invoice(
                stripe_invoice.id, finalize_idem(invoice.number)
            )
        self.sync_state.finalized(invoice.number, stripe_invoice.total, stripe_invoice.status)
        return Outcome(
            invoice.number, invoice.customer_key, stripe_invoice.id, stripe_invoice.status, shown
        )

    # -------------------------------------------------------------- step 1

    def ensure_customer(self, customer: Customer, currency: str) -> str:
        stored = self.sync_state.customer_id(customer.key)
        if stored is not None:
            found = self.gw.retrieve_customer(stored)
            if field(found, "deleted"):
                raise SyncError(
                    f"customer {customer.key!r}: its Stripe customer {stored} was deleted in "
                    "Stripe; delete its row from stripe_customers to link or create another"
                )
        else:
            matches = self.gw.find_customers(customer.key)
            if len(matches) > 1:
                ids = ", ".join(c.id for c in matches)
                raise SyncError(
                    f"customer {customer.key!r}: several Stripe customers carry "
                    f"{META_CUSTOMER}={customer.key}: {ids}; keep one and remove the "
                    "metadata from the others"
                )
            found = (
                matches[0]
                if matches
                else self.gw.create_customer(
                    customer_params(customer), customer_key_idem(customer.key)
                )
            )
            self.sync_state.link_customer(customer.key, found.id)
        stripe_currency = field(found, "currency")
        if stripe_currency and stripe_currency.upper() != currency.upper():
            raise SyncError(
                f"currency mismatch: Stripe customer {found.id} for {customer.key!r} already "
                f"bills in {stripe_currency.upper()}, this invoice is in {currency.upper()}"
            )
        return found.id

    # -------------------------------------------------------------- step 2

    def ensure_invoice(
        self, invoice: OurInvoice, customer: Customer, cus_id: str, row: SyncRow
    ) -> Any:
        if row.stripe_invoice_id:
            found = self.gw.retrieve_invoice(row.stripe_invoice_id)
        else:
            mine = [
                i
                for i in self.gw.invoices_of(cus_id)
                if metadata(i).get(META_INVOICE) == invoice.number
            ]
            if len(mine) > 1:
                ids = ", ".join(i.id for i in mine)
                raise SyncError(
                    f"several Stripe invoices carry {META_INVOICE}={invoice.number}: {ids}; "
                    "void or delete the extras"
                )
            found = (
                mine[0]
                if mine
                else self.gw.create_invoice(
                    invoice_params(invoice, customer, cus_id), invoice_idem(invoice.number)
                )
            )
        self.sync_state.set_invoice(invoice.number, found.id, found.status)
        return found

    # -------------------------------------------------------------- step 3

    def ensure_items(self, invoice: OurInvoice, cus_id: str, stripe_invoice_id: str) -> None:
        stored = self.sync_state.items(invoice.number)
        on_invoice: dict[int, str] | None = None
        for line in billable_lines(invoice):
            if line.line_no in stored:
                continue
            if on_invoice is None:
                on_invoice = {
                    int(meta[META_LINE]): item.id
                    for item in self.gw.items_of(stripe_invoice_id)
                    if (meta := metadata(item)).get(META_INVOICE) == invoice.number
                    and str(meta.get(META_LINE, "")).isdigit()
                }
            item_id = on_invoice.get(line.line_no)
            if item_id is None:
                item = self.gw.create_item(
                    item_params(invoice, line, cus_id, stripe_invoice_id),
                    item_idem(invoice.number, line.line_no),
                    f"line {line.line_no}",
                )
                item_id = item.id
            self.sync_state.add_item(
                invoice.number, line.line_no, item_id, to_minor(line.amount, invoice.currency)
            )
        self.sync_state.items_done(invoice.number)


# --------------------------------------------------------------------------- dry run


def dry_run_plan(invoice: OurInvoice, catalog: Catalog, sync_state: SyncState) -> list[str]:
    """What a sync would send for ``invoice``, from local state only (no request made)."""
    customer = catalog_customer(catalog, invoice)
    total = our_total_minor(invoice)
    out = [
        f"{invoice.number}  {invoice.customer_key}  {show_minor(total, invoice.currency)}"
        f"  ({len(billable_lines(invoice))} item(s))"
    ]
    row = sync_state.row(invoice.number)
    cus_id = sync_state.customer_id(invoice.customer_key)

    def post(path: str, key: str, params: dict[str, Any]) -> None:
        out.append(f"  POST {path}  Idempotency-Key: {key}")
        out.append(f"    {json.dumps(params, sort_keys=True, ensure_ascii=False)}")

    if cus_id is None:
        out.append(f"  customer: search metadata['{META_CUSTOMER}']:'{customer.key}', else create:")
        post("/v1/customers", customer_key_idem(customer.key), customer_params(customer))
        cus_ref = f"<customer {customer.key}>"
    else:
        out.append(f"  customer: {cus_id} (linked)")
        cus_ref = cus_id
    if row is not None and row.stripe_invoice_id:
        out.append(f"  invoice: {row.stripe_invoice_id} (exists, {row.stripe_status})")
        in_ref = row.stripe_invoice_id
    else:
        post(
            "/v1/invoices", invoice_idem(invoice.number), invoice_params(invoice, customer, cus_ref)
        )
        in_ref = f"<invoice {invoice.number}>"
    stored = sync_state.items(invoice.number)
    for line in billable_lines(invoice):
        if line.line_no in stored:
            out.append(f"  item line {line.line_no}: {stored[line.line_no]} (exists)")
        else:
            post(
                "/v1/invoiceitems",
                item_idem(invoice.number, line.line_no),
                item_params(invoice, line, cus_ref, in_ref),
            )
    out.append(f"  check: Stripe total must be {show_minor(total, invoice.currency)}, then")
    out.append(
        f"  POST /v1/invoices/{in_ref}/finalize  Idempotency-Key: {finalize_idem(invoice.number)}"
    )
    return out


ProgressFn = Callable[[str], None]


def sync_all(
    invoices: list[OurInvoice], syncer: Syncer, echo: ProgressFn
) -> tuple[list[Outcome], list[Outcome]]:
    """Sync in order, stopping at the first error; returns (finalized, flagged)."""
    done: list[Outcome] = []
    flagged: list[Outcome] = []
    for invoice in invoices:
        outcome = syncer.sync(invoice)
        echo(outcome.line())
        (flagged if outcome.flagged_reason else done).append(outcome)
    return done, flagged
