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
   draft (``meterline-item-<number>-<line>``) unless Stripe lists it on the draft
   (an item deleted there is added again, under a new key);
4. check    — Stripe's total must equal ours in minor units, else the invoice is
   *flagged* with the reason and left a draft;
5. finalize — ``meterline-finalize-<number>``; the Stripe status is stored.

Looking before creating covers crashes older than Stripe's idempotency window
(24 hours); the idempotency keys cover the call whose answer was lost.

Stripe saves the answer of a request under its key even when it is an error (a 500
too), and replays it for 24 hours. So when Stripe *answered* a create or finalize with
an error, its attempt number is bumped in ``stripe_attempts``, and the next try, which
always comes after a consistent lookup found nothing (listing; for customers, a full
listing instead of the eventually consistent search), uses a new key
(``<base>~<attempt>``, :mod:`billing.stripe.idempotency`). A call that got *no* answer
keeps its key: its object may exist and only that key can replay it.

Before any call for an invoice, :func:`~billing.stripe.params.check_sendable` refuses
what Stripe would refuse (more than 250 items, a too-long customer name or metadata
value); the other invoices of the run still go.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from billing.stripe.amounts import AmountError, show_minor, to_minor
from billing.stripe.client import (
    META_CUSTOMER,
    META_INVOICE,
    META_LINE,
    StripeFailure,
    StripeGateway,
    field,
    metadata,
    replayed,
)
from billing.stripe.errors import InvoiceRefused, RunStopped, SyncError
from billing.stripe.idempotency import (
    customer_key_idem,
    customer_scope,
    finalize_idem,
    finalize_scope,
    invoice_idem,
    invoice_scope,
    item_idem,
    item_scope,
)
from billing.stripe.params import (
    billable_lines,
    check_sendable,
    customer_params,
    invoice_params,
    item_params,
    our_total_minor,
    payment_rounding_note,
)
from billing.stripe.syncstate import Line, OurInvoice, SyncRow, SyncState
from meterline.catalog import Catalog, Customer

log = logging.getLogger(__name__)

T = TypeVar("T")
ProgressFn = Callable[[str], None]


def is_line_number(value: object) -> bool:
    """Whether an item's ``META_LINE`` metadata is a line number: ASCII digits only
    (``str.isdigit`` also takes ``²``, which ``int`` refuses; metadata is editable in
    Stripe's dashboard)."""
    text = str(value) if value is not None else ""
    return text.isascii() and text.isdigit()


def stops_the_run(err: StripeFailure) -> bool:
    """No answer, or an answer about the key (401 unknown, 403 not allowed), not the invoice."""
    return err.no_answer or err.http_status in (401, 403)


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


def abandoned(stripe_invoice: Any, invoice: OurInvoice) -> bool:
    """A Stripe invoice of ours that was voided with a total other than ours: someone
    finalized our half-built draft (we finalize only when the totals match), then voided
    it. It no longer counts as the invoice's; the sync builds a new one."""
    return stripe_invoice.status == "void" and stripe_invoice.total != to_minor(
        invoice.total, invoice.currency
    )


def mismatch_reason(stripe_invoice: Any, ours: str, currency: str) -> str:
    """Why a Stripe invoice whose total differs from ours is flagged, and what to do.

    The sync finalizes only when the totals match, so a finalized one with another total
    was finalized in Stripe by someone else (the dashboard) while it was half-built."""
    theirs = show_minor(stripe_invoice.total, currency)
    if stripe_invoice.status == "draft":
        return f"Stripe total {theirs} != our total {ours} on {stripe_invoice.id}"
    if stripe_invoice.status == "paid":
        return (
            f"{stripe_invoice.id} was finalized in Stripe by someone else with total {theirs}, "
            f"ours {ours}, and is paid: settle the difference in Stripe by hand"
        )
    return (
        f"{stripe_invoice.id} was finalized in Stripe by someone else with total {theirs}, "
        f"ours {ours}: void it in Stripe and run `billing stripe sync` to issue it again"
    )


# --------------------------------------------------------------------------- the sync


