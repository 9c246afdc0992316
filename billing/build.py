"""Build invoices (unsaved) for billing periods: usage from one SQL pass, prices in Python.

An invoice for a billing period ``[start, end)`` of a customer holds, in this order:

1. for each rate card of the period's plan, in catalog order:
   - a flat fee billed *in arrears*: the fee for this period (prorated if partial);
   - a flat fee billed *in advance*: the fee for this period, only when no earlier period
     of the customer ends where this one starts (the first period of a run: there was no
     earlier invoice to carry it); otherwise the previous invoice already billed it;
   - a usage price: the tokens its feature selects from events of the customer's
     consumers with ``start <= ts < end`` and ``ingested_at <= watermark``;
2. the in-advance fees of the *next* period (the one starting at ``end``, if a
   subscription covers it, possibly under another plan), billed now, at its start;
3. ``late_usage`` lines: events of periods already invoiced that were ingested after the
   last invoice that swept them (``billed_until < ingested_at <= watermark``), one line per
   (period, rate card), priced with that period's stored rate card snapshot and
   incrementally: ``price(billed + late - granted units) - already billed amount`` (net
   of its unit-grant credits; the units spread over the rate cards as one invoice would:
   :func:`_regrant`), so tiers, included units and minimums continue where the earlier
   invoices stopped and the amounts over all invoices of the period add up to what one
   invoice with all events would charge.

Usage for every window of every invoice is aggregated by :func:`billing.usage.aggregate_windows`
in a single query; matching (provider, model, token type) rows to features is done here.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

import duckdb

from billing.errors import BillingError
from billing.ledger import (
    AdvanceFee,
    BilledCard,
    SweptWindow,
    advance_fees,
    billed_cards,
    swept_windows,
)
from billing.model import Invoice, InvoiceLine
from billing.money import decimal_text, round_money
from billing.pricing import PricedLine, fewest_units_for_lowest_price, price_rate_card
from billing.schedule import BillingPeriod, next_period
from billing.usage import (
    TokenFilter,
    UsageWindow,
    WindowUsage,
    aggregate_windows,
    windows_with_events,
)
from billing.usage.owned import Ownership, ownership
from meterline.catalog import Catalog, FeatureMeter, FlatPrice, Plan, RateCard
from meterline.served import Served


def catalog_digest(catalog: Catalog) -> str:
    """sha256 of the catalog's canonical JSON: comments and formatting do not change it."""
    text = json.dumps(catalog.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=4096)
def iso(value: datetime | None) -> str | None:
    """Exact ISO 8601 in UTC with ``Z`` (microseconds kept when there are any)."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _span(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d} – {end:%Y-%m-%d}"


@dataclass
class UsageCard:
    """A usage rate card with the meter that feeds it (from the catalog or a snapshot)."""

    card: RateCard
    plan_key: str
    feature_key: str
    meter: TokenFilter
    proration: Fraction | None = None
    """Late usage: the share its period's own invoice priced with (from the snapshot)."""
    _snapshot: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        """The price and meter as JSON, stored on every line (computed once per card)."""
        if self._snapshot is None:
            self._snapshot = self._dump()
        return self._snapshot

    def _dump(self) -> dict[str, Any]:
        meter: dict[str, Any] = {
            "feature": self.feature_key,
            "provider": self.meter.provider,
            "model": self.meter.model,
            "token_types": list(self.meter.token_types),
        }
        # Only the filters set: absent, every tier, speed or geography (lines stored before).
        meter.update(self.meter.served.snapshot())
        return {"rate_card": self.card.model_dump(mode="json"), "meter": meter}

    @classmethod
    def from_snapshot(cls, plan_key: str, detail: dict[str, Any]) -> UsageCard:
        m = detail["meter"]
        pricing = detail.get("pricing") or {}
        ratio = pricing.get("proration_ratio")
        # Lines stored before proration_ratio existed were priced unprorated ("1").
        share = Fraction(ratio) if ratio else Fraction(Decimal(pricing.get("proration", "1")))
        return cls(
            card=RateCard.model_validate(detail["rate_card"]),
            plan_key=plan_key,
            feature_key=m["feature"],
            meter=TokenFilter.from_snapshot(m),
            proration=share,
        )


