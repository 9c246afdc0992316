"""Limits on the metering work one flow may put on the proxy's event loop.

Metering runs on mitmproxy's event loop, between the forwarding of other flows' bytes,
so no flow may cost much of it, whatever its body: a decompression bomb, a 60 MB JSON
body, a prompt of millions of characters. The bytes always pass through untouched; what
is bounded is what the meter reads of them:

- :data:`MAX_METERED_BODY`: decoded bytes of a non-SSE response body fed to the usage
  extractor. Past it only the body's last bytes are kept (:class:`OverLimit`), and the
  usage is read from the members that end it (:mod:`addons.metering.tailmembers`):
  providers report it after the content. A body whose end holds no usage is metered as
  an estimate: input from the request, ``estimated = true``, with a warning.
- An SSE body is read incrementally (one event at a time, nothing buffered), so it may be
  longer. Decompression is bounded, for any body: to :data:`MAX_METERED_BODY` plus a
  ratio times the compressed bytes received: :data:`MAX_SSE_RATIO` for SSE (a stream's
  repeated event envelopes compress ~5-20x), :data:`MAX_JSON_RATIO` for a JSON body (base64
  ~1.35x, numbers and text 3-5x); a bomb is 1000x. Past that the flow is estimated.
  A request body with a ``Content-Encoding`` has the JSON body's budget; past it the
  call is refused unsent (413): read as empty, it would pass every limit unmetered.
- :func:`count_tokens`: tiktoken reads at most :data:`MAX_COUNTED_CHARS` characters and
  scales the count up to the full length (about 5 ms of CPU at most).
- :func:`estimate_request_input`: a request body over :data:`MAX_PARSED_REQUEST` bytes is
  not parsed; its length in characters is counted as text (bounded as above).
"""

from __future__ import annotations

from collections.abc import Callable

from addons.metering import estimate
from addons.metering.extract.framing import note
from addons.metering.tailmembers import TailWindow, last_members
from addons.metering.usage import Seen, Usage, UsageExtractor

MiB = 1024 * 1024
MAX_METERED_BODY = 16 * MiB
MAX_SSE_RATIO = 64
MAX_JSON_RATIO = 16
MAX_COUNTED_CHARS = 64 * 1024
MAX_PARSED_REQUEST = 128 * 1024


def decode_budget(sse: bool, compressed_bytes: int) -> int:
    """How many decoded bytes a body may reach, given the compressed bytes seen so far."""
    return MAX_METERED_BODY + (MAX_SSE_RATIO if sse else MAX_JSON_RATIO) * compressed_bytes


def count_tokens(text: str, model: str) -> int:
    """Tokens in ``text``: exact up to MAX_COUNTED_CHARS characters, scaled beyond."""
    if len(text) <= MAX_COUNTED_CHARS:
        return estimate.count_tokens(text, model)
    head = estimate.count_tokens(text[:MAX_COUNTED_CHARS], model)
    return -(-head * len(text) // MAX_COUNTED_CHARS)


def estimate_request_input(flavor: str, request_body: bytes, *, model: str | None = None) -> int:
    """:func:`addons.metering.estimate.estimate_request_input`, bounded in time."""
    if len(request_body) <= MAX_PARSED_REQUEST:
        return estimate.estimate_request_input(flavor, request_body, model=model)
    return count_tokens(request_body.decode("utf-8", "replace"), model or "")


class OverLimit:
    """Stands in for a flow's extractor once its body went past the limit.

    With ``reread`` (a JSON body), the body's last :data:`~addons.metering.tailmembers.TAIL_BYTES`
    are kept and ``finish`` reads the usage from the members that end it, with a fresh
    extractor from ``reread``; without (or when the end holds no members, or the body
    turned out a bomb: :meth:`give_up`), ``finish`` reports no usage and the flow is
    estimated. ``output_text`` is the text an incremental (SSE) extractor had gathered.
    """

    def __init__(
        self,
        previous: UsageExtractor,
        reason: str,
        *,
        keep_text: bool,
        reread: Callable[[], UsageExtractor] | None = None,
    ) -> None:
        self.problems = [*previous.problems]
        self._reason = reason
        if reread is None:
            note(self.problems, f"{reason}; usage estimated")
        self._previous = previous
        self._keep_text = keep_text
        self._reread = reread
        self._tail = TailWindow() if reread is not None else None
        self._read: UsageExtractor | None = None

    def feed(self, data: bytes) -> None:
        if self._tail is not None:
            self._tail.add(data)

    def give_up(self, reason: str) -> None:
        """Keep nothing more: the usage is estimated."""
        if self._tail is not None:
            self._tail = None
            note(self.problems, f"{self._reason}, then {reason}; usage estimated")

    def finish(self) -> Usage | None:
        if self._tail is None or self._reread is None:
            return None
        if self._read is None:
            members = last_members(self._tail.bytes())
            self._tail = None
            if members is None:
                note(self.problems, f"{self._reason}, no usage at its end; usage estimated")
                return None
            self._read = self._reread()
            self._read.feed(members)
        usage = self._read.finish()
        if usage is None:
            note(self.problems, f"{self._reason}, no usage at its end; usage estimated")
        else:  # the body ended with the close of its outermost value: it is complete
            usage.partial = False
        return usage

    def output_text(self) -> str:
        return self._previous.output_text() if self._keep_text else ""

    def seen(self) -> Seen:
        return self._read.seen() if self._read is not None else self._previous.seen()
