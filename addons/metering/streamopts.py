"""Make OpenAI-style streams report usage, invisibly to the client.

A streamed Chat Completions (or legacy Completions) response carries token usage only
when the request set ``stream_options: {"include_usage": true}``. The proxy adds that
option (:func:`add_include_usage`) and removes the extra usage-only chunk from what the
client receives (:class:`UsageStreamFilter`), so a client that did not ask for it sees
the stream it expected (except that, per OpenAI's docs, its other chunks then carry
``"usage": null``, a field the SDKs already model).
"""

from __future__ import annotations

import re
from typing import Any

from addons.metering import jsoncodec, jsonspan
from addons.metering.extract.framing import MAX_SSE_EVENT, has_value
from addons.metering.sse import SSEParser

_MEMBER = b'"stream_options":{"include_usage":true}'


_PARSE: Any = object()


def add_include_usage(body: bytes, *, parsed: Any = _PARSE) -> bytes | None:
    """The request body with ``stream_options.include_usage`` set, or ``None`` when not
    applicable: not JSON, not a JSON object, not ``"stream": true``, not a chat
    (``messages``) or legacy completions (``prompt``) request, or already set.

    An explicit ``"include_usage": false`` is overridden too (the stream filter then hides
    the chunk from the client). The body is edited in place, never re-serialised: every byte
    but the inserted or replaced member stays as the client sent it (a lone surrogate
    escape, ``1e400``, key order, spacing). ``None`` when the edit cannot be placed.
    ``parsed``: ``body`` already parsed (``None`` if it is not JSON), to parse it once.
    """
    obj: Any = parsed
    if obj is _PARSE:
        try:
            obj = jsoncodec.loads(body)
        except ValueError:
            return None
    if not isinstance(obj, dict) or obj.get("stream") is not True:
        return None
    if "messages" not in obj and "prompt" not in obj:
        return None
    options = obj.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if "stream_options" not in obj:
        return _append_member(body, _MEMBER)
    try:
        members = jsonspan.object_members(body, jsonspan.skip_ws(body, 0))
        start, end = members.last_value("stream_options")
        if not isinstance(options, dict):
            return body[:start] + b'{"include_usage":true}' + body[end:]
        inner = jsonspan.object_members(body, start)
        if "include_usage" in options:
            u_start, u_end = inner.last_value("include_usage")
            return body[:u_start] + b"true" + body[u_end:]
        return jsonspan.insert_member(body, inner, b'"include_usage":true')
    except ValueError:
        return None


#: Azure OpenAI's dated API versions before this one refuse ``stream_options`` (400
#: "Unrecognized request argument"); its v1 API (no ``api-version``) takes it.
AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"
_API_VERSION = re.compile(r"(?:^|&)api-version=(\d{4}-\d{2}-\d{2})", re.IGNORECASE)


def api_version_takes_stream_options(query: str) -> bool:
    """Whether a request with this query string may carry ``stream_options``: not when an
    ``api-version`` (Azure OpenAI's) is dated before :data:`AZURE_STREAM_OPTIONS_SINCE`."""
    if "api-version" not in query.lower():
        return True
    match = _API_VERSION.search(query)
    return match is None or match.group(1) >= AZURE_STREAM_OPTIONS_SINCE


def _append_member(body: bytes, member: bytes) -> bytes | None:
    """``body`` (a JSON object with members, as parsed) with ``member`` added last.

    After a JSON text only whitespace may follow, so the object's closing brace is the
    last other byte: no scan of the members, whose cost grows with their nesting (a
    request of millions of brackets would hold the event loop for seconds)."""
    close = len(body.rstrip(b" \t\r\n")) - 1
    if close < 0 or body[close : close + 1] != b"}":
        return None
    return body[:close] + b"," + member + body[close:]


def is_usage_only_chunk(data: str) -> bool:
    """An SSE data payload that is the extra chunk: ``usage`` set and no ``choices``."""
    if not has_value(data, '"usage"'):
        return False
    try:
        obj = jsoncodec.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and not obj.get("choices")


class UsageStreamFilter:
    """Edits an OpenAI-style SSE stream on its way to the client; every other byte passes
    unchanged, in order.

    - ``drop_usage``: removes usage-only chunks (the one the proxy asked for).
    - Always: holds the closing chunks back until ``data: [DONE]``. A client may stop
      reading at ``finish_reason`` (``for chunk in stream: ... break``) and close before
      the usage chunk that follows it: the proxy would then have no usage figures, and a
      reasoning model's hidden tokens would go unbilled. So from an event carrying a
      ``finish_reason`` on, events are held until ``[DONE]`` (normally in the same read);
      any other event (another choice still streaming, ``n`` > 1) releases them. The
      proxy meters the flow on the chunk with ``[DONE]``, before that chunk is handed on
      (:mod:`addons.metering.replyend`), so a client gets the finish only once the event
      is spooled.

    Apart from that hold, only an incomplete trailing event is held back until its blank
    line arrives. ``feed`` never raises: on an internal error, or more than
    :data:`MAX_SSE_EVENT` bytes held, it stops filtering and passes everything through.
    """

    __slots__ = (
        "_parser",
        "_held",
        "_base",
        "_hold_from",
        "_drops",
        "_drop_usage",
        "_broken",
        "_drop_next_lf",
        "dropped",
    )

    def __init__(self, *, drop_usage: bool = True) -> None:
        self._parser = SSEParser()
        self._held = bytearray()  # bytes from offset self._base on, not yet forwarded
        self._base = 0
        self._hold_from: int | None = None  # where the held closing events start
        self._drops: list[tuple[int, int]] = []  # spans of dropped events in _held
        self._drop_usage = drop_usage
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
        for event in events:
            payload = event.data
            if is_usage_only_chunk(payload):  # comes after the finish: held with it
                if self._drop_usage:
                    drops.append((event.start, event.end))
                    self.dropped += 1
            elif has_value(payload, '"finish_reason"'):
                if hold is None:
                    hold = event.start
            elif hold is not None:
                hold = None  # [DONE], or another choice still streaming: the held go on
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
        """End of stream: everything held (closing events without ``[DONE]``, an
        incomplete trailing event), dropped events still left out."""
        if self._broken:
            out = bytes(self._held)
            self._held.clear()
            return out
        self._hold_from = None
        return self._cut(self._base + len(self._held))
