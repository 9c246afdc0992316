"""When a catalog file edited under a running proxy may be read, and what is refused.

An editor that truncates the file and writes it again, or a ``cp`` over it, leaves it
empty or half written for a moment; reading it then would swap in a cut catalog (calls
unmetered, unknown keys let through). So a change is read only once the file has stayed
the same (mtime, size, inode) across two checks a :data:`CHECK_INTERVAL` apart, and only
if it is still the same after it was read. A catalog that validates but names no
consumer or no provider, where the one in use had some, is refused: that is almost
always a cut file, not an intent. Atomic replacement (write a new file, ``mv`` it over
the old one) is what docs/proxy.md recommends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from meterline.catalog import Catalog, CatalogError
from meterline.proxycatalog import load_proxy_catalog

log = logging.getLogger("meterline.proxy")

#: Seconds between checks of the catalog file (one ``stat``, off the hot path).
CHECK_INTERVAL = 0.5

Stamp = tuple[int, int, int]


def file_stamp(path: Path) -> Stamp | None:
    """What tells an edited file apart: mtime, size and inode (an editor may replace it)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Poll(Enum):
    UNCHANGED = "unchanged"
    SETTLING = "settling"
    """Changed since the last check: wait for it to stay the same."""
    READY = "ready"
    """Changed, and the same as at the last check: read it."""
    GONE = "gone"


class CatalogWatch:
    def __init__(self, path: Path, loaded: Stamp | None) -> None:
        self.path = path
        self.loaded = loaded
        """Stamp of the file as last read (or last refused): not read again until it changes."""
        self._candidate: Stamp | None = None

    def poll(self) -> Poll:
        stamp = file_stamp(self.path)
        if stamp is None:
            if self.loaded is None:
                return Poll.UNCHANGED
            self.loaded = self._candidate = None
            return Poll.GONE
        if stamp == self.loaded:
            self._candidate = None
            return Poll.UNCHANGED
        if stamp != self._candidate:
            self._candidate = stamp
            return Poll.SETTLING
        return Poll.READY

    def settled(self) -> bool:
        """After reading: True (and the change is handled) if the file did not move meanwhile."""
        if file_stamp(self.path) != self._candidate:
            return False
        self.loaded, self._candidate = self._candidate, None
        return True


def refusal(current: Catalog | None, new: Catalog) -> str | None:
    """Why ``new`` must not replace ``current`` (it drops every consumer or provider)."""
    if current is None:
        return None
    if current.consumers and not new.consumers:
        return f"it names no consumer (the catalog in use has {len(current.consumers)})"
    if current.providers and not new.providers:
        return f"it names no provider (the catalog in use has {len(current.providers)})"
    return None


class Reloader:
    """Checks the catalog file every :data:`CHECK_INTERVAL` on the event loop and hands a
    stable, valid edit to ``reload``; ``watch`` is replaced when the option changes."""

    def __init__(
        self, current: Callable[[], Catalog | None], reload: Callable[[Path, Catalog], None]
    ) -> None:
        self.watch: CatalogWatch | None = None
        self._current = current
        self._reload = reload
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None:
            self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        """Re-read the catalog when its file changed; runs every CHECK_INTERVAL.

        One ``stat`` per interval on the event loop, never per flow. A change is read once
        the file is stable (:class:`CatalogWatch`); an edit that does not
        validate, or would drop every consumer or provider, is logged once and the
        catalog in use is kept.
        """
        try:
            watch = self.watch
            poll = watch.poll() if watch is not None else Poll.UNCHANGED
            path = watch.path if watch is not None else None
            if poll is Poll.GONE:
                log.error("meterline: catalog %s is gone, keeping the one in use", path)
            elif poll is Poll.READY and watch is not None:
                catalog: Catalog | None = None
                try:
                    catalog = load_proxy_catalog(watch.path)
                except (CatalogError, ValueError) as e:
                    why: str | None = str(e)
                if not watch.settled():
                    return  # written to while being read: read it again once it is stable
                if catalog is not None:
                    why = refusal(self._current(), catalog)
                if catalog is None or why:
                    log.error(
                        "meterline: catalog %s not reloaded, keeping the one in use: %s",
                        path,
                        why,
                    )
                else:
                    self._reload(watch.path, catalog)
        finally:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (hooks driven directly): nothing to watch with
            return
        self._timer = loop.call_later(CHECK_INTERVAL, self._check)
