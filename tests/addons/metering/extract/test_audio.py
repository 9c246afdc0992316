"""Audio tokens counted apart (``audio_input``, ``audio_output``): the real recordings,
the cached-audio rule and the checks that make a self-contradicting report unusable.

The documented payloads (OpenAI chat JSON and stream, Gemini JSON and SSE) are rows of
``cases.py``, run by ``test_init.py`` across every framing.
"""

from __future__ import annotations

from typing import Any

import pytest

from addons.metering.extract import new_extractor
from addons.metering.extract.gemini import map_usage as gemini_usage
from addons.metering.extract.openai import map_usage as openai_usage
from addons.metering.usage import Usage
from tests.support.recordings import recording as _recording


def _metered(meta: dict[str, Any], body: bytes) -> Usage:
    ext = new_extractor(
        meta["flavor"], path=meta["request"]["path"], content_type=meta["response"]["content_type"]
    )
    ext.feed(body)
    usage = ext.finish()
    assert ext.problems == [] and usage is not None and usage.invalid is None
    return usage


def test_the_real_openai_audio_recording_splits_its_64_input_tokens() -> None:
    """``openai/chat-gpt-4o-audio-input``: 64 prompt tokens, 44 of them audio (its
    expected figures count all 64 as input, from before audio was counted apart)."""
    meta, body = _recording("openai/chat-gpt-4o-audio-input")
    usage = _metered(meta, body)
    expected, reported = meta["expected"], meta["provider_usage"]
    assert usage.input + usage.audio_input == expected["input_tokens"] == 64
    assert usage.audio_input == reported["prompt_tokens_details"]["audio_tokens"] == 44
    assert usage.input == reported["prompt_tokens_details"]["text_tokens"] == 20
    assert (usage.output, usage.audio_output) == (expected["output_tokens"], 0)
    assert usage.cached_input == expected["cached_input_tokens"] == 0


def test_the_real_gemini_recording_counts_its_cached_audio_apart() -> None:
    """``gemini/generate-2.5-flash-youtube-cached``: 1,917 audio tokens in the prompt,
    1,881 of them read from the cache: those are ``cached_audio_input`` (Gemini prices
    cached audio at $0.10 per million against $0.03 for cached text), the other 36
    ``audio_input``; the cache read in all is the recording's 17,379."""
    meta, body = _recording("gemini/generate-2.5-flash-youtube-cached")
    usage = _metered(meta, body)
    expected = meta["expected"]
    assert usage.input + usage.audio_input == expected["input_tokens"] == 334
    assert usage.audio_input == 1917 - 1881
    assert usage.cached_audio_input == 1881
    assert usage.cached_input + usage.cached_audio_input == expected["cached_input_tokens"]
    assert expected["cached_input_tokens"] == 17379
    assert (usage.output, usage.audio_output) == (expected["output_tokens"], 0)


def test_openai_cached_audio_named_by_the_report_is_counted_apart() -> None:
    """The Realtime usage shape names the cached audio: it is neither ``audio_input`` nor
    cached text."""
    usage = openai_usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": {
                "cached_tokens": 60,
                "audio_tokens": 50,
                "cached_tokens_details": {"text_tokens": 30, "audio_tokens": 30},
            },
        }
    )
    assert usage is not None and usage.invalid is None
    assert (usage.input, usage.cached_input, usage.audio_input) == (20, 30, 20)
    assert usage.cached_audio_input == 30
    assert usage.total == 110


def test_openai_reasoning_stays_a_share_of_the_text_output() -> None:
    usage = openai_usage(
        {
            "prompt_tokens": 10,
            "completion_tokens": 100,
            "completion_tokens_details": {"reasoning_tokens": 30, "audio_tokens": 60},
        }
    )
    assert usage is not None and usage.invalid is None
    assert (usage.output, usage.audio_output, usage.reasoning) == (40, 60, 30)


_OPENAI_BAD = [
    (
        {
            "prompt_tokens": 40,
            "completion_tokens": 5,
            "prompt_tokens_details": {"audio_tokens": 44},
        },
        "audio input 44 > uncached input 40",
    ),
    (
        {
            "prompt_tokens": 64,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 32, "audio_tokens": 70},
        },
        # at most 32 of the audio cached (all the cache read), the other 38 do not fit
        "audio input 38 > uncached input 32",
    ),
    (
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "completion_tokens_details": {"audio_tokens": 6},
        },
        "audio output 6 > output 5",
    ),
    (
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {
                "cached_tokens": 4,
                "audio_tokens": 2,
                "cached_tokens_details": {"audio_tokens": 3},
            },
        },
        "cached audio 3 > audio 2 or cached 4",
    ),
    (
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"audio_tokens": -1},
        },
        "usage not a non-negative integer of sane size: audio_tokens=-1",
    ),
]


