"""Hide mitmproxy's "Streaming response from <host>." line for metered hosts."""

from __future__ import annotations

import logging

#: mitmproxy's connection handler logs here, among others "Streaming response from <host>."
MITM_SERVER_LOG = logging.getLogger("mitmproxy.proxy.server")
_STREAMING_NOTICE = "Streaming response from "


class HideStreamingNotice(logging.Filter):
    """Drops mitmproxy's info line "Streaming response from <host>." for metered hosts.

    The addon streams SSE, requested streams and large or chunked bodies, so mitmproxy
    would print that line once per such API call, where plain mitmdump (which buffers)
    prints nothing. Formatting and printing it cost about as much as all of the metering;
    it says nothing the user asked for. Other hosts (streamed by other addons) keep it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hosts: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (
            type(msg) is str
            and msg.startswith(_STREAMING_NOTICE)
            and msg[len(_STREAMING_NOTICE) : -1] in self.hosts
        )

    def add(self, host: str) -> None:
        if host not in self.hosts:
            if len(self.hosts) >= 1024:
                self.hosts.clear()
            self.hosts.add(host)
