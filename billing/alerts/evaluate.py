"""Which thresholds are crossed now: alert events with ids stable within a period.

Rules come from the catalog's ``alerts`` section: percentages of every metered
entitlement with a limit (``entitlement_percent``), a prepaid customer's remaining
credit below an amount (``credit_balance_below``), the running invoice total of the
billing period above an amount (``period_spend_above``). The figures are those of
``billing entitlements`` and ``billing invoice preview``. A percentage is of the limit the
proxy enforces: the entitlement's limit plus the customer's unit grants of the feature
(``GRANTED_UNITS``, what ``billing entitlements`` counts in ``REMAINING``); before, 100 %
fired at 1,110 of "1000" while the proxy admitted up to 1,500, and nothing fired when
the customer was actually blocked.

A threshold's id is (customer, feature, percent, period start), plus the period's end
when the customer has several metered limits on the feature (a monthly and a daily one
start at the same instant on the 1st: with the start alone both had one id, receivers
deduplicating on it dropped one, and the outbox took the second crossing for the first),
plus the enforced limit when a unit grant or a customer override sets it (a grant
raising the limit after 100 % fired: the proxy blocked again at the new limit, but the
id was the one already sent, so nothing fired). A plan's limit with no grant keeps the id
it always had; an id that gained the end or the limit carries the ones it had before
(``legacy_ids``) so :func:`billing.alerts.outbox.enqueue` does not send again what was
queued under them for the same period end and limit, before an upgrade, a second limit
or a grant.

Besides the current periods, :func:`evaluate` looks back at the periods that ended just
before them (see its docstring): a crossing in the last polling interval of a period is
sent after the period, once, marked ``period_ended``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb

from billing.entitlements import entitlement_rows
from billing.invoices import preview_invoice
from billing.model import Invoice
from billing.schedule import ScheduleError
from meterline.catalog import Alerts, Catalog, Customer
from meterline.periods import period_containing


@dataclass(frozen=True)
class AlertEvent:
    event_id: str
    customer_key: str
    kind: str
    period_start: datetime
    data: dict[str, Any]
    legacy_ids: tuple[str, ...] = ()
    """The ids the same crossing had before the period's end or the limit was part of it:
    a row queued under one of them with the same period end and limit is this event."""


def event_id(*parts: str) -> str:
    """``evt_`` + 24 hex digits of sha256 over the parts: the same crossing, the same id."""
    return "evt_" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


#: A look-back instant lies this far before the end of the period it evaluates.
_JUST_BEFORE = timedelta(microseconds=1)


def evaluate(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, now: datetime | None = None
) -> list[AlertEvent]:
    """The crossings of the current periods and of the periods ended just before them.

    ``billing alerts deliver`` runs from cron or ``--watch``: a threshold crossed in the
    last polling interval before its period ended was never evaluated inside that period,
    so it was lost for good. Each round therefore also looks back at the period before
    each current one (of every entitlement, prepaid credit and invoice period) and at the
    last period of a subscription that has ended, as they stood at their last instant;
    their ids are those the same crossings have inside the period, so nothing fires twice.
    """
    now = now or datetime.now(UTC)
    rules = catalog.alerts
    rows = entitlement_rows(con, catalog, now=now)
    out = _threshold_events(rows, rules, now)
    for at, closed in sorted(_ended_period_instants(catalog, rows, now).items()):
        earlier = entitlement_rows(con, catalog, now=at)
        out += _threshold_events(earlier, rules, at, ended_by=(now, closed))
    if rules.period_spend_above:
        for customer in catalog.customers:
            out += _spend_events(con, catalog, customer, now)
    unique: dict[str, AlertEvent] = {}
    for ev in out:
        unique.setdefault(ev.event_id, ev)
    return list(unique.values())


def _ended_period_instants(
    catalog: Catalog, rows: list[dict[str, Any]], now: datetime
) -> dict[datetime, set[str]]:
    """The last instant of the period before each current one, and of each customer's
    latest subscription that has ended (its customer may have no current period at all),
    each with the customers whose subscription ended there (every period of theirs is
    over then, whatever its ``resets_at``)."""
    instants: dict[datetime, set[str]] = {
        _parse(row["period_start"]) - _JUST_BEFORE: set() for row in rows if row["period_start"]
    }
    for customer in catalog.customers:
        end = _just_ended(catalog, customer, now)
        if end is not None:
            instants.setdefault(end - _JUST_BEFORE, set()).add(customer.key)
    return instants


def _just_ended(catalog: Catalog, customer: Customer, now: datetime) -> datetime | None:
    """The end of the customer's latest ended subscription if its last period ended at
    most one period before ``now`` (the look-back's reach: before, alerts were switched
    on and the first round sent one for a period that had ended five months earlier)."""
    ended = [s for s in customer.subscriptions if s.end is not None and s.end <= now]
    if not ended:
        return None
    sub = max(ended, key=lambda s: s.end or now)
    assert sub.end is not None
    cadence = catalog.plan(sub.plan).billing_cadence
    last = period_containing(sub.start, cadence, sub.end - _JUST_BEFORE)
    return sub.end if now - sub.end <= last.end - last.start else None


def _over(row: dict[str, Any], now: datetime, closed: set[str]) -> bool:
    """Whether the report row's period is over by ``now``."""
    return row["customer"] in closed or bool(row["resets_at"] and _parse(row["resets_at"]) <= now)


