"""The fake's objects and what the API does to them, following Stripe's documented semantics.

Customers, invoice items and invoices as plain JSON-ready dicts. Invoice items are
*pending* until attached to an invoice (``invoice=`` at creation, or
``pending_invoice_items_behavior=include`` when the invoice is created); an invoice's
lines and totals are computed from its items; ``finalize`` moves a draft to ``open``
(or straight to ``paid`` when nothing is due) and gives it a number; ``pay``, ``void``
and ``mark_uncollectible`` move an open invoice on. A customer's ``currency`` is set
by its first invoice item or invoice (its default); invoices and pending items in other
currencies are still allowed, as for Stripe's multi-currency customers
(https://docs.stripe.com/invoicing/multi-currency-customers): an invoice's ``currency``
picks the pending items it takes, and an item put on an invoice must share its currency.
"""

from __future__ import annotations

import re
import secrets
import string
import threading
import time
from functools import cache
from typing import Any

import stripe

JSON = dict[str, Any]


class ApiError(Exception):
    """Rendered in Stripe's error shape: ``{"error": {"type", "code", "message", "param"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_

    def body(self) -> JSON:
        error: JSON = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


MAX_INVOICE_ITEMS = 250


def new_id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


def _missing(kind: str, object_id: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


class FakeState:
    """All objects of one fake account; every method runs under one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.customers: dict[str, JSON] = {}
        self.items: dict[str, JSON] = {}
        self.invoices: dict[str, JSON] = {}
        self.not_indexed: set[str] = set()
        """Ids the search API does not show yet: Stripe's search is eventually
        consistent (new objects can take a minute to appear), its lists are not."""
        self._clock = 0
        self._invoice_seq = 0

    def _now(self) -> int:
        # Strictly increasing "created" stamps keep list order (newest first) stable.
        self._clock = max(self._clock + 1, int(time.time()))
        return self._clock

    # ------------------------------------------------------------------ customers

    def create_customer(self, p: JSON) -> JSON:
        cus: JSON = {
            "id": new_id("cus_"),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": p.get("description"),
            "email": p.get("email"),
            "invoice_prefix": new_id("")[:8].upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None},
            "livemode": False,
            "metadata": dict(p.get("metadata") or {}),
            "name": p.get("name"),
            "phone": p.get("phone"),
            "preferred_locales": list(p.get("preferred_locales") or []),
            "tax_exempt": p.get("tax_exempt", "none"),
        }
        self.customers[cus["id"]] = cus
        return cus

    def customer(self, cus_id: str, param: str | None = None) -> JSON:
        cus = self.customers.get(cus_id)
        if cus is None:
            raise _missing("customer", cus_id, param)
        return cus

    def live_customer(self, cus_id: str, param: str | None = None) -> JSON:
        cus = self.customer(cus_id, param)
        if cus.get("deleted"):
            raise _missing("customer", cus_id, param)
        return cus

    def update_customer(self, cus_id: str, p: JSON) -> JSON:
        cus = self.live_customer(cus_id)
        for key in ("name", "email", "description", "phone"):
            if key in p:
                cus[key] = p[key] or None
        if "metadata" in p:
            _merge_metadata(cus, p["metadata"])
        return cus

    def delete_customer(self, cus_id: str) -> JSON:
        self.live_customer(cus_id)
        self.customers[cus_id] = {"id": cus_id, "object": "customer", "deleted": True}
        return self.customers[cus_id]

    def _default_currency(self, cus: JSON, currency: str) -> None:
        """The first currency a customer is billed in becomes its ``currency``; others
        are allowed too (only subscriptions, which the fake does not have, may not mix)."""
        if cus["currency"] is None:
            cus["currency"] = currency

    # ------------------------------------------------------------------ invoice items

    def create_item(self, p: JSON) -> JSON:
        if "customer" not in p:
            raise ApiError(400, "Missing required param: customer.", code="parameter_missing",
                           param="customer")  # fmt: skip
        cus = self.live_customer(p["customer"], "customer")
        if "amount" not in p and "price_data" not in p and "pricing" not in p:
            raise ApiError(400, "Missing required param: amount.", code="parameter_missing",
                           param="amount")  # fmt: skip
        if "amount" in p and "currency" not in p:
            raise ApiError(400, "Missing required param: currency.", code="parameter_missing",
                           param="currency")  # fmt: skip
        currency = str(p["currency"]).lower()
        invoice = None
        if p.get("invoice"):
            invoice = self.invoice(p["invoice"], "invoice")
            if len(invoice["_items"]) >= MAX_INVOICE_ITEMS:
                # Stripe, since API version 2016-02-22: at most 250 items on one invoice.
                raise ApiError(
                    400, f"You can't add more than {MAX_INVOICE_ITEMS} invoice items to an invoice."
                )
            if invoice["status"] != "draft":
                raise ApiError(
                    400,
                    f"You can only add invoice items to draft invoices. Invoice "
                    f"{invoice['id']} is {invoice['status']}.",
                    param="invoice",
                )
            if invoice["customer"] != cus["id"]:
                raise ApiError(400, "The invoice belongs to another customer.", param="invoice")
            if invoice["currency"] != currency:
                raise ApiError(
                    400,
                    f"The currency of the invoice item ({currency}) must match the currency of "
                    f"the invoice ({invoice['currency']}).",
                    param="currency",
                )
        else:
            self._default_currency(cus, currency)
        now = self._now()
        period = p.get("period") or {"start": now, "end": now}
        item: JSON = {
            "id": new_id("ii_"),
            "object": "invoiceitem",
            "amount": int(p["amount"]),
            "currency": currency,
            "customer": cus["id"],
            "date": now,
            "description": p.get("description"),
            "discountable": p.get("discountable", int(p["amount"]) >= 0),
            "invoice": None,
            "livemode": False,
            "metadata": dict(p.get("metadata") or {}),
            "period": period,
            "proration": False,
            "quantity": int(p.get("quantity", 1)),
        }
        self.items[item["id"]] = item
        if invoice is not None:
            self._attach(item, invoice)
        return item

    def item(self, ii_id: str) -> JSON:
        item = self.items.get(ii_id)
        if item is None:
            raise _missing("invoiceitem", ii_id)
        return item

    def delete_item(self, ii_id: str) -> JSON:
        """Stripe deletes an invoice item that is pending or on a draft (a user removing a
        line in the dashboard); one on a finalized invoice cannot be deleted."""
        item = self.item(ii_id)
        invoice = self.invoices.get(item["invoice"]) if item["invoice"] else None
        if invoice is not None:
            if invoice["status"] != "draft":
                raise ApiError(
                    400,
                    "You can only delete invoice items that are pending or on a draft invoice.",
                )
            invoice["_items"].remove(ii_id)
            self._recompute(invoice)
        del self.items[ii_id]
        return {"id": ii_id, "object": "invoiceitem", "deleted": True}

    def list_items(self, p: JSON) -> list[JSON]:
        items = list(self.items.values())
        if "customer" in p:
            items = [i for i in items if i["customer"] == p["customer"]]
        if "invoice" in p:
            items = [i for i in items if i["invoice"] == p["invoice"]]
        if "pending" in p:
            items = [i for i in items if (i["invoice"] is None) == p["pending"]]
        return items

    def _attach(self, item: JSON, invoice: JSON) -> None:
        item["invoice"] = invoice["id"]
        invoice["_items"].append(item["id"])
        self._recompute(invoice)

    # ------------------------------------------------------------------ invoices

    def create_invoice(self, p: JSON) -> JSON:
        if "customer" not in p:
            raise ApiError(400, "Missing required param: customer.", code="parameter_missing",
                           param="customer")  # fmt: skip
        cus = self.live_customer(p["customer"], "customer")
        method = p.get("collection_method", "charge_automatically")
        if method == "send_invoice" and "days_until_due" not in p and "due_date" not in p:
            raise ApiError(
                400,
                "Invoices with collection_method=send_invoice need days_until_due or due_date.",
                code="parameter_missing",
                param="days_until_due",
            )
        if method == "charge_automatically" and ("days_until_due" in p or "due_date" in p):
            raise ApiError(
                400,
                "days_until_due and due_date can only be set when collection_method is "
                "send_invoice.",
                code="parameter_invalid_integer",
                param="days_until_due",
            )
        currency = str(p.get("currency") or cus["currency"] or "usd").lower()
        self._default_currency(cus, currency)
        now = self._now()
        invoice: JSON = {
            "id": new_id("in_"),
            "object": "invoice",
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "auto_advance": p.get("auto_advance", False),
            "collection_method": method,
            "created": now,
            "currency": currency,
            "customer": cus["id"],
            "customer_email": cus.get("email"),
            "customer_name": cus.get("name"),
            "_days_until_due": p.get("days_until_due"),
            "description": p.get("description"),
            "due_date": p.get("due_date"),
            "footer": p.get("footer"),
            "lines": {"object": "list", "data": [], "has_more": False, "url": ""},
            "livemode": False,
            "metadata": dict(p.get("metadata") or {}),
            "number": None,
            "period_end": now,
            "period_start": now,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "total": 0,
            "_items": [],
        }
        invoice["lines"]["url"] = f"/v1/invoices/{invoice['id']}/lines"
        self.invoices[invoice["id"]] = invoice
        if p.get("pending_invoice_items_behavior") == "include":
            for item in list(self.items.values()):
                if (
                    item["customer"] == cus["id"]
                    and item["invoice"] is None
                    and item["currency"] == currency
                ):
                    self._attach(item, invoice)
        return invoice

    def invoice(self, in_id: str, param: str | None = None) -> JSON:
        invoice = self.invoices.get(in_id)
        if invoice is None:
            raise _missing("invoice", in_id, param)
        return invoice

    def _recompute(self, invoice: JSON) -> None:
        items = [self.items[i] for i in invoice["_items"]]
        invoice["lines"]["data"] = [
            {
                "id": "il_" + item["id"][3:],
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "invoice": invoice["id"],
                "livemode": False,
                "metadata": item["metadata"],
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {"invoice_item": item["id"]},
                },
                "period": item["period"],
                "quantity": item["quantity"],
            }
            for item in items
        ]
        total = sum(item["amount"] for item in items)
        invoice["subtotal"] = total
        invoice["total"] = total
        invoice["amount_due"] = max(total, 0)
        invoice["amount_remaining"] = max(total, 0) - invoice["amount_paid"]

    def finalize(self, in_id: str, p: JSON) -> JSON:
        invoice = self.invoice(in_id)
        if invoice["status"] != "draft":
            raise ApiError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
            )
        if "auto_advance" in p:
            invoice["auto_advance"] = p["auto_advance"]
        now = self._now()
        self._invoice_seq += 1
        cus = self.customers[invoice["customer"]]
        invoice["number"] = f"{cus.get('invoice_prefix', 'FAKE')}-{self._invoice_seq:04d}"
        invoice["status_transitions"]["finalized_at"] = now
        if invoice["_days_until_due"] is not None:
            invoice["due_date"] = now + 86400 * int(invoice["_days_until_due"])
        if invoice["amount_due"] == 0:
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now
        else:
            invoice["status"] = "open"
        return invoice

    def _require_open(self, invoice: JSON, action: str) -> None:
        if invoice["status"] != "open":
            raise ApiError(
                400,
                f"You can only {action} an open invoice; this one is {invoice['status']}.",
            )

    def pay(self, in_id: str) -> JSON:
        invoice = self.invoice(in_id)
        self._require_open(invoice, "pay")
        invoice["amount_paid"] = invoice["amount_due"]
        invoice["amount_remaining"] = 0
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = self._now()
        return invoice

    def void(self, in_id: str) -> JSON:
        invoice = self.invoice(in_id)
        self._require_open(invoice, "void")
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = self._now()
        return invoice

    def delete_invoice(self, in_id: str) -> JSON:
        """Stripe deletes draft invoices only, and their invoice items with them; a
        deleted invoice is then missing (404), unlike a deleted customer."""
        invoice = self.invoice(in_id)
        if invoice["status"] != "draft":
            raise ApiError(400, "You can only delete draft invoices.")
        for item_id in invoice["_items"]:
            self.items.pop(item_id, None)
        del self.invoices[in_id]
        return {"id": in_id, "object": "invoice", "deleted": True}

    def mark_uncollectible(self, in_id: str) -> JSON:
        invoice = self.invoice(in_id)
        self._require_open(invoice, "mark uncollectible")
        invoice["status"] = "uncollectible"
        invoice["status_transitions"]["marked_uncollectible_at"] = self._now()
        return invoice

    def list_invoices(self, p: JSON) -> list[JSON]:
        invoices = list(self.invoices.values())
        if "customer" in p:
            invoices = [i for i in invoices if i["customer"] == p["customer"]]
        if "status" in p:
            invoices = [i for i in invoices if i["status"] == p["status"]]
        if "collection_method" in p:
            invoices = [i for i in invoices if i["collection_method"] == p["collection_method"]]
        return invoices


