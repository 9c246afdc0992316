"""Staged ingest: events held in the lake's own PostgreSQL until one commit moves them.

A DuckLake commit costs ~7 ms of a writer's CPU and ~1.5 ms of PostgreSQL's whatever it
holds, so a commit a second at 100 requests/s misses issue 12's writer target (<= 100 µs
per event, PostgreSQL counted). Staging takes the commit off the flush: a flush writes
its spool lines, as text, into a table of the catalog's database (:func:`stage`: one
``COPY``, 14-16 µs per event with PostgreSQL's share); a maintenance pass moves every
staged line into ``usage_events`` in one DuckLake commit (:func:`move`: 10-21 µs per
event at 3,000 a move); a reader takes the lake's events plus the staged lines not moved yet
(:func:`staged_events_sql`). ``bench/staged_ingest.py`` measures it beside the append.

Exact without comparing ids. Each staged line carries the id of the PostgreSQL
transaction that wrote it (``xid8``). A move takes PostgreSQL's snapshot ``xmin`` as its
bound: every transaction below it has ended, and later ones get larger ids, so the lines
below it are final. It appends the lines from the last bound up to this one and writes
the new bound into the lake's ``staged_moves`` **in the same commit**: a move that failed
moved nothing, one run again finds nothing new. A reader, in one lake snapshot, counts
the lake's events and the staged lines at or above the bound that snapshot holds, so a
line is counted once whether or not a move committed meanwhile. Staged lines are deleted
only well after their move (:func:`forget`), for readers holding an older snapshot.

``pg`` below is a psycopg connection to the catalog's database in autocommit mode (each
step makes its own transaction; one left open would hold PostgreSQL's ``xmin``, and so
every move, back).

Not yet the proxy's path (docs/fleet.md, "Staging in the catalog"): the writer still
appends, and readers of the store do not add staged lines yet.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from meterline import spoolsql
from meterline.eventschema import SPOOL_TYPES
from meterline.lakerepair import postgres_catalog
from meterline.privatefiles import private_files

#: The catalog database's table of staged lines.
STAGED = "meterline_staged"
#: The lake's record of how far moves went: a transaction-id bound per move.
MOVES = "staged_moves"
#: Staged lines are kept this long after the move that took them (for readers holding a
#: lake snapshot from before it).
KEEP_MOVED = "10 minutes"

_CREATE_STAGED = (
    f"CREATE TABLE IF NOT EXISTS {STAGED} ("
    "xact xid8 NOT NULL DEFAULT pg_current_xact_id(), "
    "staged_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
    "line text NOT NULL)"
)
_INDEX_STAGED = f"CREATE INDEX IF NOT EXISTS {STAGED}_xact ON {STAGED} (xact)"
_MOVES_COLUMNS = "(upto BIGINT NOT NULL, moved_at TIMESTAMP NOT NULL)"
#: One move at a time (PostgreSQL's advisory lock, released when the session ends): two
#: moves from one bound would both append the same lines, and DuckLake lets two appends
#: to one table commit side by side.
_MOVE_LOCK = "hashtext('meterline.lakestage.move')"
_UTC_NOW = "timezone('UTC', now())"
#: A staged line as a reader reads it: the line with the µs since the epoch at which it
#: was staged added as its last field (a number: PostgreSQL writes dates as its
#: ``DateStyle`` says); a line that is not one JSON object stays unreadable either way.
_LINE_OUT = (
    "left(line, -1) || ',\"staged_us\":' || "
    "(extract(epoch FROM staged_at) * 1000000)::bigint || '}'"
)
#: Every control character but the newline (which separates the lines of a batch).
_CONTROL = bytes(b for b in range(0x20) if b != 0x0A)
_READ_OPTIONS = spoolsql.read_options({**SPOOL_TYPES, "staged_us": "BIGINT"})
#: The row a staged line makes: as the append's, ``ingested_at`` when it was staged.
_SELECT = spoolsql.SELECT.replace("$ingested_at", "make_timestamp(staged_us)")


class StageError(RuntimeError):
    """The lake cannot stage events; the message says why."""


def create(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> None:
    """The staging table in ``catalog``'s PostgreSQL database, and the lake's record of
    moves (both made only where missing)."""
    alias = postgres_catalog(con, catalog)
    if alias is None:
        raise StageError(f"{catalog}: staging needs a lake whose catalog is PostgreSQL")
    for sql in (_CREATE_STAGED, _INDEX_STAGED):
        con.execute(
            f"CALL postgres_execute({spoolsql.sql_string(alias)}, {spoolsql.sql_string(sql)})"
        )
    con.execute(f"CREATE TABLE IF NOT EXISTS {catalog}.main.{MOVES} {_MOVES_COLUMNS}")


def stage(pg: Any, lines: Iterable[bytes]) -> tuple[int, int]:
    """Stage spooled lines (``pg``: a psycopg connection to the catalog's database), in
    one transaction. Returns (lines staged, lines left out).

    A line holding a control character or bytes that are not UTF-8 cannot be an event
    (JSON escapes control characters inside strings, and the spool writes no whitespace
    between tokens): it is left out, as ``read_json`` would leave it, so that the only
    character ``COPY``'s text format escapes in a staged line is the backslash. The
    batch is checked whole first, at C speed (100 lines: 50 µs, where a regular
    expression took 520 µs and a check per byte in Python 2.4 ms); lines one by one only
    when that finds one.
    """
    kept = [line for line in (raw.strip() for raw in lines) if line]
    good = kept
    whole = b"\n".join(kept)
    if _has_control(whole) or not _is_utf8(whole):
        good = [line for line in kept if not _has_control(line) and _is_utf8(line)]
        whole = b"\n".join(good)
    if good:
        copy_in = f"COPY {STAGED} (line) FROM STDIN"
        with pg.transaction(), pg.cursor() as cur, cur.copy(copy_in) as copy:
            copy.write(whole.replace(b"\\", b"\\\\") + b"\n")
    return len(good), len(kept) - len(good)


def _has_control(text: bytes) -> bool:
    return len(text.translate(None, _CONTROL)) != len(text)


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True


def moved_upto(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> int:
    """The bound below which every staged line is in the lake, in ``con``'s snapshot."""
    row = con.execute(f"SELECT coalesce(max(upto), 0) FROM {catalog}.main.{MOVES}").fetchone()
    return int(row[0]) if row else 0


def _xmin(pg: Any) -> int:
    row = pg.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()
    return int(row[0])


def unescaped(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """``COPY``'s text output of staged lines, unescaped, however it is split into blocks.

    A staged line holds no control character (:func:`stage`), so the only escape in the
    output is ``\\\\`` for a backslash; a block that ends inside one keeps its last byte
    for the next."""
    carry = b""
    for block in blocks:
        data = carry + bytes(block)
        trailing = len(data) - len(data.rstrip(b"\\"))
        data, carry = (data[:-1], b"\\") if trailing % 2 else (data, b"")
        yield data.replace(b"\\\\", b"\\")
    if carry:  # a lone backslash at the very end: not an escape, kept as it came
        yield carry


def _copy_out(pg: Any, since: int, before: int | None, path: Path) -> int:
    """The staged lines of transactions ``since`` <= id < ``before`` into ``path`` (0600),
    each with the time it was staged; returns how many. (libpq hands ``COPY``'s output over
    a row at a time: ~3 µs a line here, most of it psycopg's.)"""
    bound = f" AND xact < '{before}'::xid8" if before is not None else ""
    query = f"SELECT {_LINE_OUT} FROM {STAGED} WHERE xact >= '{since}'::xid8{bound}"
    rows = 0
    copy_out = f"COPY ({query}) TO STDOUT"
    with private_files(), path.open("wb") as out, pg.cursor() as cur, cur.copy(copy_out) as copy:
        for data in unescaped(copy):
            rows += data.count(b"\n")
            out.write(data)
    return rows


def staged_events_sql(
    con: duckdb.DuckDBPyConnection, pg: Any, path: Path, catalog: str = "lake"
) -> str:
    """SQL for the staged events a reader adds to the lake's, in ``con``'s snapshot (call
    it inside the reader's transaction): the lines are copied to ``path``, which must
    stay until the reader is done with the SQL."""
    _copy_out(pg, moved_upto(con, catalog), None, path)
    return (
        f"SELECT {_SELECT} FROM read_json({spoolsql.sql_string(str(path))}, {_READ_OPTIONS}) "
        f"WHERE {spoolsql.VALID}"
    )


def move(con: duckdb.DuckDBPyConnection, pg: Any, work: Path, catalog: str = "lake") -> int:
    """Append the staged lines below PostgreSQL's snapshot ``xmin`` to ``usage_events``,
    and record the bound, in one DuckLake commit. Returns the events added. ``work``: a
    private directory for the lines in transit."""
    if not pg.autocommit:
        raise StageError("lakestage needs a psycopg connection in autocommit mode")
    path = work / f"staged-moving-{os.getpid()}.jsonl"
    pg.execute(f"SELECT pg_advisory_lock({_MOVE_LOCK})")
    try:
        return _move(con, pg, path, catalog)
    finally:
        pg.execute(f"SELECT pg_advisory_unlock({_MOVE_LOCK})")
        path.unlink(missing_ok=True)


def _move(con: duckdb.DuckDBPyConnection, pg: Any, path: Path, catalog: str) -> int:
    con.execute("BEGIN TRANSACTION")  # after the lock: the lake snapshot shows the last move
    try:
        since, before = moved_upto(con, catalog), _xmin(pg)
        if before <= since:
            con.execute("ROLLBACK")
            return 0
        added = 0
        if _copy_out(pg, since, before, path):
            row = con.execute(
                f"INSERT INTO {catalog}.main.usage_events ({spoolsql.COLUMNS}) SELECT {_SELECT} "
                f"FROM read_json({spoolsql.sql_string(str(path))}, {_READ_OPTIONS}) "
                f"WHERE {spoolsql.VALID}"
            ).fetchone()
            added = int(row[0]) if row else 0
        con.execute(f"INSERT INTO {catalog}.main.{MOVES} VALUES ({before}, {_UTC_NOW})")
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    return added


def forget(con: duckdb.DuckDBPyConnection, pg: Any, catalog: str = "lake") -> int:
    """Delete the staged lines that moves took more than :data:`KEEP_MOVED` ago; returns
    how many."""
    row = con.execute(
        f"SELECT max(upto) FROM {catalog}.main.{MOVES} "
        f"WHERE moved_at < {_UTC_NOW} - INTERVAL '{KEEP_MOVED}'"
    ).fetchone()
    if not row or row[0] is None:
        return 0
    with pg.transaction():
        cur = pg.execute(f"DELETE FROM {STAGED} WHERE xact < '{int(row[0])}'::xid8")
        return int(cur.rowcount)
