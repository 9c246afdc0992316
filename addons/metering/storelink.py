"""The writer's connection to the store, kept between flushes where that is safe.

Opening the store was most of a flush's cost: a new DuckDB instance per batch (~10 ms of
CPU), the checkpoint on close (~10 ms), and on a DuckLake loading two extensions and
attaching the catalog (~170 ms). The writer now keeps one in-memory DuckDB instance for
its life and attaches the store to it:

- **DuckLake**: attached once and kept. Any number of proxies and ``billing`` runs use a
  lake at the same time, so nothing is given up. After an error the instance is dropped
  and the next flush attaches afresh; so it is every :data:`LAKE_REATTACH_EVERY` uses,
  which bounds what DuckLake 0.3 caches per snapshot (it never lets go of it).
- **DuckDB file**: DuckDB lets one process at a time open a file, and ``billing`` must be
  able to read it while the proxy runs. The file stays attached across flushes only while
  events keep coming; it is detached (one checkpoint) as soon as a flush finds nothing to
  write, or within ~50 ms of another process asking for it: a process that finds the file
  locked creates ``<file>.reader-waiting`` (:func:`meterline.store.open_store` does so
  while it waits), and the writer lets go when it sees that marker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import duckdb

from meterline import lakerepair, lakestage, lakestorage
from meterline.lakeconfig import LakeConfigError, lake_settings
from meterline.lakemaint import index_catalog
from meterline.migrations import EVENT_MIGRATIONS, migrate
from meterline.store import LAKE_PREFIX, attach_file, attach_lake, reader_waiting_path

log = logging.getLogger(__name__)

#: The writer's DuckDB instance: one thread (one batch needs no parallelism; the cores
#: are the proxy's) and a bounded buffer pool (a batch is at most a few thousand rows).
_INSTANCE_SETTINGS = ("SET threads = 1", "SET memory_limit = '512MB'")
_FILE_ALIAS = "store"
#: DuckLake waits ``retry_wait_ms * backoff^n`` (times a random 0.5-1) before retry n:
#: by default 100 ms x 1.5^n, so a commit that lost 15 races in a row (ten writers and a
#: merge) waited 88 s in all. A retry only re-reads the latest snapshot and writes again:
#: 5 ms x 1.1^n, 60 tries, so a commit that keeps losing gives up after ~8-15 s in all
#: (the last wait ~0.7-1.4 s) and the flush fails, to be retried, checked, five
#: intervals later. The former 5 ms x 1.2^n over 100 tries had no such bound: the 40th
#: wait alone was 4-7 s, the 50th 23-46 s, so a writer that lost a few dozen races in a
#: row (a catalog refusing commits, a convoy) slept for minutes, then hours.
LAKE_COMMIT_RETRIES = 60
LAKE_RETRY_SETTINGS = ("SET ducklake_retry_wait_ms = 5", "SET ducklake_retry_backoff = 1.1")
#: On object storage the marker (:mod:`meterline.lakestorage`) is checked at each attach
#: and then at most this often (a HEAD costs a round trip, ~1-2 ms on a LAN, more to a
#: remote region): a bucket does not vanish the way a mount does. On a disk: every flush.
REMOTE_MARKER_CHECK_S = 30.0
#: DuckLake 0.3 (the extension of DuckDB 1.4.4) keeps the table statistics of every
#: snapshot it commits or plans against in memory for as long as the lake stays attached
#: (duckdb/ducklake#1018, fixed upstream after that release): a writer holding one
#: attachment grew by ~8 KB per commit (147 -> 218 MB of RSS over 9,000 commits: ~0.7 GB
#: a day at a commit a second) and stopped growing once attached afresh. So the lake is
#: attached afresh after this many uses (a flush, or a read through the writer): about
#: every 30 minutes at a flush a second. An attach costs ~90 ms of the writer's CPU and
#: ~25 ms of PostgreSQL's (~1 µs per event at 100 events/s over 1,800 flushes) and adds
#: ~0.4 s to one flush's wall time.
LAKE_REATTACH_EVERY = 1800


def _ingest() -> str:
    try:
        return lake_settings().ingest
    except LakeConfigError:  # refused at the proxy's start, with its message
        return "append"


class StoreLink:
    """Hands the writer a connection with the store attached and migrated."""

    def __init__(
        self, locator: str, *, lock_wait_s: float = 30.0, reattach_every: int = LAKE_REATTACH_EVERY
    ) -> None:
        self.locator = locator
        self.lock_wait_s = lock_wait_s
        self.is_lake = locator.startswith(LAKE_PREFIX)
        self.reattach_every = reattach_every
        """A lake is attached afresh after this many uses (:data:`LAKE_REATTACH_EVERY`)."""
        self._uses = 0
        self._con: duckdb.DuckDBPyConnection | None = None
        self._attached = False
        self._migrated = False
        self.attaches = 0
        """How many times the store was attached (a figure for tests and benchmarks)."""
        self._attached_id: tuple[int, int] | None = None
        """(device, inode) of the DuckDB file when attached: checked before each use."""
        self._data_path: str | None = None
        """The lake's data path, whose marker is checked before each use."""
        self._marker_seen = 0.0
        """When the marker was last found (monotonic seconds)."""
        self.marker_checks = 0
        self.staged = self.is_lake and _ingest() == "staged"
        """``METERLINE_LAKE_INGEST=staged``: flushes stage their lines in the catalog's
        PostgreSQL (:mod:`meterline.lakestage`), and reads add the staged lines."""
        self._view: lakestage.StagedView | None = None

    @property
    def pg(self) -> Any:
        """The psycopg connection staged lines go through (after :meth:`connection`)."""
        if self._view is None:
            raise lakestage.StageError("the lake is not attached for staging")
        return self._view.pg

    def staged_view(self, con: duckdb.DuckDBPyConnection) -> lakestage.StagedView:
        """The connection's ``usage_events`` with the staged lines, refreshed now."""
        view = self._view
        if view is None:
            raise lakestage.StageError("the lake is not attached for staging")
        view.refresh(con)
        return view

    @property
    def holds_file(self) -> bool:
        """True while a DuckDB file is attached, i.e. locked against other processes."""
        return self._attached and not self.is_lake

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The connection, the store attached (waiting out a reader's lock) and migrated."""
        if self.is_lake and self._attached and self._uses >= self.reattach_every:
            log.debug("meterline: attaching the lake afresh after %d uses", self._uses)
            self.reset()  # frees what DuckLake cached per snapshot: see LAKE_REATTACH_EVERY
        if self._con is None:
            self._con = duckdb.connect()
            for statement in _INSTANCE_SETTINGS:
                self._con.execute(statement)
        con = self._con
        if self.holds_file and self._file_id() != self._attached_id:
            # The file was deleted or replaced under us: a commit to the held one would
            # go to a file no one can read again. Let it go and attach the path anew.
            log.error(
                "meterline: store %s was removed or replaced while the proxy held it: "
                "attached again (a batch committed meanwhile went with the old file)",
                self.locator,
            )
            self.reset()
            return self.connection()
        if not self._attached:
            if self.is_lake:
                attach_lake(con, self.locator, self.lock_wait_s)
                # Ten proxies and a maintenance pass commit at once: DuckLake retries a
                # commit that raced another; give it more tries than the default 10.
                con.execute(f"SET ducklake_max_retry_count = {LAKE_COMMIT_RETRIES}")
                for statement in LAKE_RETRY_SETTINGS:
                    con.execute(statement)
                # Bounded HTTP waits (meterline.store.LAKE_HTTP_SETTINGS): set on attach.
                try:
                    self._data_path = lakerepair.ensure_marker(con)
                except lakestorage.StorageUnreachable:
                    self.reset()  # attach afresh next time, the storage checked again
                    raise
                self._marker_seen = time.monotonic()
            else:
                attach_file(con, self.locator, _FILE_ALIAS, self.lock_wait_s)
                con.execute(f"USE {_FILE_ALIAS}")
                self._attached_id = self._file_id()
            self._attached = True
            self.attaches += 1
            self._uses = 0
        elif self.is_lake:
            try:
                self._check_marker(con)
            except (lakestorage.StorageUnreachable, duckdb.Error):
                self.reset()
                raise
        if not self._migrated:  # once per store and process (a new file: again, see reset)
            migrate(con, EVENT_MIGRATIONS)
            if self.is_lake:
                index_catalog(con)
            if self.staged:
                lakestage.create(con)
                if self._view is None:
                    self._view = lakestage.StagedView(lakestage.connect(self.locator))
            self._migrated = True
        self._uses += 1
        return con

    def _check_marker(self, con: duckdb.DuckDBPyConnection) -> None:
        """Before a flush: the lake's data path still holds its marker. A disk unmounted
        under the proxy leaves an empty mountpoint, into which DuckDB would write the
        flush (hidden once the disk is back, and the lake unreadable); raises
        :class:`~meterline.lakestorage.StorageUnreachable` then, the events stay in the
        spool. A marker deleted by hand from storage that holds the lake's files is
        written again."""
        root = self._data_path
        if root is None:
            return
        remote = lakestorage.is_remote(root)
        if remote and time.monotonic() - self._marker_seen < REMOTE_MARKER_CHECK_S:
            return
        self.marker_checks += 1
        if not lakestorage.marker_exists(con, root):
            lakerepair.ensure_marker(con)  # raises, unless the lake's files are there
        self._marker_seen = time.monotonic()

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.locator)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def reader_waiting(self) -> bool:
        """Another process waits for the file this writer holds."""
        return self.holds_file and reader_waiting_path(self.locator).exists()

    def let_go(self) -> None:
        """Detach a DuckDB file (checkpointing it) so other processes can open it."""
        if not self.holds_file or self._con is None:
            return
        try:
            self._con.execute("USE memory")
            self._con.execute(f"DETACH {_FILE_ALIAS}")
            self._attached = False
        except duckdb.Error:
            self.reset()
        with contextlib.suppress(OSError):
            reader_waiting_path(self.locator).unlink(missing_ok=True)

    def reset(self) -> None:
        """Drop the instance after an error: the next flush attaches and migrates afresh."""
        con, self._con = self._con, None
        self._attached = self._migrated = False
        view, self._view = self._view, None
        if view is not None:
            view.close()
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.close()

    def close(self) -> None:
        self.let_go()
        self.reset()
