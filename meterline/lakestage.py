"""Staged ingest: events held in the lake's own PostgreSQL until one commit moves them.

A DuckLake commit costs ~7 ms of a writer's CPU and ~1.5 ms of PostgreSQL's whatever it
holds, so a commit a second at 100 requests/s misses issue 12's writer target (<= 100 µs
per event, PostgreSQL counted). Staging takes the commit off the flush: a flush writes
its spool lines, as text, into a table of the catalog's database (:func:`stage`: one
``COPY``, 14-16 µs per event with PostgreSQL's share); a proxy now and then moves every
staged line into ``usage_events`` in one DuckLake commit (:func:`move`: 10-21 µs per
event at 3,000 a move; :mod:`addons.metering.stagemover`); a reader takes the lake's
events plus the staged lines not moved yet (:class:`StagedView`).
``bench/staged_ingest.py`` measures it beside the append.

Exact without comparing ids. Each staged line carries the id of the PostgreSQL
transaction that wrote it (``xid8``). A move takes PostgreSQL's snapshot ``xmin`` as its
bound: every transaction below it has ended, and later ones get larger ids, so the lines
below it are final. It appends the lines from the last bound up to this one and writes
the new bound into the lake's ``staged_moves`` **in the same commit**: a move that failed
moved nothing, one run again finds nothing new. A reader's query counts the lake's events
and the staged lines at or above the bound its own lake snapshot holds, so a line is
counted once whether or not a move committed meanwhile. Staged lines are deleted
only well after their move (:func:`forget`), for readers holding an older snapshot.

``pg`` below is a psycopg connection to the catalog's database in autocommit mode (each
step makes its own transaction; one left open would hold PostgreSQL's ``xmin``, and so
every move, back).

The proxy's path with ``METERLINE_LAKE_INGEST=staged`` (docs/fleet.md, "Staged
ingest"): its writer stages (:mod:`addons.metering.stagedflush`), a :class:`StagedView`
gives the writer's and governance's reads the staged lines, and ``billing`` reads them
the same way (:func:`staged_reads`) on any lake that ever staged (it has :data:`MOVES`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from meterline import spoolsql
from meterline.eventschema import SPOOL_TYPES
from meterline.lakerepair import postgres_catalog
from meterline.privatefiles import private_files
from meterline.store import StoreError

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
    "(extract(epoch FROM staged_at) * 1000000)::bigint || ',\"staged_xact\":' || xact || '}'"
)
#: Every control character but the newline (which separates the lines of a batch).
_CONTROL = bytes(b for b in range(0x20) if b != 0x0A)
_READ_OPTIONS = spoolsql.read_options({**SPOOL_TYPES, "staged_us": "BIGINT"})
_VIEW_READ_OPTIONS = spoolsql.read_options(
    {**SPOOL_TYPES, "staged_us": "BIGINT", "staged_xact": "BIGINT"}
)
#: A reader's copy of the staged lines not moved yet (:class:`StagedView`), and the view
#: that shadows the lake's table for that reader's connection.
ROWS = "meterline_staged_rows"
POSTGRES_LAKE_PREFIX = "ducklake:postgres:"
#: The row a staged line makes: as the append's, ``ingested_at`` when it was staged.
_SELECT = spoolsql.SELECT.replace("$ingested_at", "make_timestamp(staged_us)")


class StageError(StoreError):
    """The lake cannot stage events; the message says why."""


def create(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> None:
    """The staging table in ``catalog``'s PostgreSQL database, and the lake's record of
    moves (both made only where missing)."""
    alias = postgres_catalog(con, catalog)
    if alias is None:
        raise StageError(f"{catalog}: staging needs a lake whose catalog is PostgreSQL")
    statements = [
        f"CALL postgres_execute({spoolsql.sql_string(alias)}, {spoolsql.sql_string(sql)})"
        for sql in (_CREATE_STAGED, _INDEX_STAGED)
    ]
    statements.append(f"CREATE TABLE IF NOT EXISTS {catalog}.main.{MOVES} {_MOVES_COLUMNS}")
    for sql in statements:
        for attempt in range(3):
            try:
                con.execute(sql)
                break
            except duckdb.Error as e:
                # Proxies of a fleet started together race to create them: the loser's
                # next try finds them made (PostgreSQL's catalog, DuckLake's commit).
                if attempt == 2 or not _lost_create_race(str(e)):
                    raise


def _lost_create_race(error: str) -> bool:
    return any(
        text in error
        for text in ("already exists", "duplicate key", "has been created by another transaction")
    )


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


#: Lines are fetched this many to a row: libpq hands a result over a row at a time, and
#: at one line a row (``COPY ... TO STDOUT``) psycopg's per-row cost was most of a read:
#: 105-129 ms of client CPU for 30,000 lines, against 21-31 ms in rows of 2,000 lines.
_LINES_PER_ROW = 2000


def _lines_out(pg: Any, since: int, before: int | None, path: Path) -> int:
    """The staged lines of transactions ``since`` <= id < ``before`` into ``path`` (0600),
    each with the time it was staged and its transaction id; returns how many.

    Fetched as ``bytea`` in rows of :data:`_LINES_PER_ROW` lines, in binary (the bytes as
    stored, nothing to unescape), streamed (a backlog of millions of lines never sits in
    memory whole)."""
    bound = f" AND xact < '{before}'::xid8" if before is not None else ""
    query = (
        "SELECT convert_to(string_agg(out, E'\\n'), 'UTF8') || '\\x0a'::bytea FROM ("
        f"SELECT {_LINE_OUT} AS out, (row_number() OVER ()) / {_LINES_PER_ROW} AS part "
        f"FROM {STAGED} WHERE xact >= '{since}'::xid8{bound}) AS lines GROUP BY part"
    )
    rows = 0
    with private_files(), path.open("wb") as out, pg.cursor() as cur:
        for (data,) in cur.stream(query, binary=True):  # a row at a time: bounded memory
            rows += data.count(b"\n")
            out.write(data)
    return rows


def move(
    con: duckdb.DuckDBPyConnection,
    pg: Any,
    work: Path,
    catalog: str = "lake",
    *,
    unless_within_s: float | None = None,
) -> int:
    """Append the staged lines below PostgreSQL's snapshot ``xmin`` to ``usage_events``,
    and record the bound, in one DuckLake commit. Returns the events added. ``work``: a
    private directory for the lines in transit.

    ``unless_within_s``: move nothing if the last move is more recent than that (each
    proxy of a fleet tries on its own clock; the fleet still moves once a period)."""
    if not pg.autocommit:
        raise StageError("lakestage needs a psycopg connection in autocommit mode")
    path = work / f"staged-moving-{os.getpid()}.jsonl"
    pg.execute(f"SELECT pg_advisory_lock({_MOVE_LOCK})")
    try:
        return _move(con, pg, path, catalog, unless_within_s)
    finally:
        pg.execute(f"SELECT pg_advisory_unlock({_MOVE_LOCK})")
        path.unlink(missing_ok=True)


def _moved_within(con: duckdb.DuckDBPyConnection, catalog: str, seconds: float) -> bool:
    row = con.execute(
        f"SELECT count(*) FROM {catalog}.main.{MOVES} "
        f"WHERE moved_at > {_UTC_NOW} - INTERVAL '{int(seconds * 1e6)} microseconds'"
    ).fetchone()
    return bool(row and row[0])


def _move(
    con: duckdb.DuckDBPyConnection,
    pg: Any,
    path: Path,
    catalog: str,
    unless_within_s: float | None,
) -> int:
    con.execute("BEGIN TRANSACTION")  # after the lock: the lake snapshot shows the last move
    try:
        if unless_within_s is not None and _moved_within(con, catalog, unless_within_s):
            con.execute("ROLLBACK")
            return 0
        since, before = moved_upto(con, catalog), _xmin(pg)
        if before <= since:
            con.execute("ROLLBACK")
            return 0
        added = 0
        if _lines_out(pg, since, before, path):
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


def conninfo(locator: str) -> str:
    """The PostgreSQL connection string of a ``ducklake:postgres:`` locator."""
    if not locator.startswith(POSTGRES_LAKE_PREFIX):
        raise StageError("staging needs a lake whose catalog is PostgreSQL (ducklake:postgres:)")
    return locator.removeprefix(POSTGRES_LAKE_PREFIX)


def connect(locator: str) -> Any:
    """A psycopg connection (autocommit) to the catalog database of ``locator``."""
    try:
        import psycopg
    except ImportError:
        raise StageError("staged ingest needs psycopg: pip install 'meterline[ducklake]'") from None
    try:
        return psycopg.connect(conninfo(locator), autocommit=True)
    except psycopg.Error as e:
        raise StageError(f"cannot connect to the lake's PostgreSQL: {e}") from e


def stages(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> bool:
    """Whether the lake ever staged events (it holds :data:`MOVES`)."""
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        f"WHERE database_name = '{catalog}' AND schema_name = 'main' AND table_name = '{MOVES}'"
    ).fetchone()
    return bool(row and row[0])


class StagedView:
    """A reader's ``usage_events``: the lake's table plus the staged lines not moved yet.

    :meth:`refresh` brings a copy of those lines into a temporary table of ``con`` and
    makes a temporary view named ``usage_events`` over both, which every unqualified
    query of ``con`` then reads (DuckDB looks in ``temp`` first). The view takes the
    staged lines at or above the bound of **its own query's** lake snapshot: a move that
    committed after the copy is counted once, from the lake. So the copy can be older
    than the query; it lacks only lines staged after it, as a reader of an appending
    lake lacks the flushes after its snapshot.

    Refreshes are incremental: lines below the ``xmin`` of the last copy's PostgreSQL
    snapshot were final then, so only the lines from there on are copied again (a proxy
    re-reading every 2 s copies ~2 s of the fleet's lines, not everything since the last
    move). Writes to ``usage_events`` through ``con`` are refused while the view is
    there (:meth:`drop` removes it).
    """

    def __init__(self, pg: Any, catalog: str = "lake") -> None:
        self.pg = pg
        self.catalog = catalog
        self._work = Path(tempfile.mkdtemp(prefix="meterline-staged-"))  # 0700
        self._final_below: int | None = None
        """xmin of the last copy's snapshot: the copy holds every line below it."""
        self.copied = 0
        """Lines copied by the last refresh (a figure for tests and benchmarks)."""

    def refresh(self, con: duckdb.DuckDBPyConnection) -> None:
        if not con.execute(
            f"SELECT count(*) FROM duckdb_tables() WHERE database_name = 'temp' "
            f"AND table_name = '{ROWS}'"
        ).fetchone()[0]:  # type: ignore[index]
            self._create(con)
        bound = moved_upto(con, self.catalog)
        since = bound if self._final_below is None else max(bound, self._final_below)
        path = self._work / "staged-reading.jsonl"
        try:
            final_below = self._fetch(since, path)
            con.execute(
                f"DELETE FROM temp.main.{ROWS} WHERE staged_xact >= {since} "
                f"OR staged_xact < {bound}"
            )
            if self.copied:
                con.execute(
                    f"INSERT INTO temp.main.{ROWS} (staged_xact, {spoolsql.COLUMNS}) "
                    f"SELECT staged_xact, {_SELECT} FROM read_json("
                    f"{spoolsql.sql_string(str(path))}, {_VIEW_READ_OPTIONS}) "
                    f"WHERE {spoolsql.VALID}"
                )
        finally:
            path.unlink(missing_ok=True)
        self._final_below = final_below

    def _fetch(self, since: int, path: Path) -> int:
        """The staged lines from ``since`` on into ``path``; returns the ``xmin`` of the
        snapshot they were read in (one snapshot for both)."""
        try:
            with self.pg.transaction():
                self.pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                final_below = _xmin(self.pg)
                self.copied = _lines_out(self.pg, since, None, path)
        except OSError:
            raise
        except Exception as e:  # psycopg's errors (imported only where staging is used)
            raise StageError(f"cannot read the staged events: {e}") from e
        return final_below

    def _create(self, con: duckdb.DuckDBPyConnection) -> None:
        lake = f"{self.catalog}.main"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {ROWS} AS "
            f"SELECT *, 0::BIGINT AS staged_xact FROM {lake}.usage_events LIMIT 0"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW usage_events AS "
            f"SELECT * FROM {lake}.usage_events UNION ALL "
            f"SELECT * EXCLUDE (staged_xact) FROM temp.main.{ROWS} "
            f"WHERE staged_xact >= (SELECT coalesce(max(upto), 0) FROM {lake}.{MOVES})"
        )
        self._final_below = None

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        """Remove the view and the copy from ``con`` (writes to the lake's table again)."""
        con.execute("DROP VIEW IF EXISTS temp.main.usage_events")
        con.execute(f"DROP TABLE IF EXISTS temp.main.{ROWS}")
        self._final_below = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pg.close()
        shutil.rmtree(self._work, ignore_errors=True)


@contextlib.contextmanager
def staged_reads(
    con: duckdb.DuckDBPyConnection, locator: str, catalog: str = "lake"
) -> Iterator[StagedView | None]:
    """For one unit of a reader's work: on a lake that stages, ``usage_events`` in ``con``
    reads the staged lines too (refreshed once, here); elsewhere nothing changes."""
    if not locator.startswith(POSTGRES_LAKE_PREFIX) or not stages(con, catalog):
        yield None
        return
    view = StagedView(connect(locator), catalog)
    try:
        view.refresh(con)
        yield view
    finally:
        view.close()
