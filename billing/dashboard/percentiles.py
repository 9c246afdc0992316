"""Exact ``quantile_disc`` per provider in two counting scans instead of a sort of every value.

DuckDB's ``quantile_disc(x, q)`` over ``n`` values returns the value at 0-based rank
``max(1, ceil(n * q)) - 1`` of the sorted values (a value that occurred). Over a month of
10M events it gathers and partitions every value per group, which takes seconds. The same
value comes from two aggregations that only count: (1) how many values fall in each whole
unit (``floor(x)``: a few thousand groups for milliseconds), which locates the unit holding
each wanted rank; (2) how many times each exact value occurs, only within those units.
Both scans serve every column at once (grouping sets). ``tests/dashboard`` compares the
answers with ``quantile_disc``'s.
"""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction

import duckdb

Wanted = dict[tuple[int, str, float], list[tuple[int, int]]]
"""(column index, provider, unit) -> [(index into its quantiles, rank within the unit)]"""


def disc_rank(n: int, q: Fraction) -> int:
    """The 0-based rank ``quantile_disc(x, q)`` picks among ``n`` sorted values."""
    return max(1, math.ceil(n * q)) - 1


def _sets(columns: list[str], key: str) -> str:
    return ", ".join(f"(e.provider, {key.format(c=c)})" for c in columns)


def _which(columns: list[str], key: str) -> str:
    """The index of the column a grouping-sets row belongs to."""
    cases = " ".join(
        f"WHEN GROUPING({key.format(c=c)}) = 0 THEN {i}" for i, c in enumerate(columns)
    )
    return f"CASE {cases} END"


def quantiles_by_provider(
    con: duckdb.DuckDBPyConnection,
    cond: str,
    params: list[object],
    wanted: dict[str, tuple[Fraction, ...]],
) -> dict[str, dict[str, list[float]]]:
    """``quantile_disc(e.<column>, q)`` for each column and its ``q`` s, per provider of
    ``usage_events AS e`` rows matching ``cond``: ``{column: {provider: [values]}}``;
    a provider whose values of a column are all NULL is absent from that column."""
    columns = list(wanted)
    unit = "floor(e.{c})"
    rows = con.execute(
        f"SELECT {_which(columns, unit)} AS col, e.provider, "
        + ", ".join(unit.format(c=c) for c in columns)
        + f", COUNT(*) FROM usage_events AS e WHERE {cond}"
        f" GROUP BY GROUPING SETS ({_sets(columns, unit)})",
        params,
    ).fetchall()
    counts: dict[tuple[int, str], list[tuple[float, int]]] = defaultdict(list)
    for col, provider, *units, count in rows:
        if units[col] is not None:
            counts[(col, provider)].append((units[col], int(count)))
    picks: Wanted = defaultdict(list)
    for (col, provider), hist in counts.items():
        hist.sort()
        n = sum(c for _, c in hist)
        for i, q in enumerate(wanted[columns[col]]):
            rank, seen = disc_rank(n, q), 0
            for u, c in hist:
                if rank < seen + c:
                    picks[(col, provider, u)].append((i, rank - seen))
                    break
                seen += c
    out: dict[str, dict[str, list[float]]] = {c: {} for c in columns}
    if not picks:
        return out
    # numbers only (no provider): the scan compares doubles, the rows are sorted out below
    ranges, range_params = [], []
    for col, u in sorted({(col, u) for col, _, u in picks}):
        ranges.append(f"(e.{columns[col]} >= ? AND e.{columns[col]} < ?)")
        range_params += [u, u + 1]
    value = "e.{c}"
    rows = con.execute(
        f"SELECT {_which(columns, value)} AS col, e.provider, "
        + ", ".join(value.format(c=c) for c in columns)
        + f", COUNT(*) FROM usage_events AS e WHERE {cond} AND ({' OR '.join(ranges)})"
        f" GROUP BY GROUPING SETS ({_sets(columns, value)})",
        [*params, *range_params],
    ).fetchall()
    exact: dict[tuple[int, str, float], list[tuple[float, int]]] = defaultdict(list)
    for col, provider, *values, count in rows:
        v = values[col]
        if v is not None and (col, provider, math.floor(v)) in picks:
            exact[(col, provider, float(math.floor(v)))].append((v, int(count)))
    for (col, provider, u), chosen in picks.items():
        found = out[columns[col]].setdefault(provider, [0.0] * len(wanted[columns[col]]))
        hist = sorted(exact[(col, provider, u)])
        for i, rank in chosen:
            seen = 0
            for v, c in hist:
                if rank < seen + c:
                    found[i] = v
                    break
                seen += c
    return out