def _merge_metadata(obj: JSON, metadata: Any) -> None:
    if metadata == "":
        obj["metadata"] = {}
        return
    for key, value in metadata.items():
        if value == "":
            obj["metadata"].pop(key, None)
        else:
            obj["metadata"][key] = value


_RESOURCES: dict[str, type] = {
    "customer": stripe.Customer,
    "invoice": stripe.Invoice,
    "invoiceitem": stripe.InvoiceItem,
    "line_item": stripe.InvoiceLineItem,
}


@cache
def declared_fields(object_name: str) -> frozenset[str]:
    """The fields the installed SDK declares on a resource (``stripe.Invoice`` ...)."""
    cls = _RESOURCES[object_name]
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
    return frozenset(n for n in names if not n.startswith("_") and n != "OBJECT_NAME")


def public(obj: JSON) -> JSON:
    """The object as the API shows it: private bookkeeping (``_items``) left out.

    Every field must be one the SDK declares for that resource, so the fake's objects
    cannot grow fields the real API does not have (or lost, like ``days_until_due`` on
    invoices, which is a create parameter only).
    """
    shown = {k: v for k, v in obj.items() if not k.startswith("_")}
    unknown = set(shown) - declared_fields(shown["object"])
    if unknown:
        raise AssertionError(f"fake {shown['object']} has undeclared fields: {sorted(unknown)}")
    for line in (shown.get("lines") or {}).get("data", []):
        public(line)
    return shown


