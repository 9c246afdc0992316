"""Plain mitmdump with the meter's hook index (``addons/metering/dispatch.py``) and
nothing else, for the benchmarks: the baseline that shows the meter's own cost once
mitmproxy's dispatch costs what it does under the meter."""

from __future__ import annotations

from mitmproxy import ctx

from addons.metering.dispatch import HookIndex


class IndexedDispatch:
    def __init__(self) -> None:
        self.index: HookIndex | None = None

    def running(self) -> None:
        self.index = HookIndex(ctx.master.addons)
        self.index.install()

    def done(self) -> None:
        if self.index is not None:
            self.index.uninstall()


addons = [IndexedDispatch()]
