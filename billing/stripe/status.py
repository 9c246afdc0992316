"""Pull each synced invoice's Stripe status (draft, open, paid, void, uncollectible) home.

Stripe moves an invoice on by itself (a customer pays, someone voids it in the
dashboard); ``stripe_invoices.stripe_status`` is our copy, refreshed by this pull. A
draft deleted in Stripe is recorded as ``deleted`` (the next sync builds it again).
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.stripe.client import StripeFailure, StripeGateway
from billing.stripe.syncstate import SyncState

DELETED = "deleted"
"""Our ``stripe_status`` for a draft that was deleted in Stripe (it has no status there)."""


@dataclass(frozen=True)
class StatusChange:
    number: str
    customer_key: str
    stripe_invoice_id: str
    before: str | None
    after: str | None
    flagged_reason: str | None

    def line(self) -> str:
        moved = self.after if self.before == self.after else f"{self.before} -> {self.after}"
        text = f"{self.number}  {self.customer_key}  {self.stripe_invoice_id}  {moved}"
        if self.after == DELETED:
            text += " in Stripe; `billing stripe sync` builds it again"
        elif self.flagged_reason:
            text += f"  FLAGGED: {self.flagged_reason}"
        return text


def pull_statuses(
    sync_state: SyncState,
    gateway: StripeGateway,
    period: str | None = None,
    customer: str | None = None,
) -> list[StatusChange]:
    """Refresh ``stripe_status`` of every invoice that has a Stripe invoice id."""
    changes = []
    for row in sync_state.rows(period, customer):
        if not row.stripe_invoice_id:
            continue
        try:
            status = gateway.retrieve_invoice(row.stripe_invoice_id).status
        except StripeFailure as err:
            # Only drafts can be deleted: one of ours missing is reported, not fatal.
            if err.missing and row.state != "finalized":
                status = DELETED
            else:
                raise _status_failure(row.invoice_number, err) from err
        sync_state.set_status(row.invoice_number, status)
        changes.append(
            StatusChange(
                row.invoice_number,
                row.customer_key,
                row.stripe_invoice_id,
                row.stripe_status,
                status,
                row.flagged_reason if row.state == "flagged" else None,
            )
        )
    return changes


def _status_failure(number: str, err: StripeFailure) -> StripeFailure:
    message = f"{number}: {err}"
    if err.no_answer:
        message += "; check the network and --api-base, then run `billing stripe status` again"
    return StripeFailure(
        message, http_status=err.http_status, no_answer=err.no_answer, code=err.code
    )
