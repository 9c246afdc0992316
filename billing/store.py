"""Open the store for one billing command: wait out the proxy's lock, migrate, close.

The proxy opens the same DuckDB file about once a second for one batch. Billing does
the same: :func:`billing_store` opens the file (``meterline.store`` retries while the
proxy holds the lock), applies every migration billing reads or writes (events,
invoices, and the tables of the packages registered in ``billing.extensions``, such as
the Stripe sync's), yields, and closes, so the proxy is never locked out for longer
than one command's unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb

from billing import extensions
from billing.schema import BILLING_MIGRATIONS
from meterline.entitlements.schema import GOVERNANCE_MIGRATIONS
from meterline.store import (
    EVENT_MIGRATIONS,
    LAKE_PREFIX,
    Migration,
    check_locator,
    migrate,
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


def apply_migrations(
    con: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] | None = None
) -> list[str]:
    return migrate(con, all_migrations() if migrations is None else migrations)


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
    if not create and not loc.startswith(LAKE_PREFIX) and no_store_yet(loc):
        raise no_such_database(loc)
    with store(loc, wait_s=wait_s, create_lake=create, on_wait=on_wait) as con:
        apply_migrations(con)
        yield con
