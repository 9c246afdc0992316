"""Keep a DuckLake small: compact its files, expire old snapshots, delete what they freed.

Every writer commit is one snapshot, and (past the inlining limit) one Parquet file; ten
proxies flushing every second leave 26M of each a month, and every query then pays ~0.1 ms
per file. One maintenance pass, in order:

1. only with ``flush_inlined=True`` (all proxies stopped): ``ducklake_flush_inlined_data``,
   rows inlined in the catalog become Parquet files. Never while proxies write: in DuckLake
   0.3 that duplicated rows committed meanwhile (see ``meterline/lakeconfig.py``);
2. ``ducklake_merge_adjacent_files`` (at most ``max_compacted_files`` files per merge,
   repeated up to ``max_rounds`` times, so one pass has a bounded memory and duration);
3. ``ducklake_expire_snapshots`` older than ``keep`` (or, with ``keep_snapshots=N``,
   older than the N-th newest snapshot: a commit clock, for simulations; see
   :func:`retention_cutoff`);
4. ``ducklake_cleanup_old_files`` scheduled for deletion before that same cutoff.

Rows are only moved between files, never changed, so every query (and so every invoice)
reads the same events before and after. A reader that started before a pass keeps its
snapshot's files for ``keep`` (deleted files are only scheduled, then removed a pass
later): no billing command runs that long.

Who runs it: every proxy writing to a lake starts a :class:`~addons.metering.lakejob`
thread that tries every ``METERLINE_LAKE_MAINTAIN_EVERY`` seconds; a **lease** row in the
lake (:func:`take_lease`) lets one pass run at a time across the fleet. ``billing lake
maintain`` runs one pass by hand or from cron under the same lease.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from meterline.store import Migration, migrate

LEASE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_lake_leases",
        """
        CREATE TABLE IF NOT EXISTS lake_leases (
            name        VARCHAR NOT NULL,   -- 'maintenance'
            holder      VARCHAR,            -- who runs it: '<host>:<pid>' or a proxy id
            expires_at  TIMESTAMP NOT NULL  -- UTC; after it the lease is free again
        );
        INSERT INTO lake_leases VALUES ('maintenance', NULL, TIMESTAMP '1970-01-01');
        """,
    ),
)
LEASE = "maintenance"
DEFAULT_KEEP = timedelta(minutes=10)
DEFAULT_LEASE_TTL = timedelta(minutes=30)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COMMIT_RETRIES = 200
MAX_COMPACTED_FILES = 500


@dataclass(frozen=True)
class MaintenanceReport:
    files_before: int
    files_after: int
    snapshots_before: int
    snapshots_after: int
    files_deleted: int
    seconds: float


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


def take_lease(
    con: duckdb.DuckDBPyConnection,
    holder: str,
    *,
    ttl: timedelta = DEFAULT_LEASE_TTL,
    now: datetime | None = None,
) -> bool:
    """Take (or renew) the maintenance lease for ``ttl``; False if someone else holds it.

    DuckLake refuses to commit a transaction that deletes rows another transaction deleted
    since it began, and an UPDATE deletes the old row: of two proxies updating the lease
    row at once, one commit fails, and that one does not hold the lease.
    """
    now = now or datetime.now(UTC)
    migrate(con, LEASE_MIGRATIONS)  # creates the one lease row, free
    quoted = holder.replace("'", "''")
    try:
        con.execute("BEGIN TRANSACTION")
        row = con.execute(
            f"UPDATE lake_leases SET holder = '{quoted}', expires_at = {_utc(now + ttl)} "
            f"WHERE name = '{LEASE}' AND (holder = '{quoted}' OR expires_at < {_utc(now)})"
        ).fetchone()
        con.execute("COMMIT")
    except duckdb.TransactionException:  # another taker committed first
        _rollback(con)
        return False
    return bool(row and row[0])


def release_lease(con: duckdb.DuckDBPyConnection, holder: str) -> None:
    """Give the lease back (it also lapses by itself after its ttl)."""
    quoted = holder.replace("'", "''")
    try:
        con.execute(
            f"UPDATE lake_leases SET expires_at = TIMESTAMP '1970-01-01' "
            f"WHERE name = '{LEASE}' AND holder = '{quoted}'"
        )
    except duckdb.Error:
        _rollback(con)


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # no transaction was open
        con.execute("ROLLBACK")


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
    memory_limit: str = "1GB",
    flush_inlined: bool = False,
) -> MaintenanceReport:
    """One maintenance pass on the attached lake ``catalog`` (see the module docstring)."""
    started = time.monotonic()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    # A merge commits while the fleet keeps committing (ten proxies: 10+ commits/s);
    # each commit in between makes DuckLake retry it. Its default 10 tries, 100 ms apart
    # growing 1.5x each, gave up (or waited minutes): many quick tries instead.
    con.execute(f"SET ducklake_max_retry_count = {COMMIT_RETRIES}")
    con.execute("SET ducklake_retry_wait_ms = 10")
    con.execute("SET ducklake_retry_backoff = 1.1")
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
    for schema, table in tables:  # each table, a bounded number of files per merge
        for _ in range(max_rounds):
            files = _count(
                con,
                f"SELECT count(*) FROM ducklake_list_files('{catalog}', '{table}', "
                f"schema => '{schema}')",
            )
            con.execute(
                f"SELECT count(*) FROM ducklake_merge_adjacent_files('{catalog}', '{table}', "
                f"schema => '{schema}', max_compacted_files => {max_compacted_files})"
            ).fetchall()
            after = _count(
                con,
                f"SELECT count(*) FROM ducklake_list_files('{catalog}', '{table}', "
                f"schema => '{schema}')",
            )
            if after >= files or after <= 1:
                break
    cutoff = _utc(retention_cutoff(con, catalog, keep=keep, keep_snapshots=keep_snapshots))
    con.execute(
        f"SELECT count(*) FROM ducklake_expire_snapshots('{catalog}', older_than => {cutoff})"
    ).fetchall()
    deleted = _count(
        con, f"SELECT count(*) FROM ducklake_cleanup_old_files('{catalog}', older_than => {cutoff})"
    )
    files_after, snapshots_after = lake_counts(con, catalog)
    return MaintenanceReport(
        files_before=files_before,
        files_after=files_after,
        snapshots_before=snapshots_before,
        snapshots_after=snapshots_after,
        files_deleted=deleted,
        seconds=round(time.monotonic() - started, 3),
    )
