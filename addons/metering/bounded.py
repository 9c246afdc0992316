"""Limits on the metering work one flow may put on the proxy's event loop.

Metering runs on mitmproxy's event loop, between the forwarding of other flows' bytes,
so no flow may cost much of it, whatever its body: a decompression bomb, a 60 MB JSON
body, a prompt of millions of characters. The bytes always pass through untouched; what
is bounded is what the meter reads of them:

- :data:`MAX_METERED_BODY`: decoded bytes of a non-SSE response body fed to the usage
  extractor (and the most a content-encoded body is decompressed to). Past it the flow is
  metered as an estimate (:class:`OverLimit`): input from the request, output from the
  text read so far, ``estimated = true``, with a warning.
- An SSE body is read incrementally (one event at a time, nothing buffered), so it may be
  longer; only its decompression is bounded: to :data:`MAX_METERED_BODY` plus
  :data:`MAX_SSE_RATIO` times the compressed bytes received (real text compresses ~5-20x;
  a bomb 1000x).
- :func:`count_tokens`: tiktoken reads at most :data:`MAX_COUNTED_CHARS` characters and
  scales the count up to the full length (about 5 ms of CPU at most).
- :func:`estimate_request_input`: a request body over :data:`MAX_PARSED_REQUEST` bytes is
  not parsed; its length in characters is counted as text (bounded as above).
"""

from __future__ import annotations

from addons.metering import estimate
from addons.metering.usage import Seen, Usage, UsageExtractor

MiB = 1024 * 1024
MAX_METERED_BODY = 16 * MiB
MAX_SSE_RATIO = 64
MAX_COUNTED_CHARS = 64 * 1024
MAX_PARSED_REQUEST = 128 * 1024


def decode_budget(sse: bool, compressed_bytes: int) -> int:
    """How many decoded bytes a body may reach, given the compressed bytes seen so far."""
    return MAX_METERED_BODY + (MAX_SSE_RATIO * compressed_bytes if sse else 0)


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

    ``finish`` reports no usage, so the flow is estimated; ``output_text`` is the text
    an incremental (SSE) extractor had gathered (a buffered JSON body is not parsed).
    """

    def __init__(self, previous: UsageExtractor, reason: str, *, keep_text: bool) -> None:
        self.problems = [*previous.problems, reason]
        self._previous = previous
        self._keep_text = keep_text

    def feed(self, data: bytes) -> None:
        del data

    def finish(self) -> Usage | None:
        return None

    def output_text(self) -> str:
        return self._previous.output_text() if self._keep_text else ""

    def seen(self) -> Seen:
        return self._previous.seen()
