"""Background writer: spool segments -> the DuckDB (or DuckLake) ``usage_events`` table.

Every ``interval`` seconds (sooner when the spool holds ``batch_events`` events; later
under load, see :func:`next_wait`) the writer seals the open segment and, in one
transaction, inserts every sealed segment straight from its file (DuckDB's ``read_json``
with explicit columns, parsed in C++ without the GIL: :mod:`addons.metering.batchsql`).
Only after the commit are the segments deleted, so a crash at any point either replays a
segment or loses nothing.

Exactly once, cheaply: a batch is checked against the store (an anti-join on
``event_id``, which on a lake reads every file of the last minutes) only when it may
repeat stored events: the first batch of a writer (segments a previous process left: it
may have committed them before it died), any batch after a failed flush (its commit's
outcome is unknown), a batch holding an id twice or one this writer committed in the
last minutes (:mod:`addons.metering.recentids`), and a batch holding an event named
after a provider's id (a background response, :mod:`addons.metering.background`: it is
read again, by any proxy, at any time: such ids are looked up in the whole store, not
only in the last minutes, see :func:`~addons.metering.batchsql.keyed_lookup`). Every
other flush is a plain append: this process is the only one writing this spool's
segments to the store, and it knows it has not committed them. Nor does a plain append
read the ids first: the spool remembers the (event_id, ts) of every line it wrote whole
(:meth:`Spool.known_events`), so each segment is parsed once, by the insert itself (a
read of the ids was 3.7 of a flush's 12.6 ms of CPU on a lake at 100 events per flush).
Segments a previous process left, or one a failed write tore, are read for their ids
first.

On a lake with ``METERLINE_LAKE_INGEST=staged`` a flush is no DuckLake commit: the
segments' lines go by one ``COPY`` into the catalog's PostgreSQL, the same batches are
checked (against the lake's events and the staged lines), and a mover thread commits the
staged lines to the lake now and then (:mod:`addons.metering.stagedflush`,
:mod:`addons.metering.stagemover`).

The store stays attached to one DuckDB instance of the writer's between flushes
(:class:`addons.metering.storelink.StoreLink`): a lake for good, a DuckDB file only while
events keep coming and no other process asks for it, so ``billing`` can read the file
while the proxy runs. An idle writer holds nothing and costs nothing but a directory
listing per interval; the schema is migrated once per store and process, not per batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from addons.metering import eventid, oserrors
from addons.metering.batchsql import (
    append_known,
    append_segments,
    event_times,
    insert_segments,
    read_batch,
)
from addons.metering.lakejob import (
    LakeMaintainer,
    lease_holder_name,
    maintain_every_s,
    own_lease_prefix,
)
from addons.metering.priority import WRITER_NICENESS, lower_thread_priority
from addons.metering.recentids import RecentIds
from addons.metering.spool import Spool
from addons.metering.stagedflush import stage_all, stage_checked
from addons.metering.stagemover import StagedMover
from addons.metering.storelink import StoreLink
from meterline import lakerepair, lakestage
from meterline.lakeconfig import lake_settings
from meterline.lakestorage import StorageUnreachable
from meterline.privatefiles import private_files
from meterline.store import StoreError, io_hint

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Failed flushes remembered for the lost-acknowledgement check (a long outage fails
#: many; the check covers the last ones, the one that may have committed among them).
MAX_UNKNOWN = 20
#: Where a spool keeps the times of its writer's failed lake flushes, so that a writer
#: restarted after a crash still checks them (the batches are in the spool too).
FAILED_FLUSHES_FILE = "failed-flushes.json"


#: The writer waits at least this many times the CPU its last flush used before the next
#: one, so a writer whose flushes grow costly (a big backlog) gets to fewer, larger
#: batches: at most ~1/10 of a core, and the fixed cost of a flush (a few ms of CPU) is
#: shared by more events. CPU, not wall time: a flush that waited (a lake commit retried
#: behind a compaction, a starved thread at nice +10 on a loaded host) used little CPU,
#: and stretching the interval after it only added ingest lag (p99 6 s at 100 events/s).
FLUSH_DUTY_FACTOR = 10
#: While the writer holds a DuckDB file it checks this often whether a reader waits for it.
READER_POLL_S = 0.05
#: The wait is stretched to at most this many flush intervals.
MAX_INTERVAL_STRETCH = 5


def next_wait(interval: float, flush_cpu_seconds: float, failed: bool) -> float:
    """Seconds until the next flush: ``interval``, stretched when flushes are slow."""
    if failed:  # back off (store locked for long, disk full) instead of spinning
        return interval * MAX_INTERVAL_STRETCH
    stretched = flush_cpu_seconds * FLUSH_DUTY_FACTOR
    return min(max(interval, stretched), interval * MAX_INTERVAL_STRETCH)


#: A lake flush that spent this much longer waiting than working (its commit raced
#: another writer's and was retried, or it queued behind one) moves the writer's phase.
RACED_WAIT_S = 0.025


def dephase(wait: float, interval: float, waited_s: float, rng: random.Random) -> float:
    """``wait``, plus a random part of half an interval after a flush that raced others.

    A writer's flushes start an interval apart from its first, so writers whose first
    flushes ended close together (ten attaches at once on one host: all within ~350 ms)
    keep flushing close together, and their commits keep racing: 29% of the flushes of
    ten such writers overlapped another's. A writer that waited moves to a random new
    phase; one that did not keeps its own, so the writers spread out and stay apart.
    """
    if waited_s <= RACED_WAIT_S:
        return wait
    return wait + rng.uniform(0.0, interval / 2)


class SpoolWriter:
    """Drains a :class:`Spool` into the store from a daemon thread."""

    def __init__(
        self,
        spool: Spool,
        locator: str,
        *,
        interval: float = 1.0,
        batch_events: int = 5000,
        lock_wait_s: float = 30.0,
        proxy_id: str | None = None,
    ) -> None:
        self.spool = spool
        self.proxy_id = proxy_id
        """``meter_proxy_id``: names this proxy as the holder of the lake's lease."""
        self.interval = interval
        self.batch_events = batch_events
        self.lock_wait_s = lock_wait_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()  # for the phase after a race (dephase)
        self.link = StoreLink(locator, lock_wait_s=lock_wait_s)
        self.maintainer: LakeMaintainer | None = None
        """On a lake: the thread that compacts it now and then (under the fleet's lease)."""
        self.mover: StagedMover | None = None
        """On a lake that stages: the thread that moves staged lines into it."""
        self.inserted = 0
        self.failures = 0
        self._last_error: str | None = None
        self.batches = 0
        """Flushes that wrote to the store."""
        self.checked_batches = 0
        """Of those, batches checked against the store's event ids (replays, repeats)."""
        self.id_reads = 0
        """Reads of a batch's event ids from its files (the spool knows them otherwise):
        a checked batch, and segments a previous process left or a failed write tore."""
        self.recent = RecentIds()
        self._may_repeat_store = True
        """The pending segments may hold events already stored: at start (a previous
        process may have committed them), after a failed flush (unknown outcome)."""
        self._unknown_commits: list[tuple[float, float]] = self._load_failed_flushes()
        """On a lake: (start, end) of failed flushes whose commit may have gone in with
        its files deleted (a lost acknowledgement, :mod:`meterline.lakerepair`), checked
        at the next flush; kept in the spool too (:data:`FAILED_FLUSHES_FILE`)."""
        self.repaired_files = 0

    @property
    def locator(self) -> str:
        return self.link.locator

    @locator.setter
    def locator(self, locator: str) -> None:
        """Point the writer at another store (the ``meter_db`` option changed)."""
        with self._flush_lock:
            if locator != self.link.locator:
                self.link.close()
                self.recent.clear()
                self._may_repeat_store = True
                self._unknown_commits = []  # times of another store's flushes
                self._save_failed_flushes()
                self.link = StoreLink(locator, lock_wait_s=self.lock_wait_s)
                if self._thread is not None:
                    self._start_maintainer()

    def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn`` on the writer's own connection to the store, between two flushes.

        A DuckDB file can be opened once per process: the proxy's entitlement counters
        read it through the writer. A file attached only for this read is let go at once.
        """
        with self._flush_lock:
            held = self.link.holds_file
            try:
                con = self.link.connection()
                if self.link.staged:
                    self.link.staged_view(con)  # reads count the staged lines too
                return fn(con)
            except (duckdb.Error, lakestage.StageError):
                self.link.reset()
                raise
            finally:
                if not held:
                    self.link.let_go()

    def start(self) -> None:
        """Start the thread; its first flush replays segments a previous run left behind."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="meterline-writer", daemon=True)
        self._thread.start()
        self._start_maintainer()

    def _start_maintainer(self) -> None:
        if self.maintainer is not None:
            self.maintainer.stop()
            self.maintainer = None
        if self.mover is not None:
            self.mover.stop()
            self.mover = None
        if self.link.staged:
            self.mover = StagedMover(self.locator, every_s=lake_settings().move_every_s)
            self.mover.start()
        if self.link.is_lake:
            self.maintainer = LakeMaintainer(
                self.locator,
                every_s=maintain_every_s(),
                holder=lease_holder_name(self.proxy_id),
                take_over=own_lease_prefix(self.proxy_id),
            )
            self.maintainer.start()

    def notify(self, pending: int) -> None:
        """Called after each append with the open segment's size: wake early when full."""
        if pending >= self.batch_events:
            self._wake.set()

    def _run(self) -> None:
        lower_thread_priority(WRITER_NICENESS)
        while not self._stop.is_set():
            started, cpu = time.monotonic(), time.thread_time()
            try:
                failed = not self.flush(hold=True)
            except Exception:  # the thread must outlive any fault; the next flush retries
                log.exception("meterline: writer flush failed; retrying")
                failed = True
            used = time.thread_time() - cpu
            wait = next_wait(self.interval, used, failed)
            if not failed:  # flushes start an interval apart: the lag is interval + flush
                took = time.monotonic() - started
                wait -= took
                if self.link.is_lake:
                    wait = dephase(wait, self.interval, took - used, self._rng)
            self._pause(max(0.0, wait))
            self._wake.clear()

    def _pause(self, seconds: float) -> None:
        """Wait for the next flush; while holding a DuckDB file, let go when asked.

        A reader that asked gets at least one whole interval with the file free, even
        when the flushes run back to back (a flush as long as the interval)."""
        deadline = time.monotonic() + seconds
        while not self._wake.is_set():
            if self.link.reader_waiting():
                with self._flush_lock:
                    self.link.let_go()
                deadline = max(deadline, time.monotonic() + self.interval)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self.link.holds_file:
                self._wake.wait(left)
                return
            self._wake.wait(min(left, READER_POLL_S))

    def _insert(self, segments: list[Path]) -> tuple[int, int, list[tuple[str, int]]]:
        """Insert the segments (checked against the store only when they may repeat it);
        returns (rows added, lines skipped, the batch's events). A held connection whose
        view of the table is out of date (another proxy of a fleet migrated the lake
        meanwhile) is attached afresh once."""
        import duckdb

        for attempt in (1, 2):
            try:
                with private_files():  # the file and its WAL hold events: 0600
                    con = self.link.connection()
                    if self.link.staged:
                        return self._stage(con, segments)
                    if self._unknown_commits and self.link.is_lake:
                        self._drop_lost_commits(con)
                    if not self._may_repeat_store:
                        known = self._known(segments)
                        if known is None:  # the spool cannot vouch for them: read the ids
                            self.id_reads += 1
                            appended = append_segments(
                                con, segments, lambda batch: self._may_repeat(batch.events)
                            )
                            if appended is not None:
                                inserted, batch = appended
                                return inserted, batch.skipped, batch.events
                        elif not self._may_repeat(known):
                            inserted = append_known(con, segments)
                            return inserted, max(0, len(known) - inserted), known
                    self.checked_batches += 1
                    self.id_reads += 1
                    events = read_batch(con, segments).events
                    inserted, skipped = insert_segments(con, segments)
                    return inserted, skipped, events
            except (duckdb.BinderException, duckdb.CatalogException):
                if attempt == 2 or not self.link.is_lake:
                    raise
                self.link.reset()
        raise AssertionError("unreachable")

    def _stage(
        self, con: duckdb.DuckDBPyConnection, segments: list[Path]
    ) -> tuple[int, int, list[tuple[str, int]]]:
        """The staged flush (:mod:`addons.metering.stagedflush`): the same batches as an
        append's are checked, against the lake's events and the staged lines."""
        pg = self.link.pg
        known = None if self._may_repeat_store else self._known(segments)
        if known is not None and not self._may_repeat(known):
            staged, dropped = stage_all(pg, segments)
            return staged, dropped, known
        self.id_reads += 1
        batch = read_batch(con, segments)
        if not self._may_repeat_store and not self._may_repeat(batch.events):
            staged, dropped = stage_all(pg, segments)
            return staged, dropped, batch.events
        self.checked_batches += 1
        self.link.staged_view(con)  # the lines staged until now, for the check
        staged, dropped = stage_checked(con, pg, batch)
        return staged, dropped, batch.events

    def _may_repeat(self, rows: list[tuple[str, int]]) -> bool:
        """Whether a batch of (event_id, ts µs) may hold events stored already: an id
        named after a provider's (a background response read again, an hour later or on
        another proxy: :func:`eventid.is_keyed`), or one :attr:`recent` knows."""
        return any(eventid.is_keyed(i) for i, _ in rows) or self.recent.repeats(rows)

    def _known(self, segments: list[Path]) -> list[tuple[str, int]] | None:
        keys = self.spool.known_events(segments)
        return None if keys is None else event_times(keys)

    def flush(self, *, hold: bool = False) -> bool:
        """Seal, insert and delete every pending segment now. False if the store failed.

        ``hold``: keep a DuckDB file attached afterwards (the writer's own loop, which
        lets go when idle or asked); a direct call leaves the file free when it returns.
        """
        with self._flush_lock:
            self.spool.seal()
            segments = self.spool.sealed()
            if not segments:
                self.link.let_go()  # idle: a DuckDB file is free for other processes
                return True
            locator = self.locator
            began = time.time()
            try:
                inserted, skipped, events = self._insert(segments)
            except Exception as e:  # keep the segments; the next flush retries them
                self._may_repeat_store = True  # a commit that failed may have gone in
                self.failures += 1
                if self.link.is_lake and not self.link.staged:  # COPY: all or nothing
                    failed = (began, time.time())
                    self._unknown_commits = [*self._unknown_commits[-(MAX_UNKNOWN - 1) :], failed]
                    self._save_failed_flushes()
                self.link.reset()  # the store may have been replaced: attach it afresh
                cause = oserrors.describe(e)
                if self.link.is_lake and not isinstance(e, (StoreError, StorageUnreachable)):
                    cause += io_hint(cause)  # the store's own errors carry their hint
                if cause != self._last_error:  # logged once per condition, not per retry
                    self._last_error = cause
                    log.warning(
                        "meterline: cannot write %d spool segment(s) to %s (kept in spool %s, "
                        "retrying): %s",
                        len(segments),
                        locator,
                        self.spool.directory,
                        cause,
                    )
                return False
            if self._last_error is not None:
                log.warning("meterline: store %s writable again", locator)
                self._last_error = None
            self.inserted += inserted
            self.batches += 1
            if skipped:
                log.warning(
                    "meterline: skipped %d unreadable spool line(s) in %s",
                    skipped,
                    ", ".join(p.name for p in segments),
                )
            self.recent.add(events)
            self._may_repeat_store = True  # until every committed segment is gone
            for path in segments:
                self.spool.remove(path)
            self._may_repeat_store = False
            if not hold:
                self.link.let_go()
            return True

    def _drop_lost_commits(self, con: duckdb.DuckDBPyConnection) -> None:
        """A failed flush whose commit went in after all, its acknowledgement lost, left
        the lake naming files DuckLake deleted: every read of the table fails. Remove
        those rows; the batch, still in the spool, is written again by this flush."""
        lost = lakerepair.lost_in(con, self._unknown_commits)
        if lost:
            self.repaired_files += lakerepair.drop_files(con, lost)
            log.warning(
                "meterline: a commit to %s went in though it seemed to fail (its "
                "acknowledgement was lost) and DuckLake deleted its file(s): removed %d "
                "dangling file(s) of %s from the lake; the batch is written again",
                self.locator,
                len(lost),
                ", ".join(sorted({f.table for f in lost})),
            )
        self._unknown_commits = []
        self._save_failed_flushes()

    def _failed_flushes_path(self) -> Path:
        return Path(self.spool.directory) / FAILED_FLUSHES_FILE

    def _load_failed_flushes(self) -> list[tuple[float, float]]:
        try:
            windows = json.loads(self._failed_flushes_path().read_text())
            return [(float(a), float(b)) for a, b in windows][-MAX_UNKNOWN:]
        except (OSError, ValueError, TypeError):
            return []

    def _save_failed_flushes(self) -> None:
        path = self._failed_flushes_path()
        with contextlib.suppress(OSError):  # a full disk: the memory still has them
            if not self._unknown_commits:
                path.unlink(missing_ok=True)
                return
            with private_files():
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._unknown_commits))
                tmp.replace(path)

    def stop(self) -> bool:
        """Stop the thread and drain everything; False if events had to stay in the spool."""
        self._stop.set()
        self._wake.set()
        if self.maintainer is not None:
            self.maintainer.stop()
            self.maintainer = None
        if self.mover is not None:
            self.mover.stop()
            self.mover = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        drained = self.flush()
        with self._flush_lock:
            self.link.close()
        return drained
