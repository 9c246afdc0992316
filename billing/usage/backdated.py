"""Usage an invoice's sweep covers by its times but did not bill: stored after the sweep
with an ``ingested_at`` at or before its watermark (a proxy whose clock is behind, an
import that kept old ``ingested_at`` values).

Each sweep bills the events of its window ingested in ``(ingested_after,
ingested_until]``, and the next sweep of the window starts after ``ingested_until``: such
an event is in a range already swept, so no invoice will ever bill it. Nothing records
which events a sweep read, only what its lines billed (``detail.breakdown``: tokens per
provider, model and token type; ``detail.events``), so the events are found by
recomputing each swept line from its stored windows, as ``billing invoice explain`` does,
and taking what the line billed off: what is left was stored after the sweep. It is
found per line, not per event: ``day`` is not known, and ``events`` only where a sweep
leaves one row.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from billing.model import USAGE_KINDS
from billing.storevalues import from_db, to_db, value_set
from billing.usage.behind import TokenFilter
from billing.usage.owned import carve_stored
from billing.usage.windows import WINDOWED_EVENTS, UsageWindow, load_windows
from meterline.eventschema import TOKEN_COLUMNS
from meterline.served import SERVED_SQL, Served

BACKDATED_REASON = "stored after its invoice swept it (ingested_at before that invoice's watermark)"
"""The ``--unbilled`` reason of usage a sweep's range holds but its invoice did not bill."""

_MASK = " + ".join(
    f"(CASE WHEN e.{col} > 0 THEN {1 << i} ELSE 0 END)"
    for i, col in enumerate(TOKEN_COLUMNS.values())
)
_SQL = f"""
    SELECT w.window_id, e.consumer, e.provider, coalesce(e.model, '') AS model, {SERVED_SQL},
           {", ".join(f"SUM(e.{c})::BIGINT" for c in TOKEN_COLUMNS.values())},
           COUNT(*) AS events, {_MASK} AS mask
    {WINDOWED_EVENTS}
    GROUP BY ALL
"""

Key = tuple[str, str, str]
"""(provider, model, token type)."""


@dataclass
class _Group:
    """Events of one stored window with the same consumer, provider, model, way served
    (tier, speed, geography) and set of non-zero token types (``mask``, one bit per token
    type)."""

    consumer: str
    provider: str
    model: str
    tokens: dict[str, int]
    events: int
    mask: int
    served: Served = Served()


@dataclass
class _Sweep:
    """What one invoice's sweep of one window holds beyond what its lines billed."""

    customer: str
    tokens: dict[Key, int] = field(default_factory=dict)
    holders: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))
    events: int = 0


def _meter_mask(token_types: tuple[str, ...]) -> int:
    return sum(1 << i for i, tt in enumerate(TOKEN_COLUMNS) if tt in token_types)


def _excess(
    meter: TokenFilter, line: _SweptLine | None, groups: list[_Group], sweep: _Sweep
) -> None:
    """Add to ``sweep`` what its window holds now of ``meter``'s tokens beyond what the
    sweep's line of that meter billed (nothing, when the sweep made no line of it)."""
    mask = _meter_mask(meter.token_types)
    now: dict[Key, int] = defaultdict(int)
    holders: dict[Key, set[str]] = defaultdict(set)
    events = 0
    for g in groups:
        if not meter.matches(g.provider, g.model, g.served):
            continue
        for tt in meter.token_types:
            if g.tokens[tt]:
                now[(g.provider, g.model, tt)] += g.tokens[tt]
                holders[(g.provider, g.model, tt)].add(g.consumer)
        events += g.events if g.mask & mask else 0
    billed: dict[Key, int] = defaultdict(int)
    for b in line.breakdown if line else []:
        billed[(b["provider"], b["model"], b["token_type"])] += int(b["tokens"])
    for key, n in now.items():
        if n > billed[key]:  # the meters of one sweep see the same events of a key: keep one
            sweep.tokens[key] = max(sweep.tokens.get(key, 0), n - billed[key])
            sweep.holders[key] |= holders[key]
    billed_events = line.events if line else 0
    sweep.events = max(sweep.events, events - billed_events)


@dataclass(frozen=True)
class _SweptLine:
    """What a sweep's usage line billed: all of its stored ``detail`` this module reads."""

    meter: TokenFilter
    breakdown: list[dict[str, Any]]
    events: int


_SWEPT_LINES_SQL = f"""
    SELECT i.number, i.customer_key, l.usage_start, l.usage_end,
           json_object('meter', json_extract(l.detail, '$.meter'),
                       'breakdown', json_extract(l.detail, '$.breakdown'),
                       'events', json_extract(l.detail, '$.events'))::VARCHAR
    FROM invoice_lines AS l JOIN invoices AS i ON i.number = l.invoice_number
    WHERE l.kind IN ({", ".join(f"'{k}'" for k in USAGE_KINDS)})
      AND i.number IN (SELECT value FROM swept_numbers)
    ORDER BY i.seq, l.line_no
"""
"""The usage lines of the sweeps' invoices, with only the parts of ``detail`` a sweep's
excess needs: the whole of it (pricing, tiers, notes) is most of the bytes, and parsing
it took most of the Unbilled page's time (``billing invoice explain`` reads it all)."""


