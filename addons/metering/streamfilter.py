"""Edit an SSE stream on its way to the client, so that the client cannot leave before
the proxy has the call's usage.

A provider reports a streamed call's usage in one of its last events, after the content:
OpenAI's chat usage chunk follows the chunk with ``finish_reason``; a Responses stream's
``response.completed`` follows the ``.done`` events of its output; Anthropic's
``message_delta`` follows ``content_block_stop``. A client may stop reading at the end of
the content (``for chunk in stream: ... break``) and close before that event: the proxy
would then have no usage and estimate from the visible text, so a reasoning model's
hidden tokens would go unbilled (1 output token stored for 450 billed).

:class:`UsageStreamFilter` holds the closing events back from the first one on until the
event that carries (or follows) the usage, normally in the same read: then they go on
together. Any other event (another choice of ``n`` > 1, another content block or output
item, an Anthropic ``ping``) releases what is held, so nothing is ever reordered, and an
event in a stream's middle waits at most for the next event (a server tool's run: until
the provider's next ping). Where the end event completes the client's answer
(``[DONE]``, ``message_stop``), the proxy meters the flow before that chunk is handed on
(:mod:`addons.metering.replyend`). It also removes OpenAI's usage-only chunk when the
proxy asked for it (:mod:`addons.metering.streamopts`).

What it costs: a stream whose provider connection dies between the closing events and
the end event leaves the client without the held events (it gets the connection error
a client reading to the end gets anyway); a stream that ends cleanly without its end
event gets them at its end. Encoded streams cannot be edited: the proxy asks OpenAI and
Anthropic streams for plain bytes (:meth:`~addons.metering.flowstate.FlowMeter.ask_plain_stream`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from addons.metering.extract.framing import MAX_SSE_EVENT
from addons.metering.sse import SSEEvent, SSEParser
from addons.metering.streamopts import is_usage_only_chunk

Step = Literal["hold", "keep", "release", "drop"]
"""What an event does to the hold: starts it (or goes on holding), goes on holding an
open hold and passes otherwise, releases it, or is removed (OpenAI's usage-only chunk
the proxy asked for; held with the rest meanwhile)."""

ClosingRule = Callable[[SSEEvent], Step]


#: A chunk that finishes a choice: a ``finish_reason`` that is a non-empty string (a
#: server that sends ``""`` or ``null`` on every chunk is not finishing them all).
_FINISHED = re.compile(r'"finish_reason"\s*:\s*"[^"]')


def chat_rule(*, drop_usage: bool) -> ClosingRule:
    """Chat Completions (and legacy Completions): hold from a ``finish_reason`` until
    ``[DONE]``; the usage-only chunk between them is held too (or dropped)."""
    usage_step: Step = "drop" if drop_usage else "keep"

    def rule(event: SSEEvent) -> Step:
        payload = event.data
        if is_usage_only_chunk(payload):
            return usage_step
        if _FINISHED.search(payload) is not None:
            return "hold"
        return "release"

    return rule


_ANTHROPIC: dict[str, Step] = {"content_block_stop": "hold", "message_delta": "keep"}


def anthropic_rule(event: SSEEvent) -> Step:
    """Messages: hold from ``content_block_stop`` until ``message_stop``, the
    ``message_delta`` with the output usage between them held too. Any other event
    releases them: a ``ping`` (the provider still working, as while a server tool runs:
    held, it would no longer keep a client's read timeout or an idle load balancer at
    bay) or the next block."""
    return _ANTHROPIC.get(event.event, "release")


_TYPE = re.compile(r'"type"\s*:\s*"([^"]*)"')


def responses_rule(event: SSEEvent) -> Step:
    """Responses: hold from an output's ``.done`` event until ``response.completed``
    (``incomplete``, ``failed``); the event's type is its ``event:`` field, or its data's
    ``type`` where a server sends no ``event:`` line."""
    kind = event.event
    if kind == "message":
        match = _TYPE.search(event.data, 0, 200)
        kind = match.group(1) if match else ""
    return "hold" if kind.endswith(".done") else "release"


class UsageStreamFilter:
    """Applies a :data:`ClosingRule` to a decoded SSE stream; every byte it does not
    drop passes unchanged and in order.

    Apart from the closing hold, only an incomplete trailing event is held back until its
    blank line arrives. ``feed`` never raises: on an internal error, or more than
    :data:`MAX_SSE_EVENT` bytes held, it stops filtering and passes everything through.
    """

    __slots__ = (
        "_parser",
        "_rule",
        "_held",
        "_base",
        "_hold_from",
        "_drops",
        "_broken",
        "_drop_next_lf",
        "dropped",
    )

    def __init__(self, rule: ClosingRule) -> None:
        self._parser = SSEParser()
        self._rule = rule
        self._held = bytearray()  # bytes from offset self._base on, not yet forwarded
        self._base = 0
        self._hold_from: int | None = None  # where the held closing events start
        self._drops: list[tuple[int, int]] = []  # spans of dropped events in _held
        self._broken = False
        # The last dropped event ended in "\r" right at the held boundary: a "\n" that
        # starts the next chunk is the rest of its "\r\n" and is dropped with it.
        self._drop_next_lf = False
        self.dropped = 0

    def feed(self, data: bytes) -> bytes:
        if self._broken:
            return data
        try:
            return self._feed(data)
        except Exception:
            self._broken = True
            out = bytes(self._held) + data
            self._held.clear()
            return out

    def _feed(self, data: bytes) -> bytes:
        parser = self._parser
        start = parser.offset
        events = parser.feed(data)
        boundary = parser.boundary
        drops = self._drops
        dropped_before = len(drops)
        if self._drop_next_lf and data[:1] == b"\n":
            drops.append((start, start + 1))
        if data:
            self._drop_next_lf = False
        hold = self._hold_from
        rule = self._rule
        for event in events:
            step = rule(event)
            if step == "release":
                hold = None  # the end, or more of the stream to come: the held go on
            elif step == "hold":
                if hold is None:
                    hold = event.start
            elif step == "drop":
                drops.append((event.start, event.end))
                self.dropped += 1
        self._hold_from = hold
        if (
            not self._held
            and len(drops) == dropped_before
            and hold is None
            and boundary == parser.offset
        ):
            self._base = boundary  # fast path: chunk ends on an event boundary, nothing to do
            return data
        held = self._held
        held += data
        base = self._base
        if len(drops) > dropped_before:
            end = drops[-1][1]
            if end == boundary and held[end - base - 1] == 0x0D:
                self._drop_next_lf = True
        release = boundary if hold is None else hold
        if len(held) > MAX_SSE_EVENT:  # not SSE as we know it: stop holding bytes back
            self._broken = True
            release = parser.offset
        return self._cut(release)

    def _cut(self, release: int) -> bytes:
        """The held bytes before offset ``release``, without the dropped spans; the
        rest stays held."""
        held, base = self._held, self._base
        out: list[bytes | bytearray] = []
        pos = base
        keep: list[tuple[int, int]] = []
        for span_start, span_end in self._drops:
            if span_start >= release:
                keep.append((span_start, span_end))
                continue
            out.append(held[pos - base : span_start - base])
            pos = span_end
        out.append(held[pos - base : release - base])
        del held[: release - base]
        self._base = release
        self._drops = keep
        return b"".join(out)

    def flush(self) -> bytes:
        """End of stream: everything held (closing events without their end, an
        incomplete trailing event), dropped events still left out."""
        if self._broken:
            out = bytes(self._held)
            self._held.clear()
            return out
        self._hold_from = None
        return self._cut(self._base + len(self._held))
