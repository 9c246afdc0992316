"""The dashboard's routes: URL -> query -> HTML page, or its ``.json`` (or ``.pdf``) twin.

Like Datasette, every page has a JSON twin: ``/usage?customer=acme`` and
``/usage.json?customer=acme`` come from one call into :mod:`billing.dashboard.queries`
(the JSON is exactly what the matching CLI command prints with ``--format json``).

The store is opened read-only for each request and closed after it, the way every
billing command does, so proxies writing to the same DuckDB file are kept waiting for
no longer than one query. The catalog is read again when its file changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from billing import render
from billing.charts import vega_bundle
from billing.dashboard import html, pages
from billing.dashboard.customers import customer_page, customers_list, margin_page
from billing.dashboard.queries import (
    Scope,
    TimeRange,
    health,
    resolve_range,
    timeline,
    unbilled,
)
from billing.documents.pdf import PdfError, html_to_pdf
from billing.documents.statement import NoStatement
from billing.errors import UnknownCustomer
from billing.instants import OUT_OF_RANGE, in_utc
from billing.invoices import BillingError, get_invoice
from billing.ledger import load_invoices
from billing.schedule import ScheduleError
from billing.usage import UsageError
from meterline.catalog import Catalog, CatalogError, load_catalog
from meterline.store import StoreError, StoreLocked, store

USER_ERRORS = (BillingError, CatalogError, ScheduleError, StoreError, UsageError, PdfError)


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class NotFound(LookupError):
    """What the URL names does not exist (404); the message says what."""


def parse_instant(text: str | None, name: str) -> datetime | None:
    """``2026-03-01``, ``2026-03-01T12:00:00Z`` or with an offset; no zone means UTC."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not a date or time such as 2026-03-01") from None
    utc = in_utc(value)
    if utc is None:
        raise UsageError(f"{name}: {text!r} {OUT_OF_RANGE}")
    return utc


def row_limit(text: str | None, default: int) -> int | None:
    """``rows=``: how many rows a table shows at most; ``all`` for every one (``None``)."""
    if text is None:
        return default
    if text == "all":
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # not "²": int() refuses it
        raise UsageError(f"rows: {text!r} is not a number of rows such as 200, or all")
    return int(text)


@dataclass
class Request:
    path: str
    params: dict[str, str]
    fmt: str
    """``html``, ``json`` or ``pdf`` (from the path's suffix)."""
    args: dict[str, str]
    """Named parts of the route's pattern."""
    json_url: str
    """The page's JSON twin (:meth:`Dashboard.json_url`)."""

    def get(self, name: str) -> str | None:
        return self.params.get(name) or None

    def time(self, name: str) -> datetime | None:
        return parse_instant(self.get(name), name)

    def scope(self) -> Scope:
        return Scope(self.get("customer"), self.get("consumer"), self.get("key"))


def page_range(req: Request, bucket: str, now: datetime) -> TimeRange:
    """The page's range; an empty one is refused in the page's terms (its From and To
    fields), not the CLI's options."""
    start, end = req.time("from"), req.time("to")
    return resolve_range(start, end, bucket, now, terms=("From", "To"))


Page = tuple[str, Any, Callable[[Any, Catalog, str], str]]
"""(title, data, html renderer) for the pages made of data."""


def _asset(name: str) -> bytes:
    return (resources.files("billing.dashboard") / "assets" / name).read_bytes()


FORMATS = ("html", "json", "pdf")
"""A page's formats: the first is the page itself, the others its twins."""
PAGE_ONLY = ("rows",)
"""Query parameters of how a page shows its data, not of the data: not in the JSON link."""
MAX_HOURS = 31 * 24
"""An hourly page of a longer range is drawn by day: past a month, hours are thousands of
bars per model (six months: 4,392 buckets, 5.8 MB of chart data, seconds in a browser)."""
CUSTOMER_PATH = re.compile(r"/customers/(?P<key>[^/]+)")

STORE_WAIT_S = 5.0
"""How long a page waits for another process's lock on the store before it answers 503.
A proxy's writer lets go within ~50 ms of being asked; a lock held this long is a
command writing (``billing invoice generate``, a migration), and a browser would
otherwise show nothing for the CLI's 30 s."""
RETRY_AFTER_S = 5
"""``Retry-After`` of a 503 for a busy store."""

