"""Which chunk of a streamed response completes the client's answer.

With ``meter_durable`` the event must be in the spool before the client has its whole
answer. mitmproxy runs the ``response`` hook before it sends the end of a streamed
message (the last chunk of a chunked body, HTTP/2's END_STREAM), which covers clients
that read to the end. Two kinds of client are done earlier, on a data chunk:

- a body of known length (``Content-Length``) is complete with its last byte;
- OpenAI's SDKs stop reading at the ``data: [DONE]`` event and close the response;
  Anthropic's hand the whole message to the caller at ``message_stop`` (the body may end
  later). Gemini's streams have no such event: they are metered at the end of the body.

:meth:`EndWatch.completes` spots that chunk, so the proxy meters the flow before the
chunk is handed on. Cost on the forwarding path: a subtraction, and a substring test
for OpenAI streams (which the proxy asks for unencoded; one a provider encodes anyway is
decoded a second time here, bounded, to find the event).
"""

from __future__ import annotations

import re

from addons.metering.bounded import MAX_METERED_BODY
from addons.metering.decoding import IncrementalDecoder

#: The event after which a flavor's SDK has its whole answer: a cheap needle, then the
#: event at the start of a line (inside a JSON data line a newline is always escaped).
LAST_EVENTS: dict[str, tuple[bytes, re.Pattern[bytes]]] = {
    "openai": (b"[DONE]", re.compile(rb"\ndata: ?\[DONE\]")),
    "anthropic": (
        b"message_stop",
        re.compile(rb"\nevent: ?message_stop\r?\ndata: ?[^\n]*\n\r?\n"),
    ),
}
#: Bytes of one chunk's end kept to find a last event split between two chunks.
_KEEP = 96


class EndWatch:
    __slots__ = ("remaining", "last_event", "_tail", "_decoder")

    def __init__(
        self, content_length: str | None, *, stream_of: str | None = None, encoding: str = ""
    ) -> None:
        known = content_length is not None and content_length.isascii() and content_length.isdigit()
        # "0" promises no body at all: no data chunk can complete it.
        self.remaining = int(content_length) or None if known and content_length else None
        self.last_event = LAST_EVENTS.get(stream_of) if stream_of else None
        """The SSE event that completes the answer of a ``stream_of`` stream, if any."""
        self._tail = b"\n"  # the body starts at the start of a line
        self._decoder: IncrementalDecoder | None = None
        if self.last_event and encoding:  # the proxy asks for none; a provider may send it
            try:
                self._decoder = IncrementalDecoder(encoding, max_output=MAX_METERED_BODY)
            except ValueError:  # an unknown coding: the response hook still comes first
                self.last_event = None

    def completes(self, chunk: bytes) -> bool:
        """Whether ``chunk`` (raw, as forwarded) completes what the client reads."""
        if self.remaining is not None:
            self.remaining -= len(chunk)
            if self.remaining <= 0:
                return True
        if self.last_event is None:
            return False
        if self._decoder is not None:
            try:
                chunk = self._decoder.decode(chunk)
            except Exception:  # corrupt or a bomb: the metering says so; stop watching
                self.last_event, self._decoder = None, None
                return False
        needle, event = self.last_event
        tail = self._tail
        self._tail = (tail + chunk)[-_KEEP:] if len(chunk) < _KEEP else chunk[-_KEEP:]
        if event.search(tail + chunk[:_KEEP]) is not None:  # across the boundary
            return True
        return needle in chunk and event.search(chunk) is not None
