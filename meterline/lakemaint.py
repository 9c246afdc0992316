"""Keep a DuckLake small: compact its files, expire old snapshots, delete what they freed.

Every writer commit is one snapshot, and (past the inlining limit) one Parquet file; ten
proxies flushing every second leave 26M of each a month, and every query then pays ~0.1 ms
per file. One maintenance pass, in order:

1. only with ``flush_inlined=True`` (all proxies stopped): ``ducklake_flush_inlined_data``,
   rows inlined in the catalog become Parquet files. Never while proxies write: in DuckLake
   0.3 that duplicated rows committed meanwhile (see ``meterline/lakeconfig.py``);
2. ``ducklake_merge_adjacent_files``, table by table: first a backlog of small files in
   commits of about :data:`FILES_PER_MERGE` files each (:func:`merge_backlog`), then the
   usual merge of what is left (one call; files of :data:`MERGED_FILE_BYTES` or more left
   alone), so one pass has a bounded memory and duration; a merge whose commit keeps
   losing to the writers' is given up, see :data:`COMMIT_RETRIES`;
3. ``ducklake_expire_snapshots`` older than ``keep`` (or, with ``keep_snapshots=N``,
   older than the N-th newest snapshot: a commit clock, for simulations; see
   :func:`retention_cutoff`);
4. ``ducklake_cleanup_old_files`` scheduled for deletion before that same cutoff;
5. on a PostgreSQL catalog, ``VACUUM (ANALYZE)`` of DuckLake's tables holding dead rows
   (:func:`vacuum_catalog`);
6. only when asked (``orphan_age``; ``billing lake maintain --delete-orphans``):
   ``ducklake_delete_orphaned_files`` older than that age: Parquet files under the data
   path the lake does not name, which a writer killed between writing a file and
   committing it leaves behind (about one per kill -9 during a flush; a few KB each).
   Never by the proxies' own passes: the call deletes *every* such file under the data
   path, so a data path another lake shares (a misconfiguration, but a costly one)
   would lose that lake's files; the operator who runs it vouches for the path.

Rows are only moved between files, never changed, so every query (and so every invoice)
reads the same events before and after. A reader that started before a pass keeps its
snapshot's files for ``keep`` (deleted files are only scheduled, then removed a pass
later): no billing command runs that long.

Who runs it: every proxy writing to a lake starts a :class:`~addons.metering.lakejob`
thread that tries every ``METERLINE_LAKE_MAINTAIN_EVERY`` seconds; a **lease** row in the
lake (:mod:`meterline.lakelease`) lets one pass run at a time across the fleet. ``billing lake
maintain`` runs one pass by hand or from cron under the same lease.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from meterline import lakerepair, lakestorage
from meterline.lakelease import rollback

DEFAULT_KEEP = timedelta(minutes=10)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: DuckLake's ``max_compacted_files``: the merges (output files) of one call, all in one
#: commit. Not a bound on the files a merge takes: each takes consecutive files until the
#: table's ``target_file_size`` (512 MiB by default), so one call took every small file.
MAX_COMPACTED_FILES = 500
#: The files one commit of :func:`merge_backlog` takes, about. A merge's commit deletes
#: each merged file's catalog rows (~25 per file) and races the writers' commits: with
#: ~1,500 files it took 300-500 ms and, against fifteen writer commits a second, lost
#: every one of its 300 tries; the next pass had more files still (a simulated month:
#: 1,414 files at the pass that lost, 6,743 three passes later).
FILES_PER_MERGE = 200
#: Files smaller than this are a flush's own (a 100-event flush writes ~30 KB).
SMALL_FILE_BYTES = 1 << 20
#: The usual merge leaves files of this size or more alone. DuckLake's merge takes the
#: table's merged file again with every pass's new files until it reaches the target
#: (512 MiB): a pass rewrote it whole each time (pass times crept from 4 to 8-12.7 s
#: over 30,000 simulated commits as it grew to ~170 MB; with the cap, flat). With the
#: cap a pass rewrites at most this much; the price is files of ~128 MiB instead of 512:
#: ~470k events each (284 bytes per event in Parquet, measured), 21 files for 10M events.
MERGED_FILE_BYTES = 128 << 20
#: DuckLake's ``target_file_size`` where the lake sets none (512 MiB), in the form its
#: options hold it.
DEFAULT_TARGET_FILE_SIZE = f"{1 << 29}B"
#: DuckLake retries a commit that lost a race to another after ``wait * backoff^n`` ms.
#: A pass's waits stay short (the last ~10 ms x 1.05^59 = 178 ms, ~3.6 s in all): with
#: the former 200 tries growing 1.1x each, a merge that lost ~70 races in a row slept
#: for minutes between tries (one pass of a simulated month: 766 s, nothing merged,
#: 10,507 files left). A merge that loses every try is started again from the latest
#: snapshot (``MERGE_STARTS`` in all), then left to the next pass.
COMMIT_RETRIES = 60
RETRY_WAIT_MS = 10
RETRY_BACKOFF = 1.05
MERGE_STARTS = 5


@dataclass(frozen=True)
class MaintenanceReport:
    files_before: int
    files_after: int
    snapshots_before: int
    snapshots_after: int
    files_deleted: int
    seconds: float
    merges_given_up: int = 0
    backlog_merges: int = 0
    """Commits of :func:`merge_backlog` (0 when no table had a backlog)."""
    catalog_tables_vacuumed: int = 0
    vacuum_seconds: float = 0.0
    orphans_deleted: int = 0
    """Files under the data path the lake did not name (only with ``orphan_age``)."""


ORPHAN_AGE = timedelta(days=1)
"""How old a file the lake does not name must be before ``--delete-orphans`` removes it:
no flush is in flight that long (a flush's file is named by its commit within seconds)."""


def _utc(ts: datetime) -> str:
    return "TIMESTAMP '" + ts.astimezone(UTC).replace(tzinfo=None).isoformat(" ") + "'"


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    """The count a statement returns, its transaction committed.

    The whole result is fetched: a result left open until the next statement rolls the
    statement's transaction back. ``ducklake_cleanup_old_files`` read with ``fetchone()``
    deleted the files but left their rows in ``ducklake_files_scheduled_for_deletion``:
    one row per merged file for good (measured: the rows grew by each pass's merged files,
    ~1 per fleet commit, so a month of ten proxies would have left ~26M of them).
    """
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows else 0


def lake_counts(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> tuple[int, int]:
    """(live data files of ``usage_events``, snapshots) of the attached lake."""
    files = _count(
        con,
        f"SELECT coalesce(sum(file_count), 0) FROM ducklake_table_info('{catalog}') "
        "WHERE table_name = 'usage_events'",
    )
    snapshots = _count(con, f"SELECT count(*) FROM ducklake_snapshots('{catalog}')")
    return files, snapshots


def _delete_orphans(con: duckdb.DuckDBPyConnection, catalog: str, before: str) -> int:
    """Delete the files under the data path the lake does not name, older than ``before``.

    DuckLake's call deletes the data path's marker too (not a lake file,
    :mod:`meterline.lakestorage`): it is put back, and not counted."""
    root = lakerepair.data_path(con, catalog)
    marker = lakestorage.read_marker(con, root)
    sql = (
        f"SELECT count(*) FROM ducklake_delete_orphaned_files('{catalog}', older_than => {before})"
    )
    deleted = _count(con, sql)
    if marker is not None and lakestorage.read_marker(con, root) is None:
        lakestorage.write_marker(con, root, marker)
        deleted -= 1
    return deleted


def retention_cutoff(
    con: duckdb.DuckDBPyConnection,
    catalog: str = "lake",
    *,
    keep: timedelta = DEFAULT_KEEP,
    keep_snapshots: int | None = None,
    now: datetime | None = None,
) -> datetime:
    """The time before which snapshots expire and scheduled files are deleted.

    ``keep``: a wall-clock age (the proxies' and ``billing``'s way). ``keep_snapshots``:
    the time of the snapshot that many commits back instead, so a simulation that runs a
    month of commits in minutes (``bench/fleet_bench.py``) keeps what the fleet would
    keep: at 10 commits/s, 10 minutes are 6,000 snapshots. A lake with fewer snapshots
    keeps them all.
    """
    if keep_snapshots is None:
        return (now or datetime.now(UTC)) - keep
    row = con.execute(
        f"SELECT epoch_us(snapshot_time) FROM ducklake_snapshots('{catalog}') "
        f"ORDER BY snapshot_id DESC LIMIT 1 OFFSET {int(keep_snapshots)}"
    ).fetchone()
    if row is None:
        row = con.execute(
            f"SELECT min(epoch_us(snapshot_time)) FROM ducklake_snapshots('{catalog}')"
        ).fetchone()
    return datetime.fromtimestamp(int(row[0]) / 1e6, UTC) if row and row[0] else _EPOCH


def maintain(
    con: duckdb.DuckDBPyConnection,
    *,
    catalog: str = "lake",
    keep: timedelta = DEFAULT_KEEP,
    keep_snapshots: int | None = None,
    max_compacted_files: int = MAX_COMPACTED_FILES,
    max_rounds: int = 20,
    files_per_merge: int = FILES_PER_MERGE,
    merged_file_bytes: int = MERGED_FILE_BYTES,
    memory_limit: str = "1GB",
    flush_inlined: bool = False,
    orphan_age: timedelta | None = None,
) -> MaintenanceReport:
    """One maintenance pass on the attached lake ``catalog`` (see the module docstring)."""
    started = time.monotonic()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    # A merge commits while the fleet keeps committing (ten proxies: 10+ commits/s);
    # each commit in between makes DuckLake retry it. Its default 10 tries, 100 ms apart
    # growing 1.5x each, gave up (or waited minutes): many quick tries instead.
    con.execute(f"SET ducklake_max_retry_count = {COMMIT_RETRIES}")
    con.execute(f"SET ducklake_retry_wait_ms = {RETRY_WAIT_MS}")
    con.execute(f"SET ducklake_retry_backoff = {RETRY_BACKOFF}")
    index_catalog(con, catalog)  # a lake a writer of an earlier version created
    files_before, snapshots_before = lake_counts(con, catalog)
    if flush_inlined:
        con.execute(f"SELECT count(*) FROM ducklake_flush_inlined_data('{catalog}')").fetchall()
    tables = [
        (schema, table)
        for schema, table in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() "
            f"WHERE database_name = '{catalog}' ORDER BY ALL"
        ).fetchall()
    ]
    given_up = backlog_merges = 0
    for schema, table in tables:
        backlog = merge_backlog(
            con, catalog, schema, table, files_per_merge=files_per_merge, max_rounds=max_rounds
        )
        backlog_merges += backlog.merges
        if backlog.given_up or backlog.small_files_after > files_per_merge:
            given_up += backlog.given_up  # the rest of the backlog: the next pass's
            continue
        # One call: its merges take consecutive files up to the target, so the slices and
        # what came after them go in one commit of a few dozen files.
        if not _merge(con, catalog, schema, table, max_compacted_files, merged_file_bytes):
            given_up += 1
    cutoff = _utc(retention_cutoff(con, catalog, keep=keep, keep_snapshots=keep_snapshots))
    # An earlier release's marker names the oldest snapshot, which this may expire.
    lakerepair.upgrade_marker(con, catalog)
    con.execute(
        f"SELECT count(*) FROM ducklake_expire_snapshots('{catalog}', older_than => {cutoff})"
    ).fetchall()
    deleted = _count(
        con, f"SELECT count(*) FROM ducklake_cleanup_old_files('{catalog}', older_than => {cutoff})"
    )
    vacuum_started = time.monotonic()
    vacuumed = vacuum_catalog(con, catalog)
    vacuum_seconds = round(time.monotonic() - vacuum_started, 3)
    orphans = 0
    if orphan_age is not None:
        orphans = _delete_orphans(con, catalog, _utc(datetime.now(UTC) - orphan_age))
    files_after, snapshots_after = lake_counts(con, catalog)
    return MaintenanceReport(
        files_before=files_before,
        files_after=files_after,
        snapshots_before=snapshots_before,
        snapshots_after=snapshots_after,
        files_deleted=deleted,
        seconds=round(time.monotonic() - started, 3),
        merges_given_up=given_up,
        backlog_merges=backlog_merges,
        catalog_tables_vacuumed=vacuumed,
        vacuum_seconds=vacuum_seconds,
        orphans_deleted=orphans,
    )


@dataclass(frozen=True)
class BacklogMerge:
    """What :func:`merge_backlog` did to one table."""

    small_files_before: int
    small_files_after: int
    merges: int
    given_up: bool


def _small_files(
    con: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str, below: int
) -> dict[str, int]:
    """The table's files smaller than ``below`` bytes: path -> size."""
    return dict(
        con.execute(
            "SELECT data_file, data_file_size_bytes FROM "
            f"ducklake_list_files('{catalog}', '{table}', schema => '{schema}') "
            f"WHERE data_file_size_bytes < {below}"
        ).fetchall()
    )


def _set_target(
    con: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str, size: str
) -> None:
    con.execute(
        f"CALL ducklake_set_option('{catalog}', 'target_file_size', '{size}', "
        f"schema => '{schema}', table_name => '{table}')"
    )


def _targets(
    con: duckdb.DuckDBPyConnection, catalog: str, schema: str, table: str
) -> tuple[str, str | None]:
    """The table's ``target_file_size`` as the lake sets it (the schema's or global
    option, else DuckLake's default), and the table's own option if it has one."""
    scoped = {
        scope: value
        for scope, entry, value in con.execute(
            f"SELECT scope, scope_entry, value FROM ducklake_options('{catalog}') "
            "WHERE option_name = 'target_file_size'"
        ).fetchall()
        if scope == "GLOBAL"
        or (scope == "SCHEMA" and entry == schema)
        or (scope == "TABLE" and entry == f"{schema}.{table}")
    }
    lake = scoped.get("SCHEMA") or scoped.get("GLOBAL")
    own = scoped.get("TABLE")
    return (f"{lake}B" if lake else DEFAULT_TARGET_FILE_SIZE), (f"{own}B" if own else None)


def merge_backlog(
    con: duckdb.DuckDBPyConnection,
    catalog: str,
    schema: str,
    table: str,
    *,
    files_per_merge: int = FILES_PER_MERGE,
    max_rounds: int = 20,
    small_file_bytes: int = SMALL_FILE_BYTES,
) -> BacklogMerge:
    """Merge a table's backlog of small files in commits of ~``files_per_merge`` files.

    DuckLake 0.3 has no bound on the files one merge takes but the table's
    ``target_file_size``: so, for the slicing only, the table's target is set to
    ``files_per_merge`` times the small files' mean size, each call makes one merge
    (``max_compacted_files => 1``: one commit of ~``files_per_merge`` files, short
    enough to win its race with the writers' commits) of small files only
    (``max_file_size``: slices of 1 MiB or more would otherwise be merged with each
    other, a commit that takes no small file), and the target is set back to
    the lake's (the schema's or global option, else DuckLake's 512 MiB)
    before the usual merge combines the slices. A pass that died in between left the
    small target: every pass first sets it back. A table with no more small files than
    ``files_per_merge`` is left to the usual merge, as before. (A table target of one's
    own on a lake table is replaced by the lake's by a pass that slices.)
    """
    lake_target, table_target = _targets(con, catalog, schema, table)
    small = _small_files(con, catalog, schema, table, small_file_bytes)
    if len(small) <= files_per_merge:
        if table_target not in (None, lake_target):
            _set_target(con, catalog, schema, table, lake_target)  # a pass died slicing
        return BacklogMerge(len(small), len(small), 0, given_up=False)
    before, merges, given_up = len(small), 0, False
    mean_size = sum(small.values()) / len(small)
    _set_target(con, catalog, schema, table, f"{int(mean_size * files_per_merge)}B")
    try:
        for _ in range(max_rounds):
            if not _merge(con, catalog, schema, table, 1, small_file_bytes):
                given_up = True
                break
            now = _small_files(con, catalog, schema, table, small_file_bytes)
            # progress: files that were there are gone (not "fewer small files than
            # before": the writers add files meanwhile, ~45 during a slow merge in a
            # simulation, which stopped the slicing early)
            if small.keys() <= now.keys():
                break  # nothing left to merge
            merges += 1
            small = now
            if len(small) <= files_per_merge:
                break
    finally:
        _set_target(con, catalog, schema, table, lake_target)
    return BacklogMerge(before, len(small), merges, given_up)


def _merge(
    con: duckdb.DuckDBPyConnection,
    catalog: str,
    schema: str,
    table: str,
    max_merges: int,
    max_file_bytes: int | None = None,
) -> bool:
    """One call of up to ``max_merges`` merges (output files), of files smaller than
    ``max_file_bytes`` only if given; False if its commit lost every race (nothing
    merged, nothing lost: the new file is DuckLake's to clean up)."""
    only_smaller = f", max_file_size => {max_file_bytes}" if max_file_bytes else ""
    for _ in range(MERGE_STARTS):
        try:
            con.execute(
                f"SELECT count(*) FROM ducklake_merge_adjacent_files('{catalog}', '{table}', "
                f"schema => '{schema}', max_compacted_files => {max_merges}{only_smaller})"
            ).fetchall()
            return True
        except duckdb.TransactionException:  # "exceeded the maximum retry count"
            rollback(con)
    return False


#: DuckLake's catalog tables whose rows a pass deletes by ``data_file_id IN (...)``
#: (the files it merged, expired or cleaned up), which DuckLake 0.3 creates without an
#: index on that column.
DATA_FILE_ID_TABLES = (*lakerepair.PER_FILE_TABLES, "ducklake_files_scheduled_for_deletion")


def index_catalog(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> int:
    """Index ``data_file_id`` in DuckLake's PostgreSQL tables that a pass deletes from.

    Without it every delete of a pass scans the whole table: ``ducklake_file_column_stats``
    holds ~25 rows per file (75,000 at ~3,000 files), and a pass's catalog write took
    ~30 ms. Writers commit meanwhile, and DuckLake 0.3 takes new ids as the latest + 1,
    so a pass's commit that is slow loses the race to a writer's and starts again: in a
    simulated month of ten proxies one pass in ~19 lost for 47-206 s. Created only
    where missing, and not ``CONCURRENTLY``: that waits for every older transaction,
    this process's own idle catalog connections included, and never returned in a test
    of three writers; a plain build holds the writers' inserts into that table for its
    duration (once per lake). Two proxies that start together may both try; the
    loser's error is ignored. Returns the indexes created.
    """
    alias = lakerepair.postgres_catalog(con, catalog)
    if alias is None:
        return 0
    present = {
        name
        for (name,) in con.execute(
            f"SELECT name FROM postgres_query('{alias}', "
            "'SELECT indexname AS name FROM pg_indexes "
            "WHERE starts_with(indexname, ''meterline_'')')"
        ).fetchall()
    }
    created = 0
    for table in DATA_FILE_ID_TABLES:
        name = f"meterline_{table}_file"
        if name in present:
            continue
        try:
            con.execute(
                f"CALL postgres_execute('{alias}', 'CREATE INDEX IF NOT EXISTS "
                f"{name} ON {table} (data_file_id)', use_transaction = false)"
            )
            created += 1
        except duckdb.Error:  # another proxy is creating it: theirs will do
            continue
    return created


def vacuum_catalog(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> int:
    """VACUUM (ANALYZE) DuckLake's tables in the lake's PostgreSQL catalog.

    A pass deletes catalog rows by the thousand: per merged file its row and ~25 rows of
    column statistics, per expired snapshot its rows, per cleaned-up file its schedule
    row. PostgreSQL's autovacuum left them for minutes while ten proxies kept committing
    (a simulated month: up to 98,219 dead rows in one table at a pass; with this, at
    most 6,005, and a catalog of 14-27 MB instead of 14-34). So a pass ends by vacuuming
    them (23-50 ms; a table without dead rows costs a look at its visibility map), in a
    statement of its own: VACUUM cannot run in a transaction. (Where an autovacuum is
    working on a table, the VACUUM waits for it; PostgreSQL cancels an autovacuum that
    blocks another's lock after ``deadlock_timeout``.) Returns the tables vacuumed (0 on
    a catalog that is not PostgreSQL's).
    """
    alias = lakerepair.postgres_catalog(con, catalog)
    if alias is None:
        return 0
    names = con.execute(
        f"SELECT name FROM postgres_query('{alias}', "
        "'SELECT quote_ident(schemaname) || ''.'' || quote_ident(relname) AS name "
        "FROM pg_stat_user_tables WHERE starts_with(relname, ''ducklake_'') ORDER BY 1')"
    ).fetchall()
    if not names:
        return 0
    tables = ", ".join(name for (name,) in names).replace("'", "''")
    con.execute(
        f"CALL postgres_execute('{alias}', 'VACUUM (ANALYZE) {tables}', use_transaction = false)"
    )
    return len(names)