class Syncer:
    """Runs the steps for one invoice at a time against one gateway and one sync_state."""

    def __init__(
        self,
        catalog: Catalog,
        sync_state: SyncState,
        gateway: StripeGateway,
        note: ProgressFn | None = None,
    ) -> None:
        self.catalog = catalog
        self.sync_state = sync_state
        self.gw = gateway
        self.note: ProgressFn = note or log.warning
        """Where a repair the user should know of is told (the command's output)."""

    def sync(self, invoice: OurInvoice) -> Outcome:
        """Take ``invoice`` as far as it can go; failures are recorded, then raised
        (:class:`InvoiceRefused` when nothing was sent for it, :class:`RunStopped` when
        the next invoices would fail the same way)."""
        try:
            return self._sync(invoice)
        except (StripeFailure, SyncError, AmountError) as err:
            message = str(err)
            if not message.startswith(invoice.number):
                message = f"{invoice.number}: {message}"
            if isinstance(err, StripeFailure) and err.no_answer:
                message += "; run the sync again, it resumes where it stopped"
            self.sync_state.record_error(invoice.number, invoice.customer_key, message)
            kind: type[SyncError] = SyncError
            if isinstance(err, InvoiceRefused):
                kind = InvoiceRefused
            elif isinstance(err, StripeFailure) and stops_the_run(err):
                kind = RunStopped
            raise kind(message) from err

    def _attempted(self, scope: str, send: Callable[[int], T]) -> T:
        """``send(attempt)`` with the scope's attempt number; if Stripe answers an error
        (which it saves under the key and would replay for 24 hours), the next attempt
        gets a new number, so a new key. Callers only send after a lookup found nothing.
        """
        attempt = self.sync_state.attempt(scope)
        try:
            return send(attempt)
        except StripeFailure as err:
            if err.saved_answer:
                self.sync_state.set_attempt(scope, attempt + 1)
            raise

    def _sync(self, invoice: OurInvoice) -> Outcome:
        customer = check_sendable(invoice, self.catalog)
        total = our_total_minor(invoice)
        rounding = payment_rounding_note(invoice)
        if rounding is not None:
            self.note(rounding)
        cus_id = self.ensure_customer(customer)
        self.sync_state.start(invoice.number, invoice.customer_key, cus_id, total)
        row = self.sync_state.row(invoice.number)
        assert row is not None
        stripe_invoice = self.ensure_invoice(invoice, customer, cus_id, row)
        if stripe_invoice.status == "draft":
            self.ensure_items(invoice, cus_id, stripe_invoice.id)
            stripe_invoice = self.gw.retrieve_invoice(stripe_invoice.id)
        shown = show_minor(total, invoice.currency)
        if stripe_invoice.total != total:
            reason = mismatch_reason(stripe_invoice, shown, invoice.currency)
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
            draft_id = stripe_invoice.id
            stripe_invoice = self._attempted(
                finalize_scope(invoice.number),
                lambda n: self.gw.finalize_invoice(draft_id, finalize_idem(invoice.number, n)),
            )
        self.sync_state.finalized(invoice.number, stripe_invoice.total, stripe_invoice.status)
        return Outcome(
            invoice.number, invoice.customer_key, stripe_invoice.id, stripe_invoice.status, shown
        )

    # -------------------------------------------------------------- step 1

    def ensure_customer(self, customer: Customer) -> str:
        """The Stripe customer's id. Its ``currency`` is not checked: Stripe invoices one
        customer in several currencies, each invoice taking only items in its own
        (https://docs.stripe.com/invoicing/multi-currency-customers), and we send every
        item with ``invoice=`` and the invoice's currency."""
        stored = self.sync_state.customer_id(customer.key)
        if stored is not None:
            found = self.gw.retrieve_customer(stored)
            if field(found, "deleted"):
                raise SyncError(
                    f"customer {customer.key!r}: its Stripe customer {stored} was deleted in "
                    "Stripe; delete its row from stripe_customers to link or create another"
                )
        else:
            # After an answered failed create, the next create has a new key: only a
            # consistent listing (not search) may decide that the customer is not there.
            retrying = self.sync_state.attempt(customer_scope(customer.key)) > 0
            matches = self.gw.find_customers(customer.key, consistent=retrying)
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
                else self._attempted(
                    customer_scope(customer.key),
                    lambda n: self.gw.create_customer(
                        customer_params(customer), customer_key_idem(customer.key, n)
                    ),
                )
            )
            self.sync_state.link_customer(customer.key, found.id)
        return found.id

    # -------------------------------------------------------------- step 2

    def ensure_invoice(
        self, invoice: OurInvoice, customer: Customer, cus_id: str, row: SyncRow
    ) -> Any:
        if row.stripe_invoice_id:
            try:
                found = self.gw.retrieve_invoice(row.stripe_invoice_id)
            except StripeFailure as err:
                # Only drafts can be deleted, and an invoice we have not finalized is
                # one (flagged too); a finalized one is never synced again.
                if not err.missing or row.state == "finalized":
                    raise
                self._forget_deleted_draft(invoice, row.stripe_invoice_id)
                return self.ensure_invoice(
                    invoice, customer, cus_id, replace(row, stripe_invoice_id=None)
                )
            if abandoned(found, invoice) and row.state != "finalized":
                self._forget_voided_invoice(invoice, found)
                return self.ensure_invoice(
                    invoice, customer, cus_id, replace(row, stripe_invoice_id=None)
                )
            owner = field(found, "customer")
            if found.status == "draft" and owner != cus_id:
                self._abandon_other_customers_draft(invoice, found.id, owner, cus_id)
                return self.ensure_invoice(
                    invoice, customer, cus_id, replace(row, stripe_invoice_id=None)
                )
        else:
            mine = [
                i
                for i in self.gw.invoices_of(cus_id)
                if metadata(i).get(META_INVOICE) == invoice.number and not abandoned(i, invoice)
            ]
            if len(mine) > 1:
                ids = ", ".join(i.id for i in mine)
                raise SyncError(
                    f"several Stripe invoices carry {META_INVOICE}={invoice.number}: {ids}; "
                    "void or delete the extras"
                )
            found = mine[0] if mine else self._create_draft(invoice, customer, cus_id)
        self.sync_state.set_invoice(invoice.number, found.id, found.status)
        return found

    def _create_draft(self, invoice: OurInvoice, customer: Customer, cus_id: str) -> Any:
        """Create the draft, after the listing found none.

        A replayed answer (``Idempotent-Replayed``) is the saved answer of an earlier
        request under this key whose answer was lost (a killed run): if the draft it
        names is gone, a user deleted it in Stripe since, so it is built again under a
        new key in this run. (One that is still there is this run's own: the SDK's
        retry of a call that got no answer.)
        """

        def send() -> Any:
            return self._attempted(
                invoice_scope(invoice.number),
                lambda n: self.gw.create_invoice(
                    invoice_params(invoice, customer, cus_id), invoice_idem(invoice.number, n)
                ),
            )

        made = send()
        if replayed(made) and not self._invoice_exists(made.id):
            self._forget_deleted_draft(invoice, made.id)
            made = send()
        return made

    def _invoice_exists(self, invoice_id: str) -> bool:
        try:
            found = self.gw.retrieve_invoice(invoice_id)
        except StripeFailure as err:
            if err.missing:
                return False
            raise
        return not field(found, "deleted")

    def _forget_deleted_draft(self, invoice: OurInvoice, draft_id: str) -> None:
        """A draft deleted in Stripe (only drafts can be: docs/stripe.md tells users to
        delete a half-built one) is built again, under new keys (the old finalize key,
        too, was sent for the deleted draft's path)."""
        self.note(
            f"{invoice.number}  {invoice.customer_key}  NOTE: Stripe draft {draft_id} was "
            "deleted in Stripe; building the invoice again"
        )
        self._start_invoice_again(invoice)

    def _forget_voided_invoice(self, invoice: OurInvoice, voided: Any) -> None:
        """Our half-built draft was finalized in Stripe by someone else, with a total
        other than ours, and then voided (as the flag's reason advises): the invoice is
        built again as a new draft, under new keys."""
        self.note(
            f"{invoice.number}  {invoice.customer_key}  NOTE: Stripe invoice {voided.id} was "
            f"finalized by someone else with total {show_minor(voided.total, invoice.currency)}"
            f" and voided; building the invoice again"
        )
        self._start_invoice_again(invoice)

    def _abandon_other_customers_draft(
        self, invoice: OurInvoice, draft_id: str, owner: str | None, cus_id: str
    ) -> None:
        """Our draft belongs to another Stripe customer than the one linked now (the old
        one was deleted in Stripe and the customer relinked, as the error advises):
        items cannot go on it, so it is deleted (or, if Stripe refuses, left with a
        note) and the invoice built again for the linked customer, under new keys."""
        try:
            self.gw.delete_invoice(draft_id)
            done = "deleted it"
        except StripeFailure as err:
            if stops_the_run(err):
                raise
            done = "deleted it" if err.missing else f"left it ({err}); delete it in Stripe"
        self.note(
            f"{invoice.number}  {invoice.customer_key}  NOTE: Stripe draft {draft_id} belongs "
            f"to customer {owner}, not to the linked customer {cus_id}; {done}, building the "
            "invoice again"
        )
        self._start_invoice_again(invoice)

    def _start_invoice_again(self, invoice: OurInvoice) -> None:
        """Forget the invoice's draft and items, and give every key of the invoice a new
        attempt number: within 24 hours the old ones would replay the old objects."""
        self.sync_state.forget_draft(invoice.number)
        for scope in (
            invoice_scope(invoice.number),
            *(item_scope(invoice.number, line.line_no) for line in billable_lines(invoice)),
            finalize_scope(invoice.number),
        ):
            self.sync_state.set_attempt(scope, self.sync_state.attempt(scope) + 1)

    # -------------------------------------------------------------- step 3

    def ensure_items(self, invoice: OurInvoice, cus_id: str, stripe_invoice_id: str) -> None:
        """One item per billable line on the draft, as Stripe lists them (consistent at
        once): our table alone cannot tell that a user deleted an item from the draft.

        A line whose stored item is gone is added again under a new key (within 24
        hours the old one would replay the deleted item); one already there is kept.
        """
        stored = self.sync_state.items(invoice.number)
        on_invoice = {
            int(meta[META_LINE]): item.id
            for item in self.gw.items_of(stripe_invoice_id)
            if (meta := metadata(item)).get(META_INVOICE) == invoice.number
            and is_line_number(meta.get(META_LINE))
        }
        for line in billable_lines(invoice):
            item_id = on_invoice.get(line.line_no)
            if item_id is None:
                gone = stored.get(line.line_no)
                if gone is not None:
                    self._forget_deleted_item(invoice, line, gone, stripe_invoice_id)
                item_id = self._create_item(invoice, line, cus_id, stripe_invoice_id).id
            if stored.get(line.line_no) != item_id:
                self.sync_state.add_item(
                    invoice.number, line.line_no, item_id, to_minor(line.amount, invoice.currency)
                )
        self.sync_state.items_done(invoice.number)

    def _forget_deleted_item(
        self, invoice: OurInvoice, line: Line, item_id: str, stripe_invoice_id: str
    ) -> None:
        self.note(
            f"{invoice.number}  {invoice.customer_key}  NOTE: invoice item {item_id} (line "
            f"{line.line_no}) was deleted from Stripe draft {stripe_invoice_id}; adding it again"
        )
        scope = item_scope(invoice.number, line.line_no)
        self.sync_state.set_attempt(scope, self.sync_state.attempt(scope) + 1)

    def _create_item(
        self, invoice: OurInvoice, line: Line, cus_id: str, stripe_invoice_id: str
    ) -> Any:
        """The line's item, created after the draft's listing did not show it. A replayed
        answer naming an item that is gone (deleted from the draft after a run that lost
        the answer) is created again under a new key, as in :meth:`_create_draft`."""
        params = item_params(invoice, line, cus_id, stripe_invoice_id)

        def send() -> Any:
            return self._attempted(
                item_scope(invoice.number, line.line_no),
                lambda n: self.gw.create_item(
                    params, item_idem(invoice.number, line.line_no, n), f"line {line.line_no}"
                ),
            )

        made = send()
        if replayed(made) and not self.gw.item_exists(made.id):
            self._forget_deleted_item(invoice, line, made.id, stripe_invoice_id)
            made = send()
        return made


