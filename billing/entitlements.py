"""The entitlement report: limit, used, remaining, credit balance, reset time per customer.

``granted_units``: the customer's unit grants of the feature that invoices have not
consumed; the proxy adds them to a hard limit, so ``remaining`` counts them too.

The figures come from ``meterline.entitlements`` (the policy, the store reads, the cost
bound), so they are the numbers the proxy enforces; ``reserved`` (calls in flight) is
known only inside each proxy and is read from the state files proxies write next to
their spool (``governance.json``), when given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from billing.errors import BillingError
from billing.money import minor_unit_exponent, round_money
from meterline.catalog import Catalog
from meterline.entitlements import (
    Counters,
    CustomerPolicy,
    Key,
    Policy,
    Snapshot,
    build_policy,
    credit_balances,
    policy_usage,
    unit_balances,
)
from meterline.entitlements.cost import to_decimal
from meterline.entitlements.policy import counter_id
from meterline.entitlements.reading import unbilled_usage
from meterline.periods import periods_between


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: A state file not rewritten for this many refresh intervals (and at least
#: :data:`MIN_STALE_S`) is its proxy's last word before it stopped: a proxy rewrites it
#: after every store read.
STALE_REFRESHES = 10
MIN_STALE_S = 30.0


def read_reserved(
    paths: Sequence[Path], now: datetime | None = None
) -> tuple[dict[str, int], list[str]]:
    """Reservations in flight from proxies' state files, summed by counter id, and a
    warning for each file left by a proxy that no longer runs (its reservations are not
    counted: a proxy killed with calls in flight never clears them).

    A file that cannot be read is an error: skipping it would show 0 reserved as if its
    proxy had nothing in flight. (A proxy replaces its file atomically, so a file being
    written is never seen half-written.)
    """
    now = now or datetime.now(UTC)
    out: dict[str, int] = {}
    warnings: list[str] = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise BillingError(f"proxy state {path}: cannot read it: {e.strerror or e}") from None
        except ValueError:
            raise BillingError(f"proxy state {path}: not a proxy's governance.json") from None
        reserved = data.get("reserved") if isinstance(data, dict) else None
        if not isinstance(reserved, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in reserved.values()
        ):
            raise BillingError(f"proxy state {path}: not a proxy's governance.json")
        age = _age_s(data, now)
        limit = _stale_after_s(data)
        if age is not None and age > limit:
            warnings.append(
                f"proxy state {path}: written {age:.0f} s ago (its proxy rewrites it every "
                f"store read): the proxy is not running, its {sum(reserved.values())} "
                "reserved units are not counted"
            )
            continue
        for k, v in reserved.items():
            out[k] = out.get(k, 0) + v
    return out, warnings


def _age_s(state: dict[str, Any], now: datetime) -> float | None:
    written = state.get("written_at")
    try:
        at = datetime.fromisoformat(written) if isinstance(written, str) else None
    except ValueError:
        return None
    if at is None or at.tzinfo is None:
        return None
    return (now - at).total_seconds()


def _stale_after_s(state: dict[str, Any]) -> float:
    refresh = state.get("refresh_s")
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh <= 0:
        refresh = 2.0  # written by a release that did not say: the default
    return max(STALE_REFRESHES * float(refresh), MIN_STALE_S)


def _credit_counters(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    now: datetime,
    used: dict[Key, int],
    balances: dict[str, Decimal],
    tables: set[str],
) -> Counters:
    """The proxy's prepaid arithmetic over the report's reading: the current periods'
    usage, and the earlier periods no invoice billed yet, whose invoices will take their
    cost from the credit first (the proxy refuses once that leaves none).

    As the store stood at ``now``, like the balances: a period invoiced after ``now`` was
    not invoiced then, and grants granted after it, or consumed by invoices issued after
    it, are not taken (read now, these are exactly the proxy's figures)."""
    earlier: dict[Key, int] = {}
    if "usage_events" in tables:
        earlier = unbilled_usage(con, policy, now)
        earlier.update(_invoiced_since(con, policy, now, tables))
    counters = Counters()
    left = _grants_left_at(con, now) if "credit_grants" in tables else {}
    counters.apply(Snapshot({**earlier, **used}, set(), balances, now, {}, left))
    return counters


def _invoiced_since(
    con: duckdb.DuckDBPyConnection, policy: Policy, at: datetime, tables: set[str]
) -> dict[Key, int]:
    """Units of the prepaid cost cards' earlier periods first invoiced after ``at`` (not
    invoiced at ``at``: ``unbilled_usage`` leaves them out, as it reads every invoice)."""
    if "invoices" not in tables:
        return {}
    rows = con.execute(
        "SELECT customer_key, period_start FROM invoices GROUP BY customer_key, period_start"
        " HAVING MIN(issued_at) > ?",
        [at.astimezone(UTC).replace(tzinfo=None)],
    ).fetchall()
    later = {(c, start.replace(tzinfo=UTC)) for c, start in rows}
    wanted: dict[datetime, list[Key]] = {}
    for pol in policy.by_customer.values():
        if not pol.prepaid:
            continue
        for cc in pol.cost_cards:
            acct = cc.account
            current = acct.period(at)
            for period in periods_between(acct.anchor, acct.cadence, acct.anchor, current.start):
                if (pol.customer, period.start) in later:
                    wanted.setdefault(period.start, []).append(acct.key(period))
    out: dict[Key, int] = {}
    for start, keys in wanted.items():  # one read per period: the accounts' period then
        units = policy_usage(con, policy, start)
        out.update({k: units.get(k, 0) for k in keys})
    return out


def _grants_left_at(
    con: duckdb.DuckDBPyConnection, at: datetime
) -> dict[str, tuple[tuple[datetime | None, Decimal], ...]]:
    """``grants_left`` (the proxy's: per customer, (expires at, left) of each money grant
    with something left, in the order invoices take them) as the store stood at ``at``."""
    stamp = at.astimezone(UTC).replace(tzinfo=None)
    rows = con.execute(
        "SELECT g.customer_key, g.expires_at, g.amount - COALESCE(("
        "  SELECT SUM(c.amount) FROM credit_consumptions c"
        "  WHERE c.grant_id = g.grant_id AND c.consumed_at <= ?), 0)"
        " FROM credit_grants g WHERE g.feature_key IS NULL AND g.granted_at <= ?"
        " ORDER BY g.priority, g.expires_at IS NULL, g.expires_at, g.grant_id",
        [stamp, stamp],
    ).fetchall()
    out: dict[str, list[tuple[datetime | None, Decimal]]] = {}
    for customer, expires_at, left in rows:
        if left > 0:
            expires = expires_at.replace(tzinfo=UTC) if expires_at else None
            out.setdefault(customer, []).append((expires, Decimal(left)))
    return {k: tuple(v) for k, v in out.items()}


def _prepaid_figures(
    counters: Counters, pol: CustomerPolicy, now: datetime
) -> tuple[Decimal, Decimal]:
    """(used, remaining) of a prepaid customer's credit as the proxy holds them: the cost
    bound of the current period and of the earlier periods not invoiced yet, each rounded
    up to the currency's unit; what is left of the credit for the current period after
    the earlier periods' invoices take theirs, less the current period's cost (at least 0)."""
    places = minor_unit_exponent(pol.currency)
    current, left = counters.credit_left(pol, now, with_reserved=False)
    _, earlier = counters.cost_parts(pol, now, with_reserved=False)
    used = to_decimal(current, places) + to_decimal(earlier, places)
    # the credit left is not a bound: shown rounded down, as the proxy admits no more
    remaining = -to_decimal(current - left, places)
    return used, max(round_money(Decimal(0), pol.currency), remaining)


def entitlement_rows(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    *,
    customer: str | None = None,
    now: datetime | None = None,
    reserved: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    policy = build_policy(catalog, now)
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    used = policy_usage(con, policy, now, until_at=True) if "usage_events" in tables else {}
    # As the store stood at ``now`` (a past instant on the dashboard's ``?at=``): invoices
    # issued later, the one of the period shown included, must not lower its balance.
    balances = credit_balances(con, now, as_of=True)
    units = unit_balances(con, now, as_of=True)
    reserved = reserved or {}
    credit = _credit_counters(con, policy, now, used, balances, tables)
    rows: list[dict[str, Any]] = []
    for pol in policy.by_customer.values():
        if customer and pol.customer != customer:
            continue
        balance = round_money(balances.get(pol.customer, Decimal(0)), pol.currency)
        for lim in pol.limits:
            period = lim.account.period(now)
            key = lim.account.key(period)
            u = used.get(key, 0)
            r = reserved.get(counter_id(key), 0)
            granted = units.get((pol.customer, lim.account.feature), 0)
            rows.append(
                {
                    "customer": pol.customer,
                    "plan": pol.plan,
                    "feature": lim.account.feature,
                    "type": "metered",
                    "enforcement": "hard" if lim.hard else "soft",
                    "limit": "unlimited" if lim.limit is None else lim.limit,
                    "granted_units": granted,
                    "used": u,
                    "reserved": r,
                    "remaining": (
                        None if lim.limit is None else max(0, lim.limit + granted - u - r)
                    ),
                    "credit_balance": balance if pol.prepaid else None,
                    "period_start": _iso(period.start),
                    "resets_at": _iso(period.end),
                    "source": lim.source,
                }
            )
        if pol.allowed is not None:
            rows.append(
                {
                    "customer": pol.customer,
                    "plan": pol.plan,
                    "feature": "(models granted)",
                    "type": "boolean",
                    "enforcement": "hard",
                    "limit": None,
                    "granted_units": None,
                    "used": None,
                    "reserved": None,
                    "remaining": None,
                    "credit_balance": balance if pol.prepaid else None,
                    "period_start": None,
                    "resets_at": None,
                    "source": f"plan {pol.plan}",
                }
            )
        if pol.prepaid:
            start = end = None
            for cc in pol.cost_cards:
                period = cc.account.period(now)
                start, end = period.start, period.end
            spent, left = _prepaid_figures(credit, pol, now)
            rows.append(
                {
                    "customer": pol.customer,
                    "plan": pol.plan,
                    "feature": "(prepaid credit)",
                    "type": "credit",
                    "enforcement": "hard",
                    "limit": balance,
                    "granted_units": None,
                    "used": spent,
                    "reserved": None,
                    "remaining": left,
                    "credit_balance": balance,
                    "period_start": _iso(start) if start else None,
                    "resets_at": _iso(end) if end else None,
                    "source": f"plan {pol.plan}",
                }
            )
    return rows
