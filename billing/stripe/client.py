"""The few Stripe calls the sync makes, through the official SDK's ``StripeClient``.

Every call that creates something takes the idempotency key the caller derives from
our own ids, so a retry (by the SDK after a lost answer, or by a re-run after a crash)
returns the object made the first time instead of making a second one. Every Stripe
failure comes out as one :class:`StripeFailure` whose message is one line a user can
act on: what we tried, the HTTP status, Stripe's code and message, and the request id
to quote to Stripe support.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import stripe

from billing.errors import UserError

API_KEY_ENV = "STRIPE_API_KEY"
API_BASE_ENV = "STRIPE_API_BASE"
DEFAULT_NETWORK_RETRIES = 2
META_CUSTOMER = "meterline_customer"
META_INVOICE = "meterline_invoice"
META_LINE = "meterline_line"

T = TypeVar("T")


def field(obj: Any, name: str) -> Any:
    """``obj.name`` or None: SDK objects are not dicts and omit fields a server left out."""
    return getattr(obj, name, None)


def metadata(obj: Any) -> dict[str, str]:
    found = getattr(obj, "metadata", None)
    return dict(found.to_dict()) if found else {}


class StripeFailure(UserError):
    """A Stripe call that failed; ``str()`` is the one-line message for the user."""


class MissingApiKey(StripeFailure):
    def __init__(self) -> None:
        super().__init__(
            f"{API_KEY_ENV} is not set: export your Stripe secret key "
            "(sk_test_... or sk_live_...) and run again"
        )


def api_key_from_env() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise MissingApiKey()
    return key


def describe_error(action: str, err: stripe.StripeError, api_base: str) -> str:
    """``Stripe create invoice failed: HTTP 400 parameter_unknown: ... (request req_1)``."""
    if isinstance(err, stripe.APIConnectionError):
        return (
            f"Stripe {action} failed: no answer from {api_base} (connection error); "
            "run the sync again, it resumes where it stopped"
        )
    error = getattr(err, "error", None)
    code = getattr(error, "code", None) or getattr(error, "type", None) or "error"
    message = getattr(error, "message", None) or err.user_message or "no message"
    message = " ".join(str(message).split())
    request = f" (request {err.request_id})" if err.request_id else ""
    return f"Stripe {action} failed: HTTP {err.http_status} {code}: {message}{request}"


class StripeGateway:
    """Thin wrapper over ``stripe.StripeClient``: one method per call the sync needs."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        *,
        max_network_retries: int = DEFAULT_NETWORK_RETRIES,
    ) -> None:
        self.api_base = (api_base or stripe.DEFAULT_API_BASE).rstrip("/")
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": self.api_base},
            max_network_retries=max_network_retries,
        )
        self.v1 = self.client.v1

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except stripe.StripeError as err:
            raise StripeFailure(describe_error(action, err, self.api_base)) from err

    def _all(self, action: str, first_page: Callable[[], Any]) -> list[Any]:
        """Every object of a list or search, following pagination."""

        def collect() -> list[Any]:
            page = first_page()
            it: Iterator[Any] = page.auto_paging_iter()
            return list(it)

        return self._call(action, collect)

    # -------------------------------------------------------------- customers

    def retrieve_customer(self, customer_id: str) -> stripe.Customer:
        """The customer; a deleted one comes back with ``deleted=True``."""
        return self._call(
            f"retrieve customer {customer_id}", lambda: self.v1.customers.retrieve(customer_id)
        )

    def find_customers(self, customer_key: str) -> list[stripe.Customer]:
        """Stripe customers whose metadata names our customer, oldest first.

        Uses the search API; a Stripe-compatible server without it (localstripe answers
        404 for ``/v1/customers/search``) is listed in full and filtered here instead.
        Search is eventually consistent (a customer made seconds ago may not show yet):
        the stored id and the idempotency key cover that window.
        """
        query = f"metadata['{META_CUSTOMER}']:'{customer_key}'"
        try:
            found = list(self.v1.customers.search({"query": query}).auto_paging_iter())
        except stripe.InvalidRequestError as err:
            if err.http_status != 404:
                raise StripeFailure(describe_error("search customers", err, self.api_base)) from err
            found = [
                c
                for c in self._all("list customers", lambda: self.v1.customers.list({"limit": 100}))
                if metadata(c).get(META_CUSTOMER) == customer_key
            ]
        except stripe.StripeError as err:
            raise StripeFailure(describe_error("search customers", err, self.api_base)) from err
        return sorted(found, key=lambda c: (c.created, c.id))

    def create_customer(self, params: dict[str, Any], idempotency_key: str) -> stripe.Customer:
        return self._call(
            "create customer",
            lambda: self.v1.customers.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )

    # -------------------------------------------------------------- invoices

    def retrieve_invoice(self, invoice_id: str) -> stripe.Invoice:
        return self._call(
            f"retrieve invoice {invoice_id}", lambda: self.v1.invoices.retrieve(invoice_id)
        )

    def invoices_of(self, customer_id: str) -> list[stripe.Invoice]:
        """All invoices of one customer (listing is consistent at once, unlike search)."""
        return self._all(
            f"list invoices of {customer_id}",
            lambda: self.v1.invoices.list({"customer": customer_id, "limit": 100}),
        )

    def create_invoice(self, params: dict[str, Any], idempotency_key: str) -> stripe.Invoice:
        return self._call(
            "create invoice",
            lambda: self.v1.invoices.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )

    def finalize_invoice(self, invoice_id: str, idempotency_key: str) -> stripe.Invoice:
        return self._call(
            f"finalize invoice {invoice_id}",
            lambda: self.v1.invoices.finalize_invoice(
                invoice_id, {}, {"idempotency_key": idempotency_key}
            ),
        )

    # -------------------------------------------------------------- invoice items

    def items_of(self, invoice_id: str) -> list[stripe.InvoiceItem]:
        return self._all(
            f"list invoice items of {invoice_id}",
            lambda: self.v1.invoice_items.list({"invoice": invoice_id, "limit": 100}),
        )

    def pending_items_of(self, customer_id: str) -> list[stripe.InvoiceItem]:
        return self._all(
            f"list pending invoice items of {customer_id}",
            lambda: self.v1.invoice_items.list({"customer": customer_id, "limit": 100}),
        )

    def create_item(
        self, params: dict[str, Any], idempotency_key: str, what: str
    ) -> stripe.InvoiceItem:
        return self._call(
            f"create invoice item for {what}",
            lambda: self.v1.invoice_items.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )
