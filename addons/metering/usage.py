"""One token model for every provider.

Token types are disjoint and add up to what the provider bills:

- ``input``: input tokens not read from a cache and not written to one
- ``cached_input``: input tokens read from the provider's prompt cache
- ``cache_write``: input tokens written to the provider's prompt cache (Anthropic: for
  5 minutes, 1.25x base input)
- ``cache_write_1h``: input tokens written to it for an hour (Anthropic ``ttl: "1h"``,
  2x base input): priced apart, so counted apart
- ``audio_input``: prompt audio tokens not read from a cache (OpenAI
  ``prompt_tokens_details.audio_tokens``, Gemini's ``AUDIO`` prompt modality): billed at
  the provider's audio rate (GPT-4o Audio: $40 per million against $2.50 for text), so
  counted apart; ``input`` excludes them
- ``cached_audio_input``: prompt audio read from the provider's cache (the Realtime API's
  ``cached_tokens_details.audio_tokens``, Gemini's ``AUDIO`` cache modality): priced
  apart from cached text (gpt-realtime-mini: $0.30 per million against $0.06), so
  counted apart; ``cached_input`` excludes it
- ``output``: output tokens other than audio, reasoning included
- ``audio_output``: output audio tokens (OpenAI ``completion_tokens_details.audio_tokens``,
  Gemini's ``AUDIO`` candidates modality); ``output`` excludes them

``reasoning`` is the share of ``output`` (text output) spent on reasoning; it is kept as
its own figure and never added to the total. Each provider's fields are mapped to this model
in exactly one place: its extractor in :mod:`addons.metering.extract`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


@dataclass(slots=True)
class Usage:
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    audio_input: int = 0
    cached_audio_input: int = 0
    output: int = 0
    audio_output: int = 0
    reasoning: int = 0
    #: Server-side web searches the provider bills for this call (Anthropic
    #: ``server_tool_use.web_search_requests``, OpenAI/xAI Responses ``web_search_call``
    #: output items): a count of calls priced per call, not tokens, so not in :attr:`total`.
    web_search: int = 0
    model: str | None = None
    response_id: str | None = None
    #: The service tier the provider says served the call, as it spells it (OpenAI's
    #: ``service_tier``: ``default``, ``flex``, ``priority``, ``scale``; Anthropic's
    #: ``usage.service_tier``: ``standard``, ``priority``, ``batch``); ``None``: not
    #: reported. Priced apart by features that filter on it (:mod:`meterline.servicetiers`).
    service_tier: str | None = None
    #: The speed the provider says the call ran at, as it spells it (Anthropic's
    #: ``usage.speed``: ``fast``, ``standard``); ``None``: not reported.
    speed: str | None = None
    #: Where the provider says the call ran, as it spells it (Anthropic's
    #: ``usage.inference_geo``: ``us``, ``global``, ``not_available``); ``None``: not
    #: reported. Both are priced apart by features that filter on them
    #: (:mod:`meterline.served`).
    inference_geo: str | None = None
    estimated: bool = False
    #: Not the provider's final usage report: the stream ended (cut, or normally) before
    #: it (Anthropic's ``message_start`` came but its ``message_delta`` did not; an OpenAI
    #: stream's cumulative usage without ``[DONE]``): the input figures are the
    #: provider's, ``output`` is only what was reported so far and may be too low.
    partial: bool = False
    #: Why the reported figures cannot be used (a negative, fractional, non-numeric or
    #: huge count, or figures that contradict each other); ``None`` when they are sound.
    invalid: str | None = None
    #: Usage billed beside this one in the same call, each for its own model: Anthropic's
    #: ``usage.iterations`` other than ``message`` (an advisor model's turn, a compaction
    #: step), which the top-level figures do not include; a Groq compound call's
    #: underlying models, whose tokens the call's own usage then leaves at 0.
    extra: list[Usage] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            self.input
            + self.cached_input
            + self.cache_write
            + self.cache_write_1h
            + self.audio_input
            + self.cached_audio_input
            + self.output
            + self.audio_output
        )


class Seen(NamedTuple):
    """The provider's model, response id and service tier as seen in the body so far
    (usage or not)."""

    model: str | None = None
    response_id: str | None = None
    service_tier: str | None = None


class UsageExtractor(Protocol):
    """Reads one response body, fed incrementally as decoded (not content-encoded) bytes.

    ``feed`` never raises: a garbled body is recorded in ``problems`` and the bytes
    keep flowing to the client untouched.
    """

    problems: list[str]

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> Usage | None:
        """The usage seen, or ``None`` when the body reported none."""
        ...

    def output_text(self) -> str:
        """Generated text seen so far, for a tiktoken estimate when usage is missing."""
        ...

    def seen(self) -> Seen:
        """Model and response id seen so far, kept for an event whose usage is missing."""
        ...
