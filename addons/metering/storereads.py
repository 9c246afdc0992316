"""Governance's reads of the store, on its refresh thread (never on the event loop).

:class:`StoreReads` reads every governed counter from the store (:func:`read_snapshot`)
and keeps what makes the next read cheap: a DuckLake stays attached (each read is its own
transaction, so it sees the lake's latest snapshot), and the window sums settled so far
are kept between reads (:class:`~meterline.entitlements.windowsums.KeptSums`), saved in
the spool directory for a restart and, in a fleet, written for a proxy that joins it
(:mod:`meterline.entitlements.fleetsums`). On a lake with a PostgreSQL catalog the
proxies share their calls in flight (:mod:`meterline.entitlements.fleet`): each read
writes this proxy's figures and reads the others'. After each read ``governance.json``
says what is reserved and how the reads go (``billing entitlements`` and the docs read it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from meterline import lakestage
from meterline.entitlements import Counters, Policy, Snapshot, fleet, fleetsums, read_snapshot
from meterline.entitlements.policy import counter_id
from meterline.entitlements.windowsums import KeptSums
from meterline.eventschema import EVENT_COLUMNS
from meterline.lakerepair import metadata_alias
from meterline.store import LAKE_PREFIX, open_store, store

log = logging.getLogger("meterline.governance")

_METADATA = metadata_alias()

#: Where the kept window sums are saved (the spool directory), and how often at most.
SUMS_FILE = "governance-sums.json"
SUMS_EVERY_S = 30.0

#: Runs a function on the writer's connection (a DuckDB file opens once per process).
ThroughWriter = Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any]


class StoreReads:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.locator: str | None = None
        self.refresh_s = 2.0
        self.publisher = ""
        """This proxy in the fleet's tables (one running process)."""
        self.state_path: Path | None = None
        self.read_ms = 0.0
        """How long the last read took."""
        self._through_writer: ThroughWriter | None = None
        self._sums_path: Path | None = None
        self._restored: dict[str, Any] | None = None
        """The kept sums an earlier run saved, for the first read of the same store."""
        self._lake: tuple[str, duckdb.DuckDBPyConnection] | None = None
        self._staged: lakestage.StagedView | None = None
        """The lake's staged lines for the reads (a lake that stages)."""
        self._kept: tuple[tuple[str, int], KeptSums] | None = None
        self._sums_saved = 0.0
        self._sums_shared_at: float | None = None
        self.shared = False
        """The lake's proxies share their calls in flight."""
        self._shares_sums = False
        """... and their settled sums."""
        self._read_warned: float | None = None
        """When a failed read was last logged (reads failing: once a minute)."""
        self._publish_warned: float | None = None

    def open(self, state_dir: Path | None, through_writer: ThroughWriter | None) -> None:
        """At start: where ``governance.json`` and the kept sums go (the spool directory),
        the sums an earlier run saved, and the writer's connection for a DuckDB file."""
        self.state_path = state_dir / "governance.json" if state_dir else None
        self._sums_path = state_dir / SUMS_FILE if state_dir else None
        self._restored = _load_sums(self._sums_path)
        self._through_writer = through_writer

    def read(self, policy: Policy, looked_for: Callable[[], list[str]]) -> Snapshot | None:
        """Every counter of ``policy`` read from the store, and which of the event ids
        ``looked_for`` gives it holds; None if the store cannot be read (logged once a
        minute; the counters keep their last figures)."""
        started = time.monotonic()
        snap = self._read(policy, looked_for)
        self.read_ms = (time.monotonic() - started) * 1000
        if snap is not None and self._read_warned is not None:
            self._read_warned = None
            log.info("meterline: usage for limits read from the store again")
        return snap

    def _read(self, policy: Policy, looked_for: Callable[[], list[str]]) -> Snapshot | None:
        locator = self.locator
        if locator is None:
            return None
        try:
            kept = self._kept_sums(locator)
            if locator.startswith(LAKE_PREFIX):
                # Attaching a DuckLake costs a catalog round trip or more: keep it attached.
                if self._lake is None or self._lake[0] != locator:
                    self.close()
                    self._lake = (locator, open_store(locator, wait_s=5))
                    self.shared = self._share(self._lake[1])
                con = self._lake[1]
                self._add_staged(locator, con)
                peers = None
                if self.shared:
                    self._publish(con)
                    time.sleep(fleet.read_delay(time.time(), self.refresh_s))
                    peers = self._peer_rows
                return read_snapshot(con, policy, datetime.now(UTC), looked_for, peers, kept)
            if self._through_writer is not None:
                snap: Snapshot = self._through_writer(
                    lambda con: read_snapshot(con, policy, datetime.now(UTC), looked_for, kept=kept)
                )
                return snap
            with store(locator, wait_s=5) as con:
                return read_snapshot(con, policy, datetime.now(UTC), looked_for, kept=kept)
        except Exception as e:  # the store may be down; counters keep their last figures
            self.close()
            self._kept = None  # the next read sums whole windows again
            if _being_migrated(e):
                log.info("meterline: %s is being migrated; limits read again shortly", locator)
            elif self._read_warned is None or time.monotonic() - self._read_warned > 60:
                self._read_warned = time.monotonic()  # once a minute while reads fail
                log.warning("meterline: cannot read usage for limits from %s: %s", locator, e)
            return None

    def _share(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether this lake's proxies share what they hold (a PostgreSQL catalog), its
        table created if need be. A role that cannot create it is said once; the fleet's
        limits then see each other's calls only once stored, as before."""
        try:
            if not fleet.is_shared(con, _METADATA):
                return False
            fleet.create_table(con, _METADATA)
        except duckdb.Error as e:
            log.warning(
                "meterline: cannot share calls in flight with the fleet's other proxies "
                "(%s: %s); limits count their calls once stored",
                fleet.TABLE,
                fleet.reason(e),
            )
            return False
        try:
            fleetsums.create_table(con, _METADATA)
            self._shares_sums = True
        except duckdb.Error as e:
            self._shares_sums = False
            log.warning(
                "meterline: cannot share settled sums with the fleet (%s: %s); a proxy "
                "joining it reads whole periods at its first read",
                fleetsums.TABLE,
                fleet.reason(e),
            )
        return True

    def _publish(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write this proxy's calls in flight and events not seen stored (from the
        reading thread: dicts copied in C, no lock). A failure is logged once a minute
        (the read that follows says whether the server answers)."""
        held = self.counters.to_write()
        ttl = fleet.ttl_seconds(self.refresh_s)
        try:
            fleet.publish(con, _METADATA, self.publisher, held, ttl)
        except duckdb.Error as e:
            if self._publish_warned is None or time.monotonic() - self._publish_warned > 60:
                self._publish_warned = time.monotonic()
                log.warning(
                    "meterline: cannot share calls in flight with the fleet: %s",
                    fleet.reason(e),
                )

    def _peer_rows(self, con: duckdb.DuckDBPyConnection) -> list[fleet.Row]:
        """The other proxies' rows, read on a cursor of its own: a failure (the table's
        privileges, a server setting) leaves this read of the lake whole, and the limits
        enforced from it (before, every read failed and the lake's figures went stale)."""
        try:
            with con.cursor() as cur:
                return fleet.read_rows(cur, _METADATA, self.publisher)
        except duckdb.Error as e:
            if self._publish_warned is None or time.monotonic() - self._publish_warned > 60:
                self._publish_warned = time.monotonic()
                log.warning(
                    "meterline: cannot read the fleet's calls in flight: %s", fleet.reason(e)
                )
            return []

    def _kept_sums(self, locator: str) -> KeptSums:
        """The window sums kept between reads of this store: new for another store, or
        for a DuckDB file made anew at the same path (its inode changed)."""
        inode = 0
        if not locator.startswith(LAKE_PREFIX):
            with contextlib.suppress(OSError):
                inode = os.stat(locator).st_ino
        if self._kept is None or self._kept[0] != (locator, inode):
            kept = KeptSums(shared=self._fleet_sums if locator.startswith(LAKE_PREFIX) else None)
            self._kept = ((locator, inode), kept)
            restored, self._restored = self._restored, None
            if restored is not None and restored.get("store") == _store_id(locator, inode):
                kept.restore(restored)
        return self._kept[1]

    def save_sums(self) -> None:
        """The kept sums, for a restart to take up (every :data:`SUMS_EVERY_S` at most:
        a restart resumes from an older boundary, reading a little more), and in a fleet
        for a joining proxy (every :data:`fleetsums.EVERY_S`). The state (its digest
        serialises every meter) is made once for both."""
        if self._kept is None:
            return
        now = time.monotonic()
        to_spool = self._sums_path is not None and now - self._sums_saved >= SUMS_EVERY_S
        shared_at = self._sums_shared_at
        to_fleet = (
            self._shares_sums
            and self._lake is not None
            and (shared_at is None or now - shared_at >= fleetsums.EVERY_S)
        )
        if not (to_spool or to_fleet):
            return
        state = self._kept[1].state()
        if state is None:
            return
        if to_fleet and self._lake is not None:
            self._sums_shared_at = now
            try:
                fleetsums.write(self._lake[1], _METADATA, self.publisher, state)
            except duckdb.Error as e:
                log.debug("meterline: cannot share settled sums: %s", fleet.reason(e))
        if to_spool and self._sums_path is not None:
            self._sums_saved = now
            try:
                _dump(self._sums_path, {**state, "store": _store_id(*self._kept[0])})
            except OSError as e:
                log.debug("meterline: cannot write %s: %s", self._sums_path, e)

    def _fleet_sums(self, digest: str) -> dict[str, Any] | None:
        """The latest settled sums of ``digest`` a proxy of the fleet wrote (on a cursor of
        its own: the read's transaction goes on whatever this finds)."""
        if not self._shares_sums or self._lake is None:
            return None
        try:
            with self._lake[1].cursor() as cur:
                return fleetsums.latest(cur, _METADATA, digest)
        except (duckdb.Error, ValueError) as e:
            log.debug("meterline: cannot read the fleet's settled sums: %s", e)
            return None

    def write_state(self, snap: Snapshot | None) -> None:
        """``governance.json``: reservations in flight, the time of the last store read
        (handed to the loop), how the reads go and, in a fleet, the other proxies'
        figures it held."""
        if self.state_path is None:
            return
        reserved = dict(self.counters.reserved)  # a copy taken in C: no lock needed
        state: dict[str, Any] = {
            "written_at": datetime.now(UTC).isoformat(),
            "refresh_s": self.refresh_s,
            "snapshot_at": snap.taken_at.isoformat() if snap is not None else None,
            "reserved": {counter_id(k): v for k, v in reserved.items()},
        }
        if self._kept is not None:  # how the store reads go (docs/governance.md)
            kept = self._kept[1]
            state["reads"] = {
                "whole": kept.full_reads,
                "recent_only": kept.reads - kept.full_reads,
                "last_ms": round(self.read_ms, 1),
                "after_changes": kept.changed_reads,
                "first_from_fleet": kept.taken_from_fleet,
            }
        if snap is not None and self.shared:
            state["fleet"] = {
                "used": {counter_id(k): v for k, v in snap.peers.used.items()},
                "reserved": {counter_id(k): v for k, v in snap.peers.reserved.items()},
                "demand": {counter_id(k): v for k, v in snap.peers.demand.items()},
                "proxies": 1 + snap.peers.alive,
            }
        try:
            _dump(self.state_path, state)
        except OSError as e:
            log.debug("meterline: cannot write %s: %s", self.state_path, e)

    def leave(self) -> None:
        """The proxy stops: the fleet's others stop counting it in their shares now, not
        when its rows expire; the lake is let go."""
        if self.shared and self._lake is not None:
            try:
                fleet.leave(self._lake[1], _METADATA, self.publisher)
            except duckdb.Error as e:
                log.debug("meterline: cannot withdraw from the fleet: %s", fleet.reason(e))
        self.close()

    def _add_staged(self, locator: str, con: duckdb.DuckDBPyConnection) -> None:
        """On a lake that stages (:mod:`meterline.lakestage`): the read counts the staged
        lines not moved yet (copied since the last read only)."""
        if self._staged is None:
            if not lakestage.stages(con):  # checked each read: a fleet may start staging
                return
            self._staged = lakestage.StagedView(lakestage.connect(locator))
        self._staged.refresh(con)

    def close(self) -> None:
        if self._staged is not None:
            self._staged.close()
            self._staged = None
        if self._lake is not None:
            with contextlib.suppress(Exception):
                self._lake[1].close()
            self._lake = None
            self.shared = self._shares_sums = False


def _dump(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _load_sums(path: Path | None) -> dict[str, Any] | None:
    """The kept sums an earlier run saved (None: none, or a file that does not parse:
    the first read is then whole, as without one)."""
    if path is None:
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _store_id(locator: str, inode: int) -> str:
    """Which store kept sums belong to, without the locator's text (it may hold a
    PostgreSQL password)."""
    return hashlib.sha256(f"{locator}\0{inode}".encode()).hexdigest()


def _being_migrated(error: Exception) -> bool:
    """A read that met the events table between two of its migrations (a new lake: each
    added column is its own commit, by this proxy's writer or another's): one of the
    schema's own columns is not there yet. The next read finds it."""
    text = str(error)
    return isinstance(error, duckdb.BinderException) and any(
        f'column named "{name}"' in text or f'"{name}" not found' in text for name in EVENT_COLUMNS
    )
