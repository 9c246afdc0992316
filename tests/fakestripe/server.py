"""A small stateful fake of the Stripe API on 127.0.0.1, for tests that use the real SDK.

What it does like Stripe:

* form-encoded parameters, checked against the installed SDK's ``stripe.params``
  TypedDicts (:mod:`tests.fakestripe.params`): an unknown parameter is a 400
  ``parameter_unknown``, exactly as the real API answers;
* bearer-key authentication (401 otherwise), a ``Request-Id`` header on every answer,
  errors in Stripe's JSON shape;
* idempotency: a POST with an ``Idempotency-Key`` seen before and the same parameters
  replays the first answer (``Idempotent-Replayed: true``), with other parameters it
  is a 400 ``idempotency_error``; a request refused by parameter validation is not
  remembered (Stripe does not save those either);
* list (newest first, ``limit``/``starting_after``) and search (``metadata['k']:'v'``);
* deleting a draft invoice or an invoice item of a draft (as a dashboard user does);
* a request whose ``Idempotency-Key`` is still being processed gets 409
  ``idempotency_key_in_use`` (nothing saved);
* invalid values refused as Stripe refuses them (400, nothing saved): an ``email`` that
  is not an address (``email_invalid``), a ``currency`` that is not one (param
  ``currency``), an ``amount`` beyond 8 digits (``amount_too_large``);
* Stripe's documented limits: idempotency keys up to 255 characters; metadata up to 50
  keys, keys up to 40 characters, values up to 500 (https://docs.stripe.com/metadata);
  a customer ``name`` up to 256 characters, an invoice item's ``description`` up to 500
  (its changelog, 2018-10-31) (refused as invalid parameters, so not
  saved under the key); at most 250 invoice items on one invoice (refused by the
  endpoint, so saved under the key like any answer).

Faults for crash tests, injected with :meth:`FakeStripe.inject` and fired once by the
Nth matching request: ``error_before`` (500 without doing anything, nothing saved),
``error_saved`` (the endpoint began, failed with a 500, and that 500 is saved under the
idempotency key and replayed for it, as Stripe does "including 500 errors"),
``rate_limited`` (429 ``rate_limit``, answered before the idempotency layer, so
nothing saved; ``headers`` such as ``Retry-After`` or ``Stripe-Should-Retry`` are
sent with it), ``key_in_use`` (409 ``idempotency_key_in_use``, as if another request
with the key were still running; nothing done or saved), ``hold_before`` (the request
is taken in flight under its key, then waits for :meth:`FakeStripe.release` before it
takes effect: meanwhile a request with the same key gets the real 409), ``drop_before``
(connection closed, nothing done), ``drop_after`` (the request takes effect, then the
connection is closed without an answer: a lost response) and ``hang_after`` (takes
effect, then holds the connection until :meth:`FakeStripe.release`, so a test can kill
the client mid-request).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from iso4217 import Currency
from stripe import params as sp

from tests.fakestripe.params import ParamError, check, decode_form
from tests.fakestripe.state import (
    JSON,
    ApiError,
    FakeState,
    matches,
    new_id,
    parse_search_query,
    public,
)

DEFAULT_API_KEY = "sk_test_meterline"
FAULT_KINDS = (
    "error_before",
    "error_saved",
    "rate_limited",
    "key_in_use",
    "hold_before",
    "drop_before",
    "drop_after",
    "hang_after",
)
MAX_IDEMPOTENCY_KEY = 255
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500
MAX_CUSTOMER_NAME = 256
MAX_AMOUNT = 99_999_999
"""Stripe's largest amount for most currencies: 8 digits in the minor unit
(https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts)."""
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Handler = Callable[[FakeState, re.Match[str], JSON], Any]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    params: type
    handler: Handler


@dataclass
class LoggedRequest:
    method: str
    path: str
    params: JSON
    idempotency_key: str | None
    request_id: str = ""
    status: int = 0
    replayed: bool = False
    fault: str | None = None


@dataclass
class Fault:
    kind: str
    nth: int
    method: str | None
    path: re.Pattern[str] | None
    headers: dict[str, str] = field(default_factory=dict)
    seen: int = 0
    fired: threading.Event = field(default_factory=threading.Event)
    """Set when the matching request arrives."""
    done: threading.Event = field(default_factory=threading.Event)
    """Set once that request has taken effect (``*_after`` kinds) or been refused."""

    def hit(self, method: str, path: str) -> bool:
        if self.fired.is_set():
            return False
        if self.method and self.method != method:
            return False
        if self.path and not self.path.search(path):
            return False
        self.seen += 1
        return self.seen == self.nth


@dataclass
class _Stored:
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]
    status: int
    body: bytes


def _page(objects: list[JSON], p: JSON, url: str) -> JSON:
    ordered = sorted(objects, key=lambda o: int(o.get("created") or o["date"]), reverse=True)
    limit = int(p.get("limit", 10))
    if not 1 <= limit <= 100:
        raise ApiError(400, "Invalid limit: must be between 1 and 100", param="limit")
    if "starting_after" in p:
        ids = [o["id"] for o in ordered]
        if p["starting_after"] not in ids:
            raise ApiError(404, f"No such object: '{p['starting_after']}'",
                           code="resource_missing", param="starting_after")  # fmt: skip
        ordered = ordered[ids.index(p["starting_after"]) + 1 :]
    data = [public(o) for o in ordered[:limit]]
    return {"object": "list", "data": data, "has_more": len(ordered) > limit, "url": url}


def _search(
    objects: list[JSON], p: JSON, url: str, fields: frozenset[str], hidden: set[str]
) -> JSON:
    clauses = parse_search_query(p["query"], fields)
    found = [
        o for o in objects if not o.get("deleted") and o["id"] not in hidden and matches(o, clauses)
    ]
    found.sort(key=lambda o: o["created"], reverse=True)
    offset = int(p.get("page") or 0)
    limit = int(p.get("limit", 10))
    chunk = found[offset : offset + limit]
    more = offset + limit < len(found)
    return {
        "object": "search_result",
        "data": [public(o) for o in chunk],
        "has_more": more,
        "next_page": str(offset + limit) if more else None,
        "url": url,
    }


def _routes() -> list[Route]:
    def r(method: str, path: str, params: type, handler: Handler) -> Route:
        return Route(method, re.compile(f"^{path}$"), params, handler)

    cid = r"/v1/customers/(?P<id>cus_\w+)"
    iid = r"/v1/invoices/(?P<id>in_\w+)"
    return [
        r("POST", "/v1/customers", sp.CustomerCreateParams,
          lambda s, m, p: public(s.create_customer(p))),
        r("GET", "/v1/customers", sp.CustomerListParams,
          lambda s, m, p: _page(
              [c for c in s.customers.values() if not c.get("deleted")
               and ("email" not in p or c["email"] == p["email"])], p, "/v1/customers")),
        r("GET", "/v1/customers/search", sp.CustomerSearchParams,
          lambda s, m, p: _search(list(s.customers.values()), p, "/v1/customers/search",
                                  frozenset({"email", "name", "phone"}), s.not_indexed)),
        r("GET", cid, sp.CustomerRetrieveParams, lambda s, m, p: public(s.customer(m["id"]))),
        r("POST", cid, sp.CustomerUpdateParams,
          lambda s, m, p: public(s.update_customer(m["id"], p))),
        r("DELETE", cid, sp.CustomerDeleteParams,
          lambda s, m, p: public(s.delete_customer(m["id"]))),
        r("POST", "/v1/invoiceitems", sp.InvoiceItemCreateParams,
          lambda s, m, p: public(s.create_item(p))),
        r("GET", "/v1/invoiceitems", sp.InvoiceItemListParams,
          lambda s, m, p: _page(s.list_items(p), p, "/v1/invoiceitems")),
        r("GET", r"/v1/invoiceitems/(?P<id>ii_\w+)", sp.InvoiceItemRetrieveParams,
          lambda s, m, p: public(s.item(m["id"]))),
        r("DELETE", r"/v1/invoiceitems/(?P<id>ii_\w+)", sp.InvoiceItemDeleteParams,
          lambda s, m, p: s.delete_item(m["id"])),
        r("POST", "/v1/invoices", sp.InvoiceCreateParams,
          lambda s, m, p: public(s.create_invoice(p))),
        r("GET", "/v1/invoices", sp.InvoiceListParams,
          lambda s, m, p: _page(s.list_invoices(p), p, "/v1/invoices")),
        r("GET", "/v1/invoices/search", sp.InvoiceSearchParams,
          lambda s, m, p: _search(list(s.invoices.values()), p, "/v1/invoices/search",
                                  frozenset({"customer", "status", "number", "currency"}),
                                  s.not_indexed)),
        r("GET", iid, sp.InvoiceRetrieveParams, lambda s, m, p: public(s.invoice(m["id"]))),
        r("DELETE", iid, sp.InvoiceDeleteParams,
          lambda s, m, p: public(s.delete_invoice(m["id"]))),
        r("POST", iid + "/finalize", sp.InvoiceFinalizeInvoiceParams,
          lambda s, m, p: public(s.finalize(m["id"], p))),
        r("POST", iid + "/pay", sp.InvoicePayParams, lambda s, m, p: public(s.pay(m["id"]))),
        r("POST", iid + "/void", sp.InvoiceVoidInvoiceParams,
          lambda s, m, p: public(s.void(m["id"]))),
        r("POST", iid + "/mark_uncollectible", sp.InvoiceMarkUncollectibleParams,
          lambda s, m, p: public(s.mark_uncollectible(m["id"]))),
    ]  # fmt: skip


class FakeStripe:
    """The fake server: ``with FakeStripe() as fake: fake.url`` is its API base."""

    def __init__(self, api_keys: frozenset[str] = frozenset({DEFAULT_API_KEY})) -> None:
        self.api_keys = api_keys
        self.state = FakeState()
        self.routes = _routes()
        self.log: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        self._idempotent: dict[str, _Stored] = {}
        self._in_flight: set[str] = set()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self, port: int = 0) -> FakeStripe:
        fake = self

        class _Handler(_RequestHandler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -------------------------------------------------------------- test controls

    def inject(
        self,
        kind: str,
        *,
        nth: int = 1,
        method: str | None = None,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Fire ``kind`` once, on the ``nth`` request from now matching method/path regex."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
        fault = Fault(kind, nth, method, re.compile(path) if path else None, dict(headers or {}))
        with self.state.lock:
            self.faults.append(fault)
        return fault

    def expire_idempotency_keys(self) -> None:
        """Forget every key, as Stripe does after 24 hours: a retry now creates again."""
        with self.state.lock:
            self._idempotent.clear()

    def release(self) -> None:
        """Let ``hang_after`` connections go (they close without an answer)."""
        self._release.set()

    def creates(self, path: str) -> list[LoggedRequest]:
        """Successful, non-replayed POSTs to ``path``: what really created something."""
        return [
            r
            for r in self.log
            if r.method == "POST" and r.path == path and r.status == 200 and not r.replayed
        ]

    # -------------------------------------------------------------- request handling

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str], str | None]:
        """Answer one request: (status, body, headers, fault to apply after)."""
        split = urlsplit(raw_path)
        path = split.path
        pairs = parse_qsl(split.query, keep_blank_values=True)
        if method in ("POST", "DELETE") and body:
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        key = headers.get("idempotency-key") if method == "POST" else None
        entry = LoggedRequest(method, path, dict(pairs), key, new_id("req_")[:18])
        with self.state.lock:
            self.log.append(entry)
            fault = next((f for f in self.faults if f.hit(method, path)), None)
            if fault is not None:
                fault.fired.set()
                entry.fault = fault.kind
        if fault is not None and fault.kind in (
            "error_before",
            "error_saved",
            "rate_limited",
            "key_in_use",
            "drop_before",
        ):
            fault.done.set()
            if fault.kind == "drop_before":
                return 0, b"", {}, "drop"
            if fault.kind == "rate_limited":
                err = ApiError(429, "Too many requests hit the API too quickly.", code="rate_limit")
            elif fault.kind == "key_in_use":
                err = _key_in_use(key or "")
            else:
                err = ApiError(500, "An unknown error occurred", type_="api_error")
            body = json.dumps(err.body()).encode()
            if fault.kind == "error_saved" and key is not None:
                fingerprint = (method, path, tuple(sorted(pairs)))
                with self.state.lock:
                    self._idempotent[key] = _Stored(fingerprint, err.status, body)
            entry.status = err.status
            return err.status, body, {"Request-Id": entry.request_id, **fault.headers}, None
        hold = fault if fault is not None and fault.kind == "hold_before" else None
        status, payload, extra = self._dispatch(method, path, pairs, headers, key, entry, hold)
        entry.status = status
        extra = {"Request-Id": entry.request_id, **extra}
        after = None
        if fault is not None and hold is None:
            after = "drop" if fault.kind == "drop_after" else "hang"
            fault.done.set()
        return status, payload, extra, after

    def _dispatch(
        self,
        method: str,
        path: str,
        pairs: list[tuple[str, str]],
        headers: dict[str, str],
        key: str | None,
        entry: LoggedRequest,
        hold: Fault | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        api_key = _bearer(headers.get("authorization", ""))
        if api_key not in self.api_keys:
            shown = f"{api_key[:8]}{'*' * 12}{api_key[-4:]}" if api_key else "(none)"
            err = ApiError(401, f"Invalid API Key provided: {shown}")
            return 401, json.dumps(err.body()).encode(), {}
        route, match = self._route(method, path)
        if route is None or match is None:
            err = ApiError(
                404,
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )
            return 404, json.dumps(err.body()).encode(), {}
        fingerprint = (method, path, tuple(sorted(pairs)))
        with self.state.lock:
            if key is not None:
                stored = self._idempotent.get(key)
                if stored is not None:
                    if stored.fingerprint != fingerprint:
                        err = ApiError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{key}' if you meant to execute a different request.",
                            type_="idempotency_error",
                        )
                        return 400, json.dumps(err.body()).encode(), {}
                    entry.replayed = True
                    return stored.status, stored.body, {"Idempotent-Replayed": "true"}
                if key in self._in_flight:
                    err = _key_in_use(key)
                    return 409, json.dumps(err.body()).encode(), {}
            try:
                params = check(decode_form(pairs), route.params)
                _check_limits(method, path, key, params)
            except ParamError as e:
                err = ApiError(400, e.message, code=e.code, param=e.param)
                return 400, json.dumps(err.body()).encode(), {}
            if key is not None:
                self._in_flight.add(key)
        try:
            if hold is not None:
                hold.done.set()
                self._release.wait(60)
            with self.state.lock:
                try:
                    status, payload = 200, json.dumps(route.handler(self.state, match, params))
                except ApiError as e:
                    status, payload = e.status, json.dumps(e.body())
                body = payload.encode()
                if key is not None:
                    self._idempotent[key] = _Stored(fingerprint, status, body)
                return status, body, {}
        finally:
            if key is not None:
                with self.state.lock:
                    self._in_flight.discard(key)

    def _route(self, method: str, path: str) -> tuple[Route | None, re.Match[str] | None]:
        for route in self.routes:
            if route.method == method:
                m = route.pattern.match(path)
                if m:
                    return route, m
        return None, None

    def wait_release(self, timeout: float) -> None:
        self._release.wait(timeout)


def _key_in_use(key: str) -> ApiError:
    return ApiError(
        409,
        "There is currently another in-progress request using this Idempotent Key (that "
        "probably means you submitted twice, and the other request is still going through): "
        f"{key}. Please try again later.",
        code="idempotency_key_in_use",
    )


def _check_values(path: str, params: JSON) -> None:
    """Values Stripe refuses as invalid parameters (nothing saved under the key)."""
    email = params.get("email")
    if path.startswith("/v1/customers") and email and not _EMAIL_RE.match(str(email)):
        raise ParamError("email_invalid", f"Invalid email address: {email}", "email")
    currency = params.get("currency")
    if isinstance(currency, str) and not _is_currency(currency):
        raise ParamError(
            None,
            f"Invalid currency: {currency.lower()}. Stripe currently supports these "
            "currencies: usd, eur, gbp, jpy, ...",
            "currency",
        )
    amount = params.get("amount")
    too_large = isinstance(amount, int) and abs(amount) > MAX_AMOUNT
    if path.startswith("/v1/invoiceitems") and too_large:
        raise ParamError(
            "amount_too_large",
            f"Amount must be no more than {MAX_AMOUNT} (in the currency's smallest unit).",
            "amount",
        )


def _is_currency(code: str) -> bool:
    """An ISO 4217 code with a minor unit, as Stripe's currencies are (lowercase or not)."""
    try:
        return len(code) == 3 and Currency(code.upper()).exponent is not None
    except ValueError:
        return False


