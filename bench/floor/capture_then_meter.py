"""The "capture" design, for bench/meter_floor.py: each answered call's raw body is
written to a file before the reply (one ``os.write``, what a durable capture costs),
and the meter runs after the reply (start it with ``meter_durable=false``)."""

from __future__ import annotations

import os
import tempfile

from mitmproxy import http

from addons.meter import Meter


class CaptureThenMeter(Meter):
    def running(self) -> None:
        super().running()
        fd, _ = tempfile.mkstemp(prefix="capture-", suffix=".raw", dir=os.getcwd())
        self.capture_fd = fd

    def response(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if flow.id in self._active and resp is not None and resp.raw_content:
            line = b"%s %d\n" % (flow.id.encode(), len(resp.raw_content))
            os.write(self.capture_fd, line + resp.raw_content + b"\n")
        super().response(flow)

    def done(self) -> None:
        super().done()
        os.close(self.capture_fd)


addons = [CaptureThenMeter()]