ASSET_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class Dashboard:
    """The application, independent of the HTTP server (tests may call :meth:`handle`)."""

    def __init__(
        self,
        db: str,
        catalog_path: str,
        *,
        now: Callable[[], datetime] | None = None,
        store_wait_s: float = STORE_WAIT_S,
    ) -> None:
        self.db = db
        self.store_wait_s = store_wait_s
        self.catalog_path = catalog_path
        self.now = now or (lambda: datetime.now(UTC))
        self._catalog: tuple[int, Catalog] | None = None
        self.routes: list[tuple[re.Pattern[str], Callable[..., Any]]] = [
            (re.compile(p), h)
            for p, h in (
                (r"/usage", self.usage),
                (r"/customers", self.customers),
                (CUSTOMER_PATH.pattern, self.customer),
                (r"/customers/(?P<key>[^/]+)/margin", self.margin),
                (r"/unbilled", self.unbilled),
                (r"/health", self.health),
                (r"/invoices/(?P<number>[^/]+)", self.invoice),
                (r"/statements/(?P<key>[^/]+)/(?P<month>\d{4}-\d{2})", self.statement),
            )
        ]

    # ------------------------------------------------------------------ plumbing

    def catalog(self) -> Catalog:
        """The catalog, read again when the file's modification time changes."""
        try:
            mtime = Path(self.catalog_path).stat().st_mtime_ns
        except OSError:
            mtime = -1
        if self._catalog is None or self._catalog[0] != mtime:
            self._catalog = (mtime, load_catalog(self.catalog_path))
        return self._catalog[1]

    def connect(self) -> Any:
        return store(self.db, read_only=True, wait_s=self.store_wait_s)

    def handle(self, path: str, params: dict[str, str]) -> Response:
        if path in ("", "/"):
            return Response(302, "text/plain", b"", {"Location": "/usage"})
        if path == "/favicon.ico":
            return Response(204, "image/x-icon", b"", CACHE)
        if path.startswith("/assets/"):
            return self.asset(path.removeprefix("/assets/"))
        # the error's format before the path is resolved (the catalog may not load)
        fmt = "json" if path.endswith(".json") or params.get("format") == "json" else "html"
        try:
            path, fmt, params = self.page_format(path, params)
            for pattern, handler in self.routes:
                m = pattern.fullmatch(path)
                if m:
                    req = Request(path, params, fmt, m.groupdict(), self.json_url(path, params))
                    return handler(req)
            raise NotFound(f"no page {path!r}")
        except (NotFound, UnknownCustomer, NoStatement) as e:
            return self.error(404, str(e), fmt)
        except StoreLocked as e:  # busy, not the request's fault: the same one works later
            message = (
                "the store is busy: another process holds its write lock "
                f"(try again in a few seconds): {e}"
            )
            return self.error(503, message, fmt, {"Retry-After": str(RETRY_AFTER_S)})
        except USER_ERRORS as e:
            return self.error(400, str(e), fmt)

    def names_a_customer(self, path: str) -> bool:
        """Whether ``path`` is the page of a customer the catalog lists, key as written."""
        m = CUSTOMER_PATH.fullmatch(path)
        return m is not None and any(c.key == m["key"] for c in self.catalog().customers)

    def page_format(self, path: str, params: dict[str, str]) -> tuple[str, str, dict[str, str]]:
        """The page's path, its format and the query without ``format``.

        ``?format=json`` (or ``pdf``, ``html``) says it outright. Otherwise a ``.json`` or
        ``.pdf`` suffix picks the twin, unless the whole path is a customer's page: a
        customer key may end in ``.json`` (``acme.json``), and ``/customers/acme.json`` is
        then that customer's page, not ``acme``'s JSON (which stays at
        ``/customers/acme?format=json``).
        """
        params = dict(params)
        fmt = params.pop("format", None)
        if fmt is not None:
            if fmt not in FORMATS:
                raise UsageError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
            return path, fmt, params
        for suffix in FORMATS[1:]:
            if path.endswith("." + suffix) and not self.names_a_customer(path):
                return path.removesuffix("." + suffix), suffix, params
        return path, FORMATS[0], params

    def json_url(self, path: str, params: dict[str, str]) -> str:
        """The page's JSON twin: ``PATH.json``, or ``PATH?format=json`` where ``PATH.json``
        is another customer's page."""
        params = {k: v for k, v in params.items() if k not in PAGE_ONLY}
        if self.names_a_customer(path + ".json"):
            return html.link(path, **params, format="json")
        return html.link(path + ".json", **params)

    def error(
        self, status: int, message: str, fmt: str, headers: dict[str, str] | None = None
    ) -> Response:
        headers = headers or {}
        if fmt == "json":
            body = render.to_json({"error": message}).encode()
            return Response(status, "application/json", body, headers)
        page = html.error_page(status, message).encode()
        return Response(status, "text/html; charset=utf-8", page, headers)

    def asset(self, name: str) -> Response:
        if name == "vega.js":
            return Response(200, ASSET_TYPES[".js"], vega_bundle().encode(), CACHE)
        suffix = Path(name).suffix
        if "/" in name or suffix not in ASSET_TYPES:
            return self.error(404, f"no asset {name!r}", "html")
        try:
            return Response(200, ASSET_TYPES[suffix], _asset(name), CACHE)
        except FileNotFoundError:
            return self.error(404, f"no asset {name!r}", "html")

    def respond(self, req: Request, page: Page) -> Response:
        title, data, html = page
        if req.fmt == "json":
            return Response(200, "application/json", render.to_json(data).encode())
        if req.fmt == "pdf":
            raise NotFound(f"no page {req.path + '.pdf'!r}")
        body = html(data, self.catalog(), req.json_url)
        return Response(200, "text/html; charset=utf-8", body.encode())

    # ------------------------------------------------------------------ pages

    def shown_range(self, req: Request, bucket: str) -> tuple[TimeRange, tuple[str, str] | None]:
        """The range a page shows and, when it is by day though ``hour`` was asked for a
        range longer than :data:`MAX_HOURS`, why and the hourly JSON's URL (JSON twins
        keep the bucket asked for)."""
        rng = page_range(req, req.get("bucket") or bucket, self.now())
        hours = int((rng.end - rng.start).total_seconds() // 3600)
        if req.fmt == "json" or rng.bucket != "hour" or hours <= MAX_HOURS:
            return rng, None
        note = (
            f"{hours:,} hours are too many bars to draw by the hour: shown by day. Choose a "
            f"range of {MAX_HOURS // 24} days or less to see hours, or read them in the "
            "hourly JSON."
        )
        hourly = self.json_url(req.path, {**req.params, "bucket": "hour"})
        return TimeRange(rng.start, rng.end, "day"), (note, hourly)

    def usage(self, req: Request) -> Response:
        catalog = self.catalog()
        rng, note = self.shown_range(req, "day")
        with self.connect() as con:
            data = timeline(con, catalog, req.scope(), rng)

        def page(data: Any, catalog: Catalog, json_url: str) -> str:
            return pages.usage_page(data, catalog, json_url, note=note)

        return self.respond(req, ("Usage", data, page))

    def customers(self, req: Request) -> Response:
        data = customers_list(self.catalog(), req.time("at") or self.now())
        return self.respond(req, ("Customers", data, pages.customers_page))

    def customer(self, req: Request) -> Response:
        catalog = self.catalog()
        now = self.now()
        with self.connect() as con:
            data = customer_page(con, catalog, req.args["key"], req.time("at") or now, now)
        return self.respond(req, ("Customer", data, pages.customer_page))

    def margin(self, req: Request) -> Response:
        catalog = self.catalog()
        month = req.get("period")
        if month is not None and not re.fullmatch(r"\d{4}-\d{2}", month):
            raise UsageError(f"period: {month!r} is not a month such as 2026-03")
        with self.connect() as con:
            data = margin_page(con, catalog, req.args["key"], month)
        return self.respond(req, ("Margin", data, pages.margin_page))

    def unbilled(self, req: Request) -> Response:
        catalog = self.catalog()
        rng = page_range(req, "day", self.now())
        limit = row_limit(req.get("rows"), pages.UNBILLED_ROWS)
        with self.connect() as con:
            data = unbilled(con, catalog, rng)

        def page(data: Any, catalog: Catalog, json_url: str) -> str:
            return pages.unbilled_page(data, catalog, json_url, limit=limit)

        return self.respond(req, ("Unbilled", data, page))

    def health(self, req: Request) -> Response:
        catalog = self.catalog()
        rng, note = self.shown_range(req, "hour")
        with self.connect() as con:
            data = health(con, catalog, req.scope(), rng)

        def page(data: Any, catalog: Catalog, json_url: str) -> str:
            return pages.health_page(data, catalog, json_url, note=note)

        return self.respond(req, ("Proxy health", data, page))

    def invoice(self, req: Request) -> Response:
        catalog = self.catalog()
        number = req.args["number"]
        with self.connect() as con:
            if not load_invoices(con, numbers=[number], with_lines=False):
                raise NotFound(f"no invoice {number!r}")
            inv = get_invoice(con, number, catalog)
        if req.fmt == "json":
            return Response(
                200, "application/json", render.to_json(render.invoice_json(inv)).encode()
            )
        page = render.invoice_html(inv, catalog)
        if req.fmt == "pdf":
            return Response(200, "application/pdf", html_to_pdf(page))
        return Response(200, "text/html; charset=utf-8", page.encode())

    def statement(self, req: Request) -> Response:
        from billing.documents.statement import build_statement, statement_html, statement_json

        catalog = self.catalog()
        with self.connect() as con:
            st = build_statement(con, catalog, req.args["key"], req.args["month"])
        if req.fmt == "json":
            return Response(200, "application/json", render.to_json(statement_json(st)).encode())
        page = statement_html(st, catalog)
        if req.fmt == "pdf":
            return Response(200, "application/pdf", html_to_pdf(page))
        return Response(200, "text/html; charset=utf-8", page.encode())


CACHE = {"Cache-Control": "max-age=3600"}