def _threshold_events(
    rows: list[dict[str, Any]],
    rules: Alerts,
    at: datetime,
    *,
    ended_by: tuple[datetime, set[str]] | None = None,
) -> list[AlertEvent]:
    """Entitlement and credit crossings of the report ``rows`` (read at ``at``). With
    ``ended_by`` (now, customers whose subscription ended at ``at``): only those of periods
    over by now, marked ``period_ended``."""
    out: list[AlertEvent] = []
    ended = ended_by is not None
    limits_per_feature = Counter(
        (row["customer"], row["feature"]) for row in rows if row["type"] == "metered"
    )
    for row in rows:
        if ended_by is not None and not _over(row, *ended_by):
            continue
        customer = row["customer"]
        if row["type"] == "metered" and isinstance(row["limit"], int) and row["limit"] > 0:
            granted = int(row.get("granted_units") or 0)
            used, limit = int(row["used"]), int(row["limit"]) + granted
            for pct in sorted(rules.entitlement_percent):
                if used * 100 >= limit * pct:
                    start, end = row["period_start"], row["resets_at"]
                    parts = [customer, "entitlement", row["feature"], str(pct), start]
                    formers = [event_id(*parts)]
                    if limits_per_feature[(customer, row["feature"])] > 1:
                        parts.append(end)
                        formers.insert(0, event_id(*parts))
                    if granted or not str(row["source"]).startswith("plan "):
                        parts.append(f"limit={limit}")
                        formers.insert(0, event_id(*parts))
                    out.append(
                        AlertEvent(
                            formers[0],
                            customer,
                            "entitlement.threshold",
                            _parse(start),
                            {
                                "feature": row["feature"],
                                "percent": pct,
                                "limit": limit,
                                "entitlement_limit": int(row["limit"]),
                                "granted_units": granted,
                                "used": used,
                                "enforcement": row["enforcement"],
                                "resets_at": end,
                                "period_ended": ended,
                            },
                            legacy_ids=tuple(formers[1:]),
                        )
                    )
        elif row["type"] == "credit":
            remaining = Decimal(row["remaining"])
            for amount in sorted(rules.credit_balance_below):
                if remaining < amount:
                    # The id keeps the period's end (as ever: an alert already sent keeps
                    # its id); the payload names the period's start, like the others.
                    resets = row["resets_at"] or ""
                    start = row["period_start"]
                    out.append(
                        AlertEvent(
                            event_id(customer, "credit", str(amount), resets),
                            customer,
                            "credit.balance_below",
                            at if not start else _parse(start),
                            {
                                "below": str(amount),
                                "remaining": str(remaining),
                                "resets_at": row["resets_at"],
                                "period_ended": ended,
                            },
                        )
                    )
    return out


def _spend_events(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, customer: Customer, now: datetime
) -> list[AlertEvent]:
    """``period_spend_above`` crossings of the customer's current invoice period, of the
    one before it and of the last period of its latest ended subscription."""
    end = _just_ended(catalog, customer, now)
    instants = [now] + ([end - _JUST_BEFORE] if end is not None else [])
    invoices: list[Invoice] = []
    for n, at in enumerate(instants):
        try:
            inv = preview_invoice(con, catalog, customer.key, at=at, now=now)
        except (ScheduleError, ValueError):
            continue  # no subscription then
        if n == 0:  # the current period: the one before it too
            instants.append(inv.period_start - _JUST_BEFORE)
        elif inv.period_end > now or any(i.period_start == inv.period_start for i in invoices):
            continue
        invoices.append(inv)
    out: list[AlertEvent] = []
    for inv in invoices:
        period_ended = inv.period_end <= now
        spent = sum((ln.amount for ln in inv.lines if ln.kind != "credit"), Decimal(0))
        for amount in sorted(catalog.alerts.period_spend_above):
            if spent > amount:
                start = inv.period_start.strftime("%Y-%m-%dT%H:%M:%SZ")
                out.append(
                    AlertEvent(
                        event_id(customer.key, "spend", str(amount), start),
                        customer.key,
                        "spend.above",
                        inv.period_start,
                        {
                            "above": str(amount),
                            "spent": str(spent),
                            "currency": inv.currency,
                            "period_end": inv.period_end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "period_ended": period_ended,
                        },
                    )
                )
    return out
