"""A flush on a lake that stages (``METERLINE_LAKE_INGEST=staged``): lines, not a commit.

The segments' lines go as they are into the catalog's PostgreSQL by one ``COPY``
(:func:`meterline.lakestage.stage`): no DuckLake commit, no Parquet file. The same
batches as in :mod:`addons.metering.batchsql` are checked against the store first (a
replay, a batch after a failed flush, a repeat, a provider-named id): their ids are
looked up in the lake's events *and* the staged lines (the link's
:class:`~meterline.lakestage.StagedView`, refreshed for the check), and only the lines
of events not stored yet are staged, each event once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from addons.metering import eventid
from addons.metering.batchsql import DEDUP_WINDOW, Batch
from meterline import lakestage, spoolsql


def segment_lines(segments: list[Path]) -> list[bytes]:
    """Every line of ``segments``, as written (empty ones included: :func:`stage` drops
    them)."""
    return [line for path in segments for line in path.read_bytes().split(b"\n")]


def stage_all(pg: Any, segments: list[Path]) -> tuple[int, int]:
    """Stage every line of ``segments``: (lines staged, lines left out)."""
    return lakestage.stage(pg, segment_lines(segments))


def stored_ids(con: duckdb.DuckDBPyConnection, events: list[tuple[str, int]]) -> set[str]:
    """Which of ``events`` (event_id, ts µs) ``usage_events`` holds already, as
    :data:`~addons.metering.batchsql.INSERT_SQL` would find them: by id among the events
    of the batch's window, and, for provider-named ids, in the whole store."""
    if not events:
        return set()
    since = min(ts for _, ts in events)
    ids = sorted({i for i, _ in events})
    keyed = [i for i in ids if eventid.is_keyed(i)]
    listed = ", ".join(spoolsql.sql_string(i) for i in ids)
    sql = (
        f"SELECT event_id FROM usage_events WHERE ts >= make_timestamp({since}) - "
        f"{DEDUP_WINDOW} AND event_id IN ({listed})"
    )
    if keyed:
        sql += " UNION ALL SELECT event_id FROM usage_events WHERE event_id IN (" + (
            ", ".join(spoolsql.sql_string(i) for i in keyed) + ")"
        )
    return {row[0] for row in con.execute(sql).fetchall()}


def _event_id(line: bytes) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) else None


def new_lines(lines: list[bytes], stored: set[str]) -> list[bytes]:
    """The lines of events not in ``stored``, the first line of an id only; a line
    without a readable id is left out (no event either way)."""
    seen = set(stored)
    kept = []
    for line in lines:
        event_id = _event_id(line) if line.strip() else None
        if event_id is None or event_id in seen:
            continue
        seen.add(event_id)
        kept.append(line)
    return kept


def stage_checked(con: duckdb.DuckDBPyConnection, pg: Any, batch: Batch) -> tuple[int, int]:
    """Stage the events of ``batch`` that the store (``con``'s ``usage_events``, staged
    lines included) does not hold: (lines staged, lines left out)."""
    lines = [line for line in segment_lines(batch.segments) if line.strip()]
    kept = new_lines(lines, stored_ids(con, batch.events))
    staged, dropped = lakestage.stage(pg, kept)
    return staged, len(lines) - len(kept) + dropped