# --------------------------------------------------------------------------- dry run


def dry_run_plan(invoice: OurInvoice, catalog: Catalog, sync_state: SyncState) -> list[str]:
    """What a sync would send for ``invoice``, from local state only (no request made);
    :class:`InvoiceRefused` if it would not be sent."""
    customer = check_sendable(invoice, catalog)
    total = our_total_minor(invoice)
    out = [
        f"{invoice.number}  {invoice.customer_key}  {show_minor(total, invoice.currency)}"
        f"  ({len(billable_lines(invoice))} item(s))"
    ]
    rounding = payment_rounding_note(invoice)
    if rounding is not None:
        out.append(rounding)
    row = sync_state.row(invoice.number)
    cus_id = sync_state.customer_id(invoice.customer_key)

    def post(path: str, key: str, params: dict[str, Any]) -> None:
        out.append(f"  POST {path}  Idempotency-Key: {key}")
        out.append(f"    {json.dumps(params, sort_keys=True, ensure_ascii=False)}")

    if cus_id is None:
        out.append(f"  customer: search metadata['{META_CUSTOMER}']:'{customer.key}', else create:")
        key = customer_key_idem(customer.key, sync_state.attempt(customer_scope(customer.key)))
        post("/v1/customers", key, customer_params(customer))
        cus_ref = f"<customer {customer.key}>"
    else:
        out.append(f"  customer: {cus_id} (linked)")
        cus_ref = cus_id
    if row is not None and row.stripe_invoice_id:
        out.append(f"  invoice: {row.stripe_invoice_id} (exists, {row.stripe_status})")
        in_ref = row.stripe_invoice_id
    else:
        key = invoice_idem(invoice.number, sync_state.attempt(invoice_scope(invoice.number)))
        post("/v1/invoices", key, invoice_params(invoice, customer, cus_ref))
        in_ref = f"<invoice {invoice.number}>"
    stored = sync_state.items(invoice.number)
    for line in billable_lines(invoice):
        if line.line_no in stored:
            out.append(f"  item line {line.line_no}: {stored[line.line_no]} (exists)")
        else:
            attempt = sync_state.attempt(item_scope(invoice.number, line.line_no))
            post(
                "/v1/invoiceitems",
                item_idem(invoice.number, line.line_no, attempt),
                item_params(invoice, line, cus_ref, in_ref),
            )
    out.append(f"  check: Stripe total must be {show_minor(total, invoice.currency)}, then")
    key = finalize_idem(invoice.number, sync_state.attempt(finalize_scope(invoice.number)))
    out.append(f"  POST /v1/invoices/{in_ref}/finalize  Idempotency-Key: {key}")
    return out