def usage_cards(catalog: Catalog, plan: Plan) -> list[UsageCard]:
    out = []
    for card in plan.rate_cards:
        if card.feature is None:
            continue
        meter: FeatureMeter = catalog.feature(card.feature).meter
        out.append(UsageCard(card, plan.key, card.feature, TokenFilter.of(meter)))
    return out


@dataclass
class _Job:
    """One usage window to aggregate and the cards to price on it."""

    invoice: int
    window: UsageWindow
    plan_key: str
    cards: list[UsageCard]
    late: bool
    share: Fraction = Fraction(1)
    """The billed share of the period: scales min/max of its usage lines."""
    share_label: str | None = None
    prior: dict[str, BilledCard] = field(default_factory=dict)
    """Late jobs: what earlier invoices billed per rate card key for this window."""
    regranted: dict[str, int] = field(default_factory=dict)
    """Late jobs: granted units per rate card key, spread over the period's whole usage."""


@lru_cache(maxsize=4096)
def _window_detail(w: UsageWindow) -> dict[str, Any]:
    return {
        "start": iso(w.start),
        "end": iso(w.end),
        "ingested_after": iso(w.ingested_after),
        "ingested_until": iso(w.ingested_until),
    }


class _Matcher:
    """Which (provider, model, how served) rows a card counts; memoised, models are few."""

    def __init__(self) -> None:
        self._cache: dict[tuple[TokenFilter, str, str, Served], bool] = {}

    def __call__(self, meter: TokenFilter, provider: str, model: str, served: Served) -> bool:
        key = (meter, provider, model, served)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = meter.matches(provider, model, served)
        return hit


def _flat_line(card: RateCard, price: FlatPrice, bp: BillingPeriod, currency: str) -> InvoiceLine:
    priced = price_rate_card(
        card, 1, currency=currency, proration=bp.share, proration_label=bp.share_label
    )
    return InvoiceLine(
        kind="flat",
        rate_card_key=card.key,
        feature_key=None,
        plan_key=bp.plan.key,
        description=f"{card.name} ({_span(bp.start, bp.end)})",
        usage_start=bp.start,
        usage_end=bp.end,
        quantity=Decimal(1),
        unit_price=price.amount if priced.proration == 1 else None,
        amount=priced.amount,
        detail={
            "rate_card": card.model_dump(mode="json"),
            "plan": bp.plan.key,
            "payment_term": price.payment_term,
            "covers": {"start": iso(bp.start), "end": iso(bp.end)},
            "full_period": {"start": iso(bp.full.start), "end": iso(bp.full.end)},
            "pricing": priced.to_detail(),
        },
    )


def _tokens_for(
    meter: TokenFilter, rows: Sequence[WindowUsage], match: _Matcher
) -> tuple[int, int, list[dict[str, Any]]]:
    """Tokens the meter selects from a window's rows, the events behind them, the breakdown."""
    quantity = 0
    events = 0
    parts: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if not match(meter, row.provider, row.model, row.served):
            continue
        events += row.events_with(meter.token_types)  # only events with the line's tokens
        for tt in meter.token_types:
            n = row.tokens[tt]
            if n:
                key = (row.provider, row.model, tt)
                parts[key] = parts.get(key, 0) + n
                quantity += n
    order = {tt: i for i, tt in enumerate(meter.token_types)}
    breakdown = [  # sorted: SQL groups come in no particular order
        {"provider": p, "model": m, "token_type": tt, "tokens": parts[(p, m, tt)]}
        for p, m, tt in sorted(parts, key=lambda k: (k[0], k[1], order[k[2]]))
    ]
    return quantity, events, breakdown


