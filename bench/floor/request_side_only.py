"""The meter's request side only, for bench/meter_floor.py: provider, key and policy
in ``requestheaders``/``request``, the buffering decision in ``responseheaders``; the
``response`` hook meters nothing. What identifying a call costs, with no metering."""

from __future__ import annotations

from mitmproxy import http

from addons.meter import Meter


class RequestSideOnly(Meter):
    def response(self, flow: http.HTTPFlow) -> None:
        self._active.pop(flow.id, None)


addons = [RequestSideOnly()]
