"""Settled window sums a fleet's proxies share, so that a proxy joining the fleet does
not sum the whole period at its first read.

A proxy's first read of the store sums every governed window over the whole current
period (:mod:`.windowsums`): 0.9 s at 10M events, ~9 s at 100M, longer than the 3 s its
first calls wait for it. A restarted proxy takes up the sums it saved in its spool; a
proxy new to the fleet (an autoscaled one, a replaced host) has none. Each proxy of a
fleet on a PostgreSQL lake therefore also writes its settled sums, every
:data:`EVERY_S`, into :data:`TABLE` of the lake's catalog database (one row per proxy:
the sums' digest, their boundary and the JSON of
:meth:`~meterline.entitlements.windowsums.KeptSums.state`; counters and units, never a
key), and a proxy without sums of its own takes up the latest row of the same digest
(the same catalog and periods), checked as its own would be (as many events ingested
before the boundary as when they were kept).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb

from meterline.entitlements.fleet import pg_execute, pg_query, pg_text, table_exists

TABLE = "meterline_fleet_sums"
#: How often a proxy writes its sums (a joining proxy then reads at most this much more,
#: plus the settle margin, than one that read a moment ago).
EVERY_S = 300.0
#: Rows of proxies that stopped writing are dropped after this long.
KEEP = "1 day"
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " publisher text PRIMARY KEY,"
    " digest text NOT NULL,"
    " settled_before timestamptz NOT NULL,"
    " written_at timestamptz NOT NULL,"
    " state text NOT NULL)"
)


def create_table(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    """Create :data:`TABLE` unless it exists (or an administrator made it and granted the
    lake's role ``SELECT, INSERT, DELETE`` on it)."""
    if not table_exists(con, alias, TABLE):
        pg_execute(con, alias, _DDL)


def write(
    con: duckdb.DuckDBPyConnection, alias: str, publisher: str, state: dict[str, Any]
) -> None:
    """Replace ``publisher``'s row with ``state`` and drop rows not written for a day."""
    who = pg_text(publisher)
    before = datetime.fromisoformat(state["settled_before"]).isoformat()
    script = "; ".join(
        [
            "BEGIN",
            f"DELETE FROM {TABLE} WHERE publisher = {who} "
            f"OR written_at < now() - interval '{KEEP}'",
            f"INSERT INTO {TABLE} VALUES ({who}, {pg_text(state['digest'])}, "
            f"{pg_text(before)}, now(), {pg_text(json.dumps(state))})",
            "COMMIT",
        ]
    )
    pg_execute(con, alias, script)


def latest(con: duckdb.DuckDBPyConnection, alias: str, digest: str) -> dict[str, Any] | None:
    """The sums of ``digest`` with the latest boundary any proxy wrote (None: none, or no
    table yet)."""
    if not table_exists(con, alias, TABLE):
        return None
    rows = pg_query(
        con,
        alias,
        f"SELECT state FROM {TABLE} WHERE digest = {pg_text(digest)} "
        "ORDER BY settled_before DESC LIMIT 1",
    )
    if not rows:
        return None
    state = json.loads(rows[0][0])
    return state if isinstance(state, dict) else None