def _usage_line(
    job: _Job, uc: UsageCard, rows: Sequence[WindowUsage], currency: str, match: _Matcher
) -> InvoiceLine | None:
    quantity, events, breakdown = _tokens_for(uc.meter, rows, match)
    w = job.window
    detail: dict[str, Any] = {
        **uc.snapshot(),
        "plan": uc.plan_key,
        "consumers": list(w.consumers),
        "windows": [_window_detail(w)],
        "breakdown": breakdown,
        "events": events,
    }
    share = job.share if uc.proration is None else uc.proration
    label = job.share_label if uc.proration is None else str(uc.proration)
    if not job.late:
        priced = price_rate_card(
            uc.card, quantity, currency=currency, proration=share, proration_label=label
        )
        detail["pricing"] = priced.to_detail()
        return InvoiceLine(
            kind="usage",
            rate_card_key=uc.card.key,
            feature_key=uc.feature_key,
            plan_key=uc.plan_key,
            description=uc.card.name,
            usage_start=w.start,
            usage_end=w.end,
            quantity=Decimal(quantity),
            unit_price=priced.unit_price,
            amount=priced.amount,
            detail=detail,
        )
    if quantity == 0:
        return None
    prior = job.prior.get(uc.card.key, BilledCard(Decimal(0), Decimal(0)))
    total = prior.quantity + quantity
    units = job.regranted.get(uc.card.key, 0)
    priced_total: PricedLine = price_rate_card(
        uc.card, total - units, currency=currency, proration=share, proration_label=label
    )
    billed_before = prior.amount + prior.granted_credit
    detail["pricing"] = priced_total.to_detail()
    detail["late"] = {
        "period": {"start": iso(w.start), "end": iso(w.end)},
        "billed_quantity": decimal_text(prior.quantity),
        "billed_amount": decimal_text(round_money(billed_before, currency)),
        "total_quantity": decimal_text(total),
        "total_amount": decimal_text(priced_total.amount),
    }
    if prior.granted_units or units:
        detail["late"]["granted_units"] = str(units)
    return InvoiceLine(
        kind="late_usage",
        rate_card_key=uc.card.key,
        feature_key=uc.feature_key,
        plan_key=uc.plan_key,
        description=f"{uc.card.name} — late usage for {_span(w.start, w.end)}",
        usage_start=w.start,
        usage_end=w.end,
        quantity=Decimal(quantity),
        unit_price=priced_total.unit_price,
        amount=priced_total.amount - billed_before,
        detail=detail,
    )


def _regrant(job: _Job, rows: Sequence[WindowUsage], currency: str, match: _Matcher) -> None:
    """Late job: spread the units of unit grants its period's lines took again, over the
    period's whole metered quantity, as one invoice with all its events would have.

    Per feature the pool is the units its credit lines took (no more are taken: late usage
    takes no units); lines get them in their order on the period's own invoice, each the
    fewest that bring its price to the lowest it can reach (:mod:`billing.unitgrants`'
    rule), so the period's invoices add up to what one invoice would have charged with
    those units (docs/billing.md, "Late events")."""
    pool: dict[str, int] = defaultdict(int)
    for uc in job.cards:
        prior = job.prior.get(uc.card.key)
        if prior is not None:
            pool[uc.feature_key] += int(prior.granted_units)
    if not any(pool.values()):
        return
    for uc in job.cards:
        prior = job.prior.get(uc.card.key)
        left = pool[uc.feature_key]
        if prior is None or left <= 0:
            continue
        total = int(prior.quantity) + _tokens_for(uc.meter, rows, match)[0]
        share = uc.proration if uc.proration is not None else job.share
        whole = price_rate_card(uc.card, total, currency=currency, proration=share)
        most = min(int(whole.billable_quantity), left)
        found = (
            fewest_units_for_lowest_price(uc.card, total, most, currency, share)
            if most > 0
            else None
        )
        if found is None or found[1].amount >= whole.amount:
            continue
        job.regranted[uc.card.key] = found[0]
        pool[uc.feature_key] = left - found[0]


def _late_windows(
    con: duckdb.DuckDBPyConnection,
    swept: dict[str, list[SweptWindow]],
    watermark: datetime,
    owned: Ownership,
) -> set[tuple[str, datetime, datetime]]:
    """(customer, start, end) of the swept windows with events ingested since their sweep
    (events of their own: not of ranges older windows of other customers own)."""
    keys = [
        (ck, sw) for ck, windows in swept.items() for sw in windows if sw.billed_until < watermark
    ]
    found = windows_with_events(
        con,
        [
            owned.carve(
                UsageWindow(n, sw.consumers, sw.start, sw.end, watermark, sw.billed_until),
                ck,
                sw.first,
            )
            for n, (ck, sw) in enumerate(keys)
        ],
    )
    return {(keys[n][0], keys[n][1].start, keys[n][1].end) for n in found}


