"""Open the store for one billing command: wait out the proxy's lock, migrate, close.

The proxy opens the same DuckDB file about once a second for one batch. Billing does
the same: :func:`billing_store` opens the file (``meterline.store`` retries while the
proxy holds the lock), applies every migration billing reads or writes (events,
invoices, and the tables of the packages registered in ``billing.extensions``, such as
the Stripe sync's), yields, and closes, so the proxy is never locked out for longer
than one command's unit of work.

Commands that only read use :func:`billing_reader`: the store opened read-only, never
changed. A file that is not a Meterline store is refused, untouched; a Meterline store
whose schema is older than this code is brought up to date once through a writable
open (the tables billing reads must exist), or, when it cannot be written (a read-only
mount, another user's file), refused in one line saying what to run.

A store a newer Meterline migrated (``schema_migrations`` names a migration this code
does not know) is refused by commands that write (:class:`~meterline.migrations.NewerStore`),
and read with a warning by those that only read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb

from billing import extensions
from billing.schema import BILLING_MIGRATIONS
from meterline.conninfo import shown
from meterline.entitlements.schema import GOVERNANCE_MIGRATIONS
from meterline.lakestage import staged_reads
from meterline.migrations import (
    EVENT_MIGRATIONS,
    LAKE_LEASE_MIGRATION,
    Migration,
    migrate,
    newer_store,
    unknown_migrations,
)
from meterline.store import (
    LAKE_PREFIX,
    StoreError,
    StoreLocked,
    check_locator,
    no_store_yet,
    no_such_database,
    store,
)

# Credit grants and what invoices consume of them: the core writes both (credit lines).
CORE_MIGRATIONS: tuple[Migration, ...] = (
    *EVENT_MIGRATIONS,
    *BILLING_MIGRATIONS,
    *GOVERNANCE_MIGRATIONS,
)


def all_migrations() -> tuple[Migration, ...]:
    """The core's migrations, then those of the registered packages."""
    return (*CORE_MIGRATIONS, *extensions.registered_migrations())


def known_migrations() -> set[str]:
    """Every migration name this code knows: a store recording another was migrated by a
    newer Meterline (see :class:`meterline.migrations.NewerStore`)."""
    return {m.name for m in all_migrations()} | {LAKE_LEASE_MIGRATION}


def apply_migrations(
    con: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] | None = None
) -> list[str]:
    """Apply the pending migrations; :class:`NewerStore` for a store a newer Meterline
    migrated (nothing applied)."""
    chosen = all_migrations() if migrations is None else migrations
    return migrate(con, chosen, known=known_migrations())


def newer_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The migrations the store records that this code does not know, read without
    writing (none when it has no ``schema_migrations`` yet)."""
    try:
        rows = con.execute("SELECT name FROM schema_migrations").fetchall()
    except duckdb.CatalogException:
        return []
    return unknown_migrations({r[0] for r in rows}, known_migrations())


@contextmanager
def billing_store(
    locator: str | Path,
    *,
    create: bool = False,
    wait_s: float = 30.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store, migrated, for one unit of work; closed on exit.

    ``create=False`` refuses a file that does not exist, and a PostgreSQL database that
    holds no lake (a typo in ``--db`` should not silently create an empty store and
    report "no usage").
    """
    loc = str(locator)
    check_locator(loc)
    is_file = not loc.startswith(LAKE_PREFIX)
    existed = is_file and not no_store_yet(loc)
    if not create and is_file and not existed:
        raise no_such_database(loc)
    if existed:
        _refuse_foreign_file(loc, wait_s=wait_s, on_wait=on_wait)
    with store(loc, wait_s=wait_s, create_lake=create, on_wait=on_wait) as con:
        newer = newer_migrations(con)
        if newer:  # a command that writes would leave out what that version added
            raise newer_store(newer, shown(loc))
        apply_migrations(con)
        with staged_reads(con, loc):
            yield con


