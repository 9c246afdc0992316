"""Usage aggregations: every scan of ``usage_events`` billing makes is here, as DuckDB SQL.

The invoice build needs one figure per (customer, window, provider, model, token type).
:func:`aggregate_windows` computes all of them in one pass over the events for every
customer at once: the windows (a customer's consumers, a ``[start, end)`` range of event
time ``ts``, a ``(after, until]`` range of ``ingested_at``) go into a small temporary
table, events join it on the consumer and the two ranges, and ``GROUP BY`` sums the four
token columns. Mapping those few rows to features (globs, token types) happens in Python.

Timestamps in the store are naive ``TIMESTAMP`` in UTC; this module takes and returns
aware UTC datetimes and converts at the boundary (``billing.storevalues``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import pyarrow as pa

from billing.errors import UserError, unknown_customer_message
from billing.storevalues import from_db, to_db, value_set
from meterline.catalog import TOKEN_TYPES, Catalog

TOKEN_COLUMNS: dict[str, str] = {
    "input": "input_tokens",
    "cached_input": "cached_input_tokens",
    "cache_write": "cache_write_tokens",
    "output": "output_tokens",
}
GROUP_DIMENSIONS = ("model", "type", "day", "refused")


class UsageError(UserError, ValueError):
    """A usage query that cannot be answered (unknown customer, bad range)."""


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class UsageWindow:
    """Events of ``consumers`` with ``start <= ts < end`` and ``after < ingested_at <= until``."""

    window_id: int
    consumers: tuple[str, ...]
    start: datetime
    end: datetime
    ingested_until: datetime
    ingested_after: datetime | None = None


@dataclass(frozen=True)
class WindowUsage:
    """Token sums of one window for one (provider, model); model ``""`` when unreported.

    ``counted`` holds, per set of token types asked for (a usage card's meter), how many
    of the events have tokens of one of them: the events that line bills, the same ones
    ``invoice explain`` lists (an input-only call is not behind an output line).
    """

    window_id: int
    provider: str
    model: str
    tokens: dict[str, int]
    events: int
    counted: dict[tuple[str, ...], int] = field(default_factory=dict)

    def events_with(self, token_types: tuple[str, ...]) -> int:
        """Events with tokens of ``token_types`` (all events when that set was not asked)."""
        return self.counted.get(token_types, self.events)


def _windows_table(windows: Sequence[UsageWindow]) -> pa.Table:
    rows = [(w, c) for w in windows for c in w.consumers]
    return pa.table(
        {
            "window_id": pa.array([w.window_id for w, _ in rows], pa.int64()),
            "consumer": pa.array([c for _, c in rows], pa.string()),
            "w_start": pa.array([to_db(w.start) for w, _ in rows], pa.timestamp("us")),
            "w_end": pa.array([to_db(w.end) for w, _ in rows], pa.timestamp("us")),
            "ing_after": pa.array(
                [to_db(w.ingested_after) if w.ingested_after else None for w, _ in rows],
                pa.timestamp("us"),
            ),
            "ing_until": pa.array([to_db(w.ingested_until) for w, _ in rows], pa.timestamp("us")),
        }
    )


def load_windows(con: duckdb.DuckDBPyConnection, windows: Sequence[UsageWindow]) -> None:
    """(Re)create the temporary ``bill_windows`` table: one row per (window, consumer)."""
    table = _windows_table(windows)
    con.register("bill_windows_src", table)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE bill_windows AS SELECT * FROM bill_windows_src")
    finally:
        con.unregister("bill_windows_src")


def windowed_events(windows: str = "bill_windows") -> str:
    """``FROM usage_events AS e JOIN <windows> AS w ...``: the events each window counts.

    The one statement of that rule: a window's consumers, its ``[w_start, w_end)`` range
    of ``ts`` and the ``(ing_after, ing_until]`` slice of ingestion time it sweeps.
    ``windows`` is any relation with those columns (and ``consumer``): ``bill_windows``
    (:func:`load_windows`) or a CTE over the stored ``invoice_windows``.
    """
    return f"""
    FROM usage_events AS e
    JOIN {windows} AS w
      ON e.consumer = w.consumer
     AND e.ts >= w.w_start AND e.ts < w.w_end
     AND e.ingested_at <= w.ing_until
     AND (w.ing_after IS NULL OR e.ingested_at > w.ing_after)
"""


WINDOWED_EVENTS = windowed_events()
"""The events of the windows in ``bill_windows`` (registered by :func:`load_windows`)."""

_SUMS = ", ".join(f"SUM(e.{col})::BIGINT AS {tt}" for tt, col in TOKEN_COLUMNS.items())

AGGREGATE_SQL = f"""
    SELECT w.window_id, e.provider, coalesce(e.model, '') AS model, {_SUMS},
           COUNT(*) AS events{{counted}}
    {WINDOWED_EVENTS}
    WHERE e.ts >= ? AND e.ts < ?
    GROUP BY ALL
"""


def _count_with(token_types: tuple[str, ...], n: int) -> str:
    cols = " + ".join(f"e.{TOKEN_COLUMNS[tt]}" for tt in token_types)
    return f", COUNT(*) FILTER (WHERE {cols} > 0) AS counted_{n}"


def aggregate_windows(
    con: duckdb.DuckDBPyConnection,
    windows: Sequence[UsageWindow],
    token_sets: Sequence[tuple[str, ...]] = (),
) -> list[WindowUsage]:
    """One pass over the events: token sums per (window, provider, model), and for each
    set in ``token_sets`` the number of events with tokens of one of its types."""
    if not windows:
        return []
    sets = list(dict.fromkeys(tuple(s) for s in token_sets))
    bad = [tt for s in sets for tt in s if tt not in TOKEN_COLUMNS]
    if bad:
        raise ValueError(f"unknown token type {bad[0]!r}")
    load_windows(con, windows)
    lo = to_db(min(w.start for w in windows))
    hi = to_db(max(w.end for w in windows))
    counted = "".join(_count_with(s, n) for n, s in enumerate(sets))
    rows = con.execute(AGGREGATE_SQL.format(counted=counted), [lo, hi]).fetchall()
    return [
        WindowUsage(
            window_id=r[0],
            provider=r[1],
            model=r[2],
            tokens=dict(zip(TOKEN_TYPES, (int(v) for v in r[3:7]), strict=True)),
            events=int(r[7]),
            counted={s: int(v) for s, v in zip(sets, r[8:], strict=True)},
        )
        for r in rows
    ]


# --------------------------------------------------------------------------- one line's events


@dataclass(frozen=True)
class TokenFilter:
    """The tokens a usage line counts: provider, case-insensitive model glob, token types.

    A hashable copy of a feature's ``meter`` (``meterline.catalog.FeatureMeter``) as the
    line was priced: built from the catalog, or from the snapshot stored on the line.
    """

    provider: str | None
    model: str
    token_types: tuple[str, ...]

    def model_matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model.lower(), self.model.lower())

    def matches(self, provider: str, model: str) -> bool:
        return (self.provider is None or self.provider == provider) and self.model_matches(model)


EVENT_FIELDS = (
    "event_id",
    "ts",
    "ingested_at",
    "consumer",
    "provider",
    "model",
    "response_id",
    "request_id",
    *TOKEN_COLUMNS.values(),
)


def events_behind(
    con: duckdb.DuckDBPyConnection, windows: Sequence[UsageWindow], meter: TokenFilter
) -> list[dict[str, object]]:
    """The events a line counted, each with ``quantity`` = its tokens of the meter's types.

    Only events with a quantity above zero: an event of a matching model that has none of
    the meter's token types (an input-only call under an output meter) is not behind it.

    Model globs are matched in Python with the same rule as the catalog (``fnmatch`` on
    lowercased names): the distinct models in the windows are few, the events many.
    """
    if not windows:
        return []
    load_windows(con, windows)
    provider_sql = "AND e.provider = ?" if meter.provider is not None else ""
    params: list[object] = [meter.provider] if meter.provider is not None else []
    base = f"{WINDOWED_EVENTS} WHERE TRUE {provider_sql}"
    models = [
        m
        for (m,) in con.execute(f"SELECT DISTINCT coalesce(e.model, '') {base}", params).fetchall()
        if meter.model_matches(m)
    ]
    if not models:
        return []
    quantity = " + ".join(f"e.{TOKEN_COLUMNS[t]}" for t in meter.token_types)
    cols = ", ".join(f"e.{c}" for c in EVENT_FIELDS)
    rows = con.execute(
        f"SELECT {cols}, ({quantity})::BIGINT AS quantity {base} "
        f"AND list_contains(?, coalesce(e.model, '')) AND ({quantity}) > 0 "
        "ORDER BY e.ts, e.event_id",
        [*params, models],
    ).fetchall()
    out = []
    for r in rows:
        event = dict(zip((*EVENT_FIELDS, "quantity"), r, strict=True))
        event["ts"] = from_db(event["ts"])  # type: ignore[arg-type]
        event["ingested_at"] = from_db(event["ingested_at"])  # type: ignore[arg-type]
        out.append(event)
    return out


# --------------------------------------------------------------------------- usage report


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


def _filters(catalog: Catalog, query: UsageQuery) -> tuple[list[str], list[object]]:
    """WHERE conditions and parameters for the customer, consumer and time options."""
    where: list[str] = []
    params: list[object] = []
    if query.customer is not None:
        try:
            customer = catalog.customer(query.customer)
        except KeyError:
            raise UsageError(unknown_customer_message(catalog, query.customer)) from None
        where.append("list_contains(?, e.consumer)")
        params.append(list(customer.consumers))
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
    if "day" in group_by:
        dims.append("CAST(e.ts AS DATE) AS day")
    if "refused" in group_by:  # calls the proxy refused itself, by reason
        dims.append("e.reason AS refused")
    return dims


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
    a time outside every subscription of its customer, or tokens a subscription covers
    that no usage rate card of its plan prices (only those token types are counted).
    """
    where, params = _filters(catalog, query)
    con.register("bill_consumer_map", _consumer_customers(catalog))
    con.register("bill_subscriptions", _subscriptions(catalog))
    try:
        if not query.unbilled:
            dims = ["e.consumer", "m.customer_key AS customer", *_group_dims(query.group_by)]
            cond = " AND ".join(where) or "TRUE"
        else:
            dims = [
                f"{UNBILLED_REASON} AS reason",
                "e.consumer",
                "CASE WHEN e.consumer IS NULL THEN e.key_fingerprint END AS key_fingerprint",
                "m.customer_key AS customer",
                *_group_dims(query.group_by),
            ]
            cond = " AND ".join([*where, _UNCOVERED])
        rows = _fetch(
            con,
            f"SELECT {', '.join(dims)}, {_SUM_TOKENS}, COUNT(*) AS events {_EVENTS_FROM} "
            f"WHERE {cond} GROUP BY ALL",
            params,
        )
        if query.unbilled:
            rows += _unpriced(con, catalog, query.group_by, where, params)
    finally:
        con.unregister("bill_consumer_map")
        con.unregister("bill_subscriptions")
    return _shape(rows, query.group_by)


def _priced_types(catalog: Catalog) -> dict[str, list[TokenFilter]]:
    """Per plan, the meters of its usage rate cards."""
    return {
        plan.key: [
            TokenFilter(m.provider, m.model, tuple(m.token_types))
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

    The distinct (plan, provider, model) of covered events are few: which of their token
    types some card's meter selects is decided in Python (globs, as the invoice builder
    does), then one query sums only the unpriced token types, counting an event only
    when it has some.
    """
    cond = " AND ".join(where) or "TRUE"
    combos = con.execute(
        f"SELECT DISTINCT s.plan_key, e.provider, coalesce(e.model, '') "
        f"{_EVENTS_FROM} {_COVERING_SUB} WHERE {cond}",
        params,
    ).fetchall()
    meters = _priced_types(catalog)
    table: list[tuple[str, str, str, list[bool]]] = []
    for plan_key, provider, model in combos:
        priced = {
            tt
            for mf in meters.get(plan_key, [])
            if mf.matches(provider, model)
            for tt in mf.token_types
        }
        if len(priced) < len(TOKEN_COLUMNS):
            table.append((plan_key, provider, model, [tt not in priced for tt in TOKEN_COLUMNS]))
    if not table:
        return []
    columns: dict[str, pa.Array] = {
        "plan_key": pa.array([t[0] for t in table], pa.string()),
        "provider": pa.array([t[1] for t in table], pa.string()),
        "model": pa.array([t[2] for t in table], pa.string()),
    }
    for i, tt in enumerate(TOKEN_COLUMNS):
        columns[f"u_{tt}"] = pa.array([t[3][i] for t in table], pa.bool_())
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
    con.register("bill_unpriced", pa.table(columns))
    try:
        return _fetch(
            con,
            f"SELECT {', '.join(dims)}, {sums}, COUNT(*) AS events "
            f"{_EVENTS_FROM} {_COVERING_SUB} "
            "JOIN bill_unpriced AS u ON u.plan_key = s.plan_key AND u.provider = e.provider"
            " AND u.model = coalesce(e.model, '') "
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
        tokens = {tt: int(row.pop(tt)) for tt in TOKEN_COLUMNS}  # type: ignore[call-overload]
        events = row.pop("events")
        if "type" in group_by:
            for tt, n in tokens.items():
                if n:
                    out.append({**row, "token_type": tt, "tokens": n, "events": events})
        else:
            out.append({**row, **tokens, "total": sum(tokens.values()), "events": events})
    return out


# --------------------------------------------------------------------------- invoiced usage

_INVOICED_WINDOWS = """
    SELECT customer_key, unnest(consumers) AS consumer, usage_start AS w_start,
           usage_end AS w_end, ingested_after AS ing_after, ingested_until AS ing_until
    FROM invoice_windows WHERE invoice_number IN (SELECT value FROM bill_numbers)
"""
"""The stored windows of the invoices in ``bill_numbers``, shaped for :func:`windowed_events`."""

INVOICED_USAGE_SQL = f"""
    WITH win AS ({_INVOICED_WINDOWS})
    SELECT w.customer_key, e.provider, coalesce(e.model, '') AS model,
           CAST(e.ts AS DATE) AS day, {_SUMS}, COUNT(*) AS events
    {windowed_events("win")}
    GROUP BY ALL
"""


def invoiced_usage(
    con: duckdb.DuckDBPyConnection, invoice_numbers: Sequence[str]
) -> list[dict[str, object]]:
    """Tokens per (customer, provider, model, day) of every event those invoices billed."""
    with value_set(con, "bill_numbers", invoice_numbers):
        cur = con.execute(INVOICED_USAGE_SQL)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def invoiced_events(
    con: duckdb.DuckDBPyConnection,
    invoice_numbers: Sequence[str],
    customer: str,
    provider: str,
    model: str,
) -> list[dict[str, object]]:
    """Per-event tokens of one (customer, provider, model) those invoices billed."""
    sql = f"""
        WITH win AS ({_INVOICED_WINDOWS} AND customer_key = ?)
        SELECT e.ts, {", ".join(f"e.{c} AS {t}" for t, c in TOKEN_COLUMNS.items())}
        {windowed_events("win")}
        WHERE e.provider = ? AND coalesce(e.model, '') = ?
    """
    with value_set(con, "bill_numbers", invoice_numbers):
        cur = con.execute(sql, [customer, provider, model])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
