"""The proxy's local, append-only event spool: JSON lines in segment files.

A metered response becomes one JSON line appended to the open segment on an
``O_APPEND`` descriptor (``os.write`` repeated until every byte is written): the line
is in the kernel's page cache when :meth:`Spool.append` returns, so a killed proxy
(``kill -9``) loses nothing. No fsync per event: see docs/durability-and-security.md.

Segments go through two states, visible in their names:

- ``meterline-<ns>-<pid>-<seq>.open``: being appended to; one per running proxy.
- ``meterline-<ns>-<pid>-<seq>.jsonl``: sealed; the writer inserts it into the store and
  then deletes it. Names sort by creation time, so replay keeps order.

The spool touches only files named ``meterline-*`` (segments and the ``flock`` file
``meterline-spool.lock`` that keeps two proxies from sharing one directory): pointed at a
directory that holds other files, it leaves them alone.

Faults never escape :meth:`append` or :meth:`seal` (the proxy keeps passing traffic): a
failed write or open (disk full, read-only or immutable directory) is logged once with
its cause, and the events are held in memory, up to :data:`MAX_HELD_EVENTS` (past that,
new events are counted and dropped), then written at the next append or seal that
succeeds. A write cut short leaves a torn line at the end of its segment; that segment
is closed, so the next event starts a new one, and the torn event itself is written
again (the store's event-id dedup drops a second copy).

The spool remembers the ``(event_id, ts)`` of every line it wrote whole into a segment
(:meth:`Spool.known_events`): the writer then needs no read of a segment to know what it
holds, only for segments a previous process left or one a failed write tore, and for the
oldest of a long backlog (at most :data:`MAX_KNOWN_EVENTS` keys are kept).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from addons.metering import jsoncodec, oserrors
from meterline.privatefiles import private_files

log = logging.getLogger(__name__)

#: An event's ``(event_id, ts)``, as spooled.
EventKey = tuple[str, str]


PREFIX = "meterline-"
OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".jsonl"
LOCK_NAME = PREFIX + "spool.lock"
#: Events held in memory while the spool cannot be written; past this, new ones are dropped.
MAX_HELD_EVENTS = 10_000
#: Event keys remembered for closed segments (~150 bytes each): past this (a store down
#: for long, a backlog of segments on disk), the oldest segments' keys are forgotten and
#: the writer reads those segments for their ids, as it does a previous process's.
MAX_KNOWN_EVENTS = 200_000
#: Segments of Meterline before the ``meterline-`` prefix (``<ns>-<pid>-<seq>.open|.jsonl``
#: beside its ``spool.lock``): adopted at start so an upgrade replays what they hold.
_LEGACY_SEGMENT = re.compile(r"\d{20}-\d+-\d{6}\.(open|jsonl)")
_LEGACY_LOCK = "spool.lock"


class SpoolError(RuntimeError):
    """The spool directory cannot be used; the message names it and says why."""


class Spool:
    def __init__(self, directory: str | Path, *, max_held: int = MAX_HELD_EVENTS) -> None:
        self.directory = Path(directory)
        try:
            with private_files():  # parents it makes too: 0700 under any umask
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise SpoolError(f"{self.directory}: cannot use as spool: {e.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolError(
                f"{self.directory}: spool already in use by another proxy (one spool per proxy)"
            ) from None
        self.max_held = max_held
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._count = 0
        self._seq = 0
        self._held: deque[tuple[bytes, EventKey | None]] = deque()
        self.dropped = 0
        """Events lost because the spool could not be written and memory was full."""
        self._fault: str | None = None
        self._logged: set[str] = set()
        """Faults logged since the spool was last healthy (each is logged once)."""
        """The condition last logged (e.g. ``write: ENOSPC (...)``); None when healthy."""
        self._unsealed: list[Path] = []
        """Closed ``.open`` segments whose rename failed; retried at each seal."""
        self._open_keys: list[EventKey] | None = None
        """(event_id, ts) of each line of the open segment; None once a line is unknown."""
        self._keys: dict[str, list[EventKey] | None] = {}
        """The same for each closed segment of this process, by its ``.open`` name."""
        self._known_count = 0
        self.max_known = MAX_KNOWN_EVENTS
        self._adopt_legacy_segments()
        for leftover in sorted(self.directory.glob(PREFIX + "*" + OPEN_SUFFIX)):
            self._rename_sealed(leftover)

    def _adopt_legacy_segments(self) -> None:
        """Give the segments an older Meterline left here our prefix, so they are replayed.

        Only beside that version's own ``spool.lock``, and only when no process holds it
        (an older proxy still running keeps its files).
        """
        legacy_lock = self.directory / _LEGACY_LOCK
        if not legacy_lock.is_file():
            return
        try:
            fd = os.open(legacy_lock, os.O_RDWR)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log.warning("meterline: spool %s: an older proxy holds it", self.directory)
                return
            for path in sorted(self.directory.iterdir()):
                if _LEGACY_SEGMENT.fullmatch(path.name):
                    try:
                        path.rename(path.with_name(PREFIX + path.name))
                    except OSError as e:
                        log.warning(
                            "meterline: spool %s: cannot adopt %s: %s",
                            self.directory,
                            path.name,
                            oserrors.describe(e),
                        )
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ appending

    def append(self, event: dict[str, Any]) -> int:
        """Append one event; returns how many events wait in the spool (open + held)."""
        line = jsoncodec.dumps_line(event)
        event_id, ts = event.get("event_id"), event.get("ts")
        key = (event_id, ts) if type(event_id) is str and type(ts) is str else None
        with self._mutex:
            if self._held:
                self._write_held()
            if self._held or not self._write(line, key):
                self._hold(line, key)
            return self._count + len(self._held)

    def _write(self, line: bytes, key: EventKey | None) -> bool:
        """Write one whole line to the open segment; False (logged once) if it failed."""
        if self._fd is None:
            try:
                self._open_segment()
            except FileNotFoundError as e:
                if not self._recreate():
                    self._failed("cannot open a spool segment", e)
                    return False
            except OSError as e:
                self._failed("cannot open a spool segment", e)
                return False
        fd = self._fd
        assert fd is not None
        view = memoryview(line)
        written = 0
        while written < len(line):
            try:
                n = os.write(fd, view[written:])
            except OSError as e:
                if written:  # a torn line: no later event may be glued to it
                    self._open_keys = None  # the segment must be read to know what it holds
                    self._close_segment()
                self._failed("cannot write to the spool", e)
                return False
            if n <= 0:  # pragma: no cover - os.write raises rather than return 0
                self._open_keys = None
                self._close_segment()
                self._failed("cannot write to the spool", OSError(errno.EIO, "short write"))
                return False
            written += n
        self._count += 1
        keys = self._open_keys
        if keys is not None:
            if key is None:
                self._open_keys = None
            else:
                keys.append(key)
        if self._fault is not None:
            self._recovered()
        return True

    def _hold(self, line: bytes, key: EventKey | None) -> None:
        if len(self._held) < self.max_held:
            self._held.append((line, key))
            return
        if not self.dropped:
            log.error(
                "meterline: spool %s: %d events held in memory, the limit; dropping new "
                "events until the spool can be written (%s)",
                self.directory,
                len(self._held),
                self._fault,
            )
        self.dropped += 1

    def _write_held(self) -> None:
        while self._held and self._write(*self._held[0]):
            self._held.popleft()

    def _open_segment(self) -> None:
        self._seq += 1
        name = f"{PREFIX}{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}{OPEN_SUFFIX}"
        path = self.directory / name
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        self._path = path
        self._count = 0
        self._open_keys = []

    # ------------------------------------------------------------------ sealing

    def seal(self) -> None:
        """Close the open segment (if any) so the writer may take it; never raises.

        Also the retry point while the spool is faulty: held events are written first,
        and segments whose rename failed are renamed again.
        """
        with self._mutex:
            if self._held:
                self._write_held()
            for path in self._unsealed[:]:
                self._unsealed.remove(path)
                self._rename_sealed(path)
            self._close_segment()

    def _close_segment(self) -> None:
        """Give up the open descriptor (it is forgotten before anything can fail), seal."""
        fd, path, keys = self._fd, self._path, self._open_keys
        self._fd, self._path, self._count, self._open_keys = None, None, 0, None
        if fd is None or path is None:
            return
        self._remember(path.name, keys)
        try:
            os.close(fd)
        except OSError as e:  # the descriptor is released even so (Linux, close(2))
            self._failed("cannot close a spool segment", e)
        self._rename_sealed(path)

    def _rename_sealed(self, path: Path) -> None:
        try:
            path.rename(path.with_suffix(SEALED_SUFFIX))
        except FileNotFoundError:
            pass
        except OSError as e:
            self._unsealed.append(path)
            self._failed("cannot seal a segment", e, path.name)

    def _recreate(self) -> bool:
        """The directory was removed under the proxy (``rm -rf`` of the spool): make it
        again, with its lock, and open a segment in it. Lines of the segment that was open
        then went with it; later events are kept. False if it cannot be made."""
        if self.directory.is_dir():
            return False
        try:
            with private_files():  # parents it makes too: 0700 under any umask
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(self._lock_fd)
            self._lock_fd = lock
            self._open_segment()
        except OSError:
            return False
        log.error(
            "meterline: spool %s was removed while the proxy ran: made again (events of "
            "the segment that was open are lost; later ones are kept)",
            self.directory,
        )
        return True

    # ------------------------------------------------------------------ faults

    def _failed(self, what: str, e: BaseException, detail: str = "") -> None:
        """Log a fault once until the spool is healthy again: a directory that stays
        unwritable fails each seal and each open in turn, and would log both every flush."""
        fault = f"{what}: {oserrors.describe(e)}"
        self._fault = f"{what} {detail}: {oserrors.describe(e)}" if detail else fault
        if fault not in self._logged:
            self._logged.add(fault)
            log.error(
                "meterline: spool %s: %s; holding events in memory (up to %d) and retrying",
                self.directory,
                self._fault,
                self.max_held,
            )

    def _recovered(self) -> None:
        log.warning(
            "meterline: spool %s writable again (was: %s); %d held event(s) to write, %d dropped",
            self.directory,
            self._fault,
            len(self._held),
            self.dropped,
        )
        self._fault = None
        self._logged.clear()
        self.dropped = 0

    @property
    def held(self) -> int:
        """Events waiting in memory for the spool to become writable."""
        return len(self._held)

    # ------------------------------------------------------------------ the writer's side

    def sealed(self) -> list[Path]:
        return sorted(self.directory.glob(PREFIX + "*" + SEALED_SUFFIX))

    def _remember(self, name: str, keys: list[EventKey] | None) -> None:
        self._keys[name] = keys
        self._known_count += len(keys or ())
        while self._known_count > self.max_known:  # the oldest first (insertion order)
            oldest = next(iter(self._keys))
            self._known_count -= len(self._keys.pop(oldest) or ())

    def known_events(self, segments: list[Path]) -> list[EventKey] | None:
        """The (event_id, ts) of every event in ``segments``, in order, if this spool wrote
        each of them whole (no read needed); None if one must be read to know."""
        keys: list[EventKey] = []
        with self._mutex:
            for path in segments:
                known = self._keys.get(path.with_suffix(OPEN_SUFFIX).name)
                if known is None:
                    return None
                keys += known
        return keys

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """Events in a sealed segment; a torn or garbled line is skipped with a warning."""
        events = []
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    event = json.loads(raw)
                except ValueError:
                    log.warning("%s:%d: skipping unreadable spool line", path, n)
                    continue
                if isinstance(event, dict):
                    events.append(event)
        return events

    def remove(self, path: Path) -> None:
        """Delete a sealed segment (its events are stored). One that cannot be deleted
        stays, its ids forgotten: the next flush reads them and finds them stored."""
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            self._failed("cannot delete a stored segment", e, path.name)
        with self._mutex:
            keys = self._keys.pop(path.with_suffix(OPEN_SUFFIX).name, None)
            self._known_count -= len(keys or ())

    def close(self) -> None:
        self.seal()
        if self._held:
            log.error(
                "meterline: spool %s: %d held event(s) could not be written and are lost (%s)",
                self.directory,
                len(self._held),
                self._fault,
            )
            self._held.clear()
        os.close(self._lock_fd)
