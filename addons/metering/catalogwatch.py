"""When a catalog file edited under a running proxy may be read, and what is refused.

An editor that truncates the file and writes it again, or a ``cp`` over it, leaves it
empty or half written for a moment; reading it then would swap in a cut catalog (calls
unmetered, unknown keys let through). So a change is read only once the file has stayed
the same (mtime, size, inode) across two checks a :data:`CHECK_INTERVAL` apart, and only
if it is still the same after it was read. A catalog that validates but names no
consumer or no provider, where the one in use had some, is refused: that is almost
always a cut file, not an intent. Atomic replacement (write a new file, ``mv`` it over
the old one) is what the README recommends.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from meterline.catalog import Catalog

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
