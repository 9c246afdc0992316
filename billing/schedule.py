"""Which billing periods a customer has: subscriptions cut into periods, clipped.

Periods anchor at each subscription's start (``meterline.periods``). A period is billed
only for the part inside its subscription: a subscription that ends mid-period (a plan
change, a cancellation) has a short last period ``[period start, subscription end)``,
and its invoice closes when the subscription ends. The next subscription's periods
anchor at its own start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from functools import lru_cache

from billing.errors import UserError
from meterline.catalog import Catalog, Customer, Plan, Subscription
from meterline.periods import Period, proration
from meterline.periods import period_containing as _period_containing
from meterline.periods import periods_between as _periods_between

# Customers share anchors and cadences (every plan starting on the 1st...): computing a
# period is date arithmetic on relativedelta, so remember the answers.
periods_between = lru_cache(maxsize=65536)(_periods_between)
period_containing = lru_cache(maxsize=65536)(_period_containing)


_DAY = timedelta(days=1)


class ScheduleError(UserError, ValueError):
    """No subscription where one is needed; the message names customer and instant."""


@dataclass(frozen=True)
class BillingPeriod:
    """``[start, end)``: the part of the plan period ``full`` inside the subscription."""

    customer: Customer
    plan: Plan
    subscription: Subscription
    full: Period
    start: datetime
    end: datetime

    @property
    def share(self) -> Fraction:
        """Share of the full period billed (1 unless the subscription cuts it), exact."""
        if (self.start, self.end) == (self.full.start, self.full.end):
            return Fraction(1)
        return proration(self.full, self.start, self.end)

    @property
    def share_label(self) -> str:
        """``"10/30 days"`` when both spans are whole days, else the ratio (``"1/3"``)."""
        part, whole = self.end - self.start, self.full.duration
        if part % _DAY == timedelta(0) and whole % _DAY == timedelta(0):
            return f"{part // _DAY}/{whole // _DAY} days"
        return str(self.share)

    @property
    def key(self) -> tuple[str, datetime, datetime]:
        return (self.customer.key, self.start, self.end)


def _clipped(catalog: Catalog, customer: Customer, sub: Subscription, p: Period) -> BillingPeriod:
    start = max(p.start, sub.start)
    end = p.end if sub.end is None else min(p.end, sub.end)
    return BillingPeriod(customer, catalog.plan(sub.plan), sub, p, start, end)


def customer_periods(catalog: Catalog, customer: Customer, until: datetime) -> list[BillingPeriod]:
    """Every billing period of ``customer`` that starts before ``until``, in time order."""
    out: list[BillingPeriod] = []
    for sub in sorted(customer.subscriptions, key=lambda s: s.start):
        stop = until if sub.end is None else min(sub.end, until)
        cadence = catalog.plan(sub.plan).billing_cadence
        if stop <= sub.start:
            continue
        for p in periods_between(sub.start, cadence, sub.start, stop):
            out.append(_clipped(catalog, customer, sub, p))
    return out


def subscription_at(customer: Customer, at: datetime) -> Subscription | None:
    for sub in customer.subscriptions:
        if sub.start <= at and (sub.end is None or at < sub.end):
            return sub
    return None


def period_at(catalog: Catalog, customer: Customer, at: datetime) -> BillingPeriod:
    """The billing period of ``customer`` that contains ``at``."""
    sub = subscription_at(customer, at)
    if sub is None:
        raise ScheduleError(
            f"customer {customer.key!r} has no subscription at {at:%Y-%m-%dT%H:%M:%SZ}"
        )
    cadence = catalog.plan(sub.plan).billing_cadence
    return _clipped(catalog, customer, sub, period_containing(sub.start, cadence, at))


def next_period(catalog: Catalog, bp: BillingPeriod) -> BillingPeriod | None:
    """The period that starts where ``bp`` ends, if a subscription covers that instant."""
    try:
        return period_at(catalog, bp.customer, bp.end)
    except ScheduleError:
        return None


def periods_ending_in(
    catalog: Catalog, month: Period, customers: list[Customer]
) -> list[BillingPeriod]:
    """Periods that end in ``month``: ``month.start < end <= month.end`` (closed or not:
    the caller compares ``end`` with its clock).

    The end is exclusive, so ``[03-01, 04-01)`` ends in March: its last instant is in March.

    Sorted by (end, customer, start): the order invoice numbers are given in.
    """
    out = [
        bp
        for c in customers
        for bp in customer_periods(catalog, c, month.end)
        if month.start < bp.end <= month.end
    ]
    return sorted(out, key=lambda bp: (bp.end, bp.customer.key, bp.start))


def periods_ended_before(
    catalog: Catalog, instant: datetime, customers: list[Customer]
) -> list[BillingPeriod]:
    """Every period of ``customers`` that ended at or before ``instant``, in time order."""
    out = [
        bp for c in customers for bp in customer_periods(catalog, c, instant) if bp.end <= instant
    ]
    return sorted(out, key=lambda bp: (bp.end, bp.customer.key, bp.start))


def invoice_month(bp: BillingPeriod) -> str:
    """``YYYY-MM`` of the month ``bp`` ends in (the ``--period`` that invoices it)."""
    return f"{bp.end - timedelta(microseconds=1):%Y-%m}"
