"""The few Stripe calls the sync makes, through the official SDK's ``StripeClient``.

Every call that creates something takes the idempotency key the caller derives from
our own ids, so a retry (by the SDK after a lost answer, or by a re-run after a crash)
returns the object made the first time instead of making a second one. Every Stripe
failure comes out as one :class:`StripeFailure` whose message is one line a user can
act on: what we tried, the HTTP status, Stripe's code and message, and the request id
to quote to Stripe support.
"""

from __future__ import annotations

import contextlib
import os
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import stripe

from billing.errors import UserError

API_KEY_ENV = "STRIPE_API_KEY"
API_BASE_ENV = "STRIPE_API_BASE"
DEFAULT_NETWORK_RETRIES = 2
META_CUSTOMER = "meterline_customer"
META_INVOICE = "meterline_invoice"
META_LINE = "meterline_line"

RATE_LIMIT_RETRIES = 5
"""How many times one call is sent again after Stripe answered 429 (rate limited)."""
RATE_LIMIT_BACKOFF = 0.5
"""Seconds before the first resend of a rate-limited call; doubled for each next one."""
RATE_LIMIT_MAX_WAIT = 20.0
"""Longest wait before one resend, whatever ``Retry-After`` asks (a sync must end)."""

KEY_IN_USE_RETRIES = 5
"""How many times one call is sent again after Stripe answered 409 ``idempotency_key_in_use``
(a request with the same key, from a run that was cut off, say, is still running)."""
KEY_IN_USE_BACKOFF = 0.5
"""Seconds before the first resend of such a call; doubled for each next one."""

T = TypeVar("T")


def field(obj: Any, name: str) -> Any:
    """``obj.name`` or None: SDK objects are not dicts and omit fields a server left out."""
    return getattr(obj, name, None)


def metadata(obj: Any) -> dict[str, str]:
    found = getattr(obj, "metadata", None)
    return dict(found.to_dict()) if found else {}


def replayed(obj: Any) -> bool:
    """Stripe answered with the saved answer of an earlier request under the same
    idempotency key (``Idempotent-Replayed: true``), not with the result of this one:
    the object it names may have been deleted since."""
    response = getattr(obj, "last_response", None)
    headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    return any(
        k.lower() == "idempotent-replayed" and v.strip().lower() == "true"
        for k, v in headers.items()
    )


class StripeFailure(UserError):
    """A Stripe call that failed; ``str()`` is the one-line message for the user.

    ``http_status`` is Stripe's answer (None when none came: ``no_answer``). An answer
    other than 409 and 429 means the request is over on Stripe's side and, for a POST,
    that Stripe may have saved that answer under its idempotency key (it saves results
    "regardless of whether it succeeds or fails", 500s included): see ``saved_answer``.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        no_answer: bool = False,
        code: str | None = None,
    ):
        super().__init__(message)
        self.http_status = http_status
        self.no_answer = no_answer
        self.code = code
        """Stripe's error code (``resource_missing``, ...), when it sent one."""

    @property
    def missing(self) -> bool:
        """Stripe answered 404 ``resource_missing``: the object is not (or no longer) there."""
        return self.http_status == 404 and self.code == "resource_missing"

    @property
    def saved_answer(self) -> bool:
        """Stripe answered with an error it may replay for the same idempotency key.

        409 (another request with this key is still running) and 429 (rate limiters run
        before the idempotency layer) are not saved; a lost answer is not known.
        """
        return self.http_status is not None and self.http_status not in (409, 429)


class MissingApiKey(StripeFailure):
    def __init__(self) -> None:
        super().__init__(
            f"{API_KEY_ENV} is not set: export your Stripe secret key "
            "(sk_test_... or sk_live_...) and run again"
        )


class BadApiKey(StripeFailure):
    """A key that cannot be a Stripe key (it could not even go into an HTTP header)."""


def check_api_key(key: str) -> None:
    """Refuse a key with a line break, a space, a control or a non-ASCII character: a
    multi-line secret file, say. The key itself is never shown."""
    problem = None
    for ch in key:
        if ch in "\r\n":
            problem = "a line break (a secret file with more than one line?)"
            break
        if ch.isspace() or unicodedata.category(ch).startswith("C"):
            problem = "a space or a control character"
            break
        if not ch.isascii():
            problem = "a non-ASCII character"
            break
    if problem:
        raise BadApiKey(
            f"{API_KEY_ENV} is not a valid Stripe key: it contains {problem}; set it to the "
            "secret key alone, on one line (sk_test_... or sk_live_...)"
        )


def api_key_from_env() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise MissingApiKey()
    check_api_key(key)
    return key


def describe_error(action: str, err: stripe.StripeError, api_base: str) -> str:
    """``Stripe create invoice failed: HTTP 400 parameter_unknown: ... (request req_1)``.

    No advice on what to run next: that depends on the command (the caller adds it)."""
    if isinstance(err, stripe.APIConnectionError):
        return f"Stripe {action} failed: no answer from {api_base} (connection error)"
    error = getattr(err, "error", None)
    code = getattr(error, "code", None) or getattr(error, "type", None) or "error"
    message = getattr(error, "message", None) or err.user_message or "no message"
    message = " ".join(str(message).split())
    request = f" (request {err.request_id})" if err.request_id else ""
    return f"Stripe {action} failed: HTTP {err.http_status} {code}: {message}{request}"


