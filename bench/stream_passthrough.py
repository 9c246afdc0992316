"""Baseline for the streaming figures: plain mitmdump that streams every response body.

Without it mitmdump buffers whole responses, so SSE reaches the client only at the end.
``mitmdump -s bench/stream_passthrough.py`` is what the meter's streaming is compared to.
"""

from mitmproxy import http


class StreamPassthrough:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        flow.response.stream = True


addons = [StreamPassthrough()]