@dataclass(frozen=True)
class RunResult:
    done: list[Outcome]
    flagged: list[Outcome]
    refused: list[str]
    """Numbers of the invoices refused before any Stripe call (their lines are printed)."""
    failed: list[str]
    """Numbers of the invoices whose sync failed part-way (their lines are printed)."""

    def problem(self) -> str | None:
        """The one-line error the command exits 1 with, or None."""
        parts = []
        if self.refused:
            parts.append(f"{len(self.refused)} invoice(s) not sent: {', '.join(self.refused)}")
        if self.failed:
            parts.append(f"{len(self.failed)} invoice(s) failed: {', '.join(self.failed)}")
        if self.flagged:
            numbers = ", ".join(o.number for o in self.flagged)
            parts.append(f"{len(self.flagged)} invoice(s) flagged, not finalized: {numbers}")
        if not parts:
            return None
        advice = "; see `billing stripe status`" if self.flagged else "; the reasons are above"
        return "; ".join(parts) + advice


def refused_line(invoice: OurInvoice, err: InvoiceRefused) -> str:
    reason = str(err).removeprefix(f"{invoice.number}: ")
    return f"{invoice.number}  {invoice.customer_key}  NOT SENT: {reason}"


def failed_line(invoice: OurInvoice, err: SyncError) -> str:
    reason = str(err).removeprefix(f"{invoice.number}: ")
    return f"{invoice.number}  {invoice.customer_key}  FAILED: {reason}"


