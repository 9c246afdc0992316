"""The proxy's local, append-only event spool: JSON lines in segment files.

A metered response becomes one JSON line appended to the open segment with a single
``os.write`` on an ``O_APPEND`` descriptor: the line is in the kernel's page cache
when the hook returns, so a killed proxy (``kill -9``) loses nothing. No fsync per
event: see README.md, "Durability" (a power loss can cost the last flush interval at most).

Segments go through two states, visible in their names:

- ``<ns>-<pid>-<seq>.open``: being appended to; exactly one per running proxy.
- ``<ns>-<pid>-<seq>.jsonl``: sealed; the writer inserts it into the store and then
  deletes it. Names sort by creation time, so replay keeps order.

A lock file (``flock``) keeps two proxies from sharing one spool directory; on
start, every segment left behind (sealed or still ``.open``) is sealed for replay.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: One encoder for every line (``json.dumps`` with options builds a new one per call).
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode

OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".jsonl"


class SpoolError(RuntimeError):
    """The spool directory cannot be used; the message names it and says why."""


class Spool:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / "spool.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise SpoolError(f"{self.directory}: cannot use as spool: {e.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolError(
                f"{self.directory}: spool already in use by another proxy (one spool per proxy)"
            ) from None
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._count = 0
        self._seq = 0
        for leftover in sorted(self.directory.glob("*" + OPEN_SUFFIX)):
            leftover.rename(leftover.with_suffix(SEALED_SUFFIX))

    def append(self, event: dict[str, Any]) -> int:
        """Append one event; returns how many events the open segment now holds."""
        line = (_encode(event) + "\n").encode()
        with self._mutex:
            if self._fd is None:
                self._open_segment()
            assert self._fd is not None
            os.write(self._fd, line)
            self._count += 1
            return self._count

    def _open_segment(self) -> None:
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}{OPEN_SUFFIX}"
        self._path = self.directory / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._count = 0

    def seal(self) -> None:
        """Close the open segment (if any) so the writer may take it."""
        with self._mutex:
            if self._fd is None or self._path is None:
                return
            os.close(self._fd)
            self._path.rename(self._path.with_suffix(SEALED_SUFFIX))
            self._fd, self._path, self._count = None, None, 0

    def sealed(self) -> list[Path]:
        return sorted(self.directory.glob("*" + SEALED_SUFFIX))

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

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)

    def close(self) -> None:
        self.seal()
        os.close(self._lock_fd)
