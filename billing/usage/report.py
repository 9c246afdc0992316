"""The usage report (``billing usage``): tokens per consumer, and what no invoice will bill."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from billing.errors import UserError, unknown_customer_message
from billing.schedule import customer_periods
from billing.storevalues import from_db, to_db
from billing.usage.behind import TokenFilter
from billing.usage.owned import ownership
from billing.usage.windows import UsageWindow
from meterline.catalog import CALL_TYPES, Catalog
from meterline.eventschema import TOKEN_COLUMNS
from meterline.served import SERVED_COLUMNS, SERVED_SQL, Served

GROUP_DIMENSIONS = ("model", "tier", "speed", "geo", "type", "day", "refused")


class UsageError(UserError, ValueError):
    """A usage query that cannot be answered (unknown customer, bad range)."""


@dataclass(frozen=True)
class UsageQuery:
    customer: str | None = None
    consumer: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    group_by: tuple[str, ...] = ()
    unbilled: bool = False


def parse_group_by(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    dims = tuple(d.strip() for d in text.split(",") if d.strip())
    bad = [d for d in dims if d not in GROUP_DIMENSIONS]
    if bad:
        raise UsageError(
            f"unknown dimension {bad[0]!r} (choose from {', '.join(GROUP_DIMENSIONS)})"
        )
    return tuple(d for d in GROUP_DIMENSIONS if d in dims)


def _consumer_customers(catalog: Catalog) -> pa.Table:
    pairs = [(name, c.key) for c in catalog.customers for name in c.consumers]
    return pa.table(
        {
            "consumer": pa.array([p[0] for p in pairs], pa.string()),
            "customer_key": pa.array([p[1] for p in pairs], pa.string()),
        }
    )


def _subscriptions(catalog: Catalog) -> pa.Table:
    subs = [(c.key, s) for c in catalog.customers for s in c.subscriptions]
    return pa.table(
        {
            "customer_key": pa.array([k for k, _ in subs], pa.string()),
            "plan_key": pa.array([s.plan for _, s in subs], pa.string()),
            "s_start": pa.array([to_db(s.start) for _, s in subs], pa.timestamp("us")),
            "s_end": pa.array(
                [to_db(s.end) if s.end else None for _, s in subs], pa.timestamp("us")
            ),
        }
    )


UNBILLED_REASON = """
    CASE WHEN e.consumer IS NULL THEN 'unknown key'
         WHEN m.customer_key IS NULL THEN 'consumer not linked to a customer'
         ELSE 'outside subscriptions' END