def _owner_pairs(
    periods: Sequence[BillingPeriod], swept: dict[str, list[SweptWindow]]
) -> set[tuple[str, str]]:
    """(customer, consumer) of every window a run builds or sweeps."""
    pairs = {(bp.customer.key, c) for bp in periods for c in bp.customer.consumers}
    for ck, windows in swept.items():
        pairs.update((ck, c) for sw in windows for c in sw.consumers)
    return pairs


def _fee_due(
    bp: BillingPeriod,
    card_key: str,
    prepaid: dict[str, list[AdvanceFee]],
    carried: set[tuple[str, str, str, datetime]],
) -> bool:
    """Whether the in-advance fee ``card_key`` of ``bp``'s plan for ``bp`` is still to
    bill: not if a stored invoice (or one of this run) billed it for a period starting
    where ``bp`` does. A billed fee of the same plan for a period that starts elsewhere
    but overlaps ``bp`` means the subscriptions were changed after invoicing: billing
    ``bp``'s fee would charge the overlap twice, so that is refused."""
    c, plan = bp.customer.key, bp.plan.key
    if (c, plan, card_key, bp.start) in carried:
        return False
    for fee in prepaid.get(c, []):
        if (fee.plan_key, fee.rate_card_key) != (plan, card_key):
            continue
        if fee.start == bp.start:
            return False
        if fee.start < bp.end and bp.start < fee.end:
            raise BillingError(
                f"customer {c!r}: the in-advance fee {card_key!r} of plan {plan!r} for "
                f"{bp.start:%Y-%m-%dT%H:%M:%SZ} .. {bp.end:%Y-%m-%dT%H:%M:%SZ} overlaps the "
                f"one {fee.number} billed for {fee.start:%Y-%m-%dT%H:%M:%SZ} .. "
                f"{fee.end:%Y-%m-%dT%H:%M:%SZ}; were the subscriptions changed after invoicing?"
            )
    return True


# Where lines go on an invoice: this period's fees, its usage, next period's fees, late usage.
_FEES, _USAGE, _NEXT_FEES, _LATE = range(4)


