"""The sync's own failures: each one line for the user (:class:`billing.errors.UserError`)."""

from __future__ import annotations

from billing.errors import UserError


class SyncError(UserError):
    """A problem the user must resolve before this invoice can be synced; one line."""


class InvoiceRefused(SyncError):
    """An invoice Stripe would refuse, found before any call for it: it is not sent, and
    the other invoices of the run still are."""


class RunStopped(SyncError):
    """A failure every later invoice would hit too (no answer from Stripe, the API key
    refused): the run stops there instead of failing each invoice in turn."""
