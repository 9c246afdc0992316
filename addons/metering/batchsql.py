"""How a flush's spool segments go into ``usage_events``: the SQL, in one transaction.

A segment is read straight from its file by DuckDB's ``read_json`` with explicit columns
(parsed in C++, without the GIL); a torn or malformed line comes back as NULLs and is
left out. A batch that cannot repeat stored events is a plain append
(:func:`append_segments`, :func:`append_known`); one that may is inserted with an anti
join on ``event_id`` against the stored events of a short window, plus, for ids named
after a provider's, the whole store (:func:`insert_segments`, :func:`keyed_lookup`).
Which batches may repeat is the writer's to say (:mod:`addons.metering.writer`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from addons.metering import eventid
from meterline import spoolsql
from meterline.eventschema import REQUIRED_SPOOLED, SPOOL_TYPES
from meterline.sqltext import sql_string

#: DuckDB type of each spooled field, and the ones a line must have to be an event.
SPOOL_COLUMNS: dict[str, str] = SPOOL_TYPES
REQUIRED_COLUMNS: tuple[str, ...] = REQUIRED_SPOOLED


# No query parameters below: the DuckDB client tries ``import pandas`` for every bound
# parameter, and where pandas is not installed that failed import searches sys.path each
# time, holding the GIL the proxy's event loop needs. Values are inlined as SQL literals.
# How a line is read, and which lines are events: :mod:`meterline.spoolsql`.
_READ_OPTIONS = spoolsql.READ_OPTIONS
_VALID = spoolsql.VALID
#: Unreadable lines, and the earliest ``ts`` of the readable ones (bounds the dedup below).
_SURVEY = (
    f"SELECT count(*) FILTER (WHERE NOT ({_VALID})), min(ts) FILTER (WHERE {_VALID}) "
    "FROM spool_batch"
)
#: How far back a batch's event ids are compared with stored ones (when they are: see
#: the module docstring; :mod:`addons.metering.recentids` applies the same window). A
#: replayed segment keeps its events' original ``ts``, so its stored copies are never
#: older than the batch's earliest event and a replay is always caught, whatever the
#: window; the window only catches a provider response id seen again a little later (a
#: second delivery of the same response). It is short because the check scans every
#: ``event_id`` stored in it: one day of a proxy at 12 requests/s (1M events) cost
#: 30-95 ms of CPU per flush; on a lake five minutes of ten proxies' files cost 20-30 ms.
#: An event named after a provider's id (a background response, read again at any time)
#: is looked up by its id in the whole store as well (:func:`keyed_lookup`): its ``ts``
#: is the response's ``created_at`` only when that is plausible, else the time of the
#: read that stored it, so a later read may bring another ``ts`` than the stored one.
DEDUP_WINDOW = "INTERVAL 5 MINUTE"
_COLS = spoolsql.COLUMNS
_SELECT = spoolsql.SELECT
# The dedup compares with stored events from ``$since`` on only (a constant, so DuckDB's
# zonemaps on ``ts`` skip older row groups, and a lake skips older files): the cost of a
# flush does not grow with the table. An ANTI JOIN (hash table built on the batch, not on
# the stored ids: 3x cheaper than NOT IN). Plain SQL (no index, no ON CONFLICT), so it
# also runs on a DuckLake.
INSERT_SQL = f"""
    INSERT INTO usage_events ({_COLS})
    SELECT {_SELECT}
    FROM (SELECT * FROM spool_batch WHERE {_VALID}
          QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1) AS batch
    ANTI JOIN (SELECT event_id FROM usage_events WHERE ts >= $since - {DEDUP_WINDOW}$keyed)
    AS stored USING (event_id)
"""
#: The batch's ids named after a provider's id (:func:`eventid.is_keyed`).
_KEYED_SQL = (
    "SELECT DISTINCT event_id FROM spool_batch "
    f"WHERE starts_with(event_id, {sql_string(eventid.KEYED_PREFIX)})"
)
#: A batch that cannot be in the store yet: a plain append, straight from the segments.
APPEND_SQL = f"""
    INSERT INTO usage_events ({_COLS})
    SELECT {_SELECT} FROM read_json($files, {_READ_OPTIONS}) WHERE {_VALID}