def build_invoices(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    periods: Sequence[BillingPeriod],
    *,
    watermark: datetime,
    usage_until: datetime | None = None,
    progress: Callable[[list[_Job]], Iterable[_Job]] | None = None,
    rebuilding: str | None = None,
) -> tuple[list[Invoice], list[list[tuple[UsageWindow, str]]]]:
    """Unsaved invoices for ``periods`` (in that order) and, per invoice, the windows swept
    (with the plan they were priced under).

    ``watermark``: events ingested after it are left for a later invoice. ``usage_until``
    (preview) cuts the period's own window short: usage so far. ``rebuilding`` (preview of
    an invoiced period): the number of that period's stored invoice, whose in-advance fees
    count as not billed yet, as when it was built (else its own fees would be left out).
    The first invoice of each customer in ``periods`` also sweeps the customer's earlier,
    already invoiced periods for late events.
    """
    digest = catalog_digest(catalog)
    customers = sorted({bp.customer.key for bp in periods})
    swept = swept_windows(con, customers)
    # Ranges of the run's consumers that stored windows of other customers own (a consumer
    # moved between customers): usually none, and then every window stays whole.
    owned = ownership(con, _owner_pairs(periods, swept))
    late = _late_windows(con, swept, watermark, owned)
    billed = billed_cards(con, sorted({ck for ck, _, _ in late}))
    prepaid = {
        ck: [fee for fee in fees if fee.number != rebuilding]
        for ck, fees in advance_fees(con, customers).items()
    }
    carried: set[tuple[str, str, str, datetime]] = set()
    cards_of: dict[str, list[UsageCard]] = {}
    invoices: list[Invoice] = []
    jobs: list[_Job] = []
    placed: list[list[tuple[int, int, InvoiceLine]]] = []
    sweeping: set[str] = set()

    def window(
        customer: str,
        consumers: tuple[str, ...],
        start: datetime,
        end: datetime,
        after: datetime | None = None,
        first: int | None = None,
    ) -> UsageWindow:
        """Job ``len(jobs)``'s window; ``first``: a stored window's first sweep (None: new)."""
        w = UsageWindow(len(jobs), consumers, start, end, watermark, after)
        return owned.carve(w, customer, first) if owned else w

    for idx, bp in enumerate(periods):
        c = bp.customer
        invoices.append(Invoice(c.key, c.name, c.currency, bp.start, bp.end, watermark, digest))
        lines: list[tuple[int, int, InvoiceLine]] = []
        for card in bp.plan.rate_cards:
            price = card.price
            if not isinstance(price, FlatPrice):
                continue
            # An in-advance fee is on the invoice before its period's (the previous
            # period's, stored or in this run) unless that one did not bill it: a first
            # period, or one added to the catalog after the previous invoice was final.
            if price.payment_term == "in_arrears" or _fee_due(bp, card.key, prepaid, carried):
                lines.append((_FEES, len(lines), _flat_line(card, price, bp, c.currency)))
        nxt = next_period(catalog, bp)
        if nxt is not None:
            for card in nxt.plan.rate_cards:
                price = card.price
                if not (isinstance(price, FlatPrice) and price.payment_term == "in_advance"):
                    continue
                if _fee_due(nxt, card.key, prepaid, carried):
                    fee = _flat_line(card, price, nxt, c.currency)
                    lines.append((_NEXT_FEES, len(lines), fee))
                    carried.add((c.key, nxt.plan.key, card.key, nxt.start))
        placed.append(lines)

        own_end = bp.end if usage_until is None else max(bp.start, min(bp.end, usage_until))
        if bp.plan.key not in cards_of:
            cards_of[bp.plan.key] = usage_cards(catalog, bp.plan)
        cards = cards_of[bp.plan.key]
        own = window(c.key, tuple(c.consumers), bp.start, own_end)
        jobs.append(_Job(idx, own, bp.plan.key, cards, False, bp.share, bp.share_label))
        if c.key in sweeping:
            continue  # one invoice per customer and run sweeps late usage
        sweeping.add(c.key)
        for sw in swept.get(c.key, []):
            if sw.billed_until >= watermark or (sw.start, sw.end) == (bp.start, bp.end):
                continue
            # A window without late events bills nothing: it is recorded as swept, but
            # its earlier lines need not be read nor its (old) events aggregated again.
            late_events = (c.key, sw.start, sw.end) in late
            prior = billed.get((c.key, sw.start, sw.end), {}) if late_events else {}
            snapshots = [  # in the order of the period's own invoice
                UsageCard.from_snapshot(sw.plan_key, b.snapshot)
                for b in sorted(prior.values(), key=lambda b: b.line_no)
                if b.snapshot is not None
            ]
            jobs.append(
                _Job(
                    idx,
                    window(c.key, sw.consumers, sw.start, sw.end, sw.billed_until, sw.first),
                    sw.plan_key,
                    snapshots,
                    late=True,
                    prior=prior,
                )
            )

    by_window: dict[int, list[WindowUsage]] = defaultdict(list)
    token_sets = sorted({uc.meter.token_types for j in jobs for uc in j.cards})
    for late_sweeps in (False, True):  # apart: the sweeps' query reads only late ingestion
        asked = [j.window for j in jobs if j.cards and j.late == late_sweeps]
        for row in aggregate_windows(con, asked, token_sets):
            by_window[row.window_id].append(row)

    match = _Matcher()
    for job in jobs if progress is None else progress(jobs):
        rows = by_window.get(job.window.window_id, [])
        inv = invoices[job.invoice]
        if job.late:
            _regrant(job, rows, inv.currency, match)
        for uc in job.cards:
            line = _usage_line(job, uc, rows, inv.currency, match)
            if line is not None:
                where = _LATE if job.late else _USAGE
                placed[job.invoice].append((where, len(placed[job.invoice]), line))
    for inv, lines in zip(invoices, placed, strict=True):
        inv.lines = [line for _, _, line in sorted(lines, key=lambda t: (t[0], t[1]))]
        for n, line in enumerate(inv.lines, start=1):
            line.line_no = n
    windows: list[list[tuple[UsageWindow, str]]] = [[] for _ in invoices]
    for job in jobs:
        windows[job.invoice].append((job.window, job.plan_key))
    return invoices, windows