def _swept_lines(
    con: duckdb.DuckDBPyConnection, numbers: list[str]
) -> list[tuple[str, str, datetime, datetime, _SweptLine]]:
    """(invoice number, customer, usage start, usage end, line) of ``numbers``' usage lines."""
    with value_set(con, "swept_numbers", numbers):
        found = con.execute(_SWEPT_LINES_SQL).fetchall()
    out = []
    for number, customer, start, end, text in found:
        detail = json.loads(text)
        m = detail["meter"]
        line = _SweptLine(
            TokenFilter.from_snapshot(m),
            detail.get("breakdown") or [],
            int(detail.get("events") or 0),
        )
        out.append((str(number), str(customer), from_db(start), from_db(end), line))
    return out


_SWEEPS_SQL = """
    SELECT invoice_number, customer_key, consumers, usage_start, usage_end,
           ingested_after, ingested_until
    FROM invoice_windows
    WHERE (? IS NULL OR customer_key = ?) AND (? IS NULL OR usage_end > ?)
      AND (? IS NULL OR usage_start < ?)
    ORDER BY invoice_number, usage_start, usage_end
"""


def backdated_usage(
    con: duckdb.DuckDBPyConnection,
    *,
    customer: str | None = None,
    consumer: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Rows of ``usage --unbilled`` (unshaped: one column per token type) with
    :data:`BACKDATED_REASON`, per customer, consumer (when one consumer holds the usage of
    a row; else null) and, with ``model`` in ``group_by``, provider and model.

    Every sweep an invoice recorded (``invoice_windows``) is recomputed for the meters of
    its window's usage lines, against the sweep's own line of each meter (a late sweep
    makes lines only where it found usage). A sweep counts in full when its window
    overlaps ``[start, end)``."""
    bounds = [to_db(start) if start else None, to_db(end) if end else None]
    found = con.execute(
        _SWEEPS_SQL, [customer, customer, bounds[0], bounds[0], bounds[1], bounds[1]]
    ).fetchall()
    if not found:
        return []
    meters: dict[tuple[str, datetime, datetime], set[TokenFilter]] = defaultdict(set)
    made: dict[tuple[str, datetime, datetime], dict[TokenFilter, _SweptLine]] = {}
    numbers = sorted({str(r[0]) for r in found})  # only the invoices whose sweeps count
    for number, ck, line_start, line_end, line in _swept_lines(con, numbers):
        meters[(ck, line_start, line_end)].add(line.meter)
        made.setdefault((number, line_start, line_end), {})[line.meter] = line
    stored: list[tuple[str, UsageWindow]] = []
    for n, (_, ck, consumers, w_start, w_end, after, until) in enumerate(found):
        window = UsageWindow(
            n, tuple(consumers), from_db(w_start), from_db(w_end), from_db(until),
            from_db(after) if after else None,
        )  # fmt: skip
        stored.append((ck, window))
    load_windows(con, carve_stored(con, stored))
    groups: dict[int, list[_Group]] = defaultdict(list)
    for wid, who, provider, model, tier, speed, geo, *counts in con.execute(_SQL).fetchall():
        *tokens, events, mask = counts
        tokens_by_type = dict(zip(TOKEN_COLUMNS, (int(t or 0) for t in tokens), strict=True))
        served = Served(tier, speed, geo)
        groups[wid].append(_Group(who, provider, model, tokens_by_type, events, mask, served))
    sweeps: list[_Sweep] = []
    for (number, _), (ck, w) in zip(((r[0], r[1]) for r in found), stored, strict=True):
        sweep = _Sweep(ck)
        lines = made.get((number, w.start, w.end), {})
        for meter in sorted(meters[(ck, w.start, w.end)], key=repr):
            _excess(meter, lines.get(meter), groups[w.window_id], sweep)
        sweeps.append(sweep)
    return _rows(sweeps, consumer, group_by)


def _rows(
    sweeps: list[_Sweep], consumer: str | None, group_by: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per (customer, consumer, provider, model) as ``group_by`` asks, summed over
    the sweeps; ``events`` is known only where each sweep behind a row left one row."""
    merged: dict[tuple[str, str | None, str, str], dict[str, Any]] = {}
    for sweep in sweeps:
        rows: dict[tuple[str | None, str, str], dict[str, int]] = {}
        for (provider, model, tt), n in sorted(sweep.tokens.items()):
            holders = sweep.holders[(provider, model, tt)]
            who = next(iter(holders)) if len(holders) == 1 else None
            at = (who, provider, model) if "model" in group_by else (who, "", "")
            rows.setdefault(at, dict.fromkeys(TOKEN_COLUMNS, 0))[tt] += n
        for (who, provider, model), tokens in rows.items():
            if consumer is not None and who != consumer:
                continue
            events = sweep.events if len(rows) == 1 else None
            key = (sweep.customer, who, provider, model)
            if key in merged:
                row = merged[key]
                for tt, n in tokens.items():
                    row[tt] += n
                row["events"] = (
                    None if row["events"] is None or events is None else row["events"] + events
                )
                continue
            row = {"reason": BACKDATED_REASON, "consumer": who, "key_fingerprint": None,
                   "customer": sweep.customer}  # fmt: skip
            if "model" in group_by:
                row |= {"provider": provider, "model": model}
            if "day" in group_by:
                row["day"] = None
            if "refused" in group_by:
                row["refused"] = None
            merged[key] = {**row, **tokens, "events": events}
    return list(merged.values())
