"""An addon with the meter's five flow hooks, each empty, for bench/meter_floor.py:
what mitmproxy charges for carrying such an addon before it does any work."""

from __future__ import annotations

from mitmproxy import http


class EmptyHooks:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def request(self, flow: http.HTTPFlow) -> None:
        pass

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def response(self, flow: http.HTTPFlow) -> None:
        pass

    def error(self, flow: http.HTTPFlow) -> None:
        pass


addons = [EmptyHooks()]