"""
UNPRICED_REASON = "'no rate card of plan ''' || s.plan_key || ''' prices it'"

UNPRICED_PREFIX = "no rate card of plan "
"""How the reason of usage a subscription covers but its plan does not price begins."""


STRANDED_REASON = "late, after the customer's last invoice"
"""Usage of an invoiced window ingested after its last sweep, of a customer that will
get no further invoice (every period of its subscriptions is invoiced, or it left the
catalog): no late sweep will ever bill it."""


def is_unpriced(reason: object) -> bool:
    """True for the ``no rate card of plan 'P' prices it`` reason of ``--unbilled`` rows."""
    return str(reason).startswith(UNPRICED_PREFIX)


_EVENTS_FROM = "FROM usage_events AS e LEFT JOIN bill_consumer_map AS m ON e.consumer = m.consumer"
_COVERING_SUB = (
    "JOIN bill_subscriptions AS s ON s.customer_key = m.customer_key"
    " AND e.ts >= s.s_start AND (s.s_end IS NULL OR e.ts < s.s_end)"
)
_UNCOVERED = (
    "(e.consumer IS NULL OR m.customer_key IS NULL OR NOT EXISTS ("
    " SELECT 1 FROM bill_subscriptions AS s WHERE s.customer_key = m.customer_key"
    " AND e.ts >= s.s_start AND (s.s_end IS NULL OR e.ts < s.s_end)))"
)


_OWNED = (
    "EXISTS (SELECT 1 FROM (SELECT unnest(consumers) AS consumer, usage_start, usage_end"
    " FROM invoice_windows) AS o WHERE o.consumer = e.consumer"
    " AND e.ts >= o.usage_start AND e.ts < o.usage_end)"
)
"""The event's (consumer, time) is in a stored invoice window: that window's customer
billed it, or will as late usage (:mod:`billing.usage.owned`), whatever the catalog says
now about its consumer."""

_IN_STRANDED = (
    "e.consumer = w.consumer AND e.ts >= w.w_start AND e.ts < w.w_end"
    " AND e.ingested_at > w.ing_after"
)
"""The event is late usage of a window in ``bill_stranded`` (:func:`stranded_windows`)."""
_NOT_STRANDED = f"NOT EXISTS (SELECT 1 FROM bill_stranded AS w WHERE {_IN_STRANDED})"


def _filters(
    catalog: Catalog, query: UsageQuery, customer_sql: str = "list_contains(?, e.consumer)"
) -> tuple[list[str], list[object]]:
    """WHERE conditions and parameters for the customer, consumer and time options.

    ``customer_sql`` takes the customer's consumers (the default) or its key."""
    where: list[str] = []
    params: list[object] = []
    if query.customer is not None:
        try:
            customer = catalog.customer(query.customer)
        except KeyError:
            raise UsageError(unknown_customer_message(catalog, query.customer)) from None
        where.append(customer_sql)
        params.append(list(customer.consumers) if "list_contains" in customer_sql else customer.key)
    if query.consumer is not None:
        if query.consumer not in {c.name for c in catalog.consumers}:
            raise UsageError(f"unknown consumer {query.consumer!r}")
        where.append("e.consumer = ?")
        params.append(query.consumer)
    if query.start is not None:
        where.append("e.ts >= ?")
        params.append(to_db(query.start))
    if query.end is not None:
        where.append("e.ts < ?")
        params.append(to_db(query.end))
    if query.start is not None and query.end is not None and query.end <= query.start:
        raise UsageError("the time range ends before it starts")
    return where, params


def _group_dims(group_by: tuple[str, ...]) -> list[str]:
    dims = []
    if "model" in group_by:
        dims += ["e.provider", "coalesce(e.model, '') AS model"]
    if "tier" in group_by:  # the service tier that served the calls (NULL: not reported)
        dims.append("e.service_tier")
    if "speed" in group_by:  # the speed the calls ran at (Anthropic fast mode; NULL: none said)
        dims.append("e.speed")
    if "geo" in group_by:  # where the calls ran (Anthropic us, global; NULL: none said)
        dims.append("e.inference_geo")
    if "day" in group_by:
        dims.append("CAST(e.ts AS DATE) AS day")
    if "refused" in group_by:  # calls the proxy refused itself, by reason
        dims.append("e.reason AS refused")
    return dims


def _per_consumer_sql(group_by: tuple[str, ...], where: list[str]) -> str:
    """Sum the events per consumer (and dimension) first, then name their customers.

    Reducing ~10M events to ~1k groups before the join (rather than joining every event
    to the consumer map) is 3x faster on 10M events: the join then sees one row a group.
    """
    dims = _group_dims(group_by)
    names = [d.rsplit(" AS ", 1)[-1].removeprefix("e.") for d in dims]
    inner = (
        f"SELECT {', '.join(['e.consumer', *dims])}, {_SUM_TOKENS}, COUNT(*) AS events "
        f"FROM usage_events AS e WHERE {' AND '.join(where) or 'TRUE'} GROUP BY ALL"
    )
    columns = [
        "a.consumer",
        "m.customer_key AS customer",
        *(f"a.{n}" for n in names),
        *(f"a.{tt}" for tt in TOKEN_COLUMNS),
        "a.events",
    ]
    return (
        f"SELECT {', '.join(columns)} FROM ({inner}) AS a "
        "LEFT JOIN bill_consumer_map AS m ON a.consumer = m.consumer"
    )