def _refuse_foreign_file(
    locator: str, *, wait_s: float, on_wait: Callable[[str], None] | None
) -> None:
    """:class:`StoreError` for a DuckDB file that holds tables but is no Meterline store
    (a ``--db`` naming another database): a writing command would add Meterline's tables
    to it. An empty file is taken as a new store. Looked at read-only: a writable open
    makes the file private (0600) at once. A file this process holds open already (a
    command's nested unit of work) was checked when it was opened."""
    try:
        with store(locator, read_only=True, wait_s=wait_s, on_wait=on_wait) as con:
            tables = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
            ).fetchone()
            if tables and tables[0]:
                pending_migrations(con, locator)  # raises for a file that is no store of ours
    except StoreError as e:
        if not isinstance(e.__cause__, duckdb.ConnectionException):  # open here already
            raise


#: Recorded in ``schema_migrations`` of every Meterline store, by the proxy or billing.
FIRST_MIGRATION = EVENT_MIGRATIONS[0].name


def pending_migrations(con: duckdb.DuckDBPyConnection, locator: str) -> list[str]:
    """The migrations this code knows that the store has not applied, read without
    writing; :class:`StoreError` for a database that is not a Meterline store."""
    try:
        rows = con.execute("SELECT name FROM schema_migrations").fetchall()
    except duckdb.CatalogException:
        rows = []
    done = {r[0] for r in rows}
    if FIRST_MIGRATION not in done:
        raise StoreError(
            f"{shown(locator)}: not a Meterline store (it has no metered events table: check --db)"
        )
    return [m.name for m in all_migrations() if m.name not in done]


@contextmanager
def billing_reader(
    locator: str | Path,
    *,
    wait_s: float = 30.0,
    on_wait: Callable[[str], None] | None = None,
    on_newer: Callable[[str], None] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store opened read-only for one query, closed on exit; never created or changed,
    except that a Meterline store with pending migrations is migrated first (see the
    module).

    ``on_newer``: told, with the warning, when a newer Meterline migrated the store: it is
    read as this version knows it. One that also lacks migrations of this version is
    refused (:class:`NewerStore`): bringing it up to date would be a write."""
    loc = str(locator)
    check_locator(loc)
    if not loc.startswith(LAKE_PREFIX) and no_store_yet(loc):  # as billing_store: at once
        raise no_such_database(loc)
    opened = store(loc, read_only=True, wait_s=wait_s, create_lake=False, on_wait=on_wait)
    with opened as con:
        pending = pending_migrations(con, loc)
        newer = newer_migrations(con)
        if newer and pending:
            raise newer_store(newer, shown(loc), lacking=pending)
        if newer and on_newer is not None:
            on_newer(
                f"{shown(loc)} was migrated by a newer Meterline (migrations this version "
                f"does not know: {', '.join(newer)}): read as this version knows it, "
                "without what that one added; upgrade Meterline"
            )
        if not pending:
            with staged_reads(con, loc):
                yield con
            return
    _migrate_for_reading(loc, pending, wait_s=wait_s, on_wait=on_wait)
    with (
        store(loc, read_only=True, wait_s=wait_s, create_lake=False, on_wait=on_wait) as con,
        staged_reads(con, loc),
    ):
        yield con


def _migrate_for_reading(
    loc: str, pending: Sequence[str], *, wait_s: float, on_wait: Callable[[str], None] | None
) -> None:
    """Apply ``pending`` through a writable open, or say in one line why it cannot be."""
    try:
        with store(loc, wait_s=wait_s, create_lake=False, on_wait=on_wait) as con:
            apply_migrations(con)
    except StoreLocked:
        raise
    except (StoreError, OSError, duckdb.Error) as e:
        why = str(e).removeprefix(f"{shown(loc)}: ")
        raise StoreError(
            f"{shown(loc)}: the store's schema is older than this billing (pending: "
            f"{', '.join(pending)}) and it cannot be opened for writing to update it "
            f"({why}): run this command once with write access to the store"
        ) from None
