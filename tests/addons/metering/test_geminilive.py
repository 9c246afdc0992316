"""Reading a Gemini Live session: its model and its turns' usage."""

from __future__ import annotations

import pytest

from addons.metering.extract.gemini import map_usage
from addons.metering.geminilive import LiveSession, is_live_socket, usage_metadata

SERVICE = "/ws/google.ai.generativelanguage.v1beta.GenerativeService"


@pytest.mark.parametrize(
    "flavor,path,expected",
    [
        ("gemini", f"{SERVICE}.BidiGenerateContent?key=k", True),
        ("gemini", f"{SERVICE}.BidiGenerateContentConstrained?access_token=t", True),
        ("gemini", f"{SERVICE.replace('v1beta', 'v1alpha')}.BidiGenerateContent", True),
        ("gemini", "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent", True),
        ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent", False),
        ("openai", f"{SERVICE}.BidiGenerateContent", False),
    ],
)  # fmt: skip
def test_live_sockets(flavor: str, path: str, expected: bool) -> None:
    assert is_live_socket(flavor, path) is expected


def test_the_model_is_the_setups() -> None:
    live = LiveSession()
    live.take_setup(b'{"realtimeInput": {"text": "\\"setup\\""}}')
    assert live.model is None
    live.take_setup(b'{"setup": {"model": "models/gemini-live-2.5-flash-preview"}}')
    assert live.model == "models/gemini-live-2.5-flash-preview"
    live.take_setup(b'{"setup": ')  # cut: ignored
    assert live.model == "models/gemini-live-2.5-flash-preview"


def test_usage_metadata_is_read_only_from_an_object() -> None:
    assert usage_metadata({"usageMetadata": {"promptTokenCount": 1}}) == {"promptTokenCount": 1}
    assert usage_metadata({"usageMetadata": None}) is None
    assert usage_metadata([1]) is None


def test_live_usage_names_its_output_response_tokens() -> None:
    usage = map_usage(
        {
            "promptTokenCount": 520,
            "cachedContentTokenCount": 100,
            "responseTokenCount": 40,
            "thoughtsTokenCount": 12,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 400},
                {"modality": "AUDIO", "tokenCount": 120},
            ],
            "responseTokensDetails": [
                {"modality": "TEXT", "tokenCount": 10},
                {"modality": "AUDIO", "tokenCount": 30},
            ],
        }
    )
    assert usage.invalid is None
    assert (usage.input, usage.cached_input, usage.audio_input) == (300, 100, 120)
    assert (usage.output, usage.audio_output, usage.reasoning) == (22, 30, 12)


def test_candidates_win_when_both_names_are_reported() -> None:
    usage = map_usage({"promptTokenCount": 5, "candidatesTokenCount": 7, "responseTokenCount": 9})
    assert (usage.input, usage.output) == (5, 7)
