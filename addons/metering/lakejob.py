"""The proxy's share of lake upkeep: one maintenance pass now and then, one proxy at a time.

Each proxy writing to a DuckLake runs a :class:`LakeMaintainer` thread. Every
``METERLINE_LAKE_MAINTAIN_EVERY`` seconds (default 150; 0 turns it off, e.g. when a cron
job runs ``billing lake maintain`` instead) it tries to take the lake's maintenance lease
(:func:`meterline.lakelease.take_lease`); the proxy that gets it runs one bounded pass
(:func:`meterline.lakemaint.maintain`) on its own connection, so the writer keeps
flushing meanwhile, and gives the lease back. A proxy killed mid-pass leaves a lease that
lapses after its ttl (30 minutes), unless the proxy is restarted with the same
``meter_proxy_id`` (:func:`own_lease_prefix`) or ``billing lake maintain --break-lease``
breaks it; what the pass had committed stays valid.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
from collections.abc import Mapping

from addons.metering.priority import MAINTENANCE_NICENESS, lower_thread_priority
from meterline import lakerepair
from meterline.lakeconfig import LakeConfigError
from meterline.lakelease import give_back_lease, take_lease
from meterline.lakemaint import MAX_COMPACTED_FILES, MaintenanceReport, maintain
from meterline.store import store

log = logging.getLogger(__name__)

#: Passes must come often enough that each merges few files: in DuckLake 0.3 a merge's
#: commit races the writers' inserts (duckdb/ducklake#1094). Every proxy tries on its own
#: clock, so a fleet of k proxies passes every 150/k s: ~150 commits per pass at a commit a
#: second per proxy, whatever k. Simulated with one maintainer: a pass every 1,500 fleet
#: commits left 6-23 files after each; every 6,000 took 1,310 s and let the lake grow to
#: 16.5k files before :func:`meterline.lakemaint.merge_backlog` (docs/fleet.md).
DEFAULT_EVERY_S = 150.0


def maintain_every_s(env: Mapping[str, str] | None = None) -> float:
    """``METERLINE_LAKE_MAINTAIN_EVERY`` in seconds; unset: the default, 0: never.

    Anything else (not a number, negative, infinite) raises :class:`LakeConfigError`: the
    proxy refuses it at start in one line, as the other ``METERLINE_LAKE_*`` settings. A
    negative value turned maintenance off without a word before, so a fleet whose proxies
    all had it merged no files until the lake held thousands."""
    text = (os.environ if env is None else env).get("METERLINE_LAKE_MAINTAIN_EVERY", "")
    if not text:
        return DEFAULT_EVERY_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise LakeConfigError(
            f"METERLINE_LAKE_MAINTAIN_EVERY={text!r}: expected seconds >= 0 (0: this proxy "
            "runs no maintenance)"
        )
    return seconds


def lease_holder_name(proxy_id: str | None) -> str:
    """``proxy:<meter_proxy_id>:<pid>``: what ``billing lake maintain`` names when this
    proxy holds the lease. The proxy id, not the host name: proxies sharing a host (or
    containers, whose host names are random) are told apart by the id the fleet gave
    them; the host name only when no id was set."""
    return f"proxy:{proxy_id or socket.gethostname()}:{os.getpid()}"


def own_lease_prefix(proxy_id: str | None) -> str | None:
    """``proxy:<meter_proxy_id>:``: a lease held under it by another pid is this proxy's
    from before a restart (killed mid-pass), which it takes back rather than wait out
    the lease's 30 minutes. Ids are one per proxy (docs/fleet.md); without one, None: a
    host name is shared by the proxies of a host, and one of them may be mid-pass."""
    return f"proxy:{proxy_id}:" if proxy_id else None


class LakeMaintainer:
    def __init__(
        self,
        locator: str,
        *,
        every_s: float,
        holder: str | None = None,
        take_over: str | None = None,
    ) -> None:
        self.locator = locator
        self.every_s = every_s
        self.holder = holder or lease_holder_name(None)
        self.take_over = take_over
        """:func:`own_lease_prefix`: whose lease this proxy takes back before it lapses."""
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.every_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="meterline-lake", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lower_thread_priority(MAINTENANCE_NICENESS)
        # Start at a random point of the period: a fleet started together spreads out.
        while not self._stop.wait(self.every_s * (0.5 + random.random())):
            try:
                self.run_once()
            except Exception as e:  # the lake is down or locked: try at the next period
                log.warning("meterline: lake maintenance of %s failed: %s", self.locator, e)

    def run_once(
        self, *, keep_snapshots: int | None = None, max_compacted_files: int | None = None
    ) -> MaintenanceReport | None:
        """One pass if this proxy gets the lease; None if another holds it.

        ``keep_snapshots``: retention by commits instead of wall-clock age (a simulation's
        compressed time, see :func:`meterline.lakemaint.retention_cutoff`). The maintainer's
        own thread runs at :data:`MAINTENANCE_NICENESS`; a direct call leaves its caller's
        priority as it was (a test's main thread once stayed at nice 19 for the rest of
        its worker's tests)."""
        with store(self.locator) as con:
            con.execute("SET threads = 1")  # the proxy's cores are for its traffic
            # Taking the lease writes a file: never into a mountpoint whose disk is gone.
            lakerepair.check_storage(con)
            if not take_lease(con, self.holder, take_over=self.take_over):
                return None
            try:
                report = maintain(
                    con,
                    keep_snapshots=keep_snapshots,
                    max_compacted_files=max_compacted_files or MAX_COMPACTED_FILES,
                )
            finally:
                if not give_back_lease(con, self.locator, self.holder):
                    log.warning(
                        "meterline: lake maintenance lease not given back (PostgreSQL "
                        "unreachable): it lapses at its expiry"
                    )
        self.passes += 1
        log.info("meterline: lake maintenance: %s", report)
        return report

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # mid-pass: left to finish (daemon); lease lapses
            self._thread = None
