"""Keep an injected provider key out of what the client gets back, and out of the log.

With key injection the consumer presents a gateway key and the proxy sends the
organisation's provider key instead: the consumer must never see that key. Providers
echo the key they received in some error bodies (OpenAI: ``Incorrect API key provided:
sk-...``, Gemini: ``API key not valid: ...``); forwarded untouched, such a body handed
the organisation's key to the consumer. For a flow whose key the proxy injected, every
occurrence of that key's bytes in the response (headers and body) is replaced by
:func:`masked`, which keeps the key's first 3 and last 4 characters and stars out the
rest, the way OpenAI masks a key in its own errors (``sk-*****...abcd``).

The mask has the key's length, so a body keeps its length: a buffered body keeps its
``Content-Length``, and a streamed one is scrubbed chunk by chunk
(:class:`ScrubbingStream`) with no change to its framing. Only injected flows pay for
any of this: the addon wraps their stream and checks their buffered body; every other
flow takes the unchanged path.
"""

from __future__ import annotations

from mitmproxy import http

from addons.metering import bounded
from addons.metering.decoding import IncrementalDecoder
from addons.metering.flowstate import FlowMeter

_SHOWN_HEAD = 3
_SHOWN_TAIL = 4


def masked(key: bytes) -> bytes:
    """``key`` with all but its first 3 and last 4 bytes starred out, the same length
    (a key too short to show any of it is starred out whole)."""
    hidden = len(key) - _SHOWN_HEAD - _SHOWN_TAIL
    if hidden < 8:
        return b"*" * len(key)
    return key[:_SHOWN_HEAD] + b"*" * hidden + key[-_SHOWN_TAIL:]


def mask_text(text: str, key: bytes | None) -> str:
    """``text`` (a log line's part: a provider's error quoted) with ``key`` masked."""
    if key is None:
        return text
    plain = key.decode("utf-8", "surrogateescape")
    if plain not in text:
        return text
    return text.replace(plain, masked(key).decode("utf-8", "surrogateescape"))


def _partial_tail(data: bytes, key: bytes) -> int:
    """How many bytes at the end of ``data`` begin ``key`` (a key cut by a chunk
    boundary), 0 when none do."""
    first = key[:1]
    i = data.find(first, max(0, len(data) - len(key) + 1))
    while i != -1:
        if key.startswith(data[i:]):
            return len(data) - i
        i = data.find(first, i + 1)
    return 0


class StreamScrub:
    """Replaces ``key`` in a byte stream, across chunk boundaries.

    A chunk's tail that could be the start of the key is held back until the next chunk
    (or the end) says whether it is: a few bytes at most, and only when the chunk ends
    with the key's first bytes (an SSE event ends in ``\\n\\n``, which no key starts
    with, so events are never delayed)."""

    __slots__ = ("key", "mask", "held")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.mask = masked(key)
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk if self.held else chunk
        if self.key in data:
            data = data.replace(self.key, self.mask)
        keep = _partial_tail(data, self.key)
        if not keep:
            self.held = b""
            return data
        self.held = data[-keep:]
        return data[:-keep]

    def flush(self) -> bytes:
        """The bytes held back at the end of the stream (not the key: it never came whole)."""
        rest, self.held = self.held, b""
        return rest


class ScrubbingStream:
    """``flow.response.stream`` for an injected flow: the metering callable
    (:class:`~addons.metering.flowstate.FlowMeter`, which reads the bytes as the provider
    sent them) first, then the key scrubbed out of what goes on to the client.

    Scrubbing in the stream, not buffering error bodies: a provider may echo the key in
    a 200 stream too (an SSE ``error`` event), and a stream must stay a stream. It costs
    an injected call one substring search per chunk; other flows are not wrapped."""

    __slots__ = ("meter", "scrub")

    def __init__(self, meter: FlowMeter, key: bytes) -> None:
        self.meter = meter
        self.scrub = StreamScrub(key)

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        out = self.meter(chunk)
        data = out if isinstance(out, bytes) else b"".join(out)
        data = self.scrub.feed(data) if chunk else self.scrub.feed(data) + self.scrub.flush()
        # An empty chunk would end an HTTP/1.1 chunked body early: send nothing instead.
        return data if data else []


def scrub_headers(resp: http.Response, key: bytes) -> None:
    """Mask ``key`` in any response header value that echoes it."""
    fields = resp.headers.fields
    if not any(key in value for _, value in fields):
        return
    mask = masked(key)
    resp.headers.fields = tuple((name, value.replace(key, mask)) for name, value in fields)


def scrub_body(resp: http.Response, key: bytes) -> None:
    """Mask ``key`` in a buffered body: in the bytes as sent, or in the decoded body when
    it has a ``Content-Encoding`` (encoded again the same way; ``Content-Length`` set
    from the result). The proxy asks injected calls for an unencoded answer, so the
    decode is for a provider that encodes anyway."""
    raw = resp.raw_content
    if not raw:
        return
    if key in raw:
        resp.raw_content = raw.replace(key, masked(key))  # same length: framing kept
        return
    encoding = resp.headers.get("content-encoding")
    if not encoding:
        return
    try:  # bounded output, as the meter reads a body (a compression bomb stays one)
        decoder = IncrementalDecoder(encoding, bounded.decode_budget(False, len(raw)))
        decoded = decoder.decode(raw) + decoder.flush()
    except ValueError:  # undecodable, or past the budget: not a readable error body
        return
    if decoded and key in decoded:
        resp.content = decoded.replace(key, masked(key))