def _fetch(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[object]
) -> list[dict[str, object]]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


_SUM_TOKENS = ", ".join(f"SUM(e.{col})::BIGINT AS {tt}" for tt, col in TOKEN_COLUMNS.items())


def usage_report(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, query: UsageQuery
) -> list[dict[str, object]]:
    """Token usage per consumer (and model, token type, day as asked), largest first.

    With ``unbilled``: only usage no invoice line will bill, with the reason: a key not in
    the catalog (consumer NULL; its fingerprint is shown), a consumer no customer lists,
    a time outside every subscription of its customer (unless a stored invoice window
    covers it: that invoice's customer billed it), tokens a subscription covers that no
    usage rate card of its plan prices (only those token types are counted), late
    usage of an invoiced window of a customer that will get no further invoice, or usage
    stored after the invoice whose sweep its ``ingested_at`` falls in was made.
    """
    where, params = _filters(catalog, query)
    if not query.unbilled:
        con.register("bill_consumer_map", _consumer_customers(catalog))
        try:
            rows = _fetch(con, _per_consumer_sql(query.group_by, where), params)
        finally:
            con.unregister("bill_consumer_map")
        return _shape(rows, query.group_by)
    con.register("bill_consumer_map", _consumer_customers(catalog))
    con.register("bill_subscriptions", _subscriptions(catalog))
    con.register("bill_stranded", stranded_windows(con, catalog))
    try:
        stranded = con.execute("SELECT count(*) FROM bill_stranded").fetchone() != (0,)
        dims = [
            f"{UNBILLED_REASON} AS reason",
            "e.consumer",
            "CASE WHEN e.consumer IS NULL THEN e.key_fingerprint END AS key_fingerprint",
            "m.customer_key AS customer",
            *_group_dims(query.group_by),
        ]
        cond = " AND ".join([*where, _UNCOVERED, f"NOT {_OWNED}"])
        rows = _fetch(
            con,
            f"SELECT {', '.join(dims)}, {_SUM_TOKENS}, COUNT(*) AS events {_EVENTS_FROM} "
            f"WHERE {cond} GROUP BY ALL",
            params,
        )
        covered = [*where, _NOT_STRANDED] if stranded else where
        rows += _unpriced(con, catalog, query.group_by, covered, params)
        if stranded:
            rows += _stranded(con, catalog, query)
        rows += _backdated(con, query)
    finally:
        con.unregister("bill_consumer_map")
        con.unregister("bill_subscriptions")
        con.unregister("bill_stranded")
    return _shape(rows, query.group_by)


def _backdated(con: duckdb.DuckDBPyConnection, query: UsageQuery) -> list[dict[str, object]]:
    """Usage stored behind an invoice's watermark (:mod:`billing.usage.backdated`)."""
    # imported here: it reads stored lines through billing.invoices, which imports this package
    from billing.usage.backdated import backdated_usage

    customer = query.customer
    return backdated_usage(
        con, customer=customer, consumer=query.consumer, start=query.start, end=query.end,
        group_by=query.group_by,
    )  # fmt: skip