def failure(action: str, err: stripe.StripeError, api_base: str) -> StripeFailure:
    no_answer = isinstance(err, stripe.APIConnectionError)
    return StripeFailure(
        describe_error(action, err, api_base),
        http_status=None if no_answer else err.http_status,
        no_answer=no_answer,
        code=getattr(getattr(err, "error", None), "code", None),
    )


def key_in_use_wait(err: stripe.StripeError, resends: int) -> float | None:
    """Seconds to wait before sending a call again that Stripe answered 409
    ``idempotency_key_in_use``, or None: another code, or out of resends.

    The other request with the key is still running; once it is done, the resend with
    the same key gets its saved answer (409s themselves are not saved).
    """
    code = getattr(getattr(err, "error", None), "code", None)
    if err.http_status != 409 or code != "idempotency_key_in_use":
        return None
    if resends >= KEY_IN_USE_RETRIES:
        return None
    return min(KEY_IN_USE_BACKOFF * 2**resends, RATE_LIMIT_MAX_WAIT)


def rate_limit_wait(err: stripe.StripeError, resends: int) -> float | None:
    """Seconds to wait before sending a rate-limited (429) call again, or None: not a 429,
    out of resends, or Stripe said ``Stripe-Should-Retry: false``.

    Honours ``Retry-After`` (capped); else backs off exponentially. A 429 is answered
    before Stripe's idempotency layer, so the resend with the same key is safe.
    """
    if err.http_status != 429 or resends >= RATE_LIMIT_RETRIES:
        return None
    headers: Mapping[str, str] = {k.lower(): v for k, v in (err.headers or {}).items()}
    if headers.get("stripe-should-retry", "").strip().lower() == "false":
        return None
    wait = RATE_LIMIT_BACKOFF * 2**resends
    with contextlib.suppress(KeyError, ValueError):
        wait = float(headers["retry-after"])
    return min(max(wait, 0.0), RATE_LIMIT_MAX_WAIT)


class StripeGateway:
    """Thin wrapper over ``stripe.StripeClient``: one method per call the sync needs."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        *,
        max_network_retries: int = DEFAULT_NETWORK_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        check_api_key(api_key)
        self.sleep = sleep
        self.api_base = (api_base or stripe.DEFAULT_API_BASE).rstrip("/")
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": self.api_base},
            max_network_retries=max_network_retries,
        )
        self.v1 = self.client.v1

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """``fn()``; a 429 (the SDK does not resend those) or a 409 "key in use" is sent
        again after a bounded wait, every other Stripe error becomes one
        :class:`StripeFailure`."""
        resends = 0
        while True:
            try:
                return fn()
            except stripe.StripeError as err:
                wait = rate_limit_wait(err, resends)
                if wait is None:
                    wait = key_in_use_wait(err, resends)
                if wait is None:
                    raise failure(action, err, self.api_base) from err
            self.sleep(wait)
            resends += 1

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

    def find_customers(
        self, customer_key: str, *, consistent: bool = False
    ) -> list[stripe.Customer]:
        """Stripe customers whose metadata names our customer, oldest first.

        Uses the search API, which is eventually consistent (a customer made seconds ago
        may not show yet): the stored id and the idempotency key cover that window. With
        ``consistent`` (needed before a create under a *new* idempotency key), or on a
        Stripe-compatible server without search (localstripe answers 404 for
        ``/v1/customers/search``), every customer is listed (listing is consistent at
        once) and filtered here instead.
        """

        def listed() -> list[stripe.Customer]:
            return [
                c
                for c in self._all("list customers", lambda: self.v1.customers.list({"limit": 100}))
                if metadata(c).get(META_CUSTOMER) == customer_key
            ]

        query = f"metadata['{META_CUSTOMER}']:'{customer_key}'"
        if consistent:
            found = listed()
        else:
            try:
                found = self._all(
                    "search customers", lambda: self.v1.customers.search({"query": query})
                )
            except StripeFailure as err:
                if err.http_status != 404:
                    raise
                found = listed()
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

    def delete_invoice(self, invoice_id: str) -> None:
        """Delete a draft (Stripe refuses to delete any other invoice)."""
        self._call(f"delete invoice {invoice_id}", lambda: self.v1.invoices.delete(invoice_id))

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

    def item_exists(self, item_id: str) -> bool:
        """Whether the invoice item is still there (a deleted one is 404 ``resource_missing``)."""
        try:
            item = self._call(
                f"retrieve invoice item {item_id}", lambda: self.v1.invoice_items.retrieve(item_id)
            )
        except StripeFailure as err:
            if err.missing:
                return False
            raise
        return not field(item, "deleted")

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
