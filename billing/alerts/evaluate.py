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
deduplicating on it dropped one, and the outbox took the second crossing for the first).
A feature with one limit keeps the id it always had; an id that gained the end carries
the one it had before (``legacy_id``) so :func:`billing.alerts.outbox.enqueue` does not
send again what was queued under it before an upgrade or before a second limit was added.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb

from billing.entitlements import entitlement_rows
from billing.invoices import preview_invoice
from billing.schedule import ScheduleError
from meterline.catalog import Catalog


@dataclass(frozen=True)
class AlertEvent:
    event_id: str
    customer_key: str
    kind: str
    period_start: datetime
    data: dict[str, Any]
    legacy_id: str | None = None
    """The id the same crossing had before the period's end was part of it, if other."""


def event_id(*parts: str) -> str:
    """``evt_`` + 24 hex digits of sha256 over the parts: the same crossing, the same id."""
    return "evt_" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def evaluate(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, now: datetime | None = None
) -> list[AlertEvent]:
    now = now or datetime.now(UTC)
    rules = catalog.alerts
    out: list[AlertEvent] = []
    rows = entitlement_rows(con, catalog, now=now)
    limits_per_feature = Counter(
        (row["customer"], row["feature"]) for row in rows if row["type"] == "metered"
    )
    for row in rows:
        customer = row["customer"]
        if row["type"] == "metered" and isinstance(row["limit"], int) and row["limit"] > 0:
            granted = int(row.get("granted_units") or 0)
            used, limit = int(row["used"]), int(row["limit"]) + granted
            for pct in sorted(rules.entitlement_percent):
                if used * 100 >= limit * pct:
                    start, end = row["period_start"], row["resets_at"]
                    legacy = event_id(customer, "entitlement", row["feature"], str(pct), start)
                    several = limits_per_feature[(customer, row["feature"])] > 1
                    out.append(
                        AlertEvent(
                            event_id(customer, "entitlement", row["feature"], str(pct), start, end)
                            if several
                            else legacy,
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
                            },
                            legacy_id=legacy if several else None,
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
                            now if not start else _parse(start),
                            {"below": str(amount), "remaining": str(remaining)},
                        )
                    )
    if rules.period_spend_above:
        for customer in catalog.customers:
            try:
                inv = preview_invoice(con, catalog, customer.key, now=now)
            except (ScheduleError, ValueError):
                continue  # no subscription now
            spent = sum((ln.amount for ln in inv.lines if ln.kind != "credit"), Decimal(0))
            for amount in sorted(rules.period_spend_above):
                if spent > amount:
                    start = inv.period_start.strftime("%Y-%m-%dT%H:%M:%SZ")
                    out.append(
                        AlertEvent(
                            event_id(customer.key, "spend", str(amount), start),
                            customer.key,
                            "spend.above",
                            inv.period_start,
                            {"above": str(amount), "spent": str(spent), "currency": inv.currency},
                        )
                    )
    return out