"""
#: Each line of a batch: its event id, its ts in µs since the epoch, and whether it is an
#: event. Only the required fields are read: a value of the wrong type comes back as NULL
#: by itself, so a line is valid here exactly when the full read finds it valid.
_REQUIRED_LITERAL = "{" + ", ".join(f"'{c}': '{SPOOL_COLUMNS[c]}'" for c in REQUIRED_COLUMNS) + "}"
_LINES_SQL = (
    f"SELECT event_id, epoch_us(ts), {_VALID} FROM read_json($files, "
    f"format = 'newline_delimited', columns = {_REQUIRED_LITERAL}, "
    "ignore_errors = true, maximum_object_size = 16777216)"
)


def _files_literal(segments: list[Path]) -> str:
    return "[" + ", ".join(sql_string(str(p)) for p in segments) + "]"


def _ingested_at() -> str:
    return "TIMESTAMP " + sql_string(datetime.now(UTC).replace(tzinfo=None).isoformat(" "))


@dataclass(frozen=True)
class Batch:
    """What a flush will insert: its segments, and the (event_id, ts µs) of each event."""

    segments: list[Path]
    events: list[tuple[str, int]]
    skipped: int
    """Unreadable lines (torn by a crash, or of the wrong shape): left out."""


def read_batch(con: duckdb.DuckDBPyConnection, segments: list[Path]) -> Batch:
    """The event ids and times of ``segments`` (one scan; nothing is inserted)."""
    rows = con.execute(_LINES_SQL.replace("$files", _files_literal(segments))).fetchall()
    events = [(event_id, ts) for event_id, ts, valid in rows if valid]
    return Batch(segments, events, len(rows) - len(events))


def append_segments(
    con: duckdb.DuckDBPyConnection, segments: list[Path], may_repeat: Callable[[Batch], bool]
) -> tuple[int, Batch] | None:
    """Append the events of ``segments``, unchecked, in one transaction.

    Returns (rows added, the batch), or None, having written nothing, when
    ``may_repeat(batch)`` says the batch may hold stored events (then
    :func:`insert_segments` must insert it). The ids are read inside the transaction
    that appends them: on a lake one snapshot lookup serves both.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        batch = read_batch(con, segments)
        if may_repeat(batch):
            con.execute("ROLLBACK")
            return None
        inserted = 0
        if batch.events:
            sql = APPEND_SQL.replace("$files", _files_literal(segments))
            row = con.execute(sql.replace("$ingested_at", _ingested_at())).fetchone()
            inserted = int(row[0]) if row else 0
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # see insert_segments
            con.execute("ROLLBACK")
        raise
    return inserted, batch


def append_known(con: duckdb.DuckDBPyConnection, segments: list[Path]) -> int:
    """Append the events of ``segments``, unchecked: one statement (its own transaction).

    For segments whose events the spool knows (:meth:`Spool.known_events`): no read of
    the ids first, so each segment is parsed once. Returns the rows added.
    """
    sql = APPEND_SQL.replace("$files", _files_literal(segments))
    row = con.execute(sql.replace("$ingested_at", _ingested_at())).fetchone()
    return int(row[0]) if row else 0


_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def event_times(keys: list[tuple[str, str]]) -> list[tuple[str, int]] | None:
    """(event_id, ts in µs since the epoch) of spooled keys; None if a ts is unreadable."""
    out = []
    try:
        for event_id, ts in keys:
            out.append((event_id, (datetime.fromisoformat(ts) - _EPOCH) // _MICROSECOND))
    except (ValueError, TypeError):  # an aware or malformed ts: let DuckDB read the lines
        return None
    return out


def insert_segments(con: duckdb.DuckDBPyConnection, segments: list[Path]) -> tuple[int, int]:
    """Insert the events of ``segments`` in one transaction, skipping ids already stored.

    Returns (rows added, unreadable lines skipped).
    """
    ingested_at = _ingested_at()
    files = _files_literal(segments)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE spool_batch AS "
            f"SELECT * FROM read_json({files}, {_READ_OPTIONS})"
        )
        survey = con.execute(_SURVEY).fetchone()
        skipped, since = (int(survey[0]), survey[1]) if survey else (0, None)
        inserted = None
        if since is not None:  # else no readable line: nothing to insert
            keyed = [r[0] for r in con.execute(_KEYED_SQL).fetchall()]
            inserted = con.execute(
                INSERT_SQL.replace("$ingested_at", ingested_at)
                .replace("$since", f"TIMESTAMP {sql_string(since.isoformat(' '))}")
                .replace("$keyed", keyed_lookup(keyed))
            ).fetchone()
        con.execute("DROP TABLE spool_batch")
        con.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full) has already ended the transaction: a ROLLBACK error
        # ("no transaction is active") must not replace the real cause.
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise
    return (int(inserted[0]) if inserted else 0), skipped


def keyed_lookup(keyed: list[str]) -> str:
    """The stored events named ``keyed``, whatever their ``ts``: SQL added to the
    dedup's scan of the window (empty for a batch without such ids).

    A background response is read again at any time, and its stored copy's ``ts`` need
    not be the new one's (a ``created_at`` the proxy could not use: the time of a read).
    Only batches that hold such ids pay for it; the ids are literals, so the scan skips
    row groups (and a lake's files) whose ``event_id`` range cannot hold them.
    """
    if not keyed:
        return ""
    ids = ", ".join(sql_string(i) for i in keyed)
    return f" UNION ALL SELECT event_id FROM usage_events WHERE event_id IN ({ids})"
