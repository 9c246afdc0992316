"""Read what governance needs from the store: used units per account and period, balances.

One read transaction per refresh: every governed account's current period (and a prepaid
plan's earlier periods no invoice billed) summed from the events
(:mod:`meterline.entitlements.windowsums`: the proxy keeps the sums of events ingested
long enough ago, and reads only the recent ones), the pending event ids the store now
holds, credit balances and grants. Values are inlined as SQL literals (no bound
parameters: the DuckDB client would try ``import pandas`` per parameter, holding the GIL
the proxy's loop needs).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb

from meterline.entitlements import fleet
from meterline.entitlements.counters import Snapshot
from meterline.entitlements.policy import Key, Policy
from meterline.entitlements.windowsums import KeptSums, Windows, sql_ts
from meterline.periods import periods_between
from meterline.sqltext import sql_string

_ID_CHUNK = 2000


def policy_usage(
    con: duckdb.DuckDBPyConnection, policy: Policy, at: datetime, *, until_at: bool = False
) -> dict[Key, int]:
    """Units in the store for every account of ``policy``, current periods at ``at``.

    The proxy counts the whole period (an event stamped a little ahead by a skewed clock
    still counts against the limit); ``until_at`` counts only events before ``at``: the
    reading as of that instant (``billing entitlements``, the dashboard's gauges at ``?at=``)."""
    return _add_current(Windows(), policy, at, until_at=until_at).read(con)


def _add_current(windows: Windows, policy: Policy, at: datetime, *, until_at: bool) -> Windows:
    """``windows`` plus every account's current period at ``at``."""
    until = at if until_at else None
    for pol in policy.by_customer.values():
        for acct in pol.accounts:
            period, key = acct.current(at)  # cached per account: period math is slow
            windows.add(acct, key, period, pol.consumers, until)
    return windows


def policy_keys(policy: Policy, at: datetime) -> dict[Key, int]:
    """Every account's current counter at ``at``, at 0 (a store with no events yet)."""
    return {
        acct.key(acct.period(at)): 0 for pol in policy.by_customer.values() for acct in pol.accounts
    }


def _invoiced_starts(con: duckdb.DuckDBPyConnection, customer: str) -> set[datetime]:
    """Starts (UTC) of the periods of ``customer`` that an invoice billed."""
    if not _has_table(con, "invoices"):
        return set()
    rows = con.execute(
        f"SELECT DISTINCT period_start FROM invoices WHERE customer_key = {sql_string(customer)}"
    ).fetchall()
    return {r[0].replace(tzinfo=UTC) for r in rows}


def unbilled_usage(con: duckdb.DuckDBPyConnection, policy: Policy, at: datetime) -> dict[Key, int]:
    """Units of a prepaid plan's cost cards in the earlier periods of the subscription
    that no invoice billed yet: spent, but not yet taken from the credit balance.

    One window per earlier period and consumer (a period's cost is not linear: tiers'
    flat amounts, packages and minimums apply per period). Late usage of an invoiced
    period (ingested after its invoice) is billed by the next invoice; it is not counted
    here.
    """
    return _add_unbilled(Windows(), con, policy, at).read(con)


def _add_unbilled(
    windows: Windows, con: duckdb.DuckDBPyConnection, policy: Policy, at: datetime
) -> Windows:
    """``windows`` plus the earlier periods :func:`unbilled_usage` counts."""
    for pol in policy.by_customer.values():
        if not pol.prepaid or not pol.cost_cards:
            continue
        invoiced = _invoiced_starts(con, pol.customer)
        for cc in pol.cost_cards:
            acct = cc.account
            current = acct.period(at)
            for period in periods_between(acct.anchor, acct.cadence, acct.anchor, current.start):
                if period.start not in invoiced:
                    windows.add(acct, acct.key(period), period, pol.consumers)
    return windows


def seen_event_ids(
    con: duckdb.DuckDBPyConnection, event_ids: Sequence[str], since: datetime | None
) -> set[str]:
    """Which of ``event_ids`` the store holds (events at or after ``since``)."""
    seen: set[str] = set()
    where = f"ts >= {sql_ts(since)} AND " if since is not None else ""
    for i in range(0, len(event_ids), _ID_CHUNK):
        chunk = ", ".join(sql_string(e) for e in event_ids[i : i + _ID_CHUNK])
        rows = con.execute(
            f"SELECT event_id FROM usage_events WHERE {where}event_id IN ({chunk})"
        ).fetchall()
        seen.update(r[0] for r in rows)
    return seen


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    try:
        con.execute(f"SELECT 1 FROM {name} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


def credit_balances(
    con: duckdb.DuckDBPyConnection, at: datetime, *, as_of: bool = False
) -> dict[str, Decimal]:
    """Per customer: grants not expired at ``at`` minus what invoices consumed of them.

    ``as_of``: the balance as it stood at ``at`` (a reading of a past instant): only the
    grants granted by then, less only what the invoices issued by then consumed. An
    invoice issued later (the invoice of the period ``at`` falls in, or of an earlier
    one generated after ``at``) is left out, so generating it does not change the reading;
    the proxy reads the store as it is (``at`` is now), every grant and invoice."""
    if not _has_table(con, "credit_grants"):
        return {}
    known_at = at if as_of else None
    consumed = _consumed(con, known_at)
    out: dict[str, Decimal] = defaultdict(Decimal)
    for grant_id, customer, feature, amount, expires_at in _grant_rows(con, known_at):
        if feature is not None or (expires_at is not None and expires_at.replace(tzinfo=UTC) <= at):
            continue
        out[customer] += max(Decimal(0), Decimal(amount) - consumed[grant_id])
    return dict(out)


def grants_left(
    con: duckdb.DuckDBPyConnection,
) -> dict[str, tuple[tuple[datetime | None, Decimal], ...]]:
    """Per customer: (expires at, left) of each money grant with something left, expired
    or not, in the order invoices take them (billing.credits.Grant.order: priority, then
    expiry, never-expiring last, then id)."""
    if not _has_table(con, "credit_grants"):
        return {}
    consumed = _consumed(con)
    has_units = _has_column(con, "credit_grants", "feature_key")  # a store from before 0202
    money_only = "feature_key IS NULL" if has_units else "TRUE"
    rows = con.execute(
        "SELECT grant_id, customer_key, amount, expires_at, priority FROM credit_grants "
        f"WHERE {money_only} ORDER BY priority, expires_at IS NULL, expires_at, grant_id"
    ).fetchall()
    out: dict[str, list[tuple[datetime | None, Decimal]]] = defaultdict(list)
    for grant_id, customer, amount, expires_at, _ in rows:
        left = Decimal(amount) - consumed[grant_id]
        if left > 0:
            out[customer].append((expires_at.replace(tzinfo=UTC) if expires_at else None, left))
    return {k: tuple(v) for k, v in out.items()}


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    try:
        con.execute(f"SELECT {column} FROM {table} LIMIT 0")
    except duckdb.BinderException:
        return False
    return True


def _consumed(
    con: duckdb.DuckDBPyConnection, known_at: datetime | None = None
) -> defaultdict[str, Decimal]:
    """Per grant: what invoices took of it so far (0 for a grant nothing took from);
    ``known_at``: only the invoices issued by then (a consumption is stamped with its
    invoice's issue time)."""
    consumed: defaultdict[str, Decimal] = defaultdict(Decimal)
    where = f"WHERE consumed_at <= {sql_ts(known_at)} " if known_at is not None else ""
    if _has_table(con, "credit_consumptions"):
        for grant_id, amount in con.execute(
            f"SELECT grant_id, SUM(amount) FROM credit_consumptions {where}GROUP BY grant_id"
        ).fetchall():
            consumed[grant_id] = Decimal(amount)
    return consumed


def _grant_rows(
    con: duckdb.DuckDBPyConnection, known_at: datetime | None = None
) -> list[tuple[str, str, str | None, Any, Any]]:
    """(grant id, customer, feature or None, amount, expires at) of every grant;
    ``known_at``: of the grants granted by then."""
    where = f" WHERE granted_at <= {sql_ts(known_at)}" if known_at is not None else ""
    try:
        return con.execute(
            "SELECT grant_id, customer_key, feature_key, amount, expires_at FROM credit_grants"
            + where
        ).fetchall()
    except duckdb.BinderException:  # a store from before unit grants (0202 not applied)
        return [
            (g, c, None, a, e)
            for g, c, a, e in con.execute(
                "SELECT grant_id, customer_key, amount, expires_at FROM credit_grants" + where
            ).fetchall()
        ]


def unit_balances(
    con: duckdb.DuckDBPyConnection, at: datetime, *, as_of: bool = False
) -> dict[tuple[str, str], int]:
    """Per (customer, feature): unit grants not expired at ``at`` minus what invoices took;
    ``as_of`` as in :func:`credit_balances`."""
    if not _has_table(con, "credit_grants"):
        return {}
    known_at = at if as_of else None
    consumed = _consumed(con, known_at)
    out: dict[tuple[str, str], int] = defaultdict(int)
    for grant_id, customer, feature, amount, expires_at in _grant_rows(con, known_at):
        if feature is None or (expires_at is not None and expires_at.replace(tzinfo=UTC) <= at):
            continue
        out[(customer, feature)] += int(max(Decimal(0), Decimal(amount) - consumed[grant_id]))
    return dict(out)


def read_snapshot(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    at: datetime,
    pending_ids: Callable[[], Sequence[str]],
    peer_rows: Callable[[duckdb.DuckDBPyConnection], list[fleet.Row]] | None = None,
    kept: KeptSums | None = None,
) -> Snapshot:
    """Everything the counters take from the store, in one read transaction.

    ``pending_ids`` (the events counted but not yet seen in the store) is asked for once
    the transaction reads its snapshot: every event that snapshot holds was counted
    before it was spooled, so it is among them and leaves ``pending`` when applied. Ids
    taken before the read would miss an event counted and stored meanwhile: it would
    count twice (stored and pending) until the next read.

    ``peer_rows`` (a fleet on a PostgreSQL lake) reads the other proxies' rows, after the
    snapshot too, for the same reason: their pending events this snapshot holds are
    found by the same query as this proxy's own and counted once, as stored; those this
    proxy counts as its own pending are not counted again.

    ``kept`` (the proxy's reading thread) keeps the sums of events ingested long enough
    ago between reads, so that a read sums only the recent ones (:mod:`.windowsums`).
    """
    con.execute("BEGIN TRANSACTION")
    try:
        if _has_table(con, "usage_events"):
            windows = _add_current(Windows(), policy, at, until_at=False)
            _add_unbilled(windows, con, policy, at)
            stored = windows.read(con) if kept is None else kept.read(con, windows, at)
            pending = pending_ids()
            rows = peer_rows(con) if peer_rows is not None else []
            looked_for = list(dict.fromkeys([*pending, *fleet.pending_ids(rows)]))
            seen = seen_event_ids(con, looked_for, None) if looked_for else set()
        else:  # a new store: nothing metered yet
            stored, seen = policy_keys(policy, at), set()
            rows = peer_rows(con) if peer_rows is not None else []
            pending = pending_ids() if rows else []
        balances = credit_balances(con, at)
        units = unit_balances(con, at)
        left = grants_left(con)
    except BaseException:
        # A server gone mid-read fails the ROLLBACK too: its error ("Failed to execute
        # query ROLLBACK: ", no reason) used to replace the one that says why.
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    con.execute("ROLLBACK")
    # An event this proxy counts itself is not another's too: a proxy restarted within
    # its old rows' life counts its spooled events again, under a new publisher.
    peers = fleet.peers_from(rows, seen | set(pending)) if rows else fleet.Peers()
    return Snapshot(stored, seen, balances, at, units, left, peers)
