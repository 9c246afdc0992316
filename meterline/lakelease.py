"""The lake's maintenance lease: one pass at a time across a fleet.

One row of ``lake_leases`` (its own migration, recorded with the events'): a holder and
an expiry. :func:`take_lease` takes it when it is free, lapsed, or this holder's own (a
proxy restarted mid-pass takes back its earlier life's lease); DuckLake refuses the
second of two concurrent takes, so only one holder wins. :func:`give_back_lease` frees it
after a pass, on a fresh connection if the pass's died; otherwise it lapses after its ttl.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

import duckdb

from meterline import lakerepair
from meterline.migrations import LAKE_LEASE_MIGRATION, Migration, migrate
from meterline.store import StoreError, store

LEASE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        LAKE_LEASE_MIGRATION,
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
DEFAULT_LEASE_TTL = timedelta(minutes=30)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(ts: datetime) -> str:
    return "TIMESTAMP '" + ts.astimezone(UTC).replace(tzinfo=None).isoformat(" ") + "'"


def take_lease(
    con: duckdb.DuckDBPyConnection,
    holder: str,
    *,
    ttl: timedelta = DEFAULT_LEASE_TTL,
    now: datetime | None = None,
    take_over: str | None = None,
) -> bool:
    """Take (or renew) the maintenance lease for ``ttl``; False if someone else holds it.

    ``take_over``: a holder name, or its start, whose lease is taken even before it
    lapses: a proxy's earlier life (``proxy:<meter_proxy_id>:``, another pid: killed
    mid-pass, its lease blocked the restarted proxy for 30 minutes), or the holder
    ``billing lake maintain --break-lease`` was told is gone.

    DuckLake refuses to commit a transaction that deletes rows another transaction deleted
    since it began, and an UPDATE deletes the old row: of two proxies updating the lease
    row at once, one commit fails, and that one does not hold the lease.
    """
    now = now or datetime.now(UTC)
    migrate(con, LEASE_MIGRATIONS)  # creates the one lease row, free
    quoted = holder.replace("'", "''")
    taken_over = ""
    if take_over:
        taken_over = " OR starts_with(holder, '" + take_over.replace("'", "''") + "')"
    try:
        con.execute(f"SELECT count(*) FROM lake_leases WHERE name = '{LEASE}'").fetchall()
    except (duckdb.IOException, duckdb.HTTPException) as e:  # a lost lease commit's file
        if not lakerepair.names_a_lost_file(str(e)):
            raise
        repair_leases(con)
    try:
        con.execute("BEGIN TRANSACTION")
        row = con.execute(
            f"UPDATE lake_leases SET holder = '{quoted}', expires_at = {_utc(now + ttl)} "
            f"WHERE name = '{LEASE}' "
            f"AND (holder = '{quoted}' OR expires_at < {_utc(now)}{taken_over})"
        ).fetchone()
        con.execute("COMMIT")
    except duckdb.TransactionException:  # another taker committed first
        rollback(con)
        return False
    return bool(row and row[0])


def repair_leases(con: duckdb.DuckDBPyConnection) -> None:
    """A lease commit whose acknowledgement was lost left ``lake_leases`` naming a file
    DuckLake deleted, and every pass failed on it (for good: no one else repairs that
    table). It holds no billed data: drop its dangling files and put the row back."""
    lost = [f for f in lakerepair.dangling_files(con) if f.table == "main.lake_leases"]
    lakerepair.drop_files(con, lost)
    restore_lease_row(con)


def restore_lease_row(con: duckdb.DuckDBPyConnection) -> bool:
    """Put back the one lease row, free, if it is gone (its file lost and dropped, the
    old one hidden by the UPDATE's delete file); True if it was missing."""
    rows = con.execute(f"SELECT count(*) FROM lake_leases WHERE name = '{LEASE}'").fetchone()
    if rows and rows[0]:
        return False
    con.execute(f"INSERT INTO lake_leases VALUES ('{LEASE}', NULL, TIMESTAMP '1970-01-01')")
    return True


def lease_holder(con: duckdb.DuckDBPyConnection) -> tuple[str | None, datetime]:
    """Who holds the maintenance lease, and until when (UTC)."""
    row = con.execute(
        f"SELECT holder, expires_at FROM lake_leases WHERE name = '{LEASE}'"
    ).fetchone()
    if row is None:
        return None, _EPOCH
    return row[0], row[1].replace(tzinfo=UTC)


def release_lease(con: duckdb.DuckDBPyConnection, holder: str) -> bool:
    """Give the lease back (it also lapses by itself after its ttl); False if it failed."""
    quoted = holder.replace("'", "''")
    try:
        con.execute(
            f"UPDATE lake_leases SET expires_at = TIMESTAMP '1970-01-01' "
            f"WHERE name = '{LEASE}' AND holder = '{quoted}'"
        )
    except duckdb.Error:
        rollback(con)
        return False
    return True


def give_back_lease(
    con: duckdb.DuckDBPyConnection,
    locator: str,
    holder: str,
    *,
    tries: int = 6,
    wait_s: float = 5.0,
) -> bool:
    """Release the lease after a pass, whatever became of the pass's connection.

    A pass that failed because PostgreSQL went away has a dead connection: releasing
    through it fails, and the lease blocked every pass, the fleet's included, for its
    whole ttl (30 minutes: ~18,000 more small files for ten proxies). So the release is
    tried again on fresh connections, ``tries`` times ``wait_s`` apart, until PostgreSQL
    answers. False if it never did (the lease then lapses at its expiry)."""
    if release_lease(con, holder):
        return True
    for _ in range(tries):
        try:
            with store(locator, wait_s=wait_s, create_lake=False) as fresh:
                if release_lease(fresh, holder):
                    return True
        except (StoreError, duckdb.Error):
            pass
        time.sleep(wait_s)
    return False


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """End the transaction a failed statement left open, if any (lease and pass alike)."""
    with contextlib.suppress(duckdb.Error):  # no transaction was open
        con.execute("ROLLBACK")