@pytest.mark.parametrize(("raw", "why"), _OPENAI_BAD, ids=lambda v: str(v)[:40])
def test_openai_audio_above_its_total_makes_the_report_unusable(
    raw: dict[str, Any], why: str
) -> None:
    usage = openai_usage(raw)
    assert usage is not None and usage.invalid == why


def _modalities(**counts: int) -> list[dict[str, Any]]:
    return [{"modality": m, "tokenCount": n} for m, n in counts.items()]


_GEMINI_BAD = [
    (
        {"promptTokenCount": 10, "promptTokensDetails": _modalities(AUDIO=11)},
        "AUDIO prompt tokens 11 (cached 0) do not fit in promptTokenCount 10 (cached 0)",
    ),
    (
        {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 50,
            "promptTokensDetails": _modalities(TEXT=20, AUDIO=80),
            "cacheTokensDetails": _modalities(AUDIO=60),
        },
        "AUDIO prompt tokens 80 (cached 60) do not fit in promptTokenCount 100 (cached 50)",
    ),
    (
        {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 50,
            "promptTokensDetails": _modalities(TEXT=60, AUDIO=40),
            "cacheTokensDetails": _modalities(AUDIO=45),
        },
        "AUDIO prompt tokens 40 (cached 45) do not fit in promptTokenCount 100 (cached 50)",
    ),
    (
        {
            "promptTokenCount": 5,
            "candidatesTokenCount": 10,
            "thoughtsTokenCount": 50,
            "candidatesTokensDetails": _modalities(AUDIO=11),
        },
        "AUDIO candidates tokens 11 > candidatesTokenCount 10",
    ),
    (
        {"promptTokenCount": 5, "promptTokensDetails": _modalities(AUDIO=2.5)},
        "usage not a non-negative integer of sane size: tokenCount=2.5",
    ),
]


@pytest.mark.parametrize(("meta", "why"), _GEMINI_BAD, ids=lambda v: str(v)[:40])
def test_gemini_audio_above_its_total_makes_the_report_unusable(
    meta: dict[str, Any], why: str
) -> None:
    assert gemini_usage(meta).invalid == why


def test_gemini_modality_lists_without_audio_change_nothing() -> None:
    """Image, video and document tokens are priced as text input: they stay ``input``."""
    usage = gemini_usage(
        {
            "promptTokenCount": 300,
            "candidatesTokenCount": 20,
            "promptTokensDetails": _modalities(TEXT=42, IMAGE=258),
            "candidatesTokensDetails": _modalities(TEXT=20),
        }
    )
    assert usage.invalid is None
    assert (usage.input, usage.audio_input, usage.output, usage.audio_output) == (300, 0, 20, 0)


def test_audio_beyond_the_uncached_prompt_is_cached_audio_when_the_cache_is_not_split() -> None:
    """A chat completion reporting 3,000 prompt tokens, 2,560 of them cached and 2,500 of
    them audio, with no split of the cache read: at most 440 tokens were not cached, so at
    least 2,060 of the audio came from the cache. Before, the report read as
    contradicting itself (audio 2,500 > uncached 440) and the call was estimated as 9
    text tokens."""
    usage = openai_usage(
        {
            "prompt_tokens": 3000,
            "completion_tokens": 50,
            "total_tokens": 3050,
            "prompt_tokens_details": {"cached_tokens": 2560, "audio_tokens": 2500},
        }
    )
    assert usage is not None and usage.invalid is None
    assert (usage.input, usage.audio_input) == (0, 440)
    assert (usage.cached_input, usage.cached_audio_input) == (500, 2060)
    assert usage.total == 3050


def test_an_unsplit_cache_read_that_fits_stays_text() -> None:
    usage = openai_usage(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 500, "audio_tokens": 300},
        }
    )
    assert usage is not None and usage.invalid is None
    assert (usage.input, usage.audio_input, usage.cached_input, usage.cached_audio_input) == (
        200, 300, 500, 0
    )  # fmt: skip
