"""Reading a Realtime session: its models, its responses' usage, its transcriptions'."""

from __future__ import annotations

import json
from typing import Any

import pytest

from addons.metering.extract.openai import map_usage
from addons.metering.realtime import (
    READ,
    SESSION,
    RealtimeSession,
    is_realtime_socket,
    transcription_usage,
)


@pytest.mark.parametrize(
    "flavor,path,expected",
    [
        ("openai", "/v1/realtime?model=gpt-realtime", True),
        ("openai", "/openai/realtime?api-version=2025-04-01-preview&deployment=rt", True),
        ("openai", "/openai/v1/realtime?model=rt", True),
        ("openai", "/v1/realtim%65?model=gpt-realtime", True),  # as the server routes it
        ("openai", "/v1/realtime/calls", False),
        ("openai", "/v1/responses", False),
        ("anthropic", "/v1/realtime", False),
    ],
)
def test_realtime_sockets(flavor: str, path: str, expected: bool) -> None:
    assert is_realtime_socket(flavor, path) is expected


@pytest.mark.parametrize(
    "path,model",
    [
        ("/v1/realtime?model=gpt-realtime", "gpt-realtime"),
        ("/openai/realtime?api-version=2025-04-01-preview&deployment=my-rt", "my-rt"),
        ("/v1/realtime?call_id=rtc_1", None),
        ("/v1/realtime?model=", None),
    ],
)
def test_the_urls_model_is_the_sessions_until_the_server_names_one(
    path: str, model: str | None
) -> None:
    session = RealtimeSession.from_path(path)
    assert session.model == model
    session.take({"type": "session.created", "session": {"model": "gpt-realtime-2025-08-28"}})
    assert session.model == "gpt-realtime-2025-08-28"


def test_the_transcription_model_follows_the_session_in_either_shape() -> None:
    session = RealtimeSession.from_path("/v1/realtime?model=m")
    ga = {"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}
    session.take({"type": "session.created", "session": ga})
    assert (session.model, session.transcription_model) == ("m", "gpt-4o-transcribe")
    session.take({"type": "session.updated", "session": {"instructions": "Be brief."}})
    assert session.transcription_model == "gpt-4o-transcribe"  # not named: unchanged
    beta = {"input_audio_transcription": {"model": "whisper-1"}}
    session.take({"type": "session.updated", "session": beta})
    assert session.transcription_model == "whisper-1"
    session.take({"type": "session.updated", "session": {"input_audio_transcription": None}})
    assert session.transcription_model is None  # turned off
    session.take({"type": "session.updated", "session": "garbled"})
    assert session.model == "m"


def test_realtime_usage_in_the_token_model() -> None:
    """Input includes its cached share (text and audio) and its audio; output its
    audio. Image input stays in ``input`` (priced as text input here)."""
    usage = map_usage(
        {
            "total_tokens": 1500,
            "input_tokens": 1100,
            "output_tokens": 400,
            "input_token_details": {
                "text_tokens": 300,
                "audio_tokens": 700,
                "image_tokens": 100,
                "cached_tokens": 200,
                "cached_tokens_details": {"text_tokens": 150, "audio_tokens": 50},
            },  # fmt: skip
            "output_token_details": {"text_tokens": 100, "audio_tokens": 300},
        }
    )
    assert usage is not None and usage.invalid is None
    assert (usage.input, usage.cached_input, usage.audio_input) == (250, 150, 650)
    assert usage.cached_audio_input == 50
    assert (usage.output, usage.audio_output) == (100, 300)
    assert usage.total == 1500


def test_realtime_usage_that_contradicts_itself_is_flagged() -> None:
    usage = map_usage(
        {
            "input_tokens": 100,
            "output_tokens": 10,
            "input_token_details": {
                "audio_tokens": 40,
                "cached_tokens": 20,
                "cached_tokens_details": {"audio_tokens": 60},
            },  # fmt: skip
        }
    )
    assert usage is not None and usage.invalid is not None


@pytest.mark.parametrize(
    "event,key,kind,figures",
    [
        (
            {"item_id": "item_1", "content_index": 0,
             "usage": {"type": "tokens", "input_tokens": 120, "output_tokens": 30,
                       "total_tokens": 150,
                       "input_token_details": {"text_tokens": 20, "audio_tokens": 100}}},
            ("item_1", 0), "tokens", (20, 100, 30),
        ),
        (
            {"item_id": "item_2", "usage": {"type": "duration", "seconds": 2.5}},
            ("item_2", 0), "duration", None,
        ),
        ({"item_id": "item_3"}, ("item_3", 0), "none", None),
        ({"usage": {"type": "tokens", "input_tokens": 5, "output_tokens": 1}}, None, "tokens",
         (5, 0, 1)),
    ],
)  # fmt: skip
def test_transcription_usage(
    event: dict[str, Any],
    key: tuple[str, int] | None,
    kind: str,
    figures: tuple[int, int, int] | None,
) -> None:
    got_key, usage, got_kind = transcription_usage(event)
    assert (got_key, got_kind) == (key, kind)
    if figures is None:
        assert usage is None
    else:
        assert usage is not None and usage.invalid is None
        assert (usage.input, usage.audio_input, usage.output) == figures


def test_a_transcription_sessions_settings_are_read_too() -> None:
    """A beta transcription-only session (``?intent=transcription``) announces its model
    in ``transcription_session.updated``."""
    session = RealtimeSession.from_path("/v1/realtime?intent=transcription")
    event = {
        "type": "transcription_session.updated",
        "session": {"input_audio_transcription": {"model": "gpt-4o-mini-transcribe"}},
    }
    assert READ.search(json.dumps(event).encode())
    assert event["type"] in SESSION
    session.take(event)
    assert (session.model, session.transcription_model) == (None, "gpt-4o-mini-transcribe")


def test_a_turn_is_estimated_from_its_bound_or_the_models() -> None:
    """The limits read a Realtime response as a call: the session's model, the create's
    size, its ``max_output_tokens`` (``"inf"`` or none: the model's bound)."""
    from addons.metering.realtime import turn_estimate
    from addons.metering.reserve import DEFAULT_OUTPUT_RESERVE, max_output

    session = RealtimeSession(model="gpt-realtime")
    create = b'{"type": "response.create", "response": {"max_output_tokens": 300}}'
    assert turn_estimate(session, create) == ("gpt-realtime", -(-len(create) // 4), 300, 0)
    unbounded = turn_estimate(session, b'{"response": {"max_output_tokens": "inf"}}')
    assert unbounded.output == (max_output("gpt-realtime") or DEFAULT_OUTPUT_RESERVE)
    assert turn_estimate(session, b"", 120) == ("gpt-realtime", 0, 120, 0)