def _check_limits(method: str, path: str, key: str | None, params: JSON) -> None:
    """Stripe's documented size limits, refused like invalid parameters (nothing saved)."""
    _check_values(path, params)
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise ParamError(
            "idempotency_key_invalid",
            f"Idempotency keys can be at most {MAX_IDEMPOTENCY_KEY} characters long.",
            "Idempotency-Key",
        )
    meta = params.get("metadata")
    if isinstance(meta, dict):
        if len(meta) > MAX_METADATA_KEYS:
            raise ParamError(
                "parameter_invalid_string",
                f"Invalid metadata: metadata can have at most {MAX_METADATA_KEYS} keys",
                "metadata",
            )
        for k, v in meta.items():
            if len(k) > MAX_METADATA_KEY:
                raise ParamError(
                    "parameter_invalid_string",
                    f"Invalid metadata: keys can be at most {MAX_METADATA_KEY} characters long",
                    f"metadata[{k}]",
                )
            if isinstance(v, str) and len(v) > MAX_METADATA_VALUE:
                raise ParamError(
                    "parameter_invalid_string",
                    f"Invalid metadata: values can be at most {MAX_METADATA_VALUE} characters long",
                    f"metadata[{k}]",
                )
    name = params.get("name")
    if path.startswith("/v1/customers") and isinstance(name, str) and len(name) > MAX_CUSTOMER_NAME:
        raise ParamError(
            "parameter_invalid_string",
            f"Invalid string: name must be at most {MAX_CUSTOMER_NAME} characters",
            "name",
        )
    text = params.get("description")
    if path.startswith("/v1/invoiceitems") and isinstance(text, str) and len(text) > 500:
        raise ParamError(
            "parameter_invalid_string",
            "Invalid string: description must be at most 500 characters",
            "description",
        )


def _bearer(header: str) -> str:
    """The API key from ``Bearer <key>`` (the SDK) or ``Basic`` ``<key>:`` (``curl -u key:``)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(token.strip()).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer per request: no 40 ms delayed-ACK stall
    server_fake: FakeStripe

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra, after = self.server_fake.handle(
            self.command, self.path, headers, body
        )
        if after == "hang":
            self.server_fake.wait_release(timeout=60)
        if after in ("drop", "hang"):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve
