"""Usage windows: the events each invoice window counts, and their token sums in one pass.

The invoice build needs one figure per (customer, window, provider, model, how the calls
were served (service tier, speed, geography: :mod:`meterline.served`), token type).
:func:`aggregate_windows` computes all of them in one pass over the events for every
customer at once: the windows (a customer's consumers, a ``[start, end)`` range of event
time ``ts``, a ``(after, until]`` range of ``ingested_at``) go into a small temporary
table, events join it on the consumer and the two ranges, and ``GROUP BY`` sums the four
token columns. Mapping those few rows to features (globs, token types) happens in Python.

Timestamps in the store are naive ``TIMESTAMP`` in UTC; this module takes and returns
aware UTC datetimes and converts at the boundary (``billing.storevalues``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import pyarrow as pa

from billing.storevalues import to_db
from meterline.catalog import TOKEN_TYPES
from meterline.eventschema import TOKEN_COLUMNS
from meterline.served import SERVED_COLUMNS, SERVED_SQL, Served, served_sql


@dataclass(frozen=True)
class UsageWindow:
    """Events of ``consumers`` with ``start <= ts < end`` and ``after < ingested_at <= until``."""

    window_id: int
    consumers: tuple[str, ...]
    start: datetime
    end: datetime
    ingested_until: datetime
    ingested_after: datetime | None = None
    parts: tuple[tuple[str, datetime, datetime], ...] | None = None
    """When other customers' windows own some of it (:mod:`billing.usage.owned`): the
    (consumer, start, end) ranges of event time it counts, in place of every consumer
    over ``[start, end)``. None: the whole window."""

    def ranges(self) -> tuple[tuple[str, datetime, datetime], ...]:
        """(consumer, start, end) of event time counted: one row each in ``bill_windows``."""
        if self.parts is not None:
            return self.parts
        return tuple((c, self.start, self.end) for c in self.consumers)


@dataclass(frozen=True)
class WindowUsage:
    """Token sums of one window for one (provider, model, service tier); model ``""`` and
    service tier ``None`` when unreported.

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
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None

    @property
    def served(self) -> Served:
        return Served(self.service_tier, self.speed, self.inference_geo)

    def events_with(self, token_types: tuple[str, ...]) -> int:
        """Events with tokens of ``token_types`` (all events when that set was not asked)."""
        return self.counted.get(token_types, self.events)


def _windows_table(windows: Sequence[UsageWindow]) -> pa.Table:
    rows = [(w, r) for w in windows for r in w.ranges()]
    return pa.table(
        {
            "window_id": pa.array([w.window_id for w, _ in rows], pa.int64()),
            "consumer": pa.array([c for _, (c, _, _) in rows], pa.string()),
            "w_start": pa.array([to_db(s) for _, (_, s, _) in rows], pa.timestamp("us")),
            "w_end": pa.array([to_db(e) for _, (_, _, e) in rows], pa.timestamp("us")),
            "ing_after": pa.array(
                [to_db(w.ingested_after) if w.ingested_after else None for w, _ in rows],
                pa.timestamp("us"),
            ),
            "ing_until": pa.array([to_db(w.ingested_until) for w, _ in rows], pa.timestamp("us")),
        }
    )


def load_windows(con: duckdb.DuckDBPyConnection, windows: Sequence[UsageWindow]) -> None:
    """(Re)create the temporary ``bill_windows`` table: one row per (window, consumer),
    or per range left of a carved window (several, or none, for one consumer)."""
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
    SELECT w.window_id, e.provider, coalesce(e.model, '') AS model, {SERVED_SQL}, {_SUMS},
           COUNT(*) AS events{{counted}}
    {WINDOWED_EVENTS}
    WHERE {{where}}
    GROUP BY ALL
"""


SHARED_BOUNDS_SQL = f"""
    SELECT w.window_id, a.provider, a.model, {served_sql("a")},
           {", ".join(f"SUM(a.{tt})::BIGINT" for tt in TOKEN_COLUMNS)},
           SUM(a.events)::BIGINT{{counted_columns}}
    FROM (
        SELECT e.consumer, e.provider, coalesce(e.model, '') AS model, {SERVED_SQL},
               {_SUMS}, COUNT(*) AS events{{counted}}
        FROM usage_events AS e
        WHERE {{where}}
        GROUP BY ALL
    ) AS a
    JOIN bill_windows AS w ON a.consumer = w.consumer
    GROUP BY ALL
"""
""":data:`AGGREGATE_SQL` when every window has the same time and ingestion bounds (a
monthly run of calendar-month plans) and none is carved: the constant ``WHERE`` is then
each window's own rule, so the events are summed per consumer first and only those ~1k rows meet the
windows (and are summed again per window: a window has several consumers). Same rows;
30-40% less time at 10M-100M events than joining every event to the windows."""


def _count_with(token_types: tuple[str, ...], n: int) -> str:
    cols = " + ".join(f"e.{TOKEN_COLUMNS[tt]}" for tt in token_types)
    return f", COUNT(*) FILTER (WHERE {cols} > 0) AS counted_{n}"


def aggregate_windows(
    con: duckdb.DuckDBPyConnection,
    windows: Sequence[UsageWindow],
    token_sets: Sequence[tuple[str, ...]] = (),
) -> list[WindowUsage]:
    """One pass over the events: token sums per (window, provider, model, how served),
    and for each set in ``token_sets`` the number of events with tokens of one of its
    types."""
    if not windows:
        return []
    sets = list(dict.fromkeys(tuple(s) for s in token_sets))
    bad = [tt for s in sets for tt in s if tt not in TOKEN_COLUMNS]
    if bad:
        raise ValueError(f"unknown token type {bad[0]!r}")
    load_windows(con, windows)
    where, params = _bounds(windows)
    counted = "".join(_count_with(s, n) for n, s in enumerate(sets))
    # A carved window's rows have their own bounds: the shared-bounds form would not see them.
    shared = len(
        {(w.start, w.end, w.ingested_until, w.ingested_after) for w in windows}
    ) == 1 and all(w.parts is None for w in windows)
    sql = (
        SHARED_BOUNDS_SQL.format(
            counted=counted,
            counted_columns="".join(f", SUM(a.counted_{n})::BIGINT" for n in range(len(sets))),
            where=where,
        )
        if shared
        else AGGREGATE_SQL.format(counted=counted, where=where)
    )
    rows = con.execute(sql, params).fetchall()
    n = len(TOKEN_TYPES)  # the rows: window, provider, model, served, sums, events, counts
    k = 3 + len(SERVED_COLUMNS)
    return [
        WindowUsage(
            window_id=r[0],
            provider=r[1],
            model=r[2],
            service_tier=r[3],
            speed=r[4],
            inference_geo=r[5],
            tokens=dict(zip(TOKEN_TYPES, (int(v or 0) for v in r[k : k + n]), strict=True)),
            events=int(r[k + n]),
            counted={s: int(v) for s, v in zip(sets, r[k + 1 + n :], strict=True)},
        )
        for r in rows
    ]


def _bounds(windows: Sequence[UsageWindow]) -> tuple[str, list[object]]:
    """Constant bounds every window's own predicate implies: ``ts`` within the windows'
    span, ``ingested_at`` up to the last watermark and, when every window sweeps late
    usage, after the earliest sweep. DuckDB prunes row groups and Parquet files by them."""
    conds = ["e.ts >= ?", "e.ts < ?", "e.ingested_at <= ?"]
    params: list[object] = [
        to_db(min(w.start for w in windows)),
        to_db(max(w.end for w in windows)),
        to_db(max(w.ingested_until for w in windows)),
    ]
    afters = [w.ingested_after for w in windows]
    if all(a is not None for a in afters):
        conds.append("e.ingested_at > ?")
        params.append(to_db(min(a for a in afters if a is not None)))
    return " AND ".join(conds), params


def windows_with_events(con: duckdb.DuckDBPyConnection, windows: Sequence[UsageWindow]) -> set[int]:
    """Ids of the ``windows`` that count at least one event, in one query.

    For late-usage sweeps (windows with ``ingested_after``): only events ingested after
    the earliest sweep are read, so months of history are not scanned again each time a
    month is invoiced, and only the windows found need their billed lines loaded.
    """
    if not windows:
        return set()
    load_windows(con, windows)
    where, params = _bounds(windows)
    rows = con.execute(f"SELECT DISTINCT w.window_id {WINDOWED_EVENTS} WHERE {where}", params)
    return {int(r[0]) for r in rows.fetchall()}
