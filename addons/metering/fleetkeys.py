"""Ephemeral keys minted through one proxy of a fleet, known to all of them.

Behind a load balancer, an app's backend mints a key through one proxy
(:mod:`addons.metering.minted`) and the app's session reaches another, which had never
seen the key: the session was billed to nobody, or refused by ``reject``. On a DuckLake
whose catalog is PostgreSQL (the fleet's shared database, as for
:mod:`meterline.entitlements.fleet`), each proxy now also writes every key it sees
minted into a plain table of that database, :data:`TABLE` (the minted key's fingerprint,
its minter's and the expiry: never a key), and a proxy that meets a socket opened with a
key it does not know, shaped like a minted one, looks the fingerprint up there before
deciding, waiting up to :data:`LOOKUP_WAIT_S` for a mint that another proxy is still
writing.

Nothing of it runs on the event loop or costs a call anything: one thread, started at
the first mint or lookup, with a lake connection of its own, opened then and kept.
Sessions opened with a key no proxy minted wait for the lookup (a few ms, or
:data:`LOOKUP_WAIT_S` when the table has no such key) before being billed to nobody or
refused as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb

from meterline.conninfo import LAKE_PREFIX
from meterline.entitlements.fleet import (
    is_shared,
    pg_execute,
    pg_query,
    pg_text,
    reason,
    table_exists,
)
from meterline.lakerepair import metadata_alias
from meterline.store import open_store

log = logging.getLogger("meterline.proxy")

TABLE = "meterline_fleet_minted"
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " key_fp text PRIMARY KEY,"  # sha256:<hex> of the minted key
    " owner_fp text NOT NULL,"  # of the consumer key that minted it
    " expires_at double precision NOT NULL)"  # epoch seconds, as the mint answered
)
#: How long a session with an unknown key waits for a fleet's mint at most, and how often
#: it asks again meanwhile (the minting proxy writes right after the mint's answer).
LOOKUP_WAIT_S = 2.0
LOOKUP_EVERY_S = 0.2
#: Sockets waiting for a lookup at once, at most; past it, one is decided at once (a flood
#: of sockets with made-up keys cannot queue work without bound or load the database).
MAX_LOOKUPS = 32
_ALIAS = metadata_alias()


@dataclass(frozen=True, slots=True)
class Minted:
    key_fp: str
    owner_fp: str
    expires: float


class FleetKeys:
    """The fleet's shared minted keys, for one proxy (see the module docstring)."""

    def __init__(self) -> None:
        self.locator: str | None = None
        self._tasks: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._con: tuple[str, duckdb.DuckDBPyConnection] | None = None
        self._shared: bool | None = None
        self._created = False
        self._warned: str | None = None
        self._looking = 0

    def configure(self, locator: str) -> None:
        """The store in use: only a lake can be a fleet's (a DuckDB file has one proxy)."""
        self.locator = locator if locator.startswith(LAKE_PREFIX) else None

    @property
    def enabled(self) -> bool:
        return self.locator is not None and self._shared is not False

    def publish(self, key_fp: str, owner_fp: str, expires: float) -> None:
        """A key minted through this proxy (from the event loop: queued, not waited for)."""
        if self.enabled:
            self._submit("publish", Minted(key_fp, owner_fp, expires))

    async def lookup(self, key_fp: str) -> Minted | None:
        """The fleet's entry for ``key_fp``, not expired; None when no proxy wrote one
        within :data:`LOOKUP_WAIT_S` (or the fleet's database cannot be read, or
        :data:`MAX_LOOKUPS` sockets wait already)."""
        if self._looking >= MAX_LOOKUPS:
            return None
        self._looking += 1
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LOOKUP_WAIT_S
            while self.enabled:
                answer: asyncio.Future[Minted | None] = loop.create_future()
                self._submit("lookup", (key_fp, answer, loop))
                found = await answer
                if found is not None or loop.time() + LOOKUP_EVERY_S > deadline:
                    return found
                await asyncio.sleep(LOOKUP_EVERY_S)
            return None
        finally:
            self._looking -= 1

    def stop(self) -> None:
        if self._thread is not None:
            self._tasks.put(("stop", None))
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ the thread

    def _submit(self, kind: str, task: Any) -> None:
        self._tasks.put((kind, task))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="meterline-fleet-keys")
            self._thread.daemon = True
            self._thread.start()

    def _run(self) -> None:
        while True:
            kind, task = self._tasks.get()
            if kind == "stop":
                break
            result: Minted | None = None
            try:
                con = self._connection()
                if con is not None and kind == "publish":
                    self._write(con, task)
                elif con is not None:
                    result = _read(con, task[0])
            except Exception as e:  # the thread outlives any fault; a lookup answers None
                self._failed(e)
            if kind == "lookup":
                _, answer, loop = task
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_settle, answer, result)
        self._close()

    def _connection(self) -> duckdb.DuckDBPyConnection | None:
        locator = self.locator
        if locator is None:
            return None
        if self._con is None or self._con[0] != locator:
            self._close()
            con = open_store(locator, wait_s=5)
            self._con = (locator, con)
            self._shared = is_shared(con, _ALIAS)
            self._created = False
            if not self._shared:
                log.info("meterline: lake catalog is not PostgreSQL: minted keys not shared")
        return self._con[1] if self._shared else None

    def _write(self, con: duckdb.DuckDBPyConnection, minted: Minted) -> None:
        # An administrator may have made the table for a role that cannot create one:
        # PostgreSQL checks that privilege before IF NOT EXISTS.
        made = self._created or table_exists(con, _ALIAS, TABLE)
        statements = [] if made else [_DDL]
        statements.append(
            f"INSERT INTO {TABLE} VALUES ({pg_text(minted.key_fp)}, {pg_text(minted.owner_fp)}, "
            f"{float(minted.expires)!r}) ON CONFLICT (key_fp) DO UPDATE SET "
            "owner_fp = excluded.owner_fp, expires_at = excluded.expires_at"
        )
        statements.append(f"DELETE FROM {TABLE} WHERE expires_at < {time.time() - 60.0!r}")
        pg_execute(con, _ALIAS, "; ".join(statements))
        self._created = True
        self._warned = None

    def _failed(self, error: Exception) -> None:
        """Logged once per cause (the database down, the table's privileges); the
        connection is opened anew for the next task."""
        why = reason(error)
        if why != self._warned:
            self._warned = why
            log.warning("meterline: cannot share minted keys with the fleet (%s): %s", TABLE, why)
        self._close()

    def _close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(Exception):
                self._con[1].close()
            self._con = None


def _read(con: duckdb.DuckDBPyConnection, key_fp: str) -> Minted | None:
    query = (
        f"SELECT owner_fp, expires_at FROM {TABLE} "
        f"WHERE key_fp = {pg_text(key_fp)} AND expires_at > {time.time()!r}"
    )
    try:
        rows = pg_query(con, _ALIAS, query)
    except duckdb.Error as e:
        if f'"{TABLE}" does not exist' in str(e):
            return None  # no proxy minted through the fleet yet
        raise
    return Minted(key_fp, str(rows[0][0]), float(rows[0][1])) if rows else None


def _settle(answer: asyncio.Future[Minted | None], result: Minted | None) -> None:
    if not answer.done():  # the waiting call was cancelled (its client left)
        answer.set_result(result)