def sync_all(invoices: list[OurInvoice], syncer: Syncer, echo: ProgressFn) -> RunResult:
    """Sync in order. An invoice that is refused, or fails (a deleted Stripe customer, a
    Stripe error for one of its calls), gets one line and the others still go; only a
    :class:`RunStopped` failure stops the run (the next run resumes there), and its
    message then names the invoices refused, failed or flagged before it too."""
    result = RunResult([], [], [], [])
    for invoice in invoices:
        try:
            outcome = syncer.sync(invoice)
        except InvoiceRefused as err:
            echo(refused_line(invoice, err))
            result.refused.append(invoice.number)
            continue
        except RunStopped as err:
            earlier = result.problem()
            if earlier is None:
                raise
            # the command's one error line must still name what went wrong before
            raise RunStopped(f"{err}; before that: {earlier}") from err
        except SyncError as err:
            echo(failed_line(invoice, err))
            result.failed.append(invoice.number)
            continue
        echo(outcome.line())
        (result.flagged if outcome.flagged_reason else result.done).append(outcome)
    return result


def dry_run_all(
    invoices: list[OurInvoice], catalog: Catalog, sync_state: SyncState, echo: ProgressFn
) -> RunResult:
    """Print each invoice's plan, or why it would not be sent."""
    result = RunResult([], [], [], [])
    for invoice in invoices:
        try:
            plan = dry_run_plan(invoice, catalog, sync_state)
        except InvoiceRefused as err:
            echo(refused_line(invoice, err))
            result.refused.append(invoice.number)
            continue
        for line in plan:
            echo(line)
    return result
