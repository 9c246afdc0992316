"""Invoice lifecycle: preview (live, stored nowhere), generate (finalize, number, store),
list, show, explain.

``generate --period YYYY-MM`` finalizes the billing periods that *end in that month and
have closed*: ``month start < period end <= month end`` and ``period end <= now``. A
period ``[2026-03-01, 2026-04-01)`` ends in March; a subscription started 2026-03-31 has
``[03-31, 04-30)`` as first period, ending in April. Each new invoice gets the next
number and ``watermark = issued_at = now``. Periods that already have an invoice are
returned as stored: running it again creates nothing and returns the same numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from billing.build import build_invoices
from billing.credits import apply_credits
from billing.errors import BillingError, NoUsage, UnknownCustomer
from billing.gonekeys import refuse_takeovers
from billing.ledger import ConcurrentInvoicing, existing_invoices, load_invoices, save_invoices
from billing.model import Invoice, InvoiceLine
from billing.schedule import (
    BillingPeriod,
    ScheduleError,
    customer_periods,
    invoice_month,
    period_at,
    periods_ended_before,
    periods_ending_in,
)
from billing.unitgrants import apply_unit_grants
from billing.usage import TokenFilter, UsageWindow, events_behind
from billing.usage.owned import carve_stored
from meterline.catalog import Catalog, Customer
from meterline.periods import Period, calendar_month


def utc_now() -> datetime:
    return datetime.now(UTC)


def find_customer(catalog: Catalog, key: str) -> Customer:
    try:
        return catalog.customer(key)
    except KeyError:
        raise UnknownCustomer(catalog, key) from None


def parse_month(text: str) -> Period:
    try:
        return calendar_month(text)
    except ValueError as e:
        raise BillingError(str(e)) from None


# --------------------------------------------------------------------------- preview


def preview_invoice(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    customer_key: str,
    *,
    at: datetime | None = None,
    now: datetime | None = None,
) -> Invoice:
    """The invoice of the period containing ``at`` (default now), from usage so far.

    Events with ``ts < at`` ingested up to now count; late usage of invoiced periods
    ingested since their last invoice is shown as it would be billed. Nothing is stored.

    Its lines are those ``generate`` stores for that period from the same stored state:
    the customer's earlier periods not invoiced yet (of this month or, not generated yet,
    of earlier ones) are built first, in order, as the runs that invoice them will build
    them (the one before bills this period's in-advance fee, sweeps late usage, takes
    credits and carries a negative total first), and a
    period already invoiced is built again with the in-advance fees its own invoice
    billed counted as not billed yet, as when that invoice was built (before, they were
    taken for fees an earlier invoice had billed, and the preview lacked them).
    """
    now = now or utc_now()
    at = at or now
    customer = find_customer(catalog, customer_key)
    try:
        bp = period_at(catalog, customer, at)
    except ScheduleError as e:
        raise BillingError(str(e)) from None
    have = existing_invoices(con)
    run = _uninvoiced_before(catalog, bp, have, now)
    invoices, _ = build_invoices(
        con,
        catalog,
        [*run, bp],
        watermark=max(now, at),
        usage_until=at,
        rebuilding=have.get(bp.key),
    )
    apply_unit_grants(con, invoices)
    apply_credits(con, invoices, rebuilding=have.get(bp.key))
    return invoices[-1]


def _uninvoiced_before(
    catalog: Catalog,
    bp: BillingPeriod,
    have: dict[tuple[str, datetime, datetime], str],
    now: datetime,
) -> list[BillingPeriod]:
    """The periods of ``bp``'s customer a preview of ``bp`` builds first, in order: those
    closed by ``now`` that have no invoice, and the one just before ``bp`` (its invoice
    bills ``bp``'s in-advance fee). The periods between now and a future ``bp`` are not
    built: a preview of the year 9998 would build a hundred thousand months."""
    closed = min(bp.start, now)
    run = [
        p
        for p in customer_periods(catalog, bp.customer, closed)
        if p.end <= closed and p.key not in have
    ]
    try:
        before = period_at(catalog, bp.customer, bp.start - timedelta(microseconds=1))
    except ScheduleError:
        return run
    if before.end == bp.start > closed and before.key not in have:  # not closed: not in run
        run.append(before)
    return run


# --------------------------------------------------------------------------- generate


@dataclass
class Generated:
    invoices: list[Invoice]
    """Every invoice of the month's closed periods, in number order."""
    created: list[str]
    """Numbers created by this run (empty when everything already existed)."""
    pending: list[BillingPeriod]
    """Periods ending in the month that have not closed yet (not invoiced)."""
    never_generated: list[BillingPeriod] = field(default_factory=list)
    """Closed periods of earlier months that have no invoice: their month was never
    generated (or was generated before the subscription was added to the catalog)."""
    settled_after: datetime | None = None
    """When the last of the pending periods that have ended (less than the settle margin
    ago) can be invoiced; None when no pending period has ended."""

    @property
    def missed_months(self) -> dict[str, list[str]]:
        """``YYYY-MM`` -> customer keys, for :attr:`never_generated`."""
        out: dict[str, list[str]] = {}
        for bp in self.never_generated:
            keys = out.setdefault(invoice_month(bp), [])
            if bp.customer.key not in keys:
                keys.append(bp.customer.key)
        return out


def _check_no_overlap(
    bp: BillingPeriod, invoiced: dict[str, list[tuple[datetime, datetime, str]]]
) -> None:
    """A period must not overlap another invoiced period of the customer (catalog edited?)."""
    for start, end, number in invoiced.get(bp.customer.key, []):
        if start < bp.end and bp.start < end and (start, end) != (bp.start, bp.end):
            raise BillingError(
                f"customer {bp.customer.key!r}: period {bp.start:%Y-%m-%dT%H:%M:%SZ} .. "
                f"{bp.end:%Y-%m-%dT%H:%M:%SZ} overlaps {number} "
                f"({start:%Y-%m-%dT%H:%M:%SZ} .. {end:%Y-%m-%dT%H:%M:%SZ}); "
                "were the subscriptions changed after invoicing?"
            )


#: Tries to store a run's invoices when other runs store theirs at the same time (a lake).
_STORE_ATTEMPTS = 5


def generate_invoices(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    month: str,
    *,
    customer: str | None = None,
    now: datetime | None = None,
    settle: timedelta = timedelta(0),
    progress: Callable[[list[Any]], Iterable[Any]] | None = None,
    require_usage: bool = False,
) -> Generated:
    """Finalize and store the invoices of the closed periods ending in ``month``.

    ``require_usage``: refuse (:class:`NoUsage`) to create invoices while the store holds
    no usage events at all, which is almost always the wrong store or a proxy that never
    wrote: invoices are final and could not be corrected later.

    ``settle``: only events ingested at least this long before ``now`` are billed now;
    later ones go on the next invoice as late usage; a period is invoiced only once that
    watermark is ``settle`` past its end, i.e. twice ``settle`` after it (until then it is
    ``pending``), so what was ingested in the ``settle`` after its end is on its invoice.
    On one DuckDB file 0 is exact (the
    proxy's writer stamps ``ingested_at`` while it holds the file, so no batch can commit
    behind the watermark); on a DuckLake with several proxies committing at once, it must
    exceed the longest writer transaction.
    """
    if settle < timedelta(0):
        raise BillingError("settle must not be negative")
    now = now or utc_now()
    period = parse_month(month)
    if period.start > now:
        raise BillingError(f"{month} has not started yet")
    customers = [find_customer(catalog, customer)] if customer else list(catalog.customers)
    refuse_takeovers(con, catalog, customers)  # a renamed key: its fees billed again
    closing = periods_ending_in(catalog, period, customers)
    # A period is invoiced once the watermark (now - settle) is ``settle`` past its end:
    # the events ingested in that time after the end (the last flushes) are on its
    # invoice. Any later go on the next invoice as late usage, and a period with no later
    # one (a subscription that ended) has no next invoice to carry them.
    closed_by = now - 2 * settle
    for attempt in range(1, _STORE_ATTEMPTS + 1):
        have = existing_invoices(con)
        due, pending = _due_and_pending(closing, have, closed_by)
        todo = [bp for bp in due if bp.key not in have]
        if require_usage and todo and not _has_events(con):
            raise NoUsage(
                f"the store holds no usage events: the {len(todo)} invoice(s) for {month} "
                "would bill no usage and could never be changed"
            )
        invoiced: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
        for (ck, start, end), number in have.items():
            invoiced[ck].append((start, end, number))
        for bp in todo:
            _check_no_overlap(bp, invoiced)
        drafts, windows = build_invoices(
            con, catalog, todo, watermark=now - settle, progress=progress
        )
        apply_unit_grants(con, drafts)
        apply_credits(con, drafts)
        try:
            save_invoices(con, drafts, windows, issued_at=now)
            break
        except ConcurrentInvoicing:  # another run stored first: build again on top of it
            if attempt == _STORE_ATTEMPTS:
                raise BillingError(
                    "other `invoice generate` runs kept storing invoices at the same time; "
                    "nothing of this run was stored: run it again"
                ) from None
    names = {c.key: c.name for c in catalog.customers}
    stored = [n for n in (have.get(bp.key) for bp in due) if n]
    invoices = load_invoices(con, numbers=stored, names=names) + drafts if stored else drafts
    invoices.sort(key=lambda i: i.seq or 0)
    earlier = periods_ended_before(catalog, period.start, customers)
    missed = [bp for bp in earlier if bp.key not in have]
    ended = [bp.end for bp in pending if bp.end <= now]
    settled_after = max(ended) + 2 * settle if ended else None
    return Generated(invoices, [d.number or "" for d in drafts], pending, missed, settled_after)


def _due_and_pending(
    closing: list[BillingPeriod],
    have: dict[tuple[str, datetime, datetime], str],
    closed_by: datetime,
) -> tuple[list[BillingPeriod], list[BillingPeriod]]:
    """``closing`` split into the periods a run returns (closed by ``closed_by``, or
    already invoiced) and those still pending. A stored invoice is returned whatever
    ``closed_by``: a run with a larger settle than the one that created it must show it
    as existing, not call its period "not closed yet"."""
    due = [bp for bp in closing if bp.end <= closed_by or bp.key in have]
    pending = [bp for bp in closing if bp.end > closed_by and bp.key not in have]
    return due, pending


def _has_events(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("SELECT 1 FROM usage_events LIMIT 1").fetchone() is not None


# --------------------------------------------------------------------------- read


def list_invoices(
    con: duckdb.DuckDBPyConnection, catalog: Catalog | None = None, *, customer: str | None = None
) -> list[Invoice]:
    names = {c.key: c.name for c in catalog.customers} if catalog else None
    found = load_invoices(con, customer=customer, with_lines=False, names=names)
    if not found and customer is not None and catalog is not None:
        find_customer(catalog, customer)  # a typo is an error, not an empty list
    return found


def get_invoice(
    con: duckdb.DuckDBPyConnection, number: str, catalog: Catalog | None = None
) -> Invoice:
    names = {c.key: c.name for c in catalog.customers} if catalog else None
    found = load_invoices(con, numbers=[number], names=names)
    if not found:
        raise BillingError(f"no invoice {number!r}")
    return found[0]


# --------------------------------------------------------------------------- explain


@dataclass
class Explanation:
    invoice: Invoice
    line: InvoiceLine
    events: list[dict[str, object]]

    @property
    def quantity(self) -> int:
        return sum(int(e["quantity"]) for e in self.events)  # type: ignore[call-overload]


def line_windows(line: InvoiceLine) -> list[UsageWindow]:
    """The windows a stored usage line billed, from its detail JSON."""
    consumers = tuple(line.detail["consumers"])
    out = []
    for n, w in enumerate(line.detail["windows"]):
        out.append(
            UsageWindow(
                window_id=n,
                consumers=consumers,
                start=_parse(w["start"]),
                end=_parse(w["end"]),
                ingested_until=_parse(w["ingested_until"]),
                ingested_after=_parse(w["ingested_after"]) if w["ingested_after"] else None,
            )
        )
    return out


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def line_meter(line: InvoiceLine) -> TokenFilter:
    m = line.detail["meter"]
    return TokenFilter.from_snapshot(m)


def explain_line(con: duckdb.DuckDBPyConnection, number: str, line_no: int) -> Explanation:
    """The events behind a usage line, recomputed from its stored filter and windows
    (less the ranges older windows of other customers own: :mod:`billing.usage.owned`).

    Raises BillingError when the line is a fee or when the events no longer add up to
    the line's quantity (the store was changed after invoicing).
    """
    invoice = get_invoice(con, number)
    try:
        line = invoice.line(line_no)
    except KeyError:
        raise BillingError(
            f"{number} has no line {line_no} (it has {len(invoice.lines)} lines)"
        ) from None
    if line.kind in ("flat", "credit"):
        what = "a flat fee" if line.kind == "flat" else "a credit"
        raise BillingError(f"{number} line {line_no} is {what}: no usage events behind it")
    windows = carve_stored(con, [(invoice.customer_key, w) for w in line_windows(line)])
    events = events_behind(con, windows, line_meter(line))
    result = Explanation(invoice, line, events)
    if result.quantity != line.quantity:
        raise BillingError(
            f"{number} line {line_no}: events add up to {result.quantity}, "
            f"the line bills {line.quantity}"
        )
    return result