def _final_customers(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> list[str]:
    """Customers with stored invoices that will get no further one: every period of
    their subscriptions is invoiced (all ended), or they are no longer in the catalog.
    An invoice of any period of a customer sweeps all its invoiced windows for late
    usage, so until the last one nothing is stranded."""
    invoiced = {
        (ck, from_db(s), from_db(e))
        for ck, s, e in con.execute(
            "SELECT customer_key, period_start, period_end FROM invoices"
        ).fetchall()
    }
    known = {c.key: c for c in catalog.customers}
    out = []
    for ck in sorted({k for k, _, _ in invoiced}):
        customer = known.get(ck)
        if customer is None:
            out.append(ck)
            continue
        ends = [s.end for s in customer.subscriptions]
        if any(end is None for end in ends):
            continue  # periods without end: there is always a next invoice
        last = max((end for end in ends if end is not None), default=None)
        periods = customer_periods(catalog, customer, last) if last else []
        if all(bp.key in invoiced for bp in periods):
            out.append(ck)
    return out


def stranded_windows(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> pa.Table:
    """(customer_key, consumer, w_start, w_end, ing_after) of the invoiced windows of
    customers that will get no further invoice, carved as they billed: events there
    ingested after ``ing_after`` (the window's last sweep) will never be billed."""
    finals = _final_customers(con, catalog)
    rows: list[tuple[str, str, object, object, object]] = []
    if finals:
        found = con.execute(
            """
            SELECT w.customer_key, w.usage_start, w.usage_end,
                   arg_max(w.consumers, w.ingested_until), max(w.ingested_until), min(i.seq)
            FROM invoice_windows AS w JOIN invoices AS i ON i.number = w.invoice_number
            WHERE list_contains(?, w.customer_key)
            GROUP BY ALL
            """,
            [finals],
        ).fetchall()
        windows = [
            (ck, UsageWindow(n, tuple(cs), from_db(s), from_db(e), from_db(until)), first)
            for n, (ck, s, e, cs, until, first) in enumerate(found)
        ]
        owned = ownership(con, ((ck, c) for ck, w, _ in windows for c in w.consumers))
        rows = [
            (ck, consumer, to_db(start), to_db(end), to_db(w.ingested_until))
            for ck, w, first in windows
            for consumer, start, end in owned.carve(w, ck, first).ranges()
        ]
    ts = pa.timestamp("us")
    return pa.table(
        {
            "customer_key": pa.array([r[0] for r in rows], pa.string()),
            "consumer": pa.array([r[1] for r in rows], pa.string()),
            "w_start": pa.array([r[2] for r in rows], ts),
            "w_end": pa.array([r[3] for r in rows], ts),
            "ing_after": pa.array([r[4] for r in rows], ts),
        }
    )


def stranded_usage(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, query: UsageQuery
) -> list[dict[str, Any]]:
    """The ``late, after the customer's last invoice`` rows of ``--unbilled`` alone,
    unshaped (one column per token type): for the dashboard's Unbilled page."""
    table = stranded_windows(con, catalog)
    if not table.num_rows:
        return []
    con.register("bill_stranded", table)
    try:
        return _stranded(con, catalog, query)
    finally:
        con.unregister("bill_stranded")


def _stranded(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, query: UsageQuery
) -> list[dict[str, object]]:
    """Late usage of invoiced windows that no invoice will sweep (``bill_stranded``),
    under the customer whose window it is."""
    where, params = _filters(catalog, query, customer_sql="w.customer_key = ?")
    dims = [
        f"'{STRANDED_REASON.replace(chr(39), chr(39) * 2)}' AS reason",
        "e.consumer",
        "NULL::VARCHAR AS key_fingerprint",
        "w.customer_key AS customer",
        *_group_dims(query.group_by),
    ]
    return _fetch(
        con,
        f"SELECT {', '.join(dims)}, {_SUM_TOKENS}, COUNT(*) AS events "
        f"FROM usage_events AS e JOIN bill_stranded AS w ON {_IN_STRANDED} "
        f"WHERE {' AND '.join(where) or 'TRUE'} GROUP BY ALL",
        params,
    )


def _priced_types(catalog: Catalog) -> dict[str, list[TokenFilter]]:
    """Per plan, the meters of its usage rate cards."""
    return {
        plan.key: [
            TokenFilter.of(m)
            for m in (catalog.feature(c.feature).meter for c in plan.rate_cards if c.feature)
        ]
        for plan in catalog.plans
    }


def _unpriced(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    group_by: tuple[str, ...],
    where: list[str],
    params: list[object],
) -> list[dict[str, object]]:
    """Tokens a subscription covers that no usage rate card of its plan selects.

    The distinct (plan, provider, model, way served) of covered events are few: which of
    their token types some card's meter selects is decided in Python (globs, as the invoice
    builder does), then one query sums only the unpriced token types, counting an event only
    when it has some.
    """
    cond = " AND ".join(where) or "TRUE"
    combos = con.execute(
        f"SELECT DISTINCT s.plan_key, e.provider, coalesce(e.model, ''), {SERVED_SQL} "
        f"{_EVENTS_FROM} {_COVERING_SUB} WHERE {cond}",
        params,
    ).fetchall()
    meters = _priced_types(catalog)
    table: list[tuple[str, str, str, Served, list[bool]]] = []
    for plan_key, provider, model, *how in combos:
        served = Served(*how)
        priced = {
            tt
            for mf in meters.get(plan_key, [])
            if mf.matches(provider, model, served)
            for tt in mf.token_types
        }
        if len(priced) < len(TOKEN_COLUMNS):
            unpriced = [tt not in priced for tt in TOKEN_COLUMNS]
            table.append((plan_key, provider, model, served, unpriced))
    if not table:
        return []
    columns: dict[str, pa.Array] = {
        "plan_key": pa.array([t[0] for t in table], pa.string()),
        "provider": pa.array([t[1] for t in table], pa.string()),
        "model": pa.array([t[2] for t in table], pa.string()),
        **{
            col: pa.array([t[3][i] for t in table], pa.string())
            for i, col in enumerate(SERVED_COLUMNS)
        },
    }
    for i, tt in enumerate(TOKEN_COLUMNS):
        columns[f"u_{tt}"] = pa.array([t[4][i] for t in table], pa.bool_())
    tokens = {
        tt: f"CASE WHEN u.u_{tt} THEN e.{col} ELSE 0 END" for tt, col in TOKEN_COLUMNS.items()
    }
    dims = [
        f"{UNPRICED_REASON} AS reason",
        "e.consumer",
        "NULL::VARCHAR AS key_fingerprint",
        "m.customer_key AS customer",
        *_group_dims(group_by),
    ]
    sums = ", ".join(f"SUM({expr})::BIGINT AS {tt}" for tt, expr in tokens.items())
    same_served = "".join(f" AND u.{c} IS NOT DISTINCT FROM e.{c}" for c in SERVED_COLUMNS)
    con.register("bill_unpriced", pa.table(columns))
    try:
        return _fetch(
            con,
            f"SELECT {', '.join(dims)}, {sums}, COUNT(*) AS events "
            f"{_EVENTS_FROM} {_COVERING_SUB} "
            "JOIN bill_unpriced AS u ON u.plan_key = s.plan_key AND u.provider = e.provider"
            f" AND u.model = coalesce(e.model, ''){same_served} "
            f"WHERE {cond} AND ({' + '.join(tokens.values())}) > 0 GROUP BY ALL",
            params,
        )
    finally:
        con.unregister("bill_unpriced")


def _shape(rows: list[dict[str, object]], group_by: tuple[str, ...]) -> list[dict[str, object]]:
    """Order by the dimensions, add totals; with ``type``, one row per non-zero token type."""

    def key(r: dict[str, object]) -> tuple[str, ...]:
        return tuple("" if v is None else str(v) for k, v in r.items() if k not in TOKEN_COLUMNS)

    out: list[dict[str, object]] = []
    for row in sorted(rows, key=lambda r: key({k: v for k, v in r.items() if k != "events"})):
        if "day" in row and row["day"] is not None:
            row["day"] = row["day"].isoformat()  # type: ignore[attr-defined]
        tokens = {tt: int(row.pop(tt) or 0) for tt in TOKEN_COLUMNS}  # type: ignore[call-overload]
        events = row.pop("events")
        if "type" in group_by:
            for tt, n in tokens.items():
                if n:
                    out.append({**row, "token_type": tt, "tokens": n, "events": events})
        else:
            total = sum(n for tt, n in tokens.items() if tt not in CALL_TYPES)  # tokens only
            out.append({**row, **tokens, "total": total, "events": events})
    return out
