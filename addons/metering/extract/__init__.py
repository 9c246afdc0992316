"""Usage extractors, one reader per API flavor, chosen from a registry.

``new_extractor("openai" | "anthropic" | "gemini", ...)`` returns an object following
:class:`~addons.metering.usage.UsageExtractor`. The body's framing is chosen from the
response content type:

- ``text/event-stream``: SSE, parsed incrementally;
- JSON (``application/json``, ``*+json``, NDJSON): buffered and parsed once; this also
  covers Gemini's ``:streamGenerateContent`` without ``alt=sse``, a JSON array whose
  complete elements are read even when the stream was cut;
- anything else or no content type: the first non-blank byte decides.

Azure OpenAI, Mistral, Groq, DeepSeek, OpenRouter, vLLM and Ollama use the ``openai``
flavor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from addons.metering.extract import anthropic, gemini, openai
from addons.metering.extract.framing import (
    JsonBodyExtractor,
    NewReader,
    Reader,
    SniffingExtractor,
    SseExtractor,
)
from addons.metering.usage import UsageExtractor

#: API flavor -> reader class ``(problems) -> Reader``; Gemini's also takes the request
#: path (it names the model there).
READERS: dict[str, Callable[..., Reader]] = {
    "openai": openai.OpenAIReader,
    "anthropic": anthropic.AnthropicReader,
    "gemini": gemini.GeminiReader,
}

_JSON_TYPES = frozenset({"application/json", "application/x-ndjson", "application/jsonl"})


def new_extractor(
    flavor: str,
    *,
    path: str,
    content_type: str | None,
    streaming_requested: bool = False,
    reader: NewReader | None = None,
) -> UsageExtractor:
    """An extractor for one response body.

    ``path`` is the request path with query (Gemini names the model there). When the
    content type is missing or unusual, the body's first byte decides between JSON and
    SSE; also when a stream was asked for and the server calls it JSON (some
    OpenAI-compatible servers label their SSE ``application/json``). ``reader``: a
    factory to use instead of the flavor's reader (one that keeps more of the body).
    Raises ``ValueError`` for an unknown flavor.
    """
    try:
        make_reader = READERS[flavor]
    except KeyError:
        known = ", ".join(sorted(READERS))
        raise ValueError(f"unknown API flavor {flavor!r} (known: {known})") from None
    new_reader: NewReader = (
        partial(make_reader, path=path) if make_reader is gemini.GeminiReader else make_reader
    )
    if reader is not None:
        new_reader = reader
    media = (content_type or "").partition(";")[0].strip().lower()
    if media == "text/event-stream":
        return SseExtractor(new_reader)
    if (media in _JSON_TYPES or media.endswith("+json")) and not streaming_requested:
        return JsonBodyExtractor(new_reader)
    return SniffingExtractor(new_reader)


__all__ = ["READERS", "new_extractor"]
