"""Warnings that a stranger can cause once per request, kept to a few lines a minute.

In ``reject`` mode every refused request was one warning line: 50,000 requests with
unknown keys wrote 50,021 lines (10 MB) in a probe, a log an attacker fills at will.
:class:`RateLimitedLog` lets ``burst`` lines through per ``window_s`` seconds; what it
holds back is counted and said in the next line that goes through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self,
        log: logging.Logger,
        *,
        burst: int = 20,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._window_start = -window_s
        self._sent = 0
        self.held_back = 0
        """Lines not printed since the last one that was."""

    def warning(self, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._window_start >= self.window_s:
            self._window_start, self._sent = now, 0
        if self._sent >= self.burst:
            self.held_back += 1
            return
        self._sent += 1
        if self.held_back:
            msg += " (%d more like it not logged)"
            args = (*args, self.held_back)
            self.held_back = 0
        self.log.warning(msg, *args)

    def flush(self, what: str) -> None:
        """Say how many lines were held back since the last one (at shutdown)."""
        if self.held_back:
            self.log.warning("meterline: %d more %s not logged", self.held_back, what)
            self.held_back = 0
