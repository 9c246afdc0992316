"""The dashboard's query layer: one function per page, shared with the CLI.

Every function takes an open store, the catalog and a typed query, and returns plain
data (dicts, lists, ``Decimal``, aware ``datetime``). The dashboard renders it as HTML
or, for the page's ``.json`` twin, with :func:`billing.render.to_json`; the CLI
commands (``billing timeline``, ``billing health``, ``billing usage --unbilled``,
``billing invoice preview``, ...) print the same data with the same function, so a
number on a page is the number the CLI prints for the same query.

Nothing here writes: the dashboard opens the store read-only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

import duckdb
import pyarrow as pa

from billing.dashboard.percentiles import quantiles_by_provider
from billing.storevalues import from_db, to_db
from billing.usage import TOKEN_COLUMNS, UsageError, UsageQuery, stranded_usage
from billing.usage.backdated import backdated_usage
from meterline.catalog import CALL_TYPES, FINGERPRINT_RE, TOKEN_ONLY_TYPES, TOKEN_TYPES, Catalog
from meterline.served import SERVED_COLUMNS, SERVED_SQL, Served

BUCKETS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_SPAN: dict[str, timedelta] = {"hour": timedelta(hours=48), "day": timedelta(days=30)}
"""Without ``--from``: the last 48 hours by hour, the last 30 days by day."""

Data = dict[str, Any]


# --------------------------------------------------------------------------- range and scope


@dataclass(frozen=True)
class TimeRange:
    """``[start, end)`` in UTC, cut into ``bucket``-sized steps (``hour`` or ``day``)."""

    start: datetime
    end: datetime
    bucket: str

    @property
    def minutes(self) -> Decimal:
        """The range's length in minutes, exact to the microsecond (a range shorter than
        a second is not zero minutes: calls per minute divides by it)."""
        return Decimal((self.end - self.start) // timedelta(microseconds=1)) / 60_000_000

    def to_data(self) -> Data:
        return {"from": self.start, "to": self.end, "bucket": self.bucket}


def floor_to(value: datetime, bucket: str) -> datetime:
    value = value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if bucket == "day" else value


def resolve_range(
    start: datetime | None,
    end: datetime | None,
    bucket: str,
    now: datetime,
    *,
    terms: tuple[str, str] = ("--from", "--to"),
) -> TimeRange:
    """Fill in a missing end (the bucket after ``now``) and start (:data:`DEFAULT_SPAN`).
    ``terms``: what the caller calls start and end in its errors (the CLI's options; the
    dashboard's fields)."""
    if bucket not in BUCKETS:
        raise UsageError(f"unknown bucket {bucket!r} (choose from {', '.join(BUCKETS)})")
    if end is None:
        end = floor_to(now, bucket) + BUCKETS[bucket]
    if start is None:
        start = end - DEFAULT_SPAN[bucket]
    if end <= start:
        raise UsageError(f"{terms[1]} must be after {terms[0]}")
    return TimeRange(start.astimezone(UTC), end.astimezone(UTC), bucket)


@dataclass(frozen=True)
class Scope:
    """Whose events: everyone's, one customer's, one consumer's or one key's (fingerprint)."""

    customer: str | None = None
    consumer: str | None = None
    key: str | None = None

    def to_data(self) -> Data:
        return {"customer": self.customer, "consumer": self.consumer, "key": self.key}


def scope_filter(catalog: Catalog, scope: Scope) -> tuple[list[str], list[object]]:
    """SQL conditions on ``usage_events AS e`` and their parameters; unknown names refused."""
    where: list[str] = []
    params: list[object] = []
    if scope.customer is not None:
        try:
            customer = catalog.customer(scope.customer)
        except KeyError:
            raise UsageError(f"unknown customer {scope.customer!r}") from None
        if not customer.consumers:
            where.append("FALSE")
        else:  # IN, not list_contains: a filter the scan evaluates itself
            where.append(f"e.consumer IN ({', '.join('?' for _ in customer.consumers)})")
            params.extend(customer.consumers)
    if scope.consumer is not None:
        if scope.consumer not in {c.name for c in catalog.consumers}:
            raise UsageError(f"unknown consumer {scope.consumer!r}")
        where.append("e.consumer = ?")
        params.append(scope.consumer)
    if scope.key is not None:
        if not FINGERPRINT_RE.match(scope.key):
            # Not echoed: a key pasted here (a field labelled "key") would be printed back.
            raise UsageError(
                "key: not a fingerprint (sha256:<64 hex digits>); give the key's fingerprint "
                "(`billing consumers fingerprint` prints it), never the key itself"
            )
        where.append("e.key_fingerprint = ?")
        params.append(scope.key)
    return where, params


def _range_filter(rng: TimeRange) -> tuple[list[str], list[object]]:
    return ["e.ts >= ?", "e.ts < ?"], [to_db(rng.start), to_db(rng.end)]


# --------------------------------------------------------------------------- usage over time

_SUMS = ", ".join(f"SUM(e.{col})::BIGINT AS {tt}" for tt, col in TOKEN_COLUMNS.items())


def timeline(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, scope: Scope, rng: TimeRange
) -> Data:
    """Tokens per time bucket, stacked two ways: by model and by token type.

    ``by_model`` rows are ``{bucket, model, tokens}`` (all token types added up),
    ``by_type`` rows ``{bucket, token_type, tokens}``; only non-zero rows. ``models``
    totals each (provider, model) over the range. Model ``""`` when none was reported.
    """
    where, params = scope_filter(catalog, scope)
    rw, rp = _range_filter(rng)
    sql = (
        f"SELECT date_trunc('{rng.bucket}', e.ts)::TIMESTAMP AS bucket, e.provider,"
        f" coalesce(e.model, '') AS model, {_SUMS}, COUNT(*) AS events"
        f" FROM usage_events AS e WHERE {' AND '.join([*rw, *where])}"
        " GROUP BY ALL ORDER BY ALL"
    )
    rows = con.execute(sql, [*rp, *params]).fetchall()
    by_model: dict[tuple[datetime, str], int] = defaultdict(int)
    by_type: dict[tuple[datetime, str], int] = defaultdict(int)
    models: dict[tuple[str, str], dict[str, int]] = {}
    for bucket, provider, model, *counts, n_events in rows:
        at = from_db(bucket)
        tokens = dict(zip(TOKEN_TYPES, (int(n) for n in counts), strict=True))
        total = _token_total(tokens)
        if total:
            by_model[(at, model)] += total
        for tt, n in tokens.items():
            if n and tt not in CALL_TYPES:  # the charts are of tokens
                by_type[(at, tt)] += n
        m = models.setdefault((provider, model), {**dict.fromkeys(TOKEN_TYPES, 0), "events": 0})
        for tt, n in tokens.items():
            m[tt] += n
        m["events"] += int(n_events)
    totals = {tt: sum(v[tt] for v in models.values()) for tt in TOKEN_TYPES}
    events = sum(v["events"] for v in models.values())
    model_rows = [
        {"provider": p, "model": m, **v, "total": _token_total(v)}
        for (p, m), v in sorted(models.items())
    ]
    type_rows = sorted(by_type.items(), key=lambda kv: (kv[0][0], _type_order(kv[0][1])))
    model_series = sorted(by_model.items())
    return {
        "range": rng.to_data(),
        "scope": scope.to_data(),
        "by_model": [{"bucket": b, "model": m, "tokens": n} for (b, m), n in model_series],
        "by_type": [{"bucket": b, "token_type": t, "tokens": n} for (b, t), n in type_rows],
        "models": model_rows,
        "totals": {
            **totals,
            "total": _token_total(totals),
            "events": events,
        },
    }


def _token_total(counts: Mapping[Any, int]) -> int:
    """The tokens of ``counts`` (by type): web searches are calls, not added in."""
    return sum(int(counts[tt]) for tt in TOKEN_ONLY_TYPES)


def _type_order(token_type: str) -> int:
    return TOKEN_TYPES.index(token_type)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- proxy health

PERCENT = Decimal("0.01")
MS = Decimal("0.1")


def _percent(part: int, whole: int) -> Decimal:
    return (Decimal(part) * 100 / whole).quantize(PERCENT, ROUND_HALF_UP) if whole else Decimal(0)


def _ms(value: float | None) -> Decimal | None:
    """A latency as the store holds it (a double), to a tenth of a millisecond."""
    return None if value is None else Decimal(repr(value)).quantize(MS, ROUND_HALF_UP)


TTFT_QUANTILES = (Fraction(1, 2), Fraction(95, 100), Fraction(99, 100))
LATENCY_QUANTILES = (Fraction(1, 2),)


def health(con: duckdb.DuckDBPyConnection, catalog: Catalog, scope: Scope, rng: TimeRange) -> Data:
    """Per provider over the range: calls and calls per minute, errors (status >= 400 or no
    response) and their share, the share of estimated (tiktoken-counted) events, time to
    first byte percentiles (``quantile_disc``: values that occurred) and median latency.
    ``series`` counts calls and errors per bucket and provider.

    Three scans whatever the range: the counts per bucket (the providers' totals add them
    up), then :func:`~billing.dashboard.percentiles.quantiles_by_provider`'s two.
    """
    where, params = scope_filter(catalog, scope)
    rw, rp = _range_filter(rng)
    cond = " AND ".join([*rw, *where])
    series = con.execute(
        f"SELECT date_trunc('{rng.bucket}', e.ts)::TIMESTAMP AS bucket, e.provider,"
        " COUNT(*) AS calls, COUNT(*) FILTER (WHERE e.status IS NULL OR e.status >= 400) AS errors,"
        " COUNT(*) FILTER (WHERE e.estimated) AS estimated"
        f" FROM usage_events AS e WHERE {cond} GROUP BY ALL ORDER BY ALL",
        [*rp, *params],
    ).fetchall()
    totals: dict[str, list[int]] = {}
    for _, provider, calls, errors, estimated in series:
        t = totals.setdefault(provider, [0, 0, 0])
        t[0] += int(calls)
        t[1] += int(errors)
        t[2] += int(estimated)
    found = quantiles_by_provider(
        con, cond, [*rp, *params], {"ttft_ms": TTFT_QUANTILES, "latency_ms": LATENCY_QUANTILES}
    )
    minutes = rng.minutes
    providers = []
    for provider, (calls, errors, estimated) in sorted(totals.items()):
        p50, p95, p99 = found["ttft_ms"].get(provider, (None, None, None))
        (lat50,) = found["latency_ms"].get(provider, (None,))
        providers.append(
            {
                "provider": provider,
                "calls": calls,
                "calls_per_min": (Decimal(calls) / minutes).quantize(PERCENT, ROUND_HALF_UP),
                "errors": errors,
                "error_pct": _percent(errors, calls),
                "estimated": estimated,
                "estimated_pct": _percent(estimated, calls),
                "ttft_p50_ms": _ms(p50),
                "ttft_p95_ms": _ms(p95),
                "ttft_p99_ms": _ms(p99),
                "latency_p50_ms": _ms(lat50),
            }
        )
    return {
        "range": rng.to_data(),
        "scope": scope.to_data(),
        "providers": providers,
        "series": [
            {"bucket": from_db(b), "provider": p, "calls": int(c), "errors": int(e)}
            for b, p, c, e, _ in series
        ],
    }


# --------------------------------------------------------------------------- unbilled


def unbilled(con: duckdb.DuckDBPyConnection, catalog: Catalog, rng: TimeRange) -> Data:
    """Usage nobody pays for: money being lost, from one pass over the range's events.

    ``rows``: usage no subscription covers, per reason, consumer (key fingerprint when the
    key is unknown), customer and model: ``billing usage --unbilled --group-by model
    --from --to``'s rows without its ``no rate card of plan 'P' prices it`` ones (computed
    apart, in one join instead of a subquery). ``unpriced``: usage a subscription covers
    but no usage rate card of its plan prices (no feature meters that provider, model and
    token type), per customer, plan, model and token type: those rows, by token type.
    """
    con.register("dash_subscriptions", _subscription_table(catalog))
    try:
        found = con.execute(*_unbilled_sql(catalog, rng)).fetchall()
    finally:
        con.unregister("dash_subscriptions")
    meters = {
        p.key: [catalog.feature(c.feature).meter for c in p.rate_cards if c.feature]
        for p in catalog.plans
    }
    rows: list[Data] = []
    unpriced: list[Data] = []
    # The sums come per way served (tier, speed, geography: features may price them
    # apart): rows add them up.
    by_class: dict[tuple[object, ...], Data] = {}
    by_type: dict[tuple[object, ...], Data] = {}
    for reason, consumer, key, customer, plan, provider, model, *rest in found:
        served, counts, n_events = Served(*rest[:_NS]), rest[_NS:-1], rest[-1]
        tokens: dict[str, int] = dict(zip(TOKEN_TYPES, (int(n) for n in counts), strict=True))
        if reason is not None:
            row = by_class.get((reason, consumer, key, customer, provider, model))
            if row is None:
                row = by_class[(reason, consumer, key, customer, provider, model)] = {
                    "reason": reason, "consumer": consumer, "key_fingerprint": key,
                    "customer": customer, "provider": provider, "model": model,
                    **dict.fromkeys(TOKEN_TYPES, 0), "total": 0, "events": 0,
                }  # fmt: skip
                rows.append(row)
            for tt, n in tokens.items():
                row[tt] += n
            row["total"] += _token_total(tokens)
            row["events"] += int(n_events)
            continue
        for tt, n in tokens.items():
            if n and not any(
                m.matches(provider, model, tt) and m.counts_served(served) for m in meters[plan]
            ):
                item = by_type.get((customer, plan, provider, model, tt))
                if item is None:
                    item = by_type[(customer, plan, provider, model, tt)] = {
                        "customer": customer, "plan": plan, "provider": provider,
                        "model": model, "token_type": tt, "tokens": 0,
                    }  # fmt: skip
                    unpriced.append(item)
                item["tokens"] += n
    # Late usage of a customer that will get no further invoice (no late sweep bills it).
    stranded = UsageQuery(start=rng.start, end=rng.end, group_by=("model",))
    for late in stranded_usage(con, catalog, stranded):
        sums: dict[str, int] = {tt: int(late[tt] or 0) for tt in TOKEN_TYPES}
        rows.append(
            {"reason": late["reason"], "consumer": late["consumer"], "key_fingerprint": None,
             "customer": late["customer"], "provider": late["provider"], "model": late["model"],
             **sums, "total": _token_total(sums), "events": int(late["events"])}
        )  # fmt: skip
    # Usage stored behind a watermark: in a range an invoice swept, never billed by it.
    for late in backdated_usage(con, start=rng.start, end=rng.end, group_by=("model",)):
        sums = {tt: int(late[tt] or 0) for tt in TOKEN_TYPES}
        rows.append(
            {"reason": late["reason"], "consumer": late["consumer"], "key_fingerprint": None,
             "customer": late["customer"], "provider": late["provider"], "model": late["model"],
             **sums, "total": _token_total(sums), "events": late["events"]}
        )  # fmt: skip
    rows.sort(key=lambda r: tuple("" if r[k] is None else str(r[k]) for k in ROW_ORDER))
    unpriced.sort(key=lambda r: (r["customer"], r["plan"], r["provider"], r["model"],
                                 _type_order(r["token_type"])))  # fmt: skip
    reasons: dict[str, dict[str, int | None]] = {}
    for r in rows:  # tokens, and web searches apart (calls are no tokens)
        agg = reasons.setdefault(str(r["reason"]), {"total": 0, "web_search": 0, "events": 0})
        agg["total"] = int(agg["total"] or 0) + int(r["total"])
        agg["web_search"] = int(agg["web_search"] or 0) + int(r["web_search"])
        known = agg["events"]  # None: not known (a backdated row's), for the whole reason
        agg["events"] = None if known is None or r["events"] is None else known + int(r["events"])
    listed: list[Data] = [{"reason": k, **v} for k, v in sorted(reasons.items())]
    if unpriced:
        calls = [u for u in unpriced if u["token_type"] in CALL_TYPES]
        listed.append(
            {"reason": "no price in the plan",
             "total": sum(int(u["tokens"]) for u in unpriced if u not in calls),
             "web_search": sum(int(u["tokens"]) for u in calls if u["token_type"] == "web_search"),
             "events": None}
        )  # fmt: skip
    return {"range": rng.to_data(), "reasons": listed, "rows": rows, "unpriced": unpriced}


ROW_ORDER = ("reason", "consumer", "key_fingerprint", "customer", "provider", "model")

_NS = len(SERVED_COLUMNS)

_AGG_SUMS = ", ".join(f"SUM(e.{tt})::BIGINT AS {tt}" for tt in TOKEN_COLUMNS)
MAX_SEGMENT_BOUNDS = 64
"""Beyond this many subscription starts and ends inside the range, one join per event."""


def _unbilled_sql(catalog: Catalog, rng: TimeRange) -> tuple[str, list[object]]:
    """:data:`UNBILLED_SQL` and its parameters. The events are first added up per consumer,
    provider, model and *segment*: the stretch of the range between two consecutive
    subscription starts or ends of any customer. Every event of a segment has the same
    subscription as the segment's first instant, so joining the few sums (not each event)
    to the subscriptions gives the same rows."""
    bounds = sorted(
        {
            b
            for c in catalog.customers
            for sub in c.subscriptions
            for b in (sub.start, sub.end)
            if b is not None and rng.start < b < rng.end
        }
    )
    params: list[object] = [to_db(rng.start), to_db(rng.end)]
    if len(bounds) > MAX_SEGMENT_BOUNDS:
        return UNBILLED_SQL.format(seg="e.ts", at="e.ts", sums=_SUMS, events="COUNT(*)"), params
    starts = [rng.start, *bounds]
    seg = " + ".join(["0", *(f"(e.ts >= TIMESTAMP '{to_db(b)}')::INT" for b in bounds)])
    at = f"[{', '.join(f'TIMESTAMP {chr(39)}{to_db(b)}{chr(39)}' for b in starts)}][e.seg + 1]"
    events = "SUM(e.events)::BIGINT"
    grouped = (
        f"(SELECT {seg} AS seg, consumer, CASE WHEN consumer IS NULL THEN key_fingerprint END"
        f" AS key_fingerprint, provider, model, {', '.join(SERVED_COLUMNS)}, "
        + ", ".join(f"SUM({col})::BIGINT AS {tt}" for tt, col in TOKEN_COLUMNS.items())
        + ", COUNT(*) AS events FROM usage_events WHERE ts >= ? AND ts < ? GROUP BY ALL)"
    )
    sql = UNBILLED_SQL.format(seg=seg, at=at, sums=_AGG_SUMS, events=events)
    sql = sql.replace("FROM usage_events AS e", f"FROM {grouped.replace('e.ts', 'ts')} AS e")
    return sql.replace("WHERE e.ts >= ? AND e.ts < ?", ""), params


UNBILLED_SQL = f"""
    SELECT CASE WHEN e.consumer IS NULL THEN 'unknown key'
                WHEN c.customer_key IS NULL THEN 'consumer not linked to a customer'
                WHEN s.plan IS NULL THEN 'outside subscriptions' END AS reason,
           e.consumer,
           CASE WHEN e.consumer IS NULL THEN e.key_fingerprint END AS key_fingerprint,
           c.customer_key AS customer, s.plan, e.provider, coalesce(e.model, '') AS model,
           {SERVED_SQL}, {{sums}}, {{events}} AS events
    FROM usage_events AS e
    LEFT JOIN (SELECT DISTINCT consumer, customer_key FROM dash_subscriptions) AS c
      ON e.consumer = c.consumer
    LEFT JOIN (SELECT consumer, plan, s_start, coalesce(s_end, TIMESTAMP 'infinity') AS s_end
               FROM dash_subscriptions WHERE plan IS NOT NULL) AS s
      ON e.consumer = s.consumer AND {{at}} >= s.s_start AND {{at}} < s.s_end
    WHERE e.ts >= ? AND e.ts < ?
    GROUP BY ALL
"""
"""One row per class of usage: ``reason`` NULL means covered (``plan`` is set). A
customer's subscriptions never overlap, so an event matches at most one of them. (The
range is a residual filter of the hash join on the consumer; an ``OR`` for open ends
would turn it into a nested loop, hence ``infinity``.) ``{at}`` is the instant whose
subscription counts: the event's, or its segment's first (:func:`_unbilled_sql`)."""


def _subscription_table(catalog: Catalog) -> pa.Table:
    """One row per (consumer, subscription) of every customer; a customer without
    subscriptions still links its consumers (``plan`` NULL)."""
    rows: list[tuple[str, str, str | None, datetime | None, datetime | None]] = []
    for c in catalog.customers:
        for name in c.consumers:
            rows += [(name, c.key, s.plan, to_db(s.start), to_db(s.end) if s.end else None)
                     for s in c.subscriptions] or [(name, c.key, None, None, None)]  # fmt: skip
    return pa.table(
        {
            "consumer": pa.array([r[0] for r in rows], pa.string()),
            "customer_key": pa.array([r[1] for r in rows], pa.string()),
            "plan": pa.array([r[2] for r in rows], pa.string()),
            "s_start": pa.array([r[3] for r in rows], pa.timestamp("us")),
            "s_end": pa.array([r[4] for r in rows], pa.timestamp("us")),
        }
    )
