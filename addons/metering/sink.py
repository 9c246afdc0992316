"""Where the addon's events go: this proxy's spool, and the writer that moves it into the store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from addons.metering.spool import Spool
from addons.metering.writer import SpoolWriter

log = logging.getLogger("meterline.proxy")


class EventSink:
    """The open spool and its writer thread; both ``None`` until :meth:`open`."""

    def __init__(self) -> None:
        self.spool: Spool | None = None
        self.writer: SpoolWriter | None = None

    def open(
        self, directory: Path, locator: str, interval: float, *, proxy_id: str | None = None
    ) -> None:
        """(Re)open the spool at ``directory`` and start its writer (replaying leftovers).

        Raises :class:`~addons.metering.spool.SpoolError` (e.g. another proxy holds it).
        """
        if self.spool is not None and self.spool.directory.resolve() == directory:
            return
        spool = Spool(directory)
        self.close()
        self.spool = spool
        self.writer = SpoolWriter(spool, locator, interval=interval, proxy_id=proxy_id)
        self.writer.start()

    def record(self, event: dict[str, Any]) -> None:
        assert self.spool is not None and self.writer is not None
        self.writer.notify(self.spool.append(event))

    def close(self) -> None:
        if self.writer is not None and not self.writer.stop():
            where = self.spool.directory if self.spool is not None else "?"
            log.warning("meterline: events left in spool %s for the next start", where)
        if self.spool is not None:
            self.spool.close()
        self.writer, self.spool = None, None