# --------------------------------------------------------------------------- search

_CLAUSE_RE = re.compile(
    r"""^\s*(?P<field>metadata\[(?P<q>['"])(?P<mkey>[^'"]+)(?P=q)\]|[a-z_]+)\s*:\s*"""
    r"""(?P<vq>['"])(?P<value>[^'"]*)(?P=vq)\s*$"""
)


def parse_search_query(query: str, fields: frozenset[str]) -> list[tuple[str | None, str, str]]:
    """``metadata['k']:'v' AND email:'x'`` -> ``[("metadata", "k", "v"), (None, "email", "x")]``.

    The subset of Stripe's search query language the fake understands: exact-match
    clauses joined by ``AND``. Anything else is refused the way Stripe refuses a
    query it cannot parse.
    """
    clauses: list[tuple[str | None, str, str]] = []
    for part in re.split(r"\s+AND\s+", query.strip()):
        m = _CLAUSE_RE.match(part)
        if not m:
            raise ApiError(400, f"We were unable to parse your search query. Query: {query}",
                           param="query")  # fmt: skip
        if m.group("mkey"):
            clauses.append(("metadata", m.group("mkey"), m.group("value")))
        elif m.group("field") in fields:
            clauses.append((None, m.group("field"), m.group("value")))
        else:
            raise ApiError(400, f"Field '{m.group('field')}' is an unsupported search field.",
                           param="query")  # fmt: skip
    return clauses


def matches(obj: JSON, clauses: list[tuple[str | None, str, str]]) -> bool:
    for scope, key, value in clauses:
        actual = (obj.get("metadata") or {}).get(key) if scope else obj.get(key)
        if actual != value:
            return False
    return True
