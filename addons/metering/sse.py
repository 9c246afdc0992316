"""Incremental Server-Sent Events parser (WHATWG "event stream interpretation"), no I/O.

Why not a library: the SSE decoders inside ``openai`` and ``anthropic`` live in private
modules (``openai._streaming``) of client SDKs that are only dev dependencies here, and
``httpx-sse`` keeps its decoder private too and expects pre-split lines. None reports
where an event sits in the byte stream, which
:class:`~addons.metering.streamfilter.UsageStreamFilter` needs to remove one event, or
hold some back, and forward every other byte unchanged. The parser below is
small, works on bytes and costs O(chunk) per :meth:`SSEParser.feed`.

Rules implemented (https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end at ``\\r\\n``, ``\\r`` or ``\\n`` (also when a ``\\r\\n`` pair is split across
chunks); a leading UTF-8 BOM is dropped; ``:`` starts a comment; ``field: value`` with
one optional space after the colon; several ``data:`` lines join with ``\\n``; a blank
line dispatches the event, unless no ``data`` field was seen; ``event`` sets the type
(default ``message``); ``id`` without NUL sets the last event id; ``retry`` takes ASCII
digits only; other fields are ignored.

One deliberate leniency, for metering: :meth:`SSEParser.finish` dispatches a final event
whose closing blank line never came (the spec discards it). A usage report cut just
before its blank line is still the provider's figure; if the line itself was cut, the
JSON in it fails to parse and the extractor records that as a problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event.

    ``start``/``end`` are absolute byte offsets in the fed stream: ``start`` is where the
    event's block began (just after the previous blank line), ``end`` just after the
    blank line that dispatched it.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None
    start: int = 0
    end: int = 0


class SSEParser:
    """Feed bytes in arbitrary chunks; get back the events completed by each chunk."""

    __slots__ = (
        "_partial",
        "_skip_lf",
        "_offset",
        "_block_start",
        "_boundary",
        "_data",
        "_event",
        "_last_id",
        "_retry",
        "_first_line",
    )

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of the current, unterminated line
        self._skip_lf = False  # previous chunk ended in "\r": a leading "\n" belongs to it
        self._offset = 0  # absolute offset of the next byte to be fed
        self._block_start = 0  # absolute offset where the current block began
        self._boundary = 0  # absolute offset just after the last blank line
        self._data: list[bytes] = []
        self._event = b""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._first_line = True

    @property
    def boundary(self) -> int:
        """Absolute offset just after the last blank line: the bytes before it are complete."""
        return self._boundary

    @property
    def pending_event(self) -> str:
        """The type (``event:`` field) of the block not yet dispatched (``message``)."""
        return self._event.decode("utf-8", "replace") if self._event else "message"

    @property
    def offset(self) -> int:
        """Number of bytes fed so far."""
        return self._offset

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk``; return the events whose closing blank line it contained."""
        events: list[SSEEvent] = []
        if not chunk:
            return events
        base = self._offset
        self._offset += len(chunk)
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                # Second half of a "\r\n" split across chunks: already acted upon.
                if self._boundary == base:
                    self._boundary = self._block_start = base + 1
                chunk = chunk[1:]
                base += 1
        if b"\r" in chunk:
            self._feed_any_eol(chunk, base, events)
            return events
        pieces = chunk.split(b"\n")
        tail = pieces.pop()
        end = base
        partial = self._partial
        data = self._data
        for piece in pieces:
            end += len(piece) + 1
            if partial:
                partial.append(piece)
                piece = b"".join(partial)
                partial.clear()
            # Fast paths for the two lines every LLM stream is made of.
            if self._first_line:
                self._line(piece, end, events)
            elif piece.startswith(b"data: "):
                data.append(piece[6:])
            elif not piece:
                self._dispatch(end, events)
            else:
                self._line(piece, end, events)
        if tail:
            partial.append(tail)
        return events

    def _feed_any_eol(self, chunk: bytes, base: int, events: list[SSEEvent]) -> None:
        start = 0
        partial = self._partial
        for match in _EOL.finditer(chunk):
            piece = chunk[start : match.start()]
            start = match.end()
            if partial:
                partial.append(piece)
                piece = b"".join(partial)
                partial.clear()
            self._line(piece, base + start, events)
        if start < len(chunk):
            partial.append(chunk[start:])
        elif chunk.endswith(b"\r"):
            self._skip_lf = True

    def finish(self) -> list[SSEEvent]:
        """End of stream: dispatch a last event whose blank line never came (see module doc)."""
        events: list[SSEEvent] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial.clear()
            self._line(line, self._offset, events)
        if self._data:
            self._line(b"", self._offset, events)
        return events

    def _dispatch(self, end: int, events: list[SSEEvent]) -> None:
        """A blank line: dispatch the event if it had data, start a new block."""
        data = self._data
        if data:
            events.append(
                SSEEvent(
                    self._event.decode("utf-8", "replace") if self._event else "message",
                    (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace"),
                    self._last_id,
                    self._retry,
                    self._block_start,
                    end,
                )
            )
            data.clear()
        self._event = b""
        self._block_start = self._boundary = end

    def _line(self, line: bytes, end: int, events: list[SSEEvent]) -> None:
        """Interpret one complete line; ``end`` is the absolute offset just after its EOL."""
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[3:]
        if not line:
            self._dispatch(end, events)
            return
        if line[0] == 0x3A:  # ":" comment
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
