"""The proxy's share of staged ingest: moving staged lines into the lake, now and then.

On a lake with ``METERLINE_LAKE_INGEST=staged`` every proxy runs a :class:`StagedMover`
thread. About every ``METERLINE_LAKE_MOVE_EVERY`` seconds (default 30; each proxy on its
own random phase) it makes one move (:func:`meterline.lakestage.move`) unless a proxy
moved in the last half period: the fleet makes about one DuckLake commit per
period, whatever its size, where appending made one per flush of every proxy. Moves
are exact however many proxies try at once (PostgreSQL's advisory lock, and the bound
recorded in the same commit). Staged lines a move took more than
:data:`meterline.lakestage.KEEP_MOVED` ago are deleted at most once a minute.

Nothing is lost while no proxy moves: readers count the staged lines.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from addons.metering.priority import MAINTENANCE_NICENESS, lower_thread_priority
from addons.metering.storelink import StoreLink
from meterline import lakestage
from meterline.privatefiles import private_files

log = logging.getLogger(__name__)

#: Moved lines are deleted from the staging table at most this often (seconds).
FORGET_EVERY_S = 60.0


class StagedMover:
    def __init__(self, locator: str, *, every_s: float) -> None:
        self.locator = locator
        self.every_s = every_s
        self.moves = 0
        """Moves that committed (a figure for tests)."""
        self.moved = 0
        """Events they added to the lake."""
        self.cpu_s = 0.0
        """CPU this thread used on moves (benchmarks count it as the writer's)."""
        self._link = StoreLink(locator)
        self._forgotten_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._work = Path(tempfile.mkdtemp(prefix="meterline-move-"))  # 0700

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="meterline-move", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        lower_thread_priority(MAINTENANCE_NICENESS)
        while not self._stop.wait(self.every_s * (0.5 + random.random())):
            cpu = time.thread_time()
            try:
                self.run_once()
            except Exception as e:  # the lake is down: the lines wait, readers count them
                log.warning("meterline: moving staged events into %s failed: %s", self.locator, e)
                self._link.reset()
            self.cpu_s += time.thread_time() - cpu

    def run_once(self, *, unless_within_s: float | None = None) -> int:
        """One move (none if another proxy moved within ``unless_within_s``, by default
        half the period); returns the events it added."""
        gap = self.every_s / 2 if unless_within_s is None else unless_within_s
        with private_files():
            con = self._link.connection()
            added = lakestage.move(con, self._link.pg, self._work, unless_within_s=gap or None)
            if time.monotonic() - self._forgotten_at >= FORGET_EVERY_S:
                lakestage.forget(con, self._link.pg)
                self._forgotten_at = time.monotonic()
        if added:
            self.moves += 1
            self.moved += added
        return added

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._link.close()
        shutil.rmtree(self._work, ignore_errors=True)
