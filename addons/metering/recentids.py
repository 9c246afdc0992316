"""The event ids a writer committed lately, so a normal flush need not look in the store.

Checking a batch's ids against the store (an anti-join over every event stored in the
dedup window) was most of a flush's CPU on a DuckLake: it reads every Parquet file
written in the window, 20-30 ms with a few hundred of them. A writer only needs it when
a batch may repeat events already stored:

- a **replay**: segments a previous process left (it may have committed them before it
  died), or segments of a flush whose commit failed with an unknown outcome. The writer
  knows both cases itself (see :class:`addons.metering.writer.SpoolWriter`);
- a provider response id **seen again a little later** (a second delivery of the same
  response) or an event the spool wrote twice (a torn line written again): the same id
  in one batch, or an id this writer committed a few minutes before. This module catches
  these from memory.

So a batch goes through the store's dedup only when it is a replay or when
:meth:`RecentIds.repeats` finds one of its ids here; otherwise it is a plain append.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

#: Same window as the store's dedup (``DEDUP_WINDOW``): an id stored at or after the
#: batch's earliest ``ts`` minus this is a repeat.
WINDOW_US = 5 * 60 * 1_000_000
#: Ids are remembered this long after their commit (wall clock): the window and a minute.
REMEMBER_S = 360.0
#: At most this many ids are remembered (~120 bytes each: a proxy at 100 requests/s
#: holds 36k, ~4 MB); past it the oldest are forgotten first.
MAX_IDS = 500_000


class RecentIds:
    """Ids committed by this writer in the last :data:`REMEMBER_S` seconds, with their ts."""

    def __init__(self, *, remember_s: float = REMEMBER_S, max_ids: int = MAX_IDS) -> None:
        self.remember_s = remember_s
        self.max_ids = max_ids
        self._ts: dict[int, tuple[int, float]] = {}
        """hash(event_id) -> (its ts in µs, when the batch that brought it was remembered).
        A hash, not the id: a third of the memory; two ids sharing one (1 in 2^64) only
        send a batch through the store's check, which is exact."""
        self._batches: deque[tuple[float, list[int]]] = deque()

    def __len__(self) -> int:
        return len(self._ts)

    def repeats(self, rows: Sequence[tuple[str, int]]) -> bool:
        """Whether a batch of (event_id, ts in µs) holds an id twice, or one remembered
        with a ts inside the dedup window of the batch's earliest event."""
        if not rows:
            return False
        low = min(ts for _, ts in rows) - WINDOW_US
        seen: set[int] = set()
        known = self._ts
        for event_id, _ in rows:
            key = hash(event_id)
            if key in seen:
                return True
            seen.add(key)
            stored = known.get(key)
            if stored is not None and stored[0] >= low:
                return True
        return False

    def add(self, rows: Sequence[tuple[str, int]], *, now: float | None = None) -> None:
        """Remember a committed batch; forget what is older than ``remember_s``."""
        now = time.monotonic() if now is None else now
        ids = []
        for event_id, ts in rows:
            key = hash(event_id)
            before = self._ts.get(key)
            self._ts[key] = (max(ts, before[0]) if before else ts, now)
            ids.append(key)
        self._batches.append((now, ids))
        while self._batches and (
            self._batches[0][0] < now - self.remember_s or len(self._ts) > self.max_ids
        ):
            added, old = self._batches.popleft()
            for key in old:
                entry = self._ts.get(key)
                if entry is not None and entry[1] == added:  # not brought again since
                    del self._ts[key]

    def clear(self) -> None:
        self._ts.clear()
        self._batches.clear()
