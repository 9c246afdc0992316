"""Token counts read strictly: a usage figure is metered only if it can be a real count.

Providers' usage objects are trusted for what they bill, never blindly: a count must be
a JSON integer (an integral number such as ``12.0`` is accepted), at least 0 and at most
:data:`MAX_TOKENS`. Anything else (negative, fractional, a string, a boolean, a huge
number, ``null`` where a main count belongs) makes the whole usage report unusable: the
call is then estimated and flagged ``estimated`` (see :mod:`addons.metering.settle`),
because a figure we cannot trust would bill wrongly in either direction, and a count of
2^63 or more cannot even be stored.

A detail that is ``null`` (``"cached_tokens": null``, vLLM's ``"prompt_tokens_details":
null``) means "not reported", as the OpenAI-compatible servers use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from addons.metering.usage import Usage

#: The largest count one API call can plausibly report. Context windows are a few
#: million tokens; a count above a billion is a provider bug or a hostile body.
MAX_TOKENS = 1_000_000_000
#: The most server-side web searches one call can plausibly report. Providers cap them
#: per call (Anthropic's ``max_uses``; agentic loops run tens of searches, not
#: thousands); a count above this is a provider bug or a hostile body: at $10 per 1,000
#: searches a bogus billion would bill ten million dollars.
MAX_WEB_SEARCHES = 10_000


class CountReader:
    """Reads the counts of one usage object; every unusable one is noted in ``bad``."""

    __slots__ = ("bad",)

    def __init__(self) -> None:
        self.bad: list[str] = []

    def get(self, obj: Mapping[str, Any], key: str, *, main: bool = False) -> int | None:
        """``obj[key]`` as a count; ``None`` when not reported.

        ``main``: a primary figure (``prompt_tokens``, ``output_tokens`` ...): ``null``
        there is unusable too, not "not reported".
        """
        if key not in obj:
            return None
        value = obj[key]
        if value is None and not main:
            return None
        count = _as_count(value)
        if count is None:
            self.bad.append(f"{key}={_show(value)}")
        return count

    def problem(self) -> str | None:
        """What made the report unusable (``None`` when every count was fine)."""
        if not self.bad:
            return None
        return "usage not a non-negative integer of sane size: " + ", ".join(self.bad[:4])


def _as_count(value: Any) -> int | None:
    if type(value) is int:  # the usual case, first (bool is not int here)
        return value if 0 <= value <= MAX_TOKENS else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def check_consistency(usage: Usage) -> str | None:
    """A problem with figures that are each valid but cannot be true together."""
    # Audio is a share of the provider's prompt (completion) count that the extractor
    # took out of input (output): more audio than that share is a report that
    # contradicts itself, not something to clamp.
    if usage.input < 0:
        uncached = usage.input + usage.audio_input
        return f"audio input {usage.audio_input} > uncached input {uncached}"
    if usage.output < 0:
        return f"audio output {usage.audio_output} > output {usage.output + usage.audio_output}"
    if usage.web_search > MAX_WEB_SEARCHES:
        return f"web searches {usage.web_search} > {MAX_WEB_SEARCHES} in one call"
    if usage.reasoning > usage.output:
        return f"reasoning {usage.reasoning} > output {usage.output}"
    if usage.cache_write < 0:  # a one-hour share larger than all cache writes
        written = usage.cache_write + usage.cache_write_1h
        return f"one-hour cache writes {usage.cache_write_1h} > cache writes {written}"
    if usage.total > MAX_TOKENS:
        return f"total {usage.total} over {MAX_TOKENS}"
    return None
